//! One replica of the served model: its runner, KV pool, host tier, PD role and the scheduler
//! thread that owns them. A server starts one, or `--dp-size` of them (each on its own GPU,
//! `--base-gpu-id + i × --gpu-id-step`; on the CPU each with its share of the memory budget),
//! sharing the tokenizer, the statistics and any L3.

use super::LaunchError;
use crate::hicache::storage::Storage;
use crate::hicache::{HiCache, HiCacheConfig};
use crate::kv::HostKvPool;
use crate::kv::{DeviceKvPool, KvPool};
use crate::model::{ModelConfig, ModelRunner, Tokenizer};
use crate::pd::decode::{Fetcher, Geometry};
use crate::pd::prefill::Registry;
use crate::pd::Mode;
use crate::scheduler::{spawn_with_hook, PdSide, SchedulerConfig, SchedulerHandle, Seams};
use crate::stats::Stats;
use std::sync::Arc;

/// What every replica shares.
pub(super) struct Shared<'a> {
    pub opts: &'a super::ServeOptions,
    pub cfg: &'a ModelConfig,
    pub context_length: usize,
    /// Bytes of host memory each replica's KV pool may take on a runner that does not size its
    /// own (the CPU): `mem_fraction_static × MemAvailable` before any replica loaded, less every
    /// replica's f32 weights, split evenly.
    pub host_kv_budget: f64,
    pub tokenizer: Arc<Tokenizer>,
    pub stats: Arc<Stats>,
    pub sched: SchedulerConfig,
    /// Replicas in the server.
    pub dp: usize,
    /// A PD prefill's bootstrap server and registry, shared by its replicas.
    pub prefill: Option<Arc<Registry>>,
}

/// A started replica.
pub(super) struct Started {
    pub handle: SchedulerHandle,
    /// Tokens its KV pool holds (a request must fit one replica).
    pub max_total_tokens: usize,
    /// The runner's name.
    pub runner: String,
    pub supports_lora: bool,
}

/// Sizes `model`'s KV pool, warms it up, adds the host tier and the PD role, and starts its
/// scheduler thread.
pub(super) fn start<R: ModelRunner>(sh: &Shared, mut model: R) -> Result<Started, LaunchError> {
    let (opts, cfg) = (sh.opts, sh.cfg);
    let per_token = model.kv_bytes_per_token();
    let max_running = sh.sched.max_running_requests;
    let tokens = match opts.max_total_tokens {
        Some(t) => t,
        None => {
            // Device memory: the runner knows what its weights and workspaces took.
            let budget = model
                .kv_budget_bytes(opts.mem_fraction_static)
                .unwrap_or(sh.host_kv_budget as usize);
            (budget / per_token).min(sh.context_length * max_running)
        }
    };
    let num_pages = tokens / opts.page_size;
    if num_pages < 2 {
        return Err(LaunchError::Config(format!(
            "the KV cache would hold only {tokens} tokens; raise --mem-fraction-static or --max-total-tokens"
        )));
    }
    let mut pool = DeviceKvPool::new(&model, num_pages, opts.page_size)?;
    model.warmup(&mut pool.buffers)?;
    let max_total_tokens = pool.total_pages() * opts.page_size;
    tracing::info!(
        max_total_tokens,
        page_size = opts.page_size,
        kv_mib = (max_total_tokens * per_token) >> 20,
        "KV pool ready"
    );
    let stats = &sh.stats;
    let hicache = match &opts.hicache {
        Some(_) if !model.kv_page_io() => {
            return Err(LaunchError::Config(format!(
                "--enable-hierarchical-cache is not available on the {} runner yet; use --device cpu or --dtype float32",
                model.name()
            )))
        }
        Some(hc) => {
            let h = build_hicache(
                hc,
                cfg,
                opts.page_size,
                num_pages,
                model.kv_elem_bytes(),
                stats,
            )?;
            let t0 = std::time::Instant::now();
            model.attach_host(&mut pool.buffers, h.host(), hc.direct_io)?;
            tracing::debug!(
                secs = t0.elapsed().as_secs_f64(),
                "host pool attached to the runner"
            );
            Some(h)
        }
        None => None,
    };
    let pd = match (&opts.pd, &sh.prefill) {
        (Some(c), Some(reg)) if c.mode == Mode::Prefill => {
            // One replica's GPU pool is exported for CUDA IPC; several replicas share the
            // bootstrap server, whose transfers then stage each prompt out of its replica's
            // GPU pool. A CPU replica hands its own pool pages over (`Pages::Pool`) either way.
            if sh.dp == 1 {
                reg.set_share(pd_share(&model, &pool.buffers));
            }
            Some(PdSide::Prefill(reg.clone()))
        }
        (Some(c), _) if c.mode == Mode::Decode => {
            if !model.kv_page_io() {
                return Err(LaunchError::Config(format!(
                    "--disaggregation-mode decode is not available on the {} runner yet",
                    model.name()
                )));
            }
            let geo = Geometry {
                page_size: opts.page_size,
                layers: cfg.num_layers,
                kv_dim: cfg.kv_dim(),
                elem: model.kv_elem_bytes(),
            };
            Some(PdSide::Decode(Box::new(
                Fetcher::new(c.clone(), geo, stats.clone())
                    .with_device(model.device_kv(&pool.buffers)),
            )))
        }
        _ => None,
    };
    let (runner, supports_lora) = (model.name().to_string(), model.supports_lora());
    let handle = spawn_with_hook(
        sh.sched.clone(),
        model,
        pool,
        sh.tokenizer.clone(),
        stats.clone(),
        Seams {
            hicache,
            pd,
            ..Seams::default()
        },
    )?;
    Ok(Started {
        handle,
        max_total_tokens,
        runner,
        supports_lora,
    })
}

/// How a PD prefill's transfer threads reach a CUDA runner's KV pool: through CUDA IPC (when
/// the export works), else not (every transfer staged; a CPU runner's scheduler hands its pool
/// pages over itself). `STRATA_PD_POOL=0` forces the staged path (for comparisons).
fn pd_share<R: ModelRunner>(model: &R, kv: &R::Kv) -> crate::pd::prefill::Share {
    if std::env::var("STRATA_PD_POOL").is_ok_and(|v| v == "0") {
        return Default::default();
    }
    let (device, kv) = match model.device_kv(kv) {
        Some(d) => match d.export() {
            Ok(e) => (Some(e), Some(d)),
            Err(e) => {
                tracing::warn!("PD: the GPU KV pool cannot be exported over CUDA IPC, transfers are staged through host memory: {e}");
                (None, None)
            }
        },
        None => (None, None),
    };
    crate::pd::prefill::Share { device, kv }
}

/// Sizes the host pool (`--hicache-size` GB, else `--hicache-ratio` × the device pool), checks that
/// the memory exists, and starts the L3 I/O threads when a store is configured.
fn build_hicache(
    hc: &HiCacheConfig,
    cfg: &ModelConfig,
    page_size: usize,
    device_pages: usize,
    elem: usize,
    stats: &Arc<Stats>,
) -> Result<HiCache, LaunchError> {
    let object = page_size * cfg.num_layers * cfg.kv_dim() * elem;
    let pages = if hc.size_gb > 0.0 {
        (hc.size_gb * 1e9 / (2 * object) as f64) as usize
    } else {
        (hc.ratio * device_pages as f64) as usize
    };
    if pages < 1 {
        return Err(LaunchError::Config(
            "the host KV pool would hold no page; raise --hicache-ratio or --hicache-size".into(),
        ));
    }
    let bytes = pages * 2 * object;
    let avail = mem_available_bytes().unwrap_or(u64::MAX) as f64;
    if bytes as f64 > 0.9 * avail {
        return Err(LaunchError::Config(format!(
            "the host KV pool needs {} MiB but only {} MiB of memory is available; lower --hicache-ratio or set --hicache-size (GB)",
            bytes >> 20,
            (avail as u64) >> 20
        )));
    }
    let host = Arc::new(
        HostKvPool::new(
            pages,
            page_size,
            cfg.num_layers,
            cfg.kv_dim(),
            elem,
            hc.layout,
        )
        .map_err(LaunchError::Config)?,
    );
    let storage = match &hc.storage {
        Some(b) => Some(
            Storage::start(b, host.region(), host.object_bytes()).map_err(LaunchError::Config)?,
        ),
        None => None,
    };
    tracing::info!(
        host_pages = pages,
        host_mib = bytes >> 20,
        write_policy = ?hc.write_policy,
        prefetch_policy = ?hc.prefetch_policy,
        storage = hc.storage.as_ref().map_or("none".into(), |b| b.to_string()),
        "hierarchical cache ready"
    );
    Ok(HiCache::new(
        hc.clone(),
        page_size,
        host,
        storage,
        stats.clone(),
    ))
}

pub(super) fn mem_available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}
