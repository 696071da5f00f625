//! Kernel launch plumbing: a small argument list and one `launch` call that checks the result.
//!
//! Launchers in `ops.rs`, `attention.rs`, `sampling.rs` and `transfer.rs` validate every device,
//! dtype and shape before they build an `Args`; this module only marshals scalars and pointers in
//! the order the `extern "C"` kernel signature declares them.

use std::ffi::c_void;

use cudarc::driver::sys::CUstream;
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
}

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

/// Launches `f` on `stream` with `args`.
///
/// # Safety
/// `args` must match the kernel's parameter list in number, order and type, and every pointer
/// must address device-accessible memory of the extent the kernel will touch. Launchers establish
/// this with their shape checks.
pub unsafe fn launch(f: &CudaFunction, stream: CUstream, dims: Dims, args: &[Arg]) -> Result<()> {
    let mut vals: Vec<Arg> = args.to_vec();
    let mut ptrs: Vec<*mut c_void> = vals
        .iter_mut()
        .map(|a| match a {
            Arg::U64(v) => v as *mut u64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
        })
        .collect();
    if dims.grid.0 == 0 || dims.grid.1 == 0 || dims.grid.2 == 0 {
        return Ok(());
    }
    // SAFETY: the caller guarantees the argument list matches the kernel; `vals` outlives the
    // call and is not moved while `ptrs` points into it.
    unsafe {
        cudarc::driver::result::launch_kernel(
            f.cu_function(),
            dims.grid,
            (dims.block, 1, 1),
            dims.smem,
            stream,
            &mut ptrs,
        )?;
    }
    Ok(())
}
