//! Hopper GEMMs of our own (kernels/cuda/gemm_wg.cu: wgmma + TMA multicast, persistent,
//! clusters of 2 blocks sharing weight tiles, one block per SM), for prefill-sized x:
//! - `gemm_gate_silu_wg`: the gate_up projection with SiLU * up in its epilogue, act =
//!   silu(x gate^T) * (x up^T), in place of cuBLAS into gu [T, 2 inter] and `silu_mul`: the
//!   intermediate is never written (at 8K tokens of the 8B shape 705 MB of traffic per layer).
//! - `gemm_bf16_wg`: the plain y = x w^T (bf16 out), timed beside cuBLAS (`GemmPath::Wgmma`).
//!
//! Loaded only on compute-9.0 devices (the program is sm_90a); [`WgGemm::applies`] holds for x of
//! at least [`GATE_WG_MIN_ROWS`] rows when the shape tiles (gate_up: inter a multiple of 128;
//! plain: out a multiple of 256; in a multiple of 8, 16-byte aligned operands).
//! `STRATA_FUSION_OFF=gate_gemm` keeps gate_up on cuBLAS; `STRATA_GATE_GEMM=solo` (or
//! [`set_gate_solo`]) runs the forms without clusters, where every block loads its whole weight
//! tile.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::{
    self, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::{CudaError, Result};
use super::launch::{cluster_attr, launch_config, launch_in_clusters, Arg, Dims, TensorMap};
use super::nvrtc::Program;
use super::tensor::DTensor;

/// The kernels' names in their program: (kind, clusters of 2) first, then the forms without
/// clusters (A/B timing).
pub const NAMES: [&str; 4] = [
    "gemm_gate_silu_wg",
    "gemm_bf16_wg",
    "gemm_gate_silu_wg_solo",
    "gemm_bf16_wg_solo",
];

/// What a launch computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgKind {
    /// act [T, inter] = silu(x gate^T) * (x up^T) for the gate_up weight [2 inter, in].
    GateSilu,
    /// y [T, out] = x w^T, bf16.
    Plain,
}

/// A choice forced on or off (A/B timing), else read from an environment variable.
struct Switch {
    /// 0: the environment's, 1: off, 2: on.
    forced: AtomicU8,
    var: &'static str,
    on: &'static str,
}

impl Switch {
    const fn new(var: &'static str, on: &'static str) -> Self {
        Self {
            forced: AtomicU8::new(0),
            var,
            on,
        }
    }

    fn set(&self, v: Option<bool>) {
        self.forced
            .store(v.map_or(0, |o| 1 + o as u8), Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        match self.forced.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => std::env::var(self.var).is_ok_and(|v| v == self.on),
        }
    }
}

/// The forms without clusters (default: the cluster forms).
static SOLO: Switch = Switch::new("STRATA_GATE_GEMM", "solo");
/// `GemmPath::Auto` sends prefill-sized plain GEMMs here (default: cuBLAS).
static PLAIN_AUTO: Switch = Switch::new("STRATA_WG_GEMM", "1");

/// Forces the forms without clusters (true), the cluster forms (false), or back to the
/// environment's choice (None), for later launches.
pub fn set_gate_solo(solo: Option<bool>) {
    SOLO.set(solo);
}

/// Turns the plain wgmma GEMM on (true) or off (false) for `GemmPath::Auto`, or back to the
/// environment's choice (None, `STRATA_WG_GEMM=1`).
pub fn set_plain_auto(on: Option<bool>) {
    PLAIN_AUTO.set(on);
}

/// Whether `GemmPath::Auto` runs prefill-sized plain GEMMs here (see [`set_plain_auto`]).
pub fn plain_auto() -> bool {
    PLAIN_AUTO.get()
}

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

/// One loaded form of the kernel.
struct Form {
    f: CudaFunction,
    /// Blocks per cluster (1: none).
    cluster: u32,
    /// Clusters that fit on the GPU at once (the persistent grid's size).
    clusters: usize,
}

/// The loaded kernels: [`NAMES`]' order.
pub struct WgGemm {
    forms: Vec<Form>,
}

impl WgGemm {
    /// The kernels on a compute-9.0 device; None elsewhere, or (logged) where they did not
    /// compile or load.
    pub fn load(ctx: &Arc<GpuContext>) -> Option<Self> {
        Program::GemmWg.arch_for(ctx.arch())?;
        let form = |name: &str, cluster: u32| -> Result<Form> {
            let f = ctx.function(Program::GemmWg, name)?;
            ctx.cuda().bind_to_thread()?;
            let attr =
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(attr, smem_bytes() as i32)?;
            let clusters = max_clusters(&f, ctx, cluster)?;
            if clusters == 0 {
                return Err(CudaError::Shape(format!(
                    "{name}: no cluster of {cluster} fits"
                )));
            }
            tracing::info!("{name}: {clusters} clusters of {cluster} resident");
            Ok(Form {
                f,
                cluster,
                clusters,
            })
        };
        let forms = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| form(name, if i < 2 { 2 } else { 1 }))
            .collect::<Result<Vec<_>>>();
        match forms {
            Ok(forms) => Some(Self { forms }),
            Err(e) => {
                tracing::warn!("wgmma GEMMs not loaded: {e}; prefill GEMMs stay on cuBLAS");
                None
            }
        }
    }

    /// Whether x [t, k] and w ([2 inter, k] for `GateSilu`, [out, k] for `Plain`) fit: both
    /// need w's rows in whole tiles of 256.
    pub fn applies(x: &DTensor, w: &DTensor) -> bool {
        let (Some(&t), [n, k]) = (x.shape().first(), w.shape()) else {
            return false;
        };
        t >= GATE_WG_MIN_ROWS
            && x.shape() == [t, *k]
            && n % (2 * BN) == 0
            && k % 8 == 0
            && x.ptr() % 16 == 0
            && w.ptr() % 16 == 0
    }

    /// `kind` of x [t, k] and w into y ([t, inter] or [t, out]).
    ///
    /// # Safety
    /// [`WgGemm::applies`] holds and y has the kind's shape, all bf16 on this kernel's GPU (the
    /// caller checks dtypes, shapes and devices).
    pub unsafe fn launch(
        &self,
        stream: sys::CUstream,
        kind: WgKind,
        x: &DTensor,
        w: &DTensor,
        y: &DTensor,
    ) -> Result<()> {
        let (t, k, rows) = (x.shape()[0], w.shape()[1], w.shape()[0]);
        // Outputs and outputs per tile.
        let (n, per_tile) = match kind {
            WgKind::GateSilu => (rows / 2, BN),
            WgKind::Plain => (rows, 2 * BN),
        };
        let xmap = tensor_map(x.ptr(), t, k, BM)?;
        let wmap = tensor_map(w.ptr(), rows, k, BN)?;
        let form = &self.forms[(kind == WgKind::Plain) as usize + 2 * SOLO.get() as usize];
        let groups = t.div_ceil(form.cluster as usize * BM) * (n / per_tile);
        let dims = dims(groups.min(form.clusters) as u32, form.cluster);
        let args = [
            Arg::Map(xmap),
            Arg::Map(wmap),
            Arg::U64(y.ptr()),
            Arg::I32(t as i32),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
        ];
        // SAFETY: the caller guarantees the tensors; the maps cover exactly x and w.
        let cluster = (form.cluster > 1).then_some((form.cluster, 1, 1));
        unsafe { launch_in_clusters(&form.f, stream, dims, cluster, &args) }
    }
}

/// The launch shape of `clusters` clusters of `cluster` blocks.
fn dims(clusters: u32, cluster: u32) -> Dims {
    Dims {
        grid: (clusters * cluster, 1, 1),
        block: 384,
        smem: smem_bytes() as u32,
    }
}

/// How many clusters of the kernel fit on the GPU at once.
fn max_clusters(f: &CudaFunction, ctx: &GpuContext, cluster: u32) -> Result<usize> {
    if cluster == 1 {
        return Ok(ctx.sm_count());
    }
    let mut attrs = [cluster_attr((cluster, 1, 1))];
    let cfg = launch_config(
        dims(ctx.sm_count() as u32 / cluster, cluster),
        ctx.stream().cu_stream(),
        &mut attrs,
    );
    let mut n = 0;
    // SAFETY: `cfg` and the attribute array it points to live across the call; `n` is written.
    unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &cfg) }
        .result()
        .map_err(|source| CudaError::Call {
            call: "cuOccupancyMaxActiveClusters",
            source,
        })?;
    Ok(n.max(0) as usize)
}

/// The TMA map of a row-major bf16 matrix [rows, cols] at `ptr`: boxes of `box_rows` rows x 64
/// columns (128 bytes) in the 128-byte swizzle, zero-filled past the edges.
fn tensor_map(ptr: u64, rows: usize, cols: usize, box_rows: usize) -> Result<TensorMap> {
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
