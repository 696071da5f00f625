//! cuBLASLt for the Linear layer: the same `y = x * w^T` as `gemm.rs`'s cuBLAS call, with a
//! 32 MiB workspace (split-K and stream-K kernels need one). Used where it measured faster
//! (`GemmPath::CublasLt`; docs/perf.md, GPU section).
//!
//! Algorithm choice per (rows, out, in, y dtype), made once and cached: cuBLASLt's heuristic
//! proposes up to [`CANDIDATES`] algorithms and, on the first call of a shape outside a graph
//! capture, each is timed on the call's own tensors (CUDA events, one warm-up and [`REPS`] runs)
//! and the fastest kept. Decode GEMMs are skinny (2-64 rows): the heuristic's first pick often
//! leaves SMs idle (too few output tiles) where a split-K candidate fills the GPU. Inside a
//! capture (no timing possible) the heuristic's first pick is used. `STRATA_LT_TUNE=0` disables
//! the timing. Winners go to the machine-wide table of [`super::lt_table`]: the first process to
//! tune a shape fixes it for every later process on the same GPU model, driver and library, so
//! two servers compute the same bf16 bits for the same input.
//!
//! Batch-invariant mode (one algorithm per weight shape for every row count) is `gemm_det.rs`,
//! on the same handle and workspace.
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
use super::lt_table::LtTable;
use super::tensor::{DTensor, DType};

/// Bytes of the preallocated workspace every algorithm runs with (also the batch-invariant
/// ones: `gemm_det.rs`).
pub(super) const WORKSPACE: usize = 32 << 20;
/// Heuristic candidates timed per shape.
pub const CANDIDATES: usize = 16;
/// Timed runs per candidate.
const REPS: usize = 5;
/// True when libcublasLt can be loaded.
pub fn cublaslt_present() -> bool {
    // SAFETY: only attempts to dlopen libcublasLt.
    unsafe { sys::is_culib_present() }
}

pub(super) fn lt_err(e: lt::CublasError) -> CudaError {
    CudaError::CublasLt(e)
}

/// The matmul descriptor and matrix layouts of one problem shape (destroyed on drop).
pub(super) struct Descs {
    pub(super) desc: sys::cublasLtMatmulDesc_t,
    pub(super) a: sys::cublasLtMatrixLayout_t,
    pub(super) b: sys::cublasLtMatrixLayout_t,
    pub(super) c: sys::cublasLtMatrixLayout_t,
}

impl Descs {
    /// y [t, n] = x [t, k] * w [n, k]^T in cuBLASLt's column-major terms.
    pub(super) fn new(t: usize, n: usize, k: usize, y_f32: bool) -> Result<Self> {
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
        let mut d = Descs {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
        };
        let trans: i32 = 1; // CUBLAS_OP_T
                            // SAFETY: the attribute buffer is an i32 as cuBLASLt documents for TRANSA.
        unsafe {
            lt::set_matmul_desc_attribute(
                d.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(lt_err)?;
        d.a = lt::create_matrix_layout(bf, k as u64, n as u64, k as i64).map_err(lt_err)?;
        d.b = lt::create_matrix_layout(bf, k as u64, t as u64, k as i64).map_err(lt_err)?;
        d.c = lt::create_matrix_layout(yt, n as u64, t as u64, n as i64).map_err(lt_err)?;
        Ok(d)
    }
}

impl Drop for Descs {
    fn drop(&mut self) {
        // SAFETY: created by `Descs::new` (null where creation did not get that far) and not
        // used after drop.
        unsafe {
            for l in [self.a, self.b, self.c] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// The descriptors and chosen algorithm of one problem shape.
pub(super) struct Plan {
    pub(super) d: Descs,
    pub(super) algo: sys::cublasLtMatmulAlgo_t,
}

/// What tuning found for one shape: the heuristic's first pick and the fastest candidate.
#[derive(Clone, Debug)]
pub struct Tuned {
    /// (rows, out, in).
    pub shape: (usize, usize, usize),
    /// Candidates that ran.
    pub candidates: usize,
    /// Microseconds per call of the heuristic's first pick.
    pub heuristic_us: f64,
    /// Microseconds per call of the chosen algorithm.
    pub best_us: f64,
}

/// A cuBLASLt handle with its workspace and per-shape plans.
pub struct GemmLt {
    pub(super) ctx: Arc<GpuContext>,
    pub(super) handle: sys::cublasLtHandle_t,
    workspace: DTensor,
    plans: Mutex<HashMap<(usize, usize, usize, bool), Plan>>,
    pub(super) det_plans: Mutex<HashMap<(usize, usize, usize, bool), Plan>>,
    pub(super) det_algos: Mutex<HashMap<(usize, usize, bool), super::gemm_det::DetChoice>>,
    pub(super) tuned: Mutex<Vec<Tuned>>,
    pub(super) tune: bool,
    pub(super) table: LtTable,
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
        // SAFETY: a plain query of the loaded library.
        let version = unsafe { sys::cublasLtGetVersion() };
        let key = format!("{}-driver{}-lt{version}", ctx.name(), ctx.driver());
        let table = LtTable::open(super::nvrtc::cache_dir(), &key);
        Ok(Self {
            table,
            ctx,
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
            det_plans: Mutex::new(HashMap::new()),
            det_algos: Mutex::new(HashMap::new()),
            tuned: Mutex::new(Vec::new()),
            tune: !std::env::var("STRATA_LT_TUNE").is_ok_and(|v| v == "0"),
        })
    }

    /// Shapes tuned so far, in order.
    pub fn tuned(&self) -> Vec<Tuned> {
        self.tuned.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The heuristic's candidates for `d` (at most `max`) with `workspace` bytes allowed;
    /// `none_only`: only algorithms whose reduction scheme is none (no split-K reduction).
    pub(super) fn heuristic(
        &self,
        d: &Descs,
        workspace: u64,
        max: usize,
        none_only: bool,
    ) -> Result<Vec<sys::cublasLtMatmulHeuristicResult_t>> {
        let pref = lt::create_matmul_pref().map_err(lt_err)?;
        let mut found: Vec<sys::cublasLtMatmulHeuristicResult_t> = Vec::with_capacity(max);
        let mut count: i32 = 0;
        let mask: u32 = 0; // CUBLASLT_REDUCTION_SCHEME_NONE
                           // SAFETY: u64 attribute as documented for MAX_WORKSPACE_BYTES, u32 for the reduction
                           // scheme mask; the descriptors are live; `found` has room for `max` results and cuBLASLt
                           // writes `count` <= `max`.
        let heur = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .and_then(|_| {
                if !none_only {
                    return Ok(());
                }
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                    &mask as *const u32 as *const c_void,
                    std::mem::size_of::<u32>(),
                )
            })
            .and_then(|_| {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    d.desc,
                    d.a,
                    d.b,
                    d.c,
                    d.c,
                    pref,
                    max as i32,
                    found.as_mut_ptr(),
                    &mut count,
                )
                .result()
            })
        };
        // SAFETY: created above, not used after.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        heur.map_err(lt_err)?;
        // SAFETY: cuBLASLt initialised the first `count` results.
        unsafe { found.set_len(count.clamp(0, max as i32) as usize) };
        Ok(found)
    }

    /// `cublasLtMatmulAlgoCheck`: the workspace `algo` needs for problem `d`, or the status
    /// that refused it.
    pub(super) fn check(
        &self,
        d: &Descs,
        algo: &sys::cublasLtMatmulAlgo_t,
    ) -> std::result::Result<usize, sys::cublasStatus_t> {
        // SAFETY: all-zero is a valid bit pattern for this plain C result struct.
        let mut r: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
        // SAFETY: live descriptors and algorithm; `r` is written by the call.
        let st = unsafe {
            sys::cublasLtMatmulAlgoCheck(self.handle, d.desc, d.a, d.b, d.c, d.c, algo, &mut r)
        };
        match st {
            sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(r.workspaceSize),
            e => Err(e),
        }
    }

    fn plan(&self, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<Plan> {
        let (t, k) = (x.shape()[0], x.shape()[1]);
        let n = w.shape()[0];
        let y_f32 = y.dtype() == DType::F32;
        let d = Descs::new(t, n, k, y_f32)?;
        let found = self.heuristic(&d, WORKSPACE as u64, CANDIDATES, false)?;
        if found.is_empty() {
            return Err(lt_err(lt::CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            )));
        }
        let mut plan = Plan {
            d,
            algo: found[0].algo,
        };
        let capturing = !matches!(
            self.ctx.stream().capture_status(),
            Ok(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        );
        let key = (t, n, k, y_f32);
        let known = self.table.get(key).filter(|&i| i < found.len());
        if let (true, Some(i)) = (self.tune, known) {
            // Tuned before, here or by another process on this machine.
            plan.algo = found[i].algo;
        } else if self.tune && !capturing && found.len() > 1 {
            let mut times = Vec::with_capacity(found.len());
            for r in &found {
                plan.algo = r.algo;
                times.push(self.time(&plan, x, w, y).unwrap_or(f64::INFINITY));
            }
            let best = (0..times.len())
                .min_by(|&i, &j| times[i].total_cmp(&times[j]))
                .unwrap_or(0);
            let best = if times[best].is_finite() { best } else { 0 };
            let pick = self.table.record(key, best);
            plan.algo = found[if pick < found.len() { pick } else { best }].algo;
            self.tuned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Tuned {
                    shape: (t, n, k),
                    candidates: times.iter().filter(|t| t.is_finite()).count(),
                    heuristic_us: times[0],
                    best_us: times[best],
                });
        }
        Ok(plan)
    }

    /// Microseconds per call of `p` on these tensors (one warm-up, then [`REPS`] timed calls).
    pub(super) fn time(&self, p: &Plan, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<f64> {
        let stream = self.ctx.stream();
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        self.run(p, x, w, y)?;
        let start = stream.record_event(timing)?;
        for _ in 0..REPS {
            self.run(p, x, w, y)?;
        }
        let end = stream.record_event(timing)?;
        Ok(start.elapsed_ms(&end)? as f64 * 1e3 / REPS as f64)
    }

    pub(super) fn run(&self, p: &Plan, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: layouts describe exactly the tensors' extents (checked by the caller), the
        // workspace holds WORKSPACE bytes, and the launch goes to the context's stream.
        unsafe {
            lt::matmul(
                self.handle,
                p.d.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w.ptr() as *const c_void,
                p.d.a,
                x.ptr() as *const c_void,
                p.d.b,
                y.ptr() as *const c_void,
                p.d.c,
                y.ptr() as *mut c_void,
                p.d.c,
                &p.algo,
                self.workspace.ptr() as *mut c_void,
                WORKSPACE,
                self.ctx.stream().cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(lt_err)
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
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(x, w, y)?),
        };
        self.run(p, x, w, y)
    }
}

impl Drop for GemmLt {
    fn drop(&mut self) {
        // Plans destroy their descriptors; the handle goes last.
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.det_plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // SAFETY: the handle was created by this value and is not used after drop.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
