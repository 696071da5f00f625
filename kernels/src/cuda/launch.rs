//! Kernel launch plumbing: a small argument list and one `launch` call that checks the result.
//!
//! Launchers in `ops.rs`, `attention/`, `sampling.rs` and `transfer.rs` validate every device,
//! dtype and shape before they build an `Args`; this module only marshals scalars and pointers in
//! the order the `extern "C"` kernel signature declares them.
//!
//! On sm_90 and newer every launch carries the programmatic-dependent-launch attribute: a kernel
//! may be scheduled while its predecessor in the stream finishes, and waits for it in-kernel
//! (`pdl_wait` in kernels/cuda/common.cuh, which every kernel calls before touching memory an
//! earlier kernel wrote). Inside a captured decode graph this hides the launch gap and lets a GEMV
//! start streaming its (constant) weights during the previous kernel's tail. `STRATA_PDL=0` turns
//! it off; [`set_pdl`] switches it for A/B measurements. Eager prefill-sized forwards run
//! without it ([`prefill_forward`]; at 2K tokens of the 8B shape PDL cost 1.6 % of the forward on
//! the H200: a persistent kernel made resident early leaves its predecessor's last blocks no
//! room); `STRATA_PREFILL_PDL=1` keeps it there.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::sys::{
    self, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue, CUlaunchConfig, CUstream,
};
use cudarc::driver::CudaFunction;

use super::error::Result;

/// One kernel argument, held by value until the launch returns.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer or 64-bit integer.
    U64(u64),
    /// A 32-bit integer.
    I32(i32),
    /// A 32-bit float.
    F32(f32),
    /// A TMA tensor map (CUtensorMap), passed by value (`const __grid_constant__ TmaMap`).
    Map(TensorMap),
}

/// The 128 opaque bytes of a CUtensorMap, 64-byte aligned as the kernel parameter is.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
pub struct TensorMap(pub [u64; 16]);

/// Grid, block and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads in x (y = z = 1).
    pub block: u32,
    /// Dynamic shared memory bytes.
    pub smem: u32,
}

impl Dims {
    /// A 1-D grid with `blocks` blocks of `threads` threads.
    pub fn rows(blocks: usize, threads: u32) -> Self {
        Self {
            grid: (blocks as u32, 1, 1),
            block: threads,
            smem: 0,
        }
    }
}

static PDL: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's launches leave the attribute off ([`prefill_forward`]).
    static PDL_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Fewest rows of a forward that runs without PDL (the row count from which the gate_up GEMM
/// is the persistent wgmma kernel).
pub const NO_PDL_ROWS: usize = 256;

/// `STRATA_PREFILL_PDL=1`: prefill-sized forwards keep PDL (for A/B measurements).
static PREFILL_PDL: AtomicBool = AtomicBool::new(false);

fn pdl_off_here() -> bool {
    PDL_OFF.with(|c| c.get())
}

/// Runs `f`, the launches of a forward of `rows` rows: on this thread without the PDL
/// attribute when `rows` is at least [`NO_PDL_ROWS`] (other threads' launches are unaffected;
/// not for graph captures, whose decode steps want it).
pub fn prefill_forward<T>(rows: usize, f: impl FnOnce() -> T) -> T {
    if rows < NO_PDL_ROWS || PREFILL_PDL.load(Ordering::Relaxed) {
        return f();
    }
    let before = PDL_OFF.with(|c| c.replace(true));
    let out = f();
    PDL_OFF.with(|c| c.set(before));
    out
}

/// Turns programmatic dependent launch on or off for later launches (and graph captures).
pub fn set_pdl(on: bool) {
    PDL.store(on, Ordering::Relaxed);
}

/// Whether launches carry the programmatic-dependent-launch attribute.
pub fn pdl() -> bool {
    PDL.load(Ordering::Relaxed)
}

/// Enables PDL for a device of compute capability `major` (9 = Hopper) unless `STRATA_PDL=0`.
pub(crate) fn init_pdl(major: i32) {
    let off = std::env::var("STRATA_PDL").is_ok_and(|v| v == "0");
    let keep = std::env::var("STRATA_PREFILL_PDL").is_ok_and(|v| v == "1");
    PREFILL_PDL.store(keep, Ordering::Relaxed);
    if major >= 9 && !off {
        set_pdl(true);
    }
}

/// Launches `f` on `stream` with `args`.
///
/// # Safety
/// `args` must match the kernel's parameter list in number, order and type, and every pointer
/// must address device-accessible memory of the extent the kernel will touch. Launchers establish
/// this with their shape checks.
pub unsafe fn launch(f: &CudaFunction, stream: CUstream, dims: Dims, args: &[Arg]) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { launch_in_clusters(f, stream, dims, None, args) }
}

/// [`launch`] with the grid in thread-block clusters of `cluster` blocks along z (sm_90+; grid z
/// must be a multiple of it), or none.
///
/// # Safety
/// `args` must match the kernel's parameter list in number, order and type, and every pointer
/// must address device-accessible memory of the extent the kernel will touch. Launchers establish
/// this with their shape checks.
pub unsafe fn launch_in_clusters(
    f: &CudaFunction,
    stream: CUstream,
    dims: Dims,
    cluster: Option<u32>,
    args: &[Arg],
) -> Result<()> {
    let mut vals: Vec<Arg> = args.to_vec();
    let mut ptrs: Vec<*mut c_void> = vals
        .iter_mut()
        .map(|a| match a {
            Arg::U64(v) => v as *mut u64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
            Arg::Map(m) => m as *mut TensorMap as *mut c_void,
        })
        .collect();
    if dims.grid.0 == 0 || dims.grid.1 == 0 || dims.grid.2 == 0 {
        return Ok(());
    }
    // SAFETY: the caller guarantees the argument list matches the kernel; `vals` outlives the
    // call and is not moved while `ptrs` points into it.
    let pdl = pdl() && !pdl_off_here();
    unsafe {
        if !pdl && cluster.is_none() {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                dims.grid,
                (dims.block, 1, 1),
                dims.smem,
                stream,
                &mut ptrs,
            )?;
            return Ok(());
        }
        let mut attrs = Vec::with_capacity(2);
        if pdl {
            let mut value: CUlaunchAttributeValue = std::mem::zeroed();
            value.programmaticStreamSerializationAllowed = 1;
            attrs.push(CUlaunchAttribute {
                id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value,
            });
        }
        if let Some(z) = cluster {
            let mut value: CUlaunchAttributeValue = std::mem::zeroed();
            value.clusterDim.x = 1;
            value.clusterDim.y = 1;
            value.clusterDim.z = z;
            attrs.push(CUlaunchAttribute {
                id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                pad: [0; 4],
                value,
            });
        }
        let cfg = CUlaunchConfig {
            gridDimX: dims.grid.0,
            gridDimY: dims.grid.1,
            gridDimZ: dims.grid.2,
            blockDimX: dims.block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: dims.smem,
            hStream: stream,
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        };
        sys::cuLaunchKernelEx(
            &cfg,
            f.cu_function(),
            ptrs.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()?;
    }
    Ok(())
}
