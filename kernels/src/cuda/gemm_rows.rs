//! The few-row GEMVs (decode batches of 2-8 rows), keeping the single-row epilogues (SiLU in
//! gate_up, RoPE and the K/V write in qkv, the staged input norm) that cuBLASLt, which runs
//! these batches otherwise, does not have. Two kernel families:
//! - **exact** (gemv.cu `gemv_bf16_rows{2,4,8}`, `_gate`, `_qkv_rope`): the single-row kernels'
//!   code over T staged rows, each row's result bit for bit the single-row kernel's on it. FMA
//!   folds: faster than cuBLASLt at 2 rows, slower from 4 (H200, docs/perf.md). A batch of `t`
//!   rows runs the kernel of the next power of two that fits [`ROWS_MAX_SMEM`].
//! - **mma** (gemv_mma.cu `gemv_bf16_mma`, `_gate`, `_qkv_rope`): the same epilogues with the
//!   products on mma.sync (16 weight rows x 8 x rows per instruction), any 2-8 rows whose
//!   `t * (in + 32)` bf16 fit [`MMA_MAX_SMEM`], in % 32 == 0. Deterministic, not bit-equal to
//!   the single-row kernels (another summation order). Slower than cuBLASLt at every row count
//!   on the H200 (docs/perf.md), so only `STRATA_GEMV_ROWS=mma` runs them.
//!
//! [`RowsMode::Auto`] (the default) runs the exact kernels at 2 rows and cuBLASLt from 3;
//! `STRATA_GEMV_ROWS=0|exact|mma|auto` or [`super::Gemm::set_rows_mode`] picks another.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::Result;
use super::nvrtc::Program;

/// Shared memory the few-row kernels may take: T rows of x, `T * in` bf16.
pub const ROWS_MAX_SMEM: usize = 160 << 10;
/// The row counts the exact few-row kernels are compiled for (GEMV_ROWS lines of gemv.cu).
pub const ROWS_T: [usize; 3] = [2, 4, 8];
/// Shared memory the mma few-row kernels may take: t rows of x at a stride of in + 32 bf16.
pub const MMA_MAX_SMEM: usize = 200 << 10;

/// Which few-row kernels `GemmPath::Auto`, `Gemm::gate_silu` and `Gemm::qkv_rope_t1` run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsMode {
    /// None: cuBLASLt and the unfused epilogues from 2 rows.
    Off,
    /// The exact kernels at 2-8 rows.
    Exact,
    /// The mma kernels at 2-8 rows.
    Mma,
    /// The exact kernels at 2 rows, none from 3 (the default).
    Auto,
}

impl RowsMode {
    const ALL: [RowsMode; 4] = [
        RowsMode::Off,
        RowsMode::Exact,
        RowsMode::Mma,
        RowsMode::Auto,
    ];

    /// `STRATA_GEMV_ROWS`: 0 / off, 1 / auto, exact, mma; unset or unknown: auto.
    fn from_env() -> Self {
        match std::env::var("STRATA_GEMV_ROWS").as_deref() {
            Ok("0") | Ok("off") => RowsMode::Off,
            Ok("exact") => RowsMode::Exact,
            Ok("mma") => RowsMode::Mma,
            _ => RowsMode::Auto,
        }
    }
}

/// A few-row kernel choice: the exact kernel of [`ROWS_T`] index i, or the mma one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RowsKernel {
    Exact(usize),
    Mma,
}

/// One form's kernels: the exact ones by index into [`ROWS_T`], then the mma one.
pub(super) struct RowsForm {
    exact: Vec<CudaFunction>,
    mma: CudaFunction,
}

impl RowsForm {
    pub(super) fn get(&self, k: RowsKernel) -> &CudaFunction {
        match k {
            RowsKernel::Exact(i) => &self.exact[i],
            RowsKernel::Mma => &self.mma,
        }
    }
}

/// The few-row kernels and which of them `Auto` uses.
pub(super) struct FewRows {
    pub(super) plain: RowsForm,
    pub(super) gate: RowsForm,
    pub(super) qkv_rope: RowsForm,
    /// Index into `RowsMode::ALL`.
    mode: AtomicU8,
    /// False where the device refused the shared memory: never used there.
    usable: bool,
    /// False before sm_80 (no bf16 mma.sync): the mma kernels never run there.
    mma_usable: bool,
}

impl FewRows {
    /// Loads the kernels and allows each its shared memory (a device with less, e.g. a consumer
    /// GPU, keeps them unused, with a warning).
    pub(super) fn load(ctx: &Arc<GpuContext>) -> Result<Self> {
        let attr = cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        let mut usable = true;
        let mut func = |name: String, smem: usize| -> Result<CudaFunction> {
            let f = ctx.function(Program::Gemv, &name)?;
            ctx.cuda().bind_to_thread()?;
            if let Err(e) = f.set_attribute(attr, smem as i32) {
                tracing::warn!(
                    "{name}: {smem} bytes of shared memory refused ({e:?}); few-row GEMVs off"
                );
                usable = false;
            }
            Ok(f)
        };
        let mut form = |suffix: &str| -> Result<RowsForm> {
            let exact = ROWS_T
                .iter()
                .map(|t| func(format!("gemv_bf16_rows{t}{suffix}"), ROWS_MAX_SMEM))
                .collect::<Result<Vec<_>>>()?;
            let mma = func(format!("gemv_bf16_mma{suffix}"), MMA_MAX_SMEM)?;
            Ok(RowsForm { exact, mma })
        };
        let (plain, gate, qkv_rope) = (form("")?, form("_gate")?, form("_qkv_rope")?);
        let mode = RowsMode::ALL
            .iter()
            .position(|&m| m == RowsMode::from_env())
            .unwrap_or(3);
        Ok(Self {
            plain,
            gate,
            qkv_rope,
            mode: AtomicU8::new(mode as u8),
            usable,
            mma_usable: ctx.cuda().compute_capability()?.0 >= 8,
        })
    }

    pub(super) fn set_mode(&self, m: RowsMode) {
        let i = RowsMode::ALL.iter().position(|&x| x == m).unwrap_or(0);
        self.mode.store(i as u8, Ordering::Relaxed);
    }

    pub(super) fn mode(&self) -> RowsMode {
        RowsMode::ALL[self.mode.load(Ordering::Relaxed) as usize]
    }

    /// The kernel for `t` rows of `k` inputs under the current mode, if any.
    pub(super) fn pick(&self, t: usize, k: usize) -> Option<RowsKernel> {
        match self.mode() {
            RowsMode::Off => None,
            RowsMode::Exact => self.kernel(RowsKernel::Exact(0), t, k),
            RowsMode::Mma => self.kernel(RowsKernel::Mma, t, k),
            RowsMode::Auto if t == 2 => self.kernel(RowsKernel::Exact(0), t, k),
            RowsMode::Auto => None,
        }
    }

    /// `family`'s kernel for `t` rows of `k` inputs where it applies (whatever the mode; the
    /// exact index is found from `t`); none where the device refused their shared memory.
    pub(super) fn kernel(&self, family: RowsKernel, t: usize, k: usize) -> Option<RowsKernel> {
        if !self.usable {
            return None;
        }
        match family {
            RowsKernel::Exact(_) => index_for(t, k).map(RowsKernel::Exact),
            RowsKernel::Mma => (self.mma_usable && mma_fits(t, k)).then_some(RowsKernel::Mma),
        }
    }
}

/// The exact kernel index for `t` rows of `k` inputs: the next power of two in [`ROWS_T`] whose
/// staged rows fit [`ROWS_MAX_SMEM`].
pub(super) fn index_for(t: usize, k: usize) -> Option<usize> {
    let i = ROWS_T.iter().position(|&n| n >= t)?;
    (t >= 2 && ROWS_T[i] * k * 2 <= ROWS_MAX_SMEM).then_some(i)
}

/// Whether the mma kernels take `t` rows of `k` inputs.
pub(super) fn mma_fits(t: usize, k: usize) -> bool {
    (2..=8).contains(&t) && k % 32 == 0 && mma_smem(t, k) <= MMA_MAX_SMEM
}

/// The mma kernels' dynamic shared memory: `t` staged rows of `k` inputs.
pub(super) fn mma_smem(t: usize, k: usize) -> usize {
    t * (k + 32) * 2
}

/// The mma kernels' grid for `n_out` outputs (pairs of weight rows when `paired`) of `k`
/// inputs with `smem` bytes of dynamic shared memory on `sms` SMs: the groups of tiles there
/// are (gemv_mma.cu: 16 weight rows per tile, 8 / S tiles per group, S = the warps splitting k),
/// at most as many blocks as are resident at once (two per SM by their registers, one where
/// the staged rows take too much shared memory; the kernel is persistent).
pub(super) fn mma_grid(n_out: usize, paired: bool, smem: usize, k: usize, sms: usize) -> usize {
    let per_tile = if paired { 8 } else { 16 };
    let steps = k.div_ceil(128);
    let split = [8, 4, 2, 1].into_iter().find(|&s| steps >= s).unwrap_or(1);
    let groups = n_out.div_ceil(per_tile).div_ceil(8 / split);
    // 228 KiB of shared memory per SM, 1 KiB of it reserved per block, 4 KiB static; at most
    // two blocks by their registers (~100 per thread).
    let per_sm = ((228 << 10) / (smem + (5 << 10))).clamp(1, 2);
    groups.min(per_sm * sms).max(1)
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

    #[test]
    fn mma_grids_are_persistent_and_cover_small_outputs() {
        // 1B o (2048 outputs, in 2048): 128 tiles of one group each, all resident.
        assert_eq!(mma_grid(2048, false, mma_smem(4, 2048), 2048, 132), 128);
        // The LM head: two blocks per SM loop over its 8016 tiles.
        assert_eq!(mma_grid(128256, false, mma_smem(8, 2048), 2048, 132), 264);
        // 8 staged rows of in 8192 take 131 KiB: one block per SM.
        assert_eq!(mma_grid(128256, false, mma_smem(8, 8192), 8192, 132), 132);
        // in 256: 2 steps, S = 2, 4 tiles per group.
        assert_eq!(mma_grid(640, true, mma_smem(3, 256), 256, 132), 20);
    }

    #[test]
    fn mma_rows_fit_their_shared_memory() {
        assert!(mma_fits(8, 2048) && mma_fits(8, 8192) && mma_fits(3, 4096));
        // The 8B down projection (in 14336): up to 7 rows.
        assert!(mma_fits(7, 14336) && !mma_fits(8, 14336));
        assert!(!mma_fits(1, 2048) && !mma_fits(9, 2048) && !mma_fits(4, 1000));
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
        let mma = include_str!("../../cuda/gemv_mma.cu");
        for name in [
            "gemv_bf16_mma(",
            "gemv_bf16_mma_gate(",
            "gemv_bf16_mma_qkv_rope(",
        ] {
            assert!(mma.contains(name), "{name} missing");
        }
    }
}
