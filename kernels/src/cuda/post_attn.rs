//! The single-row decode step's sub-layer after the attention in one persistent kernel
//! (`post_attn_t1`, kernels/cuda/post_attn.cu): the o projection, the residual add with the MLP's
//! input RMSNorm (`rmsnorm_add2`'s) and gate_up with SiLU * up, bit for bit what
//! `gemv_bf16_t1`, `rmsnorm_add2` and `gemv_bf16_t1_gate` write, in one launch that is resident
//! while the decode attention runs and copies its weights on chip meanwhile
//! ([`Fusion::PostAttn`](super::Fusion::PostAttn), `STRATA_FUSION_OFF=post_attn`).
//!
//! It applies to one row of a model with hidden size = q width = [`PA_K`] (Llama-3.2-1B), on
//! compute 9.0 and newer with programmatic dependent launch on (without it nothing overlaps the
//! attention), outside batch-invariant mode, and not under an MPS share: its grid barrier needs
//! every block resident at once (one per SM), which a share of the SMs cannot promise. Its
//! shared memory (~200 KB: the block's o rows and a ring of 3 gate/up pairs per warp) leaves
//! [`ATTN_ROOM`] for an attention block on the same SM.

use cudarc::driver::sys::{self, CUdevice_attribute};
use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::Result;
use super::launch::{launch, pdl, Arg, Dims};
use super::nvrtc::Program;
use super::tensor::{DTensor, DType};

/// The kernel's name in the GEMV program.
pub const NAME: &str = "post_attn_t1";

/// Hidden size and q width the kernel is built for (`PA_K` in post_attn.cu).
pub const PA_K: usize = 2048;

/// Shared memory left free per SM for a decode attention block beside this kernel's (the
/// register cluster attention takes ~5 KB, plus the 1 KB the driver reserves per block).
const ATTN_ROOM: usize = 16 << 10;

/// Bytes of one staged weight row (and of the attn and h rows).
const ROW: usize = PA_K * 2;

/// Pair slots per warp staged before the PDL wait (`PA_PRE` in post_attn.cu), 8 warps.
const PRE: usize = 2;

/// The inputs and outputs of one launch, all bf16 and one row: attn [1, PA_K], o_w [PA_K, PA_K],
/// y (the previous MLP's output, None in layer 0), resid and y_o [1, PA_K], norm_w [PA_K],
/// gu_w [2 inter, PA_K] (gate rows first), act [1, inter].
pub struct PostAttnArgs<'a> {
    pub attn: &'a DTensor,
    pub o_w: &'a DTensor,
    pub y_o: &'a DTensor,
    pub y: Option<&'a DTensor>,
    pub resid: &'a DTensor,
    pub norm_w: &'a DTensor,
    pub eps: f32,
    pub gu_w: &'a DTensor,
    pub act: &'a DTensor,
}

/// The loaded kernel, its grid barrier's two counters and the first block's entry time (u64),
/// all zero between launches.
pub struct PostAttn {
    f: CudaFunction,
    sms: usize,
    /// Dynamic shared memory a block may take (the opt-in limit less [`ATTN_ROOM`]).
    smem_max: usize,
    ctr: DTensor,
    /// `STRATA_POST_ATTN_PROF=1`: 4 global-timer stamps per block of the latest launch
    /// ([`PostAttn::timeline`]), as pairs of i32.
    prof: Option<DTensor>,
}

impl PostAttn {
    /// The kernel on compute 9.0 and newer outside an MPS share; None elsewhere, or (logged)
    /// where it did not load.
    pub fn load(ctx: &GpuContext) -> Option<Self> {
        let major: u32 = ctx
            .arch()
            .trim_start_matches("sm_")
            .get(..1)?
            .parse()
            .ok()?;
        let mps_share = std::env::var("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
            .is_ok_and(|v| v.trim().parse::<f64>().is_ok_and(|p| p < 100.0));
        if major < 9 || mps_share {
            return None;
        }
        let loaded = (|| -> Result<Self> {
            let f = ctx.decode_function(Program::Gemv, NAME)?;
            ctx.cuda().bind_to_thread()?;
            let optin = ctx.cuda().attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )? as usize;
            let smem_max = optin.saturating_sub(ATTN_ROOM);
            let attr =
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(attr, smem_max as i32)?;
            let ctr = ctx.alloc(DType::I32, &[4])?;
            ctx.memset(&ctr, 0)?;
            let prof = if std::env::var("STRATA_POST_ATTN_PROF").is_ok_and(|v| v == "1") {
                Some(ctx.alloc(DType::I32, &[ctx.sm_count() * 8])?)
            } else {
                None
            };
            Ok(Self {
                f,
                sms: ctx.sm_count(),
                smem_max,
                ctr,
                prof,
            })
        })();
        match loaded {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(
                    "{NAME} not loaded: {e}; the single-row o, norm and gate_up run apart"
                );
                None
            }
        }
    }

    /// A block's dynamic shared memory (post_attn.cu's layout: the attn and h rows, the o
    /// space of at least 16 rows, 8 warps x PRE pair slots), None where it does not fit.
    fn smem(&self) -> Option<usize> {
        let bytes = (2 + PA_K.div_ceil(self.sms).max(16) + 8 * PRE * 2) * ROW;
        (bytes <= self.smem_max).then_some(bytes)
    }

    /// Whether the kernel takes `a` (shapes, alignment, PDL on, the o rows fit).
    pub fn applies(&self, a: &PostAttnArgs<'_>) -> bool {
        let row = |t: &DTensor| t.shape() == [1, PA_K];
        let Some(inter) = a.gu_w.shape().first().map(|n| n / 2) else {
            return false;
        };
        pdl()
            && row(a.attn)
            && row(a.y_o)
            && row(a.resid)
            && a.y.is_none_or(row)
            && a.o_w.shape() == [PA_K, PA_K]
            && a.norm_w.shape() == [PA_K]
            && inter > 0
            && a.gu_w.shape() == [2 * inter, PA_K]
            && a.act.shape() == [1, inter]
            && [a.attn, a.o_w, a.y_o, a.resid, a.norm_w, a.gu_w, a.act]
                .into_iter()
                .chain(a.y)
                .all(|t| t.ptr() % 16 == 0 && t.dtype() == DType::Bf16)
            && self.smem().is_some()
    }

    /// The latest launch's timeline with `STRATA_POST_ATTN_PROF=1` (else None): per block, the
    /// global timer (ns) at entry, when the PDL wait returned, past the grid barrier, at the end.
    pub fn timeline(&self, ctx: &GpuContext) -> Result<Option<Vec<[u64; 4]>>> {
        let Some(p) = &self.prof else {
            return Ok(None);
        };
        let v = ctx.download_i32(p)?;
        let u = |i: usize| (v[2 * i] as u32 as u64) | ((v[2 * i + 1] as u32 as u64) << 32);
        Ok(Some(
            (0..self.sms)
                .map(|b| [u(4 * b), u(4 * b + 1), u(4 * b + 2), u(4 * b + 3)])
                .collect(),
        ))
    }

    /// Launches the kernel on `ctx`'s stream; `Ok(false)` (nothing launched) where
    /// [`PostAttn::applies`] does not hold.
    pub fn run(&self, ctx: &GpuContext, a: &PostAttnArgs<'_>) -> Result<bool> {
        for (n, t) in [
            ("attn", a.attn),
            ("o weight", a.o_w),
            ("y_o", a.y_o),
            ("resid", a.resid),
            ("norm weight", a.norm_w),
            ("gate_up weight", a.gu_w),
            ("act", a.act),
        ]
        .into_iter()
        .chain(a.y.map(|y| ("y", y)))
        {
            ctx.check_device(n, t)?;
        }
        if !self.applies(a) {
            return Ok(false);
        }
        let inter = a.gu_w.shape()[0] / 2;
        let smem = self.smem().expect("applies() checked the layout");
        ctx.cuda().bind_to_thread()?;
        let args = [
            Arg::U64(a.attn.ptr()),
            Arg::U64(a.o_w.ptr()),
            Arg::U64(a.y_o.ptr()),
            Arg::U64(a.y.map_or(0, |y| y.ptr())),
            Arg::U64(a.resid.ptr()),
            Arg::U64(a.norm_w.ptr()),
            Arg::F32(a.eps),
            Arg::U64(a.gu_w.ptr()),
            Arg::U64(a.act.ptr()),
            Arg::I32(PA_K as i32),
            Arg::I32(inter as i32),
            Arg::U64(self.ctr.ptr()),
            Arg::U64(self.prof.as_ref().map_or(0, |p| p.ptr())),
            Arg::I32(3),
        ];
        let dims = Dims {
            grid: (self.sms as u32, 1, 1),
            block: 256,
            smem: smem as u32,
        };
        // SAFETY: applies() checked every shape, dtype and alignment above (one row of PA_K for
        // attn, y, resid and y_o, o_w PA_K x PA_K, norm_w PA_K, gu_w 2 inter x PA_K, act inter);
        // the shared memory holds post_attn.cu's layout (smem()); the counters are
        // this handle's, zero between launches (the kernel's last block resets them), and launches
        // on one stream never overlap.
        unsafe { launch(&self.f, ctx.stream().cu_stream(), dims, &args) }?;
        Ok(true)
    }
}
