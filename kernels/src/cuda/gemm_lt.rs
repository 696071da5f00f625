//! cuBLASLt for the Linear layer: the same `y = x * w^T` as `gemm.rs`'s cuBLAS call, with the
//! algorithm picked by cuBLASLt's heuristic for each (rows, out, in, y dtype) and cached, and a
//! 32 MiB workspace (split-K and stream-K kernels need one). Used where it measured faster
//! (`GemmPath::CublasLt`; docs/perf.md, GPU section).
//!
//! Layouts (column-major, as cuBLAS sees the row-major tensors): A = w as [in, out] with
//! TRANSA = T, B = x as [in, T], C = D = y as [out, T].

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;

use super::device::GpuContext;
use super::error::{CudaError, Result};
use super::tensor::{DTensor, DType};

const WORKSPACE: usize = 32 << 20;

/// True when libcublasLt can be loaded.
pub fn cublaslt_present() -> bool {
    // SAFETY: only attempts to dlopen libcublasLt.
    unsafe { sys::is_culib_present() }
}

fn lt_err(e: lt::CublasError) -> CudaError {
    CudaError::CublasLt(e)
}

/// The descriptors and chosen algorithm of one problem shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle with its workspace and per-shape plans.
pub struct GemmLt {
    ctx: Arc<GpuContext>,
    handle: sys::cublasLtHandle_t,
    workspace: DTensor,
    plans: Mutex<HashMap<(usize, usize, usize, bool), Plan>>,
}

// SAFETY: the raw handles are only used under `plans`' lock or for launches on the context's
// stream; cuBLASLt handles and descriptors may be used from any thread.
unsafe impl Send for GemmLt {}
// SAFETY: see `Send`; every use of the plans goes through the mutex.
unsafe impl Sync for GemmLt {}

impl GemmLt {
    /// Creates the handle and workspace on `ctx`.
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self> {
        if !cublaslt_present() {
            return Err(CudaError::MissingLibrary("libcublasLt"));
        }
        ctx.cuda().bind_to_thread()?;
        let handle = lt::create_handle().map_err(lt_err)?;
        let workspace = ctx.alloc(DType::F32, &[WORKSPACE / 4])?;
        Ok(Self {
            ctx,
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    fn plan(&self, t: usize, n: usize, k: usize, y_f32: bool) -> Result<Plan> {
        let bf = sys::cudaDataType::CUDA_R_16BF;
        let yt = if y_f32 {
            sys::cudaDataType::CUDA_R_32F
        } else {
            bf
        };
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(lt_err)?;
        let trans: i32 = 1; // CUBLAS_OP_T
                            // SAFETY: the attribute buffer is an i32 as cuBLASLt documents for TRANSA.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(lt_err)?;
        let a = lt::create_matrix_layout(bf, k as u64, n as u64, k as i64).map_err(lt_err)?;
        let b = lt::create_matrix_layout(bf, k as u64, t as u64, k as i64).map_err(lt_err)?;
        let c = lt::create_matrix_layout(yt, n as u64, t as u64, n as i64).map_err(lt_err)?;
        let pref = lt::create_matmul_pref().map_err(lt_err)?;
        let ws = WORKSPACE as u64;
        // SAFETY: u64 attribute as documented for MAX_WORKSPACE_BYTES; the descriptors are live.
        let heur = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .and_then(|_| lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref))
        };
        // SAFETY: created above, not used after.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        let heur = heur.map_err(lt_err)?;
        Ok(Plan {
            desc,
            a,
            b,
            c,
            algo: heur.algo,
        })
    }

    /// y = x * w^T for x [T, in] bf16, w [out, in] bf16, y [T, out] bf16 or f32 (shapes checked
    /// by the caller).
    pub fn linear(&self, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<()> {
        let (t, k) = (x.shape()[0], x.shape()[1]);
        let n = w.shape()[0];
        let y_f32 = y.dtype() == DType::F32;
        self.ctx.cuda().bind_to_thread()?;
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let key = (t, n, k, y_f32);
        let p = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(t, n, k, y_f32)?),
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: layouts describe exactly the tensors' extents (checked by the caller), the
        // workspace holds WORKSPACE bytes, and the launch goes to the context's stream.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w.ptr() as *const c_void,
                p.a,
                x.ptr() as *const c_void,
                p.b,
                y.ptr() as *const c_void,
                p.c,
                y.ptr() as *mut c_void,
                p.c,
                &p.algo,
                self.workspace.ptr() as *mut c_void,
                WORKSPACE,
                self.ctx.stream().cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(lt_err)
    }
}

impl Drop for GemmLt {
    fn drop(&mut self) {
        // SAFETY: every descriptor and the handle were created by this value and are not used
        // after drop.
        unsafe {
            for (_, p) in self.plans.lock().unwrap_or_else(|e| e.into_inner()).drain() {
                let _ = lt::destroy_matrix_layout(p.a);
                let _ = lt::destroy_matrix_layout(p.b);
                let _ = lt::destroy_matrix_layout(p.c);
                let _ = lt::destroy_matmul_desc(p.desc);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
