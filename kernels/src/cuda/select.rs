//! Backend selection: CUDA when a driver, a GPU at `--base-gpu-id` and the CUDA libraries are
//! present, the CPU otherwise, with one log line saying which and why.
//!
//! The probe never panics: it checks `is_culib_present()` for libcuda, libnvrtc and libcublas
//! before any call that would load them.

use std::sync::Arc;

use super::device::{device_count, driver_present, GpuContext};
use super::error::CudaError;
use super::gemm::cublas_present;
use super::nvrtc::nvrtc_present;

/// Which compute backend to use and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// CUDA on the given GPU.
    Cuda {
        /// GPU ordinal.
        ordinal: usize,
        /// Device name.
        name: String,
    },
    /// CPU, with the reason CUDA was not chosen.
    Cpu {
        /// Why not CUDA.
        reason: String,
    },
}

/// Probes without creating a context: decides what `select` would choose.
pub fn probe(base_gpu_id: usize) -> std::result::Result<(), String> {
    if !driver_present() {
        return Err("no CUDA driver (libcuda) found".into());
    }
    let n = device_count();
    if n == 0 {
        return Err("CUDA driver present but no GPU visible".into());
    }
    if base_gpu_id >= n {
        return Err(format!("--base-gpu-id {base_gpu_id} but only {n} GPU(s)"));
    }
    if !nvrtc_present() {
        return Err("libnvrtc not found (needed to compile kernels)".into());
    }
    if !cublas_present() {
        return Err("libcublas not found (needed for GEMMs)".into());
    }
    Ok(())
}

/// Chooses the backend, opening the GPU when CUDA is chosen, and logs the decision once.
/// `force_cpu` (e.g. `--device cpu`) skips the probe.
pub fn select(base_gpu_id: usize, force_cpu: bool) -> (BackendKind, Option<Arc<GpuContext>>) {
    let chosen = if force_cpu {
        Err("CPU requested".to_string())
    } else {
        probe(base_gpu_id).and_then(|()| {
            GpuContext::new(base_gpu_id).map_err(|e: CudaError| format!("opening GPU failed: {e}"))
        })
    };
    match chosen {
        Ok(ctx) => {
            let kind = BackendKind::Cuda {
                ordinal: base_gpu_id,
                name: ctx.name().to_string(),
            };
            tracing::info!(
                gpu = base_gpu_id,
                name = ctx.name(),
                arch = ctx.arch(),
                "compute backend: CUDA (driver, GPU and CUDA libraries present)"
            );
            (kind, Some(ctx))
        }
        Err(reason) => {
            tracing::info!(%reason, "compute backend: CPU");
            (BackendKind::Cpu { reason }, None)
        }
    }
}
