//! The gate_up GEMM with SiLU * up in its epilogue on Hopper (`gemm_gate_silu_wg`,
//! kernels/cuda/gemm_wg.cu: wgmma + TMA, persistent, one block per SM), for prefill-sized x:
//! act = silu(x gate^T) * (x up^T), in place of cuBLAS into gu [T, 2 inter] and `silu_mul`: the
//! intermediate is never written (at 8K tokens of the 8B shape 705 MB of traffic per layer).
//!
//! Loaded only on compute-9.0 devices (the program is sm_90a); [`WgGemm::applies`] holds for x of
//! at least [`GATE_WG_MIN_ROWS`] rows when the shape tiles (inter a multiple of 128, in a
//! multiple of 8, 16-byte aligned operands). `STRATA_FUSION_OFF=gate_gemm` keeps gate_up on
//! cuBLAS.

use std::sync::Arc;

use cudarc::driver::sys::{
    self, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::{CudaError, Result};
use super::launch::{launch, Arg, Dims, TensorMap};
use super::nvrtc::Program;
use super::tensor::DTensor;

/// The kernel's name in its program.
pub const GATE_NAME: &str = "gemm_gate_silu_wg";

/// Fewest x rows sent to the kernel (its tiles are 128 rows; fewer rows go to cuBLAS).
pub const GATE_WG_MIN_ROWS: usize = 256;

/// Tile sizes and pipeline depth, as `GW_*` in gemm_wg.cu.
const BM: usize = 128;
const BN: usize = 128;
const BK: usize = 64;
const STAGES: usize = 4;

/// Dynamic shared memory of a launch: alignment slack, the stages (x [BM][BK] and 2 BN weight
/// rows of BK, bf16) and the full / empty mbarriers.
fn smem_bytes() -> usize {
    1024 + STAGES * (BM * BK * 2 + 2 * BN * BK * 2) + 2 * STAGES * 8
}

/// The loaded kernel.
pub struct WgGemm {
    f: CudaFunction,
    sms: usize,
}

impl WgGemm {
    /// The kernel on a compute-9.0 device; None elsewhere, or (logged) where it did not compile
    /// or load.
    pub fn load(ctx: &Arc<GpuContext>) -> Option<Self> {
        Program::GemmWg.arch_for(ctx.arch())?;
        let loaded = ctx.function(Program::GemmWg, GATE_NAME).and_then(|f| {
            ctx.cuda().bind_to_thread()?;
            let attr =
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(attr, smem_bytes() as i32)?;
            Ok(f)
        });
        match loaded {
            Ok(f) => Some(Self {
                f,
                sms: ctx.sm_count(),
            }),
            Err(e) => {
                tracing::warn!("{GATE_NAME} not loaded: {e}; gate_up runs on cuBLAS + silu_mul");
                None
            }
        }
    }

    /// Whether x [t, k] and the gate_up weight w [2 inter, k] fit.
    pub fn applies(x: &DTensor, w: &DTensor) -> bool {
        let (Some(&t), [n2, k]) = (x.shape().first(), w.shape()) else {
            return false;
        };
        t >= GATE_WG_MIN_ROWS
            && x.shape() == [t, *k]
            && n2 % (2 * BN) == 0
            && k % 8 == 0
            && x.ptr() % 16 == 0
            && w.ptr() % 16 == 0
    }

    /// act [t, inter] = silu(x gate^T) * (x up^T).
    ///
    /// # Safety
    /// [`WgGemm::applies`] holds, x is [t, k], w [2 inter, k] and act [t, inter], all bf16 on
    /// this kernel's GPU (the caller checks dtypes, shapes and devices).
    pub unsafe fn launch(
        &self,
        stream: sys::CUstream,
        x: &DTensor,
        w: &DTensor,
        act: &DTensor,
    ) -> Result<()> {
        let (t, k, inter) = (x.shape()[0], w.shape()[1], w.shape()[0] / 2);
        let xmap = tensor_map(x.ptr(), t, k, BM)?;
        let wmap = tensor_map(w.ptr(), 2 * inter, k, BN)?;
        let tiles = t.div_ceil(BM) * (inter / BN);
        let dims = Dims {
            grid: (tiles.min(self.sms) as u32, 1, 1),
            block: 384,
            smem: smem_bytes() as u32,
        };
        let args = [
            Arg::Map(xmap),
            Arg::Map(wmap),
            Arg::U64(act.ptr()),
            Arg::I32(t as i32),
            Arg::I32(inter as i32),
            Arg::I32(k as i32),
        ];
        // SAFETY: the caller guarantees the tensors; the maps cover exactly x and w.
        unsafe { launch(&self.f, stream, dims, &args) }
    }
}

/// The TMA map of a row-major bf16 matrix [rows, cols] at `ptr`: boxes of `box_rows` rows x 64
/// columns (128 bytes) in the 128-byte swizzle, zero-filled past the edges.
pub(crate) fn tensor_map(ptr: u64, rows: usize, cols: usize, box_rows: usize) -> Result<TensorMap> {
    let dims = [cols as u64, rows as u64];
    let strides = [(cols * 2) as u64];
    let boxes = [BK as u32, box_rows as u32];
    let elem = [1u32, 1];
    // SAFETY: all-zero bytes are a valid (opaque) CUtensorMap; the encode call reads the four
    // arrays above (rank 2) and writes only `map`.
    let mut map: CUtensorMap = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    rc.result().map_err(|source| CudaError::Call {
        call: "cuTensorMapEncodeTiled",
        source,
    })?;
    Ok(TensorMap(map.opaque))
}
