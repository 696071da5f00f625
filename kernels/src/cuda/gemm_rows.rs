//! The few-row GEMVs of gemv.cu (`gemv_bf16_rows{2,4,8}`, `_gate`, `_qkv_rope`): decode batches
//! of 2-8 rows through the single-row kernels' code with every weight row streamed once for
//! all rows, each row's result bit for bit the single-row kernel's on it (so the GEMMs of a
//! 2-8-row step equal those of batch 1). They keep the single-row epilogues (SiLU in gate_up,
//! RoPE and the K/V write in qkv, the staged input norm) that cuBLASLt, which runs these batches
//! otherwise, does not have.
//!
//! **Off by default**: written and checked under the CPU emulation (kernels/tests/fused_emulated.rs)
//! without a GPU to time them; `STRATA_GEMV_ROWS=1` or [`super::Gemm::set_few_rows`] turns them on
//! for `GemmPath::Auto`, `Gemm::gate_silu_t1` and `Gemm::qkv_rope_t1`. A batch of `t` rows runs
//! the kernel of the next power of two (rows past `t` are staged as zeros and not written), when
//! its `T * in` bf16 fit in [`ROWS_MAX_SMEM`] of shared memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::Result;
use super::nvrtc::Program;

/// Shared memory the few-row kernels may take: T rows of x, `T * in` bf16.
pub const ROWS_MAX_SMEM: usize = 160 << 10;
/// The row counts the few-row kernels are compiled for (GEMV_ROWS lines of gemv.cu).
pub const ROWS_T: [usize; 3] = [2, 4, 8];

/// The few-row kernels, by index into [`ROWS_T`], and whether `Auto` uses them.
pub(super) struct FewRows {
    pub(super) plain: Vec<CudaFunction>,
    pub(super) gate: Vec<CudaFunction>,
    pub(super) qkv_rope: Vec<CudaFunction>,
    on: AtomicBool,
    /// False where the device refused [`ROWS_MAX_SMEM`] of shared memory: never used there.
    usable: bool,
}

impl FewRows {
    /// Loads the kernels and allows each [`ROWS_MAX_SMEM`] of dynamic shared memory (a device
    /// with less, e.g. a consumer GPU, keeps them unused, with a warning).
    pub(super) fn load(ctx: &Arc<GpuContext>) -> Result<Self> {
        let attr = cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        let mut usable = true;
        let mut get = |suffix: &str| -> Result<Vec<CudaFunction>> {
            ROWS_T
                .iter()
                .map(|t| {
                    let name = format!("gemv_bf16_rows{t}{suffix}");
                    let f = ctx.function(Program::Gemv, &name)?;
                    ctx.cuda().bind_to_thread()?;
                    if let Err(e) = f.set_attribute(attr, ROWS_MAX_SMEM as i32) {
                        tracing::warn!("{name}: {ROWS_MAX_SMEM} bytes of shared memory refused ({e:?}); few-row GEMVs off");
                        usable = false;
                    }
                    Ok(f)
                })
                .collect()
        };
        let (plain, gate, qkv_rope) = (get("")?, get("_gate")?, get("_qkv_rope")?);
        Ok(Self {
            plain,
            gate,
            qkv_rope,
            on: AtomicBool::new(std::env::var("STRATA_GEMV_ROWS").is_ok_and(|v| v == "1")),
            usable,
        })
    }

    pub(super) fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    pub(super) fn is_on(&self) -> bool {
        self.usable && self.on.load(Ordering::Relaxed)
    }

    /// The kernel index for `t` rows of `k` inputs (2 <= t <= 8, staged rows within
    /// [`ROWS_MAX_SMEM`]) when the few-row kernels are on.
    pub(super) fn index(&self, t: usize, k: usize) -> Option<usize> {
        if !self.is_on() {
            return None;
        }
        index_for(t, k)
    }
}

/// [`FewRows::index`] without the switch.
pub(super) fn index_for(t: usize, k: usize) -> Option<usize> {
    let i = ROWS_T.iter().position(|&n| n >= t)?;
    (t >= 2 && ROWS_T[i] * k * 2 <= ROWS_MAX_SMEM).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_rows_pick_the_next_power_of_two_that_fits() {
        assert_eq!(index_for(1, 2048), None);
        assert_eq!(index_for(2, 2048), Some(0));
        assert_eq!(index_for(3, 2048), Some(1));
        assert_eq!(index_for(8, 2048), Some(2));
        assert_eq!(index_for(9, 2048), None);
        // 8 rows of the 1B down projection (in 8192) fit; of the 8B one (14336) only 4 do.
        assert_eq!(index_for(8, 8192), Some(2));
        assert_eq!(index_for(8, 14336), None);
        assert_eq!(index_for(4, 14336), Some(1));
    }

    /// The kernel names the loader asks for are the GEMV_ROWS instantiations of gemv.cu.
    #[test]
    fn few_row_kernels_are_instantiated() {
        let src = include_str!("../../cuda/gemv.cu");
        for t in ROWS_T {
            assert!(
                src.contains(&format!("\nGEMV_ROWS({t})")),
                "GEMV_ROWS({t}) missing"
            );
        }
    }
}
