//! The f32 kernels behind [`super::backend::CudaBackend`] (`kernels/cuda/backend_f32.cu`) and the
//! plumbing they share: small index uploads, launches on the compute stream, error mapping.
//!
//! Invariant: every launcher here is called only after `CudaBackend` checked the buffer extents
//! against the shapes (the same checks as the CPU backend), so kernels index without checks.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::{CudaError, Result};
use super::launch::{launch, Arg, Dims};
use super::nvrtc::Program;
use super::tensor::{DTensor, DType};
use crate::backend::KernelError;

impl From<CudaError> for KernelError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Shape(detail) => KernelError::Shape { op: "cuda", detail },
            other => KernelError::Device(other.to_string()),
        }
    }
}

/// Warps per block of the warp-per-row kernels.
pub(crate) const WARPS: usize = 8;
/// Rows per block in y of `f32_linear` (LINEAR_ROWS in the .cu).
pub(crate) const LINEAR_ROWS: usize = 8;
/// Largest head_dim `f32_attention` holds in registers (ATTN_MAX_DIM in the .cu).
pub(crate) const ATTN_MAX_DIM: usize = 256;

/// The loaded f32 kernels of one GPU.
pub(crate) struct F32Kernels {
    pub ctx: Arc<GpuContext>,
    pub embedding: CudaFunction,
    pub rms_norm: CudaFunction,
    pub linear: CudaFunction,
    pub rope: CudaFunction,
    pub silu_mul: CudaFunction,
    pub add: CudaFunction,
    pub copy_rows: CudaFunction,
    pub attention: CudaFunction,
}

impl F32Kernels {
    /// Loads (compiling on first use) `backend_f32.cu`.
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self> {
        let f = |n| ctx.function(Program::BackendF32, n);
        Ok(Self {
            embedding: f("f32_embedding")?,
            rms_norm: f("f32_rms_norm")?,
            linear: f("f32_linear")?,
            rope: f("f32_rope")?,
            silu_mul: f("f32_silu_mul")?,
            add: f("f32_add")?,
            copy_rows: f("f32_copy_rows")?,
            attention: f("f32_attention")?,
            ctx,
        })
    }

    /// Launches `f` on the compute stream; a launch with an empty grid is skipped.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list, and every pointer must cover the extent the
    /// kernel touches for `dims` (established by the caller's shape checks).
    pub unsafe fn go(&self, f: &CudaFunction, dims: Dims, args: &[Arg]) -> Result<()> {
        if dims.grid.0 == 0 || dims.grid.1 == 0 || dims.grid.2 == 0 {
            return Ok(());
        }
        self.ctx.cuda().bind_to_thread()?;
        // SAFETY: forwarded from this function's contract.
        unsafe { launch(f, self.ctx.stream().cu_stream(), dims, args) }
    }

    /// Uploads indices (u32 bit patterns; kernels read them as u32).
    pub fn upload_u32(&self, v: &[u32]) -> Result<DTensor> {
        let bits: Vec<i32> = v.iter().map(|&x| x as i32).collect();
        self.ctx.upload_i32(&[bits.len()], &bits)
    }

    /// Grid-stride launch shape for `len` elementwise items.
    pub fn flat(&self, len: usize) -> Dims {
        let blocks = len.div_ceil(256).min(self.ctx.sm_count().max(1) * 32);
        Dims::rows(blocks, 256)
    }

    /// Copies `floats` floats from device address `src` to host `out`, after the stream drains.
    pub fn download(&self, src: u64, out: &mut [f32]) -> Result<()> {
        self.ctx.stream().synchronize()?;
        self.ctx.cuda().bind_to_thread()?;
        // SAFETY: the caller checked that `src` holds at least `out.len()` floats; `out` is a
        // valid host buffer of that size; the copy is synchronous.
        unsafe {
            sys::cuMemcpyDtoH_v2(
                out.as_mut_ptr() as *mut c_void,
                src,
                std::mem::size_of_val(out),
            )
            .result()?;
        }
        Ok(())
    }

    /// Copies host `data` to device address `dst`, after the stream drains (synchronous).
    pub fn upload_at(&self, dst: u64, data: &[f32]) -> Result<()> {
        self.ctx.stream().synchronize()?;
        self.ctx.cuda().bind_to_thread()?;
        // SAFETY: the caller checked that `dst` holds at least `data.len()` floats; `data` is a
        // valid host buffer of that size; the copy is synchronous.
        unsafe {
            sys::cuMemcpyHtoD_v2(
                dst,
                data.as_ptr() as *const c_void,
                std::mem::size_of_val(data),
            )
            .result()?;
        }
        Ok(())
    }

    /// Stream-ordered device-to-device copy of `bytes` bytes.
    pub fn copy_d2d(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.ctx.cuda().bind_to_thread()?;
        // SAFETY: the caller checked both ranges lie inside live allocations and do not overlap.
        unsafe {
            sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.ctx.stream().cu_stream()).result()?;
        }
        Ok(())
    }

    /// A zeroed f32 tensor of `len` floats.
    pub fn zeros(&self, len: usize) -> Result<DTensor> {
        let t = self.ctx.alloc(DType::F32, &[len])?;
        self.ctx.memset(&t, 0)?;
        Ok(t)
    }
}
