//! The batch-1 decode layer's input norm, qkv projection (RoPE and the K/V pool write included)
//! and decode attention in one kernel (`qkv_attention.cu`, [`Fusion::QkvAttn`]): one cluster of
//! 16 blocks per KV group, each streaming its share of the group's qkv rows, exchanging the
//! sums through distributed shared memory and running the register cluster attention on its
//! share of the keys. It replaces the staged qkv GEMV ([`Gemm::qkv_rope_t1`]) and the attention
//! of a one-row register cluster plan, bit for bit (`gpu check --only qkv_attn`), and takes one
//! kernel boundary and q's round trip through L2 off every layer of the batch-1 chain. Built
//! for the Llama-3.2-1B shape only (hidden 2048, groups of 4 heads of 64 dims), where the
//! batch-1 step is furthest above the weight floor.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::{ensure, Result};
use super::gemm::{Fusion, Gemm, QkvInput, NORM_IN_QKV};
use super::launch::{Arg, Dims};
use super::nvrtc::Program;
use super::ops::{active_clusters, CudaOps};
use super::tensor::{DTensor, DType};
use super::AttnPlan;

/// Blocks per cluster (QA_SPLIT), query heads per KV head, head_dim and hidden size the
/// kernel is built for.
const SPLIT: usize = 16;
const GROUP: usize = 4;
const HEAD_DIM: usize = 64;
const _: () = assert!(NORM_IN_QKV == 2048);
/// The shared-memory forms' weight rows: (4 + 2) x 64 / 16 rows of 2048 bf16 per block.
const SMEM_BYTES: u32 = ((GROUP + 2) * HEAD_DIM / SPLIT * NORM_IN_QKV * 2) as u32;

/// The kernel's forms: where a block holds its weight rows and how many threads it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvAttnForm {
    /// In registers, loaded before the PDL wait; 8 warps (202 registers).
    Regs,
    /// In shared memory by three TMA bulk copies; 8 warps (146 registers).
    Smem,
    /// In shared memory; the attention's 4 warps alone, 6 rows each.
    Smem4,
}

impl QkvAttnForm {
    pub const ALL: [QkvAttnForm; 3] = [QkvAttnForm::Regs, QkvAttnForm::Smem, QkvAttnForm::Smem4];

    /// The form's name (`STRATA_QKV_ATTN_FORM`).
    pub fn name(self) -> &'static str {
        match self {
            QkvAttnForm::Regs => "regs",
            QkvAttnForm::Smem => "smem",
            QkvAttnForm::Smem4 => "smem4",
        }
    }

    /// The kernel (its shape is fixed at compile time), threads per block, dynamic shared memory.
    pub(crate) fn kernel(self) -> (&'static str, u32, u32) {
        match self {
            QkvAttnForm::Regs => ("qkv_attention_g4_d64_k2048", 256, 0),
            QkvAttnForm::Smem => ("qkv_attention_g4_d64_k2048_smem", 256, SMEM_BYTES),
            QkvAttnForm::Smem4 => ("qkv_attention_g4_d64_k2048_smem4", 128, SMEM_BYTES),
        }
    }
}

/// The forms where clusters of [`SPLIT`] blocks of them run (None: that form does not).
pub struct QkvAttnKernels([Option<CudaFunction>; 3]);

/// The form forced by [`set_qkv_attn_form`] (its index + 1; 0: the default,
/// `STRATA_QKV_ATTN_FORM` in the environment, else registers).
static FORM: AtomicU8 = AtomicU8::new(0);

/// Forces a form (None: back to the default), for checks and side-by-side timing.
pub fn set_qkv_attn_form(form: Option<QkvAttnForm>) {
    FORM.store(form.map_or(0, |f| f as u8 + 1), Ordering::Relaxed);
}

fn form() -> QkvAttnForm {
    match FORM.load(Ordering::Relaxed) {
        0 => {
            let env = std::env::var("STRATA_QKV_ATTN_FORM").unwrap_or_default();
            QkvAttnForm::ALL
                .into_iter()
                .find(|f| f.name() == env)
                .unwrap_or(QkvAttnForm::Regs)
        }
        f => QkvAttnForm::ALL[f as usize - 1],
    }
}

/// Loads the forms where clusters of [`SPLIT`] blocks of them run (the decode attention's
/// cluster form takes 16 there: `max_cluster`); None where none does.
pub(crate) fn load(ctx: &Arc<GpuContext>, max_cluster: usize) -> Result<Option<QkvAttnKernels>> {
    if max_cluster < SPLIT {
        return Ok(None);
    }
    ctx.cuda().bind_to_thread()?;
    use cudarc::driver::sys::CUfunction_attribute_enum as A;
    let mut fs = [None, None, None];
    for (slot, form) in fs.iter_mut().zip(QkvAttnForm::ALL) {
        let (name, threads, smem) = form.kernel();
        let f = ctx.function(Program::Attention, name)?;
        let ok = f
            .set_attribute(A::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)
            .is_ok()
            && (smem == 0
                || f.set_attribute(
                    A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .is_ok())
            && active_clusters(&f, threads, SPLIT as u32, smem) >= 1;
        *slot = ok.then_some(f);
    }
    Ok(fs.iter().any(Option::is_some).then_some(QkvAttnKernels(fs)))
}

impl Gemm {
    /// The layer's input norm (`input` must be [`QkvInput::Norm`]), qkv with RoPE and the K/V
    /// write, and the attention of `plan` into `out` [1, nq * hd], in one kernel: what
    /// [`Gemm::qkv_rope_t1`] then [`CudaOps::paged_attention_rope`] leave in qkv, the pools and
    /// out, bit for bit. `Ok(false)` where it does not apply (turned off, or either of those
    /// fusions off, batch-invariant mode, not a one-row register cluster plan of 16 blocks, a
    /// shape other than hidden 2048 with groups of 4 heads of 64 dims, unaligned, no kernel):
    /// the caller runs the two.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_attention_t1(
        &self,
        ops: &CudaOps,
        input: &QkvInput<'_>,
        w: &DTensor,
        qkv: &DTensor,
        (nq, nk, hd): (usize, usize, usize),
        pos: &DTensor,
        inv_freq: &DTensor,
        (k_pool, v_pool): (&DTensor, &DTensor),
        slots: &DTensor,
        host_slots: &[i32],
        plan: &AttnPlan,
        out: &DTensor,
        scale: f32,
    ) -> Result<bool> {
        let Some(fs) = ops.qkv_attention.as_ref() else {
            return Ok(false);
        };
        let form = form();
        let Some(f) = fs.0[form as usize].as_ref() else {
            return Ok(false);
        };
        let (_, threads, smem) = form.kernel();
        let QkvInput::Norm {
            y,
            resid,
            weight,
            eps,
        } = *input
        else {
            return Ok(false);
        };
        let Some((shape, tiles, tables, max_pages)) = plan.one_row_cluster(SPLIT) else {
            return Ok(false);
        };
        let k = NORM_IN_QKV;
        let width = (nq + 2 * nk) * hd;
        let rows = [y, Some(resid)];
        if [Fusion::QkvAttn, Fusion::QkvRope, Fusion::QkvNorm]
            .iter()
            .any(|&f| !self.fused(f))
            || self.deterministic()
            || hd != HEAD_DIM
            || nk == 0
            || nq != GROUP * nk
            || (shape.n_heads, shape.n_kv_heads, shape.head_dim) != (nq, nk, hd)
            || w.shape() != [width, k]
            || qkv.shape() != [1, width]
            || rows
                .iter()
                .flatten()
                .any(|r| r.shape() != [1, k] || r.ptr() % 16 != 0)
            || w.ptr() % 16 != 0
            || weight.ptr() % 16 != 0
        {
            return Ok(false);
        }
        let ctx = self.context();
        for (what, t) in [("w", w), ("norm weight", weight), ("out", out)]
            .into_iter()
            .chain(rows.iter().flatten().map(|r| ("x", *r)))
        {
            ctx.check_device(what, t)?;
        }
        for r in rows.iter().flatten() {
            r.expect("x", DType::Bf16, &[1, k])?;
        }
        w.expect("w", DType::Bf16, &[width, k])?;
        weight.expect("norm weight", DType::Bf16, &[k])?;
        out.expect("out", DType::Bf16, &[1, nq * hd])?;
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
        let pool_rows = shape.pool_pages * shape.page_size;
        ensure(
            kv_dim == nk * hd && k_pool.shape() == [pool_rows, kv_dim],
            || format!("pools of {pool_rows} rows of {} expected", nk * hd),
        )?;
        let i = |v: usize| Arg::I32(v as i32);
        let args = [
            Arg::U64(y.map_or(0, |y| y.ptr())),
            Arg::U64(resid.ptr()),
            Arg::U64(weight.ptr()),
            Arg::F32(eps),
            Arg::U64(w.ptr()),
            Arg::U64(qkv.ptr()),
            i(nq),
            i(nk),
            Arg::U64(pos.ptr()),
            Arg::U64(inv_freq.ptr()),
            Arg::U64(k_pool.ptr()),
            Arg::U64(v_pool.ptr()),
            Arg::U64(slots.ptr()),
            Arg::U64(tables.ptr()),
            i(max_pages),
            i(shape.page_size),
            Arg::U64(tiles.ptr()),
            Arg::F32(scale),
            Arg::U64(out.ptr()),
        ];
        let dims = Dims {
            grid: (1, nk as u32, SPLIT as u32),
            block: threads,
            smem,
        };
        // The checks above are those of the two launches it replaces: x rows, w and the norm
        // weight of the staged qkv GEMV, qkv, pos, inv_freq, the pools and every host slot as
        // rope_kv_write's, and the plan's tables and tile list (built for this shape and pool)
        // as the cluster attention reads them; block (g, rank) writes qkv columns and pool
        // entries of its own rows of group g and out's elements of group g it merges.
        ops.go_in_clusters(f, dims, Some(SPLIT as u32), &args)?;
        Ok(true)
    }
}
