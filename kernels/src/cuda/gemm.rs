//! GEMMs: `y = x * w^T` with bf16 operands and f32 accumulation (the Linear layer), through
//! cuBLAS, or for decode-sized x through the GEMV kernels (`gemv_bf16_t1` for one row, x staged
//! in shared memory; `gemv_bf16` for up to `gemv_max_rows` rows),
//! which streams the weights at close to memory bandwidth where cuBLAS reached about half of it
//! on the 4096-wide projections (docs/perf.md, GPU section).
//!
//! Row-major x [T, in], w [out, in] (Hugging Face layout), y [T, out] in bf16 or f32 (logits).
//! cuBLAS is column-major, so the call computes y^T = w * x^T: op(A) = T on w (lda = in),
//! op(B) = N on x (ldb = in), C = y (ldc = out), m = out, n = T, k = in.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;

use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::{ensure, CudaError, Result};
use super::gemm_rows::{RowsForm, RowsKernel, RowsMode};
use super::launch::{launch, Arg, Dims};
use super::nvrtc::Program;
use super::tensor::{DTensor, DType};

/// Which implementation runs a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// The single-row kernel for one row, the GEMV kernel when x has at most `gemv_max_rows`
    /// rows, cuBLAS otherwise.
    Auto,
    /// Always cuBLAS.
    Cublas,
    /// The GEMV kernel (x must have at most 8 rows).
    Gemv,
    /// The single-row GEMV kernel (x in shared memory, 8 loads in flight per lane).
    GemvT1,
    /// The single-row GEMV kernel with 16 loads in flight per lane.
    GemvT1Wide,
    /// The single-row GEMV kernel with two steps of 8 loads in flight per lane (what `Auto`
    /// runs at one row from in = [`GEMV_T1_PIPE_MIN_IN`]).
    GemvT1Pipe,
    /// cuBLASLt with its heuristic's algorithm (see gemm_lt.rs).
    CublasLt,
    /// cuBLASLt with the weight shape's batch-invariant algorithm (what `Auto` runs in
    /// batch-invariant mode; `gemm_det.rs`), or the GEMV fallback where no cuBLASLt
    /// configuration qualifies.
    CublasLtDet,
    /// The batch-invariant fallback itself: `gemv_bf16` over chunks of 8 rows, any row count.
    DetGemv,
    /// The exact few-row kernel (2-8 rows, `gemm_rows.rs`; what `Auto` runs at 2 rows).
    GemvRows,
    /// The mma few-row kernel (2-8 rows, `gemm_rows.rs`; `Auto` runs it only in `RowsMode::Mma`).
    GemvMma,
}

/// Most rows `GemmPath::Auto` sends to cuBLASLt (decode batches).
pub const LT_MAX_ROWS: usize = 64;

/// Longest input row the single-row kernels take (x is staged in 48 KiB of shared memory).
pub const GEMV_T1_MAX_IN: usize = 24 * 1024;

/// Shortest input row `GemmPath::Auto` (and the single-row SiLU GEMV) runs with two steps of
/// loads in flight: a row of 2048 is one step per lane (the second buffer's registers would halve
/// the blocks per SM for nothing), and at 4096 (Llama-3.1-8B qkv, o, gate_up) the plain kernel
/// was as fast or faster alone on the H200 (docs/perf.md); the down projections (8192, 14336)
/// gain.
pub const GEMV_T1_PIPE_MIN_IN: usize = 8192;

/// Most rows the GEMV kernel accepts (GEMV_MAX_T in gemv.cu).
pub const GEMV_MAX_ROWS: usize = 8;
/// Longest input row `GemmPath::Auto` sends to the GEMV kernel.
pub const GEMV_MAX_IN: usize = 8192;

/// True when libcublas can be loaded.
pub fn cublas_present() -> bool {
    // SAFETY: only attempts to dlopen libcublas.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// The model width at which [`QkvInput::Norm`] is staged (one 16-byte chunk per thread). The
/// kernel is exact for any width that is a multiple of 2048 up to 8192, but on the H200 it paid
/// only at 2048 (Llama-3.2-1B step x0.964) and cost at 4096 (Llama-3.1-8B x1.011: each of the
/// 384 blocks re-reads 24 KB and reduces two chunks per thread), docs/perf.md.
pub const NORM_IN_QKV: usize = 2048;

/// The input row of [`Gemm::qkv_rope_t1`]: the normed row itself, or the layer's input RMSNorm
/// staged in the kernel from `y + resid` (`y` None: `resid` alone), bit for bit what
/// `CudaOps::rmsnorm` would write, without updating `resid` (the caller adds `y` in the
/// layer's second norm, `CudaOps::rmsnorm_add2`).
pub enum QkvInput<'a> {
    /// h [1, in].
    Row(&'a DTensor),
    /// rmsnorm(y + resid) * weight, y and resid [1, in], weight [in].
    Norm {
        y: Option<&'a DTensor>,
        resid: &'a DTensor,
        weight: &'a DTensor,
        eps: f32,
    },
}

/// The single-row fusions (all on by default; `gpu bench` times the decode step with each off,
/// side by side, through [`Gemm::set_fusion`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusion {
    /// The SiLU in gate_up's epilogue ([`Gemm::gate_silu`]; off: staged in the down GEMV).
    GateSilu,
    /// RoPE and the K/V write in qkv's epilogue ([`Gemm::qkv_rope_t1`]; off: `rope_kv_write`).
    QkvRope,
    /// The input RMSNorm staged in the qkv GEMV ([`QkvInput::Norm`]; off: `rmsnorm` apart).
    QkvNorm,
    /// The o projection added into the residual in its epilogue and the MLP's input norm staged
    /// in the gate GEMV ([`Gemm::o_norm_gate_t1`]; off: o, `rmsnorm(_add2)`, gate apart).
    GateNorm,
    /// Prefill-sized x: the SiLU in the wgmma gate_up GEMM's epilogue ([`Gemm::gate_silu`],
    /// `gemm_wg.rs`, compute 9.0; off: cuBLAS and `silu_mul`).
    GateGemm,
    /// Prefill-sized x: the residual added in the o and down GEMMs ([`Gemm::linear_acc`],
    /// cuBLAS with beta = 1 into the residual) instead of in the next RMSNorm.
    ResidGemm,
    /// Plans on the wgmma prefill attention: RoPE applied to Q by the attention as it loads it
    /// ([`Gemm::attn_rope`]; off: `rope_kv_write` rotates Q in place, twice its bytes).
    AttnRope,
    /// The greedy pick in the one-row LM head GEMV's epilogue ([`Gemm::head_argmax_t1`]; off:
    /// the GEMV, then `argmax_rows`).
    HeadArgmax,
}

impl Fusion {
    /// The fusion's name in `STRATA_FUSION_OFF` (a comma-separated list turns those off, for
    /// side-by-side serving).
    pub fn name(self) -> &'static str {
        match self {
            Fusion::GateSilu => "gate_silu",
            Fusion::QkvRope => "qkv_rope",
            Fusion::QkvNorm => "qkv_norm",
            Fusion::GateNorm => "gate_norm",
            Fusion::GateGemm => "gate_gemm",
            Fusion::ResidGemm => "resid_gemm",
            Fusion::AttnRope => "attn_rope",
            Fusion::HeadArgmax => "head_argmax",
        }
    }

    /// Every fusion, in [`Gemm::set_fusion`]'s table order.
    pub const ALL: [Fusion; 8] = [
        Fusion::GateSilu,
        Fusion::QkvRope,
        Fusion::QkvNorm,
        Fusion::GateNorm,
        Fusion::GateGemm,
        Fusion::ResidGemm,
        Fusion::AttnRope,
        Fusion::HeadArgmax,
    ];

    /// The fusions of prefill-sized forwards (the others are single-row ones).
    pub fn prefill(self) -> bool {
        matches!(
            self,
            Fusion::GateGemm | Fusion::ResidGemm | Fusion::AttnRope
        )
    }
}

/// The arguments of the several-row GEMV kernels (`gemv_bf16`, `gemv_bf16_rows*` and their gate
/// form): x, w, y, the row count, out, in and whether y is f32.
fn rows_args(x: &DTensor, w: &DTensor, y: &DTensor, t: usize, n_out: usize, k: usize) -> [Arg; 7] {
    [
        Arg::U64(x.ptr()),
        Arg::U64(w.ptr()),
        Arg::U64(y.ptr()),
        Arg::I32(t as i32),
        Arg::I32(n_out as i32),
        Arg::I32(k as i32),
        Arg::I32((y.dtype() == DType::F32) as i32),
    ]
}

/// Launch shape of the single-row GEMV kernels: one warp per output (8 per block of 256), the
/// input row of k bf16 staged in dynamic shared memory.
pub(super) fn t1_dims(n_out: usize, k: usize) -> Dims {
    Dims {
        grid: (n_out.div_ceil(8) as u32, 1, 1),
        block: 256,
        smem: (k * 2) as u32,
    }
}

/// A cuBLAS handle bound to the context's compute stream.
pub struct Gemm {
    ctx: Arc<GpuContext>,
    blas: CudaBlas,
    gemv: CudaFunction,
    gemv_t1: CudaFunction,
    gemv_t1_wide: CudaFunction,
    gemv_t1_silu: CudaFunction,
    gemv_t1_pipe: CudaFunction,
    gemv_t1_silu_pipe: CudaFunction,
    gemv_t1_gate: CudaFunction,
    gemv_t1_gate_pipe: CudaFunction,
    gemv_t1_qkv_rope: CudaFunction,
    gemv_t1_qkv_rope_pipe: CudaFunction,
    tail: super::gemm_tail::TailGemv,
    head: super::gemm_head::HeadGemv,
    rows: super::gemm_rows::FewRows,
    /// Which [`Fusion`]s run, indexed as `Fusion::ALL`.
    fusions: [AtomicBool; Fusion::ALL.len()],
    wg: Option<super::gemm_wg::WgGemm>,
    gemv_max_rows: usize,
    lt: Option<super::gemm_lt::GemmLt>,
    deterministic: bool,
    det_fallback: bool,
}

impl Gemm {
    /// Creates the handle on `ctx`'s compute stream.
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self> {
        if !cublas_present() {
            return Err(CudaError::MissingLibrary("libcublas"));
        }
        let blas = CudaBlas::new(ctx.stream().clone())?;
        let gemv = ctx.function(Program::Gemv, "gemv_bf16")?;
        let gemv_t1 = ctx.function(Program::Gemv, "gemv_bf16_t1")?;
        let gemv_t1_wide = ctx.function(Program::Gemv, "gemv_bf16_t1_wide")?;
        let gemv_t1_silu = ctx.function(Program::Gemv, "gemv_bf16_t1_silu")?;
        let gemv_t1_pipe = ctx.function(Program::Gemv, "gemv_bf16_t1_pipe")?;
        let gemv_t1_silu_pipe = ctx.function(Program::Gemv, "gemv_bf16_t1_silu_pipe")?;
        let gemv_t1_gate = ctx.function(Program::Gemv, "gemv_bf16_t1_gate")?;
        let gemv_t1_gate_pipe = ctx.function(Program::Gemv, "gemv_bf16_t1_gate_pipe")?;
        let gemv_t1_qkv_rope = ctx.function(Program::Gemv, "gemv_bf16_t1_qkv_rope")?;
        let gemv_t1_qkv_rope_pipe = ctx.function(Program::Gemv, "gemv_bf16_t1_qkv_rope_pipe")?;
        let tail = super::gemm_tail::TailGemv::load(&ctx)?;
        let head = super::gemm_head::HeadGemv::load(&ctx)?;
        let rows = super::gemm_rows::FewRows::load(&ctx)?;
        let wg = super::gemm_wg::WgGemm::load(&ctx);
        let lt = match super::gemm_lt::GemmLt::new(ctx.clone()) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::info!(error = %e, "cuBLASLt unavailable; using cuBLAS");
                None
            }
        };
        Ok(Self {
            ctx,
            blas,
            gemv,
            gemv_t1,
            gemv_t1_wide,
            gemv_t1_silu,
            gemv_t1_pipe,
            gemv_t1_silu_pipe,
            gemv_t1_gate,
            gemv_t1_gate_pipe,
            gemv_t1_qkv_rope,
            gemv_t1_qkv_rope_pipe,
            tail,
            head,
            rows,
            fusions: {
                let off = std::env::var("STRATA_FUSION_OFF").unwrap_or_default();
                Fusion::ALL.map(|f| AtomicBool::new(!off.split(',').any(|n| n.trim() == f.name())))
            },
            wg,
            lt,
            gemv_max_rows: 1,
            deterministic: false,
            det_fallback: false,
        })
    }

    /// Batch-invariant mode (`det.rs`): `GemmPath::Auto` runs every row count through the
    /// weight shape's one cuBLASLt algorithm (no GEMV kernels, no split-K), so a row's result does
    /// not depend on how many rows the call has. Fails without cuBLASLt.
    pub fn with_deterministic(mut self, on: bool) -> Result<Self> {
        if on && self.lt.is_none() {
            return Err(CudaError::MissingLibrary(
                "libcublasLt (batch-invariant GEMMs need it)",
            ));
        }
        self.deterministic = on;
        Ok(self)
    }

    /// Batch-invariant mode with the GEMV fallback for every shape instead of cuBLASLt (for
    /// `strata gpu check` and A/B timing; `gemm_det.rs` picks it only where no cuBLASLt
    /// configuration qualifies).
    pub fn with_det_fallback(mut self, on: bool) -> Self {
        self.det_fallback = on;
        self
    }

    /// The GPU this handle runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Whether batch-invariant mode is on.
    pub fn deterministic(&self) -> bool {
        self.deterministic
    }

    /// Largest x row count sent to the GEMV kernel by `GemmPath::Auto` (default 1, at most 8;
    /// 0 sends everything to cuBLAS).
    pub fn with_gemv_max_rows(mut self, rows: usize) -> Self {
        self.gemv_max_rows = rows.min(GEMV_MAX_ROWS);
        self
    }

    /// Which few-row GEMVs (`gemm_rows.rs`) later calls and graph captures run.
    pub fn set_rows_mode(&self, m: RowsMode) {
        self.rows.set_mode(m);
    }

    /// The few-row mode (see [`Gemm::set_rows_mode`]).
    pub fn rows_mode(&self) -> RowsMode {
        self.rows.mode()
    }

    /// The few-row kernel for x of `t` rows of `k` inputs, outside batch-invariant mode.
    fn rows_pick(&self, t: usize, k: usize) -> Option<RowsKernel> {
        (!self.deterministic)
            .then(|| self.rows.pick(t, k))
            .flatten()
    }

    /// Launches few-row kernel `kernel` of `form` for `t` rows over `n_out` outputs (pairs of
    /// weight rows when `paired`).
    ///
    /// # Safety
    /// `args` are the kernel's arguments with every pointer and extent checked by the caller;
    /// x holds `t` rows of k bf16, 16-byte aligned, and `kernel` takes t rows of k
    /// (`FewRows::kernel`).
    unsafe fn launch_rows(
        &self,
        form: &RowsForm,
        kernel: RowsKernel,
        (t, n_out, k): (usize, usize, usize),
        paired: bool,
        args: &[Arg],
    ) -> Result<()> {
        let dims = match kernel {
            RowsKernel::Exact(i) => Dims {
                smem: (super::gemm_rows::ROWS_T[i] * k * 2) as u32,
                ..t1_dims(n_out, k)
            },
            RowsKernel::Mma => {
                let smem = super::gemm_rows::mma_smem(t, k);
                let sms = self.ctx.sm_count();
                Dims {
                    grid: (
                        super::gemm_rows::mma_grid(n_out, paired, smem, k, sms) as u32,
                        1,
                        1,
                    ),
                    block: 256,
                    smem: smem as u32,
                }
            }
        };
        // SAFETY: as the caller guarantees.
        unsafe { launch(form.get(kernel), self.ctx.stream().cu_stream(), dims, args) }
    }

    /// What cuBLASLt's per-shape algorithm timing found so far (empty without cuBLASLt).
    pub fn lt_tuned(&self) -> Vec<super::gemm_lt::Tuned> {
        self.lt.as_ref().map(|l| l.tuned()).unwrap_or_default()
    }

    /// y = x * w^T for x [T, in] bf16, w [out, in] bf16, y [T, out] bf16 or f32.
    pub fn linear(&self, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<()> {
        self.linear_with(x, w, y, GemmPath::Auto)
    }

    /// Launches a single-row GEMV kernel: one warp per output column, 8 per block, the input row
    /// (k bf16) staged in dynamic shared memory.
    ///
    /// # Safety
    /// `x` holds the kernel's input row (k, or 2k for the SiLU variant, bf16, 16-byte aligned),
    /// `w` n_out x k bf16 with 16-byte aligned rows, `y` n_out bf16 or f32, all on this GPU.
    unsafe fn launch_t1(
        &self,
        f: &CudaFunction,
        x: &DTensor,
        w: &DTensor,
        y: &DTensor,
        n_out: usize,
        k: usize,
    ) -> Result<()> {
        let args = [
            Arg::U64(x.ptr()),
            Arg::U64(w.ptr()),
            Arg::U64(y.ptr()),
            Arg::I32(n_out as i32),
            Arg::I32(k as i32),
            Arg::I32((y.dtype() == DType::F32) as i32),
        ];
        // SAFETY: the caller guarantees the pointers and extents (see above).
        unsafe { launch(f, self.ctx.stream().cu_stream(), t1_dims(n_out, k), &args) }
    }

    /// y = silu_mul(gu) * w^T for a single row: gu [1, 2 * in] is the gate_up projection's
    /// output, w [out, in]; the SiLU-mul is applied while x is staged (one kernel instead of
    /// silu_mul + GEMV, same bf16 rounding). `Ok(false)` when the shape does not fit (more than one
    /// row, unaligned, in too long): the caller runs silu_mul and `linear` instead.
    pub fn silu_linear_t1(&self, gu: &DTensor, w: &DTensor, y: &DTensor) -> Result<bool> {
        for (n, t) in [("gu", gu), ("w", w), ("y", y)] {
            self.ctx.check_device(n, t)?;
        }
        ensure(gu.shape().len() == 2 && w.shape().len() == 2, || {
            "gu [T, 2*in] and w [out, in] expected".into()
        })?;
        let (t, k, n_out) = (gu.shape()[0], w.shape()[1], w.shape()[0]);
        if self.deterministic
            || t != 1
            || k % 8 != 0
            || k > GEMV_T1_MAX_IN
            || gu.ptr() % 16 != 0
            || w.ptr() % 16 != 0
        {
            return Ok(false);
        }
        gu.expect("gu", DType::Bf16, &[1, 2 * k])?;
        w.expect("w", DType::Bf16, &[n_out, k])?;
        ensure(y.shape() == [1, n_out], || {
            format!("y: expected [1, {n_out}], got {:?}", y.shape())
        })?;
        ensure(matches!(y.dtype(), DType::Bf16 | DType::F32), || {
            format!("y: bf16 or f32, got {:?}", y.dtype())
        })?;
        self.ctx.cuda().bind_to_thread()?;
        // SAFETY: shapes, dtypes and alignment checked above; gu holds 2k and w n_out x k bf16.
        let f = if k >= GEMV_T1_PIPE_MIN_IN {
            &self.gemv_t1_silu_pipe
        } else {
            &self.gemv_t1_silu
        };
        unsafe { self.launch_t1(f, gu, w, y, n_out, k) }?;
        Ok(true)
    }

    /// Whether [`Gemm::gate_silu`] runs for x [T, in] and the gate_up weight w [2 * inter,
    /// in], outside batch-invariant mode: one row (or a few-row kernel's count), aligned, in
    /// short enough to stage; or prefill-sized x on the wgmma GEMM (compute 9.0).
    pub fn gate_silu_applies(&self, x: &DTensor, w: &DTensor) -> bool {
        self.gate_wg_applies(x, w) || self.gate_silu_rows_apply(x, w)
    }

    /// Whether the wgmma gate_up GEMM runs (`gemm_wg.rs`: compute 9.0, loaded, not
    /// batch-invariant mode) for x of at least [`super::gemm_wg::GATE_WG_MIN_ROWS`] rows.
    pub fn has_wg_gemm(&self) -> bool {
        self.wg.is_some() && !self.deterministic
    }

    fn gate_wg_applies(&self, x: &DTensor, w: &DTensor) -> bool {
        self.has_wg_gemm() && self.fused(Fusion::GateGemm) && super::gemm_wg::WgGemm::applies(x, w)
    }

    fn gate_silu_rows_apply(&self, x: &DTensor, w: &DTensor) -> bool {
        let k = w.shape().get(1).copied().unwrap_or(0);
        self.fused(Fusion::GateSilu)
            && !self.deterministic
            && matches!(x.shape().first(), Some(&t) if t == 1 || self.rows_pick(t, k).is_some())
            && w.shape().len() == 2
            && w.shape()[0] % 2 == 0
            && k % 8 == 0
            && k <= GEMV_T1_MAX_IN
            && x.ptr() % 16 == 0
            && w.ptr() % 16 == 0
    }

    /// act = silu(x * gate^T) * (x * up^T): w [2 * inter, in] is the gate_up weight (gate rows
    /// first), act [T, inter] bf16, the down projection's input. One kernel instead of the
    /// gate_up GEMM + silu_mul: for one or a few rows the GEMV family's, bit for bit the same
    /// result; for prefill-sized x the wgmma GEMM (`gemm_wg.rs`; gate and up rounded to bf16
    /// before the SiLU as silu_mul sees them, the sums in its own order). `Ok(false)` when
    /// [`Gemm::gate_silu_applies`] does not hold: the caller runs `linear` and silu_mul instead.
    pub fn gate_silu(&self, x: &DTensor, w: &DTensor, act: &DTensor) -> Result<bool> {
        for (n, t) in [("x", x), ("w", w), ("act", act)] {
            self.ctx.check_device(n, t)?;
        }
        if !self.gate_silu_applies(x, w) {
            return Ok(false);
        }
        let (inter, k) = (w.shape()[0] / 2, w.shape()[1]);
        let t = x.shape()[0];
        x.expect("x", DType::Bf16, &[t, k])?;
        w.expect("w", DType::Bf16, &[2 * inter, k])?;
        act.expect("act", DType::Bf16, &[t, inter])?;
        self.ctx.cuda().bind_to_thread()?;
        if let (true, Some(g)) = (self.gate_wg_applies(x, w), &self.wg) {
            // SAFETY: applies() and the checks above: x t x k, w 2 inter x k, act t x inter
            // bf16 on this GPU.
            unsafe { g.launch(self.ctx.stream().cu_stream(), x, w, act) }?;
            return Ok(true);
        }
        if let Some(kern) = self.rows_pick(t, k) {
            let args = rows_args(x, w, act, t, inter, k);
            // SAFETY: shapes, dtypes and alignment checked above: x t x k, w 2 * inter x k, act
            // t x inter bf16; the kernel stages the t rows it was picked for and writes t rows
            // of act.
            unsafe { self.launch_rows(&self.rows.gate, kern, (t, inter, k), true, &args) }?;
            return Ok(true);
        }
        let f = if k >= GEMV_T1_PIPE_MIN_IN {
            &self.gemv_t1_gate_pipe
        } else {
            &self.gemv_t1_gate
        };
        // SAFETY: shapes, dtypes and alignment checked above: x holds k, w 2 * inter x k, act
        // inter bf16 (the kernel's output count is inter, its up rows start at row inter).
        unsafe { self.launch_t1(f, x, w, act, inter, k) }?;
        Ok(true)
    }

    /// The single-row qkv projection with RoPE and the K/V pool write in its epilogue (one
    /// kernel instead of the GEMV + `rope_kv_write`, bit for bit the same qkv row and pool rows):
    /// x [1, in], w [(nq + 2 nk) * hd, in] (q, k, v heads), qkv [1, (nq + 2 nk) * hd] bf16, the
    /// rest as [`CudaOps::rope_kv_write`] with q at column 0 and k, v right after. `Ok(false)`
    /// when it does not apply (more than one row, batch-invariant mode, unaligned, in too
    /// long, turned off): the caller runs `linear` and `rope_kv_write` instead.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope_t1(
        &self,
        ops: &super::ops::CudaOps,
        input: &QkvInput<'_>,
        w: &DTensor,
        qkv: &DTensor,
        (nq, nk, hd): (usize, usize, usize),
        pos: &DTensor,
        inv_freq: &DTensor,
        (k_pool, v_pool): (&DTensor, &DTensor),
        slots: &DTensor,
        host_slots: &[i32],
    ) -> Result<bool> {
        let k = w.shape().get(1).copied().unwrap_or(0);
        let width = (nq + 2 * nk) * hd;
        // The kernel's x (None: the staged norm without a residual add), the residual and the
        // norm weight and epsilon of a staged norm.
        let (x, norm) = match *input {
            QkvInput::Row(x) => (Some(x), None),
            QkvInput::Norm {
                y,
                resid,
                weight,
                eps,
            } => (y, Some((resid, weight, eps))),
        };
        let rows = [x, norm.map(|(r, _, _)| r)];
        // One row, or a few through the few-row kernel when it is on.
        let t = qkv.shape().first().copied().unwrap_or(0);
        let few = self.rows_pick(t, k);
        if !self.fused(Fusion::QkvRope)
            || self.deterministic
            || (t != 1 && few.is_none())
            || rows
                .iter()
                .flatten()
                .any(|r| r.shape().first() != Some(&t) || r.ptr() % 16 != 0)
            || k % 8 != 0
            || k > GEMV_T1_MAX_IN
            || w.ptr() % 16 != 0
            || hd % 2 != 0
            || (norm.is_some() && (!self.fused(Fusion::QkvNorm) || k != NORM_IN_QKV))
        {
            return Ok(false);
        }
        for r in rows.iter().flatten() {
            self.ctx.check_device("x", r)?;
            r.expect("x", DType::Bf16, &[t, k])?;
        }
        self.ctx.check_device("w", w)?;
        w.expect("w", DType::Bf16, &[width, k])?;
        if let Some((_, nw, _)) = norm {
            self.ctx.check_device("norm weight", nw)?;
            nw.expect("norm weight", DType::Bf16, &[k])?;
            ensure(nw.ptr() % 16 == 0, || "norm weight: 16-byte aligned".into())?;
        }
        ops.rope_checks(qkv, 0, nq, nq * hd, nk, hd, pos, inv_freq)?;
        let kv_dim = ops.kv_checks(
            qkv,
            nq * hd,
            (nq + nk) * hd,
            k_pool,
            v_pool,
            slots,
            host_slots,
        )?;
        ensure(kv_dim == nk * hd && qkv.shape() == [t, width], || {
            format!("qkv [{t}, {width}] and pool rows of {} expected", nk * hd)
        })?;
        self.ctx.cuda().bind_to_thread()?;
        let pairs = width / 2;
        let f = if k >= GEMV_T1_PIPE_MIN_IN {
            &self.gemv_t1_qkv_rope_pipe
        } else {
            &self.gemv_t1_qkv_rope
        };
        let i = |v: usize| Arg::I32(v as i32);
        // The few-row kernels take the row count after qkv; otherwise the arguments are the same
        // (gathered on the stack: this runs once per layer and forward).
        let mut buf = [Arg::I32(0); 17];
        let mut n = 0;
        for a in [
            Arg::U64(x.map_or(0, |x| x.ptr())),
            Arg::U64(w.ptr()),
            Arg::U64(qkv.ptr()),
        ]
        .into_iter()
        .chain(few.map(|_| i(t)))
        .chain([
            i(pairs),
            i(k),
            i(nq),
            i(nk),
            i(hd),
            Arg::U64(pos.ptr()),
            Arg::U64(inv_freq.ptr()),
            Arg::U64(k_pool.ptr()),
            Arg::U64(v_pool.ptr()),
            Arg::U64(slots.ptr()),
            Arg::U64(norm.map_or(0, |(r, _, _)| r.ptr())),
            Arg::U64(norm.map_or(0, |(_, nw, _)| nw.ptr())),
            Arg::F32(norm.map_or(0.0, |(_, _, e)| e)),
        ]) {
            buf[n] = a;
            n += 1;
        }
        let args = &buf[..n];
        if let Some(ri) = few {
            // SAFETY: as the single-row launch below, for t rows: x (or y and resid) t rows of
            // k, qkv t rows of width, pos and slots t i32 each (rope_checks / kv_checks), every
            // host slot in range; row r writes qkv row r and its slot's pool rows.
            unsafe { self.launch_rows(&self.rows.qkv_rope, ri, (t, pairs, k), true, args) }?;
            return Ok(true);
        }
        // SAFETY: shapes, dtypes and alignment checked above (x, or y and resid, one row of k
        // bf16 and the norm weight k bf16 with k == NORM_IN_QKV; w width x k,
        // qkv one row of width, pools [slots, nk * hd] with every host slot in range, pos and
        // slots one i32 each, inv_freq hd / 2 f32); warp j < pairs writes qkv columns c and
        // c + hd / 2 of its pair and, for k / v heads, the same columns of the slot's pool row.
        unsafe { launch(f, self.ctx.stream().cu_stream(), t1_dims(pairs, k), args) }?;
        Ok(true)
    }

    /// resid += (add) + attn * o^T, then act = silu(gate) * up of rmsnorm(resid) * weight, in
    /// two kernels (`gemm_tail.rs`): bit for bit what o into its own row, `rmsnorm_add2` (or
    /// `rmsnorm` without `add`) and [`Gemm::gate_silu`] leave in resid and act. `Ok(false)`
    /// where it does not apply (more than one row, batch-invariant mode, hidden other than
    /// [`NORM_IN_QKV`], unaligned, turned off): the caller runs those three instead.
    pub fn o_norm_gate_t1(
        &self,
        attn: &DTensor,
        o: &DTensor,
        norm: &super::gemm_tail::PostNorm<'_>,
        gate_up: &DTensor,
        act: &DTensor,
    ) -> Result<bool> {
        if !self.fused(Fusion::GateNorm) || !self.gate_silu_applies(norm.resid, gate_up) {
            return Ok(false);
        }
        self.tail.run(&self.ctx, attn, o, norm, gate_up, act)
    }

    /// logits = h * head^T and token = the logits' argmax (lowest index on ties) for one row, in
    /// one kernel (`gemm_head.rs`): bit for bit what `linear` and `CudaOps::argmax_rows` leave.
    /// `Ok(false)` where it does not apply (more than one row, batch-invariant mode, the single-row
    /// GEMV off or not fitting, turned off): the caller runs those two instead.
    /// The token also goes where `out` says (`gemm_head::PickOut`) when it runs.
    pub fn head_argmax_t1(
        &self,
        h: &DTensor,
        head: &DTensor,
        logits: &DTensor,
        token: &DTensor,
        out: super::gemm_head::PickOut,
    ) -> Result<bool> {
        if !self.fused(Fusion::HeadArgmax) || self.deterministic || self.gemv_max_rows == 0 {
            return Ok(false);
        }
        self.head.run(&self.ctx, h, head, logits, token, out)
    }

    /// Turns a single-row fusion on or off (on by default; for side-by-side timing).
    pub fn set_fusion(&self, f: Fusion, on: bool) {
        self.fusions[f as usize].store(on, Ordering::Relaxed);
    }

    fn fused(&self, f: Fusion) -> bool {
        self.fusions[f as usize].load(Ordering::Relaxed)
    }

    /// True when a forward leaves Q's RoPE to `plan`'s attention
    /// ([`CudaOps::paged_attention_rope`], [`Fusion::AttnRope`]): its `rope_kv_write` then
    /// rotates and writes K alone. The same bits either way.
    pub fn attn_rope(&self, plan: &super::AttnPlan) -> bool {
        self.fused(Fusion::AttnRope) && plan.rotates_q()
    }

    /// `linear` with an explicit implementation choice.
    pub fn linear_with(&self, x: &DTensor, w: &DTensor, y: &DTensor, path: GemmPath) -> Result<()> {
        let (t, k, n_out) = self.operands(x, w, y)?;
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
        let gemv_ok = t <= GEMV_MAX_ROWS && k % 8 == 0 && x.ptr() % 16 == 0 && w.ptr() % 16 == 0;
        // Auto's choices, measured on H100 (docs/perf.md, GPU section): the single-row kernel beats
        // cuBLAS and gemv_bf16 on every Llama-3-8B projection and the LM head at batch 1;
        // gemv_bf16 for the few-row batches it is enabled for (up to in = 8192); cuBLASLt's
        // heuristic matched or beat cuBLAS on every decode shape at 32 rows (up to 8 % on the o
        // projection); prefill sizes stay on cuBLAS (not measured with cuBLASLt).
        let few = if gemv_ok && path == GemmPath::Auto && t > 1 {
            self.rows_pick(t, k)
        } else {
            None
        };
        let path = match path {
            GemmPath::Auto if self.deterministic => GemmPath::CublasLtDet,
            GemmPath::Auto
                if self.gemv_max_rows >= 1 && gemv_ok && t == 1 && k <= GEMV_T1_MAX_IN =>
            {
                if k >= GEMV_T1_PIPE_MIN_IN {
                    GemmPath::GemvT1Pipe
                } else {
                    GemmPath::GemvT1
                }
            }
            GemmPath::Auto if matches!(few, Some(RowsKernel::Exact(_))) => GemmPath::GemvRows,
            GemmPath::Auto if few == Some(RowsKernel::Mma) => GemmPath::GemvMma,
            GemmPath::Auto if gemv_ok && t <= self.gemv_max_rows && k <= GEMV_MAX_IN => {
                GemmPath::Gemv
            }
            GemmPath::Auto if t > self.gemv_max_rows && t <= LT_MAX_ROWS && self.lt.is_some() => {
                GemmPath::CublasLt
            }
            GemmPath::Auto => GemmPath::Cublas,
            p => p,
        };
        self.ctx.cuda().bind_to_thread()?;
        if path == GemmPath::CublasLtDet && !self.det_fallback {
            let ran = match &self.lt {
                Some(lt) => lt.linear_det(x, w, y)?,
                None => return Err(CudaError::MissingLibrary("libcublasLt")),
            };
            if ran {
                return Ok(());
            }
        }
        if matches!(path, GemmPath::CublasLtDet | GemmPath::DetGemv) {
            ensure(k % 8 == 0 && x.ptr() % 16 == 0 && w.ptr() % 16 == 0, || {
                format!(
                    "batch-invariant GEMV fallback needs in % 8 == 0 and 16-byte aligned rows \
                     (out {n_out}, in {k})"
                )
            })?;
            return self.gemv_rows(x, w, y, t, n_out, k);
        }
        if path == GemmPath::CublasLt {
            return match &self.lt {
                Some(lt) => lt.linear(x, w, y),
                None => Err(CudaError::MissingLibrary("libcublasLt")),
            };
        }
        if matches!(
            path,
            GemmPath::GemvT1 | GemmPath::GemvT1Wide | GemmPath::GemvT1Pipe
        ) {
            ensure(gemv_ok && t == 1 && k <= GEMV_T1_MAX_IN, || {
                format!("single-row GEMV needs 1 row and in % 8 == 0, in <= {GEMV_T1_MAX_IN}")
            })?;
            let f = match path {
                GemmPath::GemvT1 => &self.gemv_t1,
                GemmPath::GemvT1Pipe => &self.gemv_t1_pipe,
                _ => &self.gemv_t1_wide,
            };
            // SAFETY: shapes and dtypes checked above; one row of x (k <= GEMV_T1_MAX_IN bf16 in
            // shared memory), 16-byte aligned rows.
            return unsafe { self.launch_t1(f, x, w, y, n_out, k) };
        }
        if matches!(path, GemmPath::GemvRows | GemmPath::GemvMma) {
            let family = match path {
                GemmPath::GemvRows => RowsKernel::Exact(0),
                _ => RowsKernel::Mma,
            };
            let kern = self.rows.kernel(family, t, k).filter(|_| gemv_ok);
            ensure(kern.is_some(), || {
                format!("{path:?}: few-row GEMV needs 2-8 aligned rows of in % 8 == 0 (mma: in % 32 == 0) in shared memory (T {t}, in {k})")
            })?;
            let args = rows_args(x, w, y, t, n_out, k);
            // SAFETY: shapes and dtypes checked above (x [t, k], w [n_out, k], y [t, n_out]),
            // 16-byte aligned rows, t rows of k staged in the kernel's shared memory (kernel()).
            return unsafe {
                self.launch_rows(
                    &self.rows.plain,
                    kern.expect("checked"),
                    (t, n_out, k),
                    false,
                    &args,
                )
            };
        }
        if path == GemmPath::Gemv {
            ensure(gemv_ok, || {
                format!("GEMV needs <= {GEMV_MAX_ROWS} rows and in % 8 == 0")
            })?;
            return self.gemv_rows(x, w, y, t, n_out, k);
        }
        self.cublas(x, w, y, c_type, 0.0)
    }

    /// Whether [`Gemm::linear_acc`] runs for x of `t` rows: prefill-sized x, which `linear`
    /// sends to cuBLAS, outside batch-invariant mode, with [`Fusion::ResidGemm`] on.
    pub fn acc_applies(&self, t: usize) -> bool {
        self.fused(Fusion::ResidGemm)
            && !self.deterministic
            && t > self.gemv_max_rows
            && (t > LT_MAX_ROWS || self.lt.is_none())
    }

    /// y += x * w^T for x [T, in] bf16, w [out, in] bf16, y [T, out] bf16, rounded once (cuBLAS
    /// with beta = 1: the f32 product plus y, then bf16): the residual add of the o and down
    /// projections inside their GEMMs. Only where [`Gemm::acc_applies`].
    pub fn linear_acc(&self, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<()> {
        let (t, _, n_out) = self.operands(x, w, y)?;
        ensure(self.acc_applies(t), || {
            format!("linear_acc: not for {t} rows here")
        })?;
        y.expect("y", DType::Bf16, &[t, n_out])?;
        self.ctx.cuda().bind_to_thread()?;
        self.cublas(x, w, y, cudaDataType::CUDA_R_16BF, 1.0)
    }

    /// `linear` (acc false) or `linear_acc` (acc true: y += x * w^T).
    pub fn linear_into(&self, x: &DTensor, w: &DTensor, y: &DTensor, acc: bool) -> Result<()> {
        if acc {
            self.linear_acc(x, w, y)
        } else {
            self.linear(x, w, y)
        }
    }

    /// Checks a GEMM's operands (all on this GPU, x [T, in] and w [out, in] bf16); (T, in, out).
    fn operands(&self, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<(usize, usize, usize)> {
        for (n, t) in [("x", x), ("w", w), ("y", y)] {
            self.ctx.check_device(n, t)?;
        }
        ensure(x.shape().len() == 2 && w.shape().len() == 2, || {
            "x [T, in] and w [out, in] expected".into()
        })?;
        let (t, k, n_out) = (x.shape()[0], x.shape()[1], w.shape()[0]);
        x.expect("x", DType::Bf16, &[t, k])?;
        w.expect("w", DType::Bf16, &[n_out, k])?;
        Ok((t, k, n_out))
    }

    /// cuBLAS y = x * w^T + beta * y (shapes checked by the caller).
    fn cublas(
        &self,
        x: &DTensor,
        w: &DTensor,
        y: &DTensor,
        c_type: cudaDataType,
        beta: f32,
    ) -> Result<()> {
        let (t, k, n_out) = (x.shape()[0], x.shape()[1], w.shape()[0]);
        let alpha = 1.0f32;
        // SAFETY: the callers checked the shapes: w holds out*in, x holds T*in, y holds T*out
        // elements of the stated types; alpha/beta are f32 as CUBLAS_COMPUTE_32F requires; y is
        // both C and D (in place, the same layout).
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

    /// `gemv_bf16` over row chunks of [`GEMV_MAX_ROWS`] (grid y): one warp per output column and
    /// chunk. Each output element is the same fixed-order sum whatever the chunk's other rows,
    /// so the result is batch-invariant by construction (the batch-invariant fallback).
    fn gemv_rows(
        &self,
        x: &DTensor,
        w: &DTensor,
        y: &DTensor,
        t: usize,
        n_out: usize,
        k: usize,
    ) -> Result<()> {
        let args = rows_args(x, w, y, t, n_out, k);
        let dims = Dims {
            grid: (
                (n_out * 32).div_ceil(256) as u32,
                t.div_ceil(GEMV_MAX_ROWS) as u32,
                1,
            ),
            block: 256,
            smem: 0,
        };
        // SAFETY: the caller checked shapes and dtypes (x [t, k], w [n_out, k] bf16, y [t, n_out]
        // bf16 or f32), k % 8 == 0 and 16-byte aligned rows; each block reads at most
        // GEMV_MAX_ROWS rows of x starting at its chunk and writes only those rows of y.
        unsafe { launch(&self.gemv, self.ctx.stream().cu_stream(), dims, &args) }
    }
}
