//! GPU inventory through NVML (`nvml-wrapper`): names, memory and utilisation for
//! `/get_server_info` and `/metrics`. Absence of NVML is not an error: the caller gets `None`.

/// One GPU as NVML reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// Ordinal.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Used memory, bytes.
    pub memory_used: u64,
    /// GPU utilisation, percent over the last sample period.
    pub utilization_percent: u32,
}

/// Lists GPUs through NVML; `None` when NVML cannot be loaded or initialised.
pub fn gpu_inventory() -> Option<Vec<GpuInfo>> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "NVML unavailable");
            return None;
        }
    };
    let count = nvml.device_count().ok()?;
    let mut out = Vec::new();
    for index in 0..count {
        let Ok(dev) = nvml.device_by_index(index) else {
            continue;
        };
        let mem = dev.memory_info().ok();
        out.push(GpuInfo {
            index,
            name: dev.name().unwrap_or_else(|_| "unknown".into()),
            memory_total: mem.as_ref().map_or(0, |m| m.total),
            memory_used: mem.as_ref().map_or(0, |m| m.used),
            utilization_percent: dev.utilization_rates().map_or(0, |u| u.gpu),
        });
    }
    Some(out)
}

/// SM clock and board power of GPU 0 while work runs (`gpu bench`'s attention-in-context line).
pub struct ClockProbe {
    nvml: nvml_wrapper::Nvml,
}

impl ClockProbe {
    /// `None` when NVML cannot be loaded or initialised.
    pub fn new() -> Option<Self> {
        nvml_wrapper::Nvml::init()
            .ok()
            .map(|nvml| ClockProbe { nvml })
    }

    /// (SM clock in MHz, board power in W) now.
    pub fn sample(&self) -> Option<(u32, f64)> {
        let dev = self.nvml.device_by_index(0).ok()?;
        let mhz = dev
            .clock_info(nvml_wrapper::enum_wrappers::device::Clock::SM)
            .ok()?;
        let mw = dev.power_usage().ok()?;
        Some((mhz, mw as f64 / 1e3))
    }
}

/// Bytes the KV pool may take under `--mem-fraction-static`: fraction of total memory minus what
/// is already in use (weights loaded first), never negative.
pub fn kv_budget(total: usize, free: usize, mem_fraction_static: f64) -> usize {
    let used = total.saturating_sub(free);
    let allowed = (total as f64 * mem_fraction_static.clamp(0.0, 1.0)) as usize;
    allowed.saturating_sub(used)
}
