//! cuBLAS GEMMs: `y = x * w^T` with bf16 operands and f32 accumulation (the Linear layer).
//!
//! Row-major x [T, in], w [out, in] (Hugging Face layout), y [T, out] in bf16 or f32 (logits).
//! cuBLAS is column-major, so the call computes y^T = w * x^T: op(A) = T on w (lda = in),
//! op(B) = N on x (ldb = in), C = y (ldc = out), m = out, n = T, k = in.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType,
};
use cudarc::cublas::CudaBlas;

use super::device::GpuContext;
use super::error::{ensure, CudaError, Result};
use super::tensor::{DTensor, DType};

/// True when libcublas can be loaded.
pub fn cublas_present() -> bool {
    // SAFETY: only attempts to dlopen libcublas.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// A cuBLAS handle bound to the context's compute stream.
pub struct Gemm {
    ctx: Arc<GpuContext>,
    blas: CudaBlas,
}

impl Gemm {
    /// Creates the handle on `ctx`'s compute stream.
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self> {
        if !cublas_present() {
            return Err(CudaError::MissingLibrary("libcublas"));
        }
        let blas = CudaBlas::new(ctx.stream().clone())?;
        Ok(Self { ctx, blas })
    }

    /// y = x * w^T for x [T, in] bf16, w [out, in] bf16, y [T, out] bf16 or f32.
    pub fn linear(&self, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<()> {
        for (n, t) in [("x", x), ("w", w), ("y", y)] {
            self.ctx.check_device(n, t)?;
        }
        ensure(x.shape().len() == 2 && w.shape().len() == 2, || {
            "x [T, in] and w [out, in] expected".into()
        })?;
        let (t, k) = (x.shape()[0], x.shape()[1]);
        let n_out = w.shape()[0];
        x.expect("x", DType::Bf16, &[t, k])?;
        w.expect("w", DType::Bf16, &[n_out, k])?;
        let c_type = match y.dtype() {
            DType::Bf16 => cudaDataType::CUDA_R_16BF,
            DType::F32 => cudaDataType::CUDA_R_32F,
            got => {
                return Err(CudaError::Dtype {
                    what: "y",
                    expected: DType::Bf16,
                    got,
                })
            }
        };
        ensure(y.shape() == [t, n_out], || {
            format!("y: expected [{t}, {n_out}], got {:?}", y.shape())
        })?;
        let alpha = 1.0f32;
        let beta = 0.0f32;
        self.ctx.cuda().bind_to_thread()?;
        // SAFETY: shapes checked above: w holds out*in, x holds T*in, y holds T*out elements of
        // the stated types; alpha/beta are f32 as CUBLAS_COMPUTE_32F requires.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                n_out as i32,
                t as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w.ptr() as *const c_void,
                cudaDataType::CUDA_R_16BF,
                k as i32,
                x.ptr() as *const c_void,
                cudaDataType::CUDA_R_16BF,
                k as i32,
                &beta as *const f32 as *const c_void,
                y.ptr() as *mut c_void,
                c_type,
                n_out as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }
}
