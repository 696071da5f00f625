//! `CudaOps`: typed launchers for the row-wise model ops (embedding, RMSNorm with fused residual,
//! RoPE, SiLU*mul, KV write, random fill).
//!
//! Every launcher checks that its tensors live on this GPU, carry the expected dtype and have
//! consistent shapes before launching; kernels then index without further checks. All launches
//! go to the context's compute stream and are asynchronous.

use std::sync::Arc;

use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::{ensure, Result};
use super::launch::{launch_in_clusters, Arg, Dims};
use super::nvrtc::Program;
use super::tensor::{DTensor, DType};

/// The compiled row-wise kernels of one GPU.
pub struct CudaOps {
    pub(crate) ctx: Arc<GpuContext>,
    embedding: CudaFunction,
    add_rows: CudaFunction,
    pub(crate) scatter_i32: CudaFunction,
    pub(crate) lora_shrink: CudaFunction,
    pub(crate) lora_expand: CudaFunction,
    rmsnorm: CudaFunction,
    rmsnorm_add2: CudaFunction,
    rope: CudaFunction,
    silu_mul: CudaFunction,
    kv_write: CudaFunction,
    rope_kv_write: CudaFunction,
    qkv_bias_norm: CudaFunction,
    fill: CudaFunction,
    pub(crate) attention: CudaFunction,
    pub(crate) combine: CudaFunction,
    pub(crate) attention_decode: CudaFunction,
    /// `paged_attention_decode2_*`, in `attention::decode2_index` order.
    pub(crate) attention_decode2: Vec<CudaFunction>,
    /// `paged_attention_mma_*`, in `attention::mma_index` order.
    pub(crate) attention_mma: Vec<CudaFunction>,
    /// `paged_attention_fa2_*`, in `attention::mma_index` order; None where the device cannot
    /// give the kernel its dynamic shared memory (plans then use `attention_mma`).
    pub(crate) attention_fa2: Vec<Option<CudaFunction>>,
    /// The forms of `paged_attention_wg_d128` (attention_prefill_wg.cu, sm_90a) in
    /// `attention::WgForm` order: only on compute-9.0 devices, None elsewhere or where one did
    /// not load (plans then use `attention_fa2`).
    pub(crate) attention_wg: Vec<Option<CudaFunction>>,
    /// `paged_attention_dmma_*` (attention_decode_mma.cu), in `attention::mma_index` order; None
    /// where the device cannot give it its shared memory (decode batches then plan the prefill
    /// kernel as before).
    pub(crate) attention_dmma: Vec<Option<CudaFunction>>,
    /// `attention::DECODE2_VARIANTS`, for side-by-side timing.
    pub(crate) attention_decode2_variants: Vec<CudaFunction>,
    /// `paged_attention_decode2c_*` (the cluster form), in `attention::decode2_index` order;
    /// empty before sm_90.
    pub(crate) attention_decode2c: Vec<CudaFunction>,
    /// `paged_attention_decode2r_*` (the register cluster form), same order; empty before sm_90.
    pub(crate) attention_decode2r: Vec<CudaFunction>,
    /// `paged_attention_decode2rh_*` (the head-split register cluster form), `decode2h_index`
    /// order; empty before sm_90.
    pub(crate) attention_decode2rh: Vec<CudaFunction>,
    /// Largest cluster the cluster form may be launched with (0: none, else 8 or 16).
    pub(crate) decode2_max_cluster: usize,
    pub(crate) sample: CudaFunction,
    pub(crate) logprobs: CudaFunction,
    pub(crate) argmax: CudaFunction,
}

fn threads_for(width: usize) -> u32 {
    (width.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// One block per row of `h`: a thread per 16-byte chunk where rows allow it (the kernels keep
/// up to 4 per thread), else per element. rmsnorm and rmsnorm_add2 share it, so their sums of
/// squares reduce over the same tree (and gemv_stage_norm replays it for h = NORM_IN_QKV).
fn rmsnorm_dims(t: usize, h: usize) -> Dims {
    let lanes = if h % 8 == 0 { h / 8 } else { h };
    Dims::rows(t, threads_for(lanes.min(1024)))
}

fn u(v: usize) -> Arg {
    Arg::U64(v as u64)
}
fn i(v: usize) -> Arg {
    Arg::I32(v as i32)
}

impl CudaOps {
    /// Compiles (or loads from cache) the elementwise, attention and sampling programs.
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self> {
        let e = |n| ctx.function(Program::Elementwise, n);
        let ClusterForms {
            tiles: attention_decode2c,
            regs: attention_decode2r,
            halves: attention_decode2rh,
            max: decode2_max_cluster,
        } = decode2_cluster_functions(&ctx)?;
        Ok(Self {
            embedding: e("embedding")?,
            add_rows: e("add_rows")?,
            scatter_i32: e("scatter_i32")?,
            lora_shrink: e("lora_shrink")?,
            lora_expand: e("lora_expand")?,
            rmsnorm: e("rmsnorm")?,
            rmsnorm_add2: e("rmsnorm_add2")?,
            rope: e("rope")?,
            silu_mul: e("silu_mul")?,
            kv_write: e("kv_write")?,
            rope_kv_write: e("rope_kv_write")?,
            qkv_bias_norm: e("qkv_bias_norm")?,
            fill: e("fill_uniform_bf16")?,
            attention: ctx.function(Program::Attention, "paged_attention")?,
            combine: ctx.function(Program::Attention, "attention_combine")?,
            attention_decode: ctx.function(Program::Attention, "paged_attention_decode")?,
            attention_decode2: super::attention::DECODE2_NAMES
                .iter()
                .map(|n| ctx.function(Program::Attention, n))
                .collect::<Result<_>>()?,
            attention_mma: super::attention::MMA_NAMES
                .iter()
                .map(|n| ctx.function(Program::Attention, n))
                .collect::<Result<_>>()?,
            attention_fa2: super::attention::FA2_NAMES
                .iter()
                .zip([64, 128])
                .map(|(n, hd)| fa2_function(&ctx, n, super::attention::fa2_smem(hd)))
                .collect::<Result<_>>()?,
            attention_wg: super::attention::WG_NAMES
                .iter()
                .map(|n| wg_function(&ctx, n))
                .collect(),
            attention_dmma: super::attention::DMMA_NAMES
                .iter()
                .zip([64, 128])
                .map(|(n, hd)| fa2_function(&ctx, n, super::attention::dmma_smem(hd)))
                .collect::<Result<_>>()?,
            attention_decode2_variants: super::attention::DECODE2_VARIANTS
                .iter()
                .map(|n| ctx.function(Program::Attention, n))
                .collect::<Result<_>>()?,
            attention_decode2c,
            attention_decode2r,
            attention_decode2rh,
            decode2_max_cluster,
            sample: ctx.function(Program::Sampling, "sample_rows")?,
            logprobs: ctx.function(Program::Sampling, "logprob_rows")?,
            argmax: ctx.function(Program::Sampling, "argmax_rows")?,
            ctx,
        })
    }

    /// True when the wgmma prefill kernel loaded (compute 9.0 devices), so
    /// `PrefillKernel::Wgmma` plans head_dim-128 prompts on it.
    pub fn has_wgmma_prefill(&self) -> bool {
        self.attention_wg[super::attention::WgForm::Regs as usize].is_some()
    }

    /// The GPU these ops run on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    pub(crate) fn go(&self, f: &CudaFunction, dims: Dims, args: &[Arg]) -> Result<()> {
        self.go_in_clusters(f, dims, None, args)
    }

    /// [`CudaOps::go`] with the grid in thread-block clusters of `cluster` blocks along z.
    pub(crate) fn go_in_clusters(
        &self,
        f: &CudaFunction,
        dims: Dims,
        cluster: Option<u32>,
        args: &[Arg],
    ) -> Result<()> {
        self.ctx.cuda().bind_to_thread()?;
        // SAFETY: each public launcher checked device, dtype and shapes of every pointer in
        // `args` against the kernel's indexing before calling here (the cluster forms read the
        // same tables and write only their own output rows).
        unsafe { launch_in_clusters(f, self.ctx.stream().cu_stream(), dims, cluster, args) }
    }

    pub(crate) fn on_gpu(&self, ts: &[(&'static str, &DTensor)]) -> Result<()> {
        ts.iter().try_for_each(|(w, t)| self.ctx.check_device(w, t))
    }

    /// out[t] = table[ids[t]] (zero row for an out-of-range id). ids [T] i32, table [V, H], out [T, H].
    pub fn embedding(&self, ids: &DTensor, table: &DTensor, out: &DTensor) -> Result<()> {
        self.on_gpu(&[("ids", ids), ("table", table), ("out", out)])?;
        ensure(table.shape().len() == 2, || {
            "table must be [vocab, hidden]".into()
        })?;
        let (vocab, hidden) = (table.shape()[0], table.shape()[1]);
        let t = ids.numel();
        ids.expect("ids", DType::I32, &[t])?;
        table.expect("table", DType::Bf16, &[vocab, hidden])?;
        out.expect("out", DType::Bf16, &[t, hidden])?;
        let args = [
            Arg::U64(ids.ptr()),
            Arg::U64(table.ptr()),
            Arg::U64(out.ptr()),
            i(hidden),
            i(vocab),
        ];
        self.go(&self.embedding, Dims::rows(t, threads_for(hidden)), &args)
    }

    /// dst[ids[t]] += src[t] (bf16, summed in f32) for ids [G] i32 (distinct rows of dst), src
    /// [G, W], dst [T, W].
    pub fn add_rows(&self, ids: &DTensor, src: &DTensor, dst: &DTensor) -> Result<()> {
        self.on_gpu(&[("ids", ids), ("src", src), ("dst", dst)])?;
        ensure(dst.shape().len() == 2, || {
            "dst must be [rows, width]".into()
        })?;
        let (t, w) = (dst.shape()[0], dst.shape()[1]);
        let g = ids.numel();
        ids.expect("ids", DType::I32, &[g])?;
        src.expect("src", DType::Bf16, &[g, w])?;
        dst.expect("dst", DType::Bf16, &[t, w])?;
        let args = [
            Arg::U64(ids.ptr()),
            Arg::U64(src.ptr()),
            Arg::U64(dst.ptr()),
            i(w),
        ];
        self.go(&self.add_rows, Dims::rows(g, threads_for(w)), &args)
    }

    /// RMSNorm of each row of x [T, H] scaled by w [H] into out [T, H] (may be x). With
    /// `residual`, first residual = x + residual and the norm is taken of that sum.
    pub fn rmsnorm(
        &self,
        x: &DTensor,
        residual: Option<&DTensor>,
        w: &DTensor,
        out: &DTensor,
        eps: f32,
    ) -> Result<()> {
        self.on_gpu(&[("x", x), ("w", w), ("out", out)])?;
        ensure(x.shape().len() == 2, || "x must be [tokens, hidden]".into())?;
        let (t, h) = (x.shape()[0], x.shape()[1]);
        x.expect("x", DType::Bf16, &[t, h])?;
        w.expect("w", DType::Bf16, &[h])?;
        out.expect("out", DType::Bf16, &[t, h])?;
        let rp = match residual {
            Some(r) => {
                self.ctx.check_device("residual", r)?;
                r.expect("residual", DType::Bf16, &[t, h])?;
                r.ptr()
            }
            None => 0,
        };
        let args = [
            Arg::U64(x.ptr()),
            Arg::U64(rp),
            Arg::U64(w.ptr()),
            Arg::U64(out.ptr()),
            i(h),
            Arg::F32(eps),
        ];
        self.go(&self.rmsnorm, rmsnorm_dims(t, h), &args)
    }

    /// residual = (residual + x1) + x2 (each sum rounded to bf16, as `rmsnorm(x1, residual)` then
    /// `rmsnorm(x2, residual)` round them), out = rmsnorm(residual) * w: the layer's second norm
    /// when its first was staged into the qkv GEMV (`QkvInput::Norm`, which leaves the residual
    /// alone). All [T, hidden] bf16 (w [hidden]), hidden % 8 == 0, hidden <= 32768, 16-byte
    /// aligned.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_add2(
        &self,
        x1: &DTensor,
        x2: &DTensor,
        residual: &DTensor,
        w: &DTensor,
        out: &DTensor,
        eps: f32,
    ) -> Result<()> {
        self.on_gpu(&[
            ("x1", x1),
            ("x2", x2),
            ("residual", residual),
            ("w", w),
            ("out", out),
        ])?;
        ensure(x1.shape().len() == 2, || {
            "x1 must be [tokens, hidden]".into()
        })?;
        let (t, h) = (x1.shape()[0], x1.shape()[1]);
        for (n, x) in [("x1", x1), ("x2", x2), ("residual", residual), ("out", out)] {
            x.expect(n, DType::Bf16, &[t, h])?;
        }
        w.expect("w", DType::Bf16, &[h])?;
        ensure(
            h % 8 == 0
                && h / 8 <= 4 * 1024
                && [x1, x2, residual, w, out].iter().all(|x| x.ptr() % 16 == 0),
            || format!("rmsnorm_add2: hidden {h} must be a multiple of 8, at most 32768, aligned"),
        )?;
        let args = [
            Arg::U64(x1.ptr()),
            Arg::U64(x2.ptr()),
            Arg::U64(residual.ptr()),
            Arg::U64(w.ptr()),
            Arg::U64(out.ptr()),
            i(h),
            Arg::F32(eps),
        ];
        // rmsnorm's block size, so the sum of squares runs the same tree.
        self.go(&self.rmsnorm_add2, rmsnorm_dims(t, h), &args)
    }

    /// In-place RoPE on the q heads at column `q_col` and the k heads at column `k_col` of
    /// `qkv` [T, W]. pos [T] i32, inv_freq [head_dim/2] f32.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        qkv: &DTensor,
        q_col: usize,
        n_q_heads: usize,
        k_col: usize,
        n_k_heads: usize,
        head_dim: usize,
        pos: &DTensor,
        inv_freq: &DTensor,
    ) -> Result<()> {
        let (t, w) = self.rope_checks(
            qkv, q_col, n_q_heads, k_col, n_k_heads, head_dim, pos, inv_freq,
        )?;
        let args = [
            Arg::U64(qkv.ptr_at(q_col)?),
            i(w),
            i(n_q_heads),
            Arg::U64(qkv.ptr_at(k_col)?),
            i(w),
            i(n_k_heads),
            Arg::U64(pos.ptr()),
            Arg::U64(inv_freq.ptr()),
            i(head_dim),
        ];
        let work = (n_q_heads + n_k_heads) * head_dim / 2;
        self.go(
            &self.rope,
            Dims::rows(t, threads_for(work.min(1024))),
            &args,
        )
    }

    /// `rope` and then `kv_write` of the rotated K and the V at `v_col`, as one kernel (decode
    /// steps run it once per layer). The pools' row width must be `n_k_heads * head_dim`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_write(
        &self,
        qkv: &DTensor,
        q_col: usize,
        n_q_heads: usize,
        k_col: usize,
        n_k_heads: usize,
        v_col: usize,
        head_dim: usize,
        pos: &DTensor,
        inv_freq: &DTensor,
        k_pool: &DTensor,
        v_pool: &DTensor,
        slots: &DTensor,
        host_slots: &[i32],
    ) -> Result<()> {
        let (t, w) = self.rope_checks(
            qkv, q_col, n_q_heads, k_col, n_k_heads, head_dim, pos, inv_freq,
        )?;
        let kv_dim = self.kv_checks(qkv, k_col, v_col, k_pool, v_pool, slots, host_slots)?;
        ensure(kv_dim == n_k_heads * head_dim, || {
            format!("pool rows of {kv_dim} for {n_k_heads} k heads of {head_dim}")
        })?;
        let args = [
            Arg::U64(qkv.ptr()),
            i(w),
            i(q_col),
            i(n_q_heads),
            i(k_col),
            i(n_k_heads),
            i(v_col),
            Arg::U64(pos.ptr()),
            Arg::U64(inv_freq.ptr()),
            i(head_dim),
            Arg::U64(k_pool.ptr()),
            Arg::U64(v_pool.ptr()),
            Arg::U64(slots.ptr()),
        ];
        // Mirrors rope_vec_ok in elementwise.cu: 8 rotated pairs (16 bytes) per thread there.
        let vec = head_dim % 16 == 0
            && (w | q_col | k_col | v_col) % 8 == 0
            && (qkv.ptr() | k_pool.ptr() | v_pool.ptr()) % 16 == 0;
        let work = if vec {
            ((n_q_heads + n_k_heads) * head_dim / 16).max(kv_dim / 8)
        } else {
            ((n_q_heads + n_k_heads) * head_dim / 2).max(kv_dim)
        };
        self.go(
            &self.rope_kv_write,
            Dims::rows(t, threads_for(work.min(1024))),
            &args,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rope_checks(
        &self,
        qkv: &DTensor,
        q_col: usize,
        n_q_heads: usize,
        k_col: usize,
        n_k_heads: usize,
        head_dim: usize,
        pos: &DTensor,
        inv_freq: &DTensor,
    ) -> Result<(usize, usize)> {
        self.on_gpu(&[("qkv", qkv), ("pos", pos), ("inv_freq", inv_freq)])?;
        ensure(qkv.shape().len() == 2, || {
            "qkv must be [tokens, width]".into()
        })?;
        let (t, w) = (qkv.shape()[0], qkv.shape()[1]);
        qkv.expect("qkv", DType::Bf16, &[t, w])?;
        ensure(head_dim % 2 == 0 && head_dim > 0, || {
            "head_dim must be even".into()
        })?;
        ensure(q_col + n_q_heads * head_dim <= w, || {
            "q heads past row end".into()
        })?;
        ensure(k_col + n_k_heads * head_dim <= w, || {
            "k heads past row end".into()
        })?;
        pos.expect("pos", DType::I32, &[t])?;
        inv_freq.expect("inv_freq", DType::F32, &[head_dim / 2])?;
        Ok((t, w))
    }

    /// out [T, I] = silu(gu[:, :I]) * gu[:, I:] for gu [T, 2I].
    pub fn silu_mul(&self, gu: &DTensor, out: &DTensor) -> Result<()> {
        self.on_gpu(&[("gate_up", gu), ("out", out)])?;
        ensure(out.shape().len() == 2, || {
            "out must be [tokens, inter]".into()
        })?;
        let (t, inter) = (out.shape()[0], out.shape()[1]);
        gu.expect("gate_up", DType::Bf16, &[t, 2 * inter])?;
        out.expect("out", DType::Bf16, &[t, inter])?;
        let args = [Arg::U64(gu.ptr()), Arg::U64(out.ptr()), i(inter)];
        self.go(
            &self.silu_mul,
            Dims::rows(t, threads_for(inter.min(1024))),
            &args,
        )
    }

    /// Writes token t's K (columns k_col..k_col+kv_dim of src) and V (v_col..) into slot
    /// slots[t] of one layer's pools [slots, kv_dim]. A negative slot skips the token.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write(
        &self,
        src: &DTensor,
        k_col: usize,
        v_col: usize,
        k_pool: &DTensor,
        v_pool: &DTensor,
        slots: &DTensor,
        host_slots: &[i32],
    ) -> Result<()> {
        let kv_dim = self.kv_checks(src, k_col, v_col, k_pool, v_pool, slots, host_slots)?;
        let (t, w) = (src.shape()[0], src.shape()[1]);
        let args = [
            Arg::U64(src.ptr_at(k_col)?),
            i(w),
            Arg::U64(src.ptr_at(v_col)?),
            i(w),
            Arg::U64(k_pool.ptr()),
            Arg::U64(v_pool.ptr()),
            Arg::U64(slots.ptr()),
            i(kv_dim),
        ];
        self.go(
            &self.kv_write,
            Dims::rows(t, threads_for(kv_dim.min(1024))),
            &args,
        )
    }

    /// Shape checks of a K/V write; returns the pools' row width.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn kv_checks(
        &self,
        src: &DTensor,
        k_col: usize,
        v_col: usize,
        k_pool: &DTensor,
        v_pool: &DTensor,
        slots: &DTensor,
        host_slots: &[i32],
    ) -> Result<usize> {
        self.on_gpu(&[
            ("src", src),
            ("k_pool", k_pool),
            ("v_pool", v_pool),
            ("slots", slots),
        ])?;
        ensure(src.shape().len() == 2 && k_pool.shape().len() == 2, || {
            "src [T, W] and pools [slots, kv_dim] expected".into()
        })?;
        let (t, w) = (src.shape()[0], src.shape()[1]);
        let (n_slots, kv_dim) = (k_pool.shape()[0], k_pool.shape()[1]);
        src.expect("src", DType::Bf16, &[t, w])?;
        k_pool.expect("k_pool", DType::Bf16, &[n_slots, kv_dim])?;
        v_pool.expect("v_pool", DType::Bf16, &[n_slots, kv_dim])?;
        slots.expect("slots", DType::I32, &[t])?;
        ensure(k_col + kv_dim <= w && v_col + kv_dim <= w, || {
            "k/v past row end".into()
        })?;
        ensure(host_slots.len() == t, || {
            "host_slots must mirror slots".into()
        })?;
        ensure(
            host_slots.iter().all(|&s| (s as i64) < n_slots as i64),
            || format!("slot out of range (pool has {n_slots})"),
        )?;
        Ok(kv_dim)
    }

    /// In place on the fused qkv rows [T, W] (q heads, then k heads, from column 0): adds
    /// `bias` [width] to the first `width` columns, then (with `qk_norm`) RMSNorm of every q and
    /// k head with weights `(q_norm [head_dim], k_norm [head_dim])` (Qwen2 bias, Qwen3 qk-norm).
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_bias_norm(
        &self,
        qkv: &DTensor,
        bias: Option<&DTensor>,
        qk_norm: Option<(&DTensor, &DTensor)>,
        n_q_heads: usize,
        n_k_heads: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.on_gpu(&[("qkv", qkv)])?;
        ensure(qkv.shape().len() == 2, || {
            "qkv must be [tokens, width]".into()
        })?;
        let (t, w) = (qkv.shape()[0], qkv.shape()[1]);
        qkv.expect("qkv", DType::Bf16, &[t, w])?;
        ensure((n_q_heads + n_k_heads) * head_dim <= w, || {
            "q/k heads past row end".into()
        })?;
        let (bp, width) = match bias {
            Some(b) => {
                self.ctx.check_device("bias", b)?;
                ensure(b.numel() <= w, || "bias wider than the row".into())?;
                b.expect("bias", DType::Bf16, &[b.numel()])?;
                (b.ptr(), b.numel())
            }
            None => (0, 0),
        };
        let (qn, kn) = match qk_norm {
            Some((q, k)) => {
                self.on_gpu(&[("q_norm", q), ("k_norm", k)])?;
                q.expect("q_norm", DType::Bf16, &[head_dim])?;
                k.expect("k_norm", DType::Bf16, &[head_dim])?;
                (q.ptr(), k.ptr())
            }
            None => (0, 0),
        };
        if bp == 0 && qn == 0 {
            return Ok(());
        }
        let args = [
            Arg::U64(qkv.ptr()),
            i(w),
            Arg::U64(bp),
            i(width),
            Arg::U64(qn),
            Arg::U64(kn),
            i(n_q_heads),
            i(n_k_heads),
            i(head_dim),
            Arg::F32(eps),
        ];
        self.go(&self.qkv_bias_norm, Dims::rows(t, 256), &args)
    }

    /// out [B] i32 = argmax of each row of logits [B, V] f32 (lowest index on ties), without a
    /// host round trip (graph-capturable).
    pub fn argmax_rows(&self, logits: &DTensor, out: &DTensor) -> Result<()> {
        self.on_gpu(&[("logits", logits), ("out", out)])?;
        ensure(logits.shape().len() == 2, || {
            "logits must be [batch, vocab]".into()
        })?;
        let (b, v) = (logits.shape()[0], logits.shape()[1]);
        logits.expect("logits", DType::F32, &[b, v])?;
        out.expect("out", DType::I32, &[b])?;
        let args = [Arg::U64(logits.ptr()), i(v), Arg::U64(out.ptr())];
        self.go(&self.argmax, Dims::rows(b, 1024), &args)
    }

    /// Fills a bf16 tensor with uniform(-scale, scale) values derived from `seed`.
    pub fn fill_uniform(&self, t: &DTensor, seed: u64, scale: f32) -> Result<()> {
        self.on_gpu(&[("t", t)])?;
        t.expect_at_least("t", DType::Bf16, 0)?;
        let blocks = (t.numel().div_ceil(256))
            .min(self.ctx.sm_count() * 16)
            .max(1);
        let args = [
            Arg::U64(t.ptr()),
            u(t.numel()),
            Arg::U64(seed),
            Arg::F32(scale),
        ];
        self.go(&self.fill, Dims::rows(blocks, 256), &args)
    }
}

/// Loads FA2 prefill kernel `name` and opts it in to `smem` bytes of dynamic shared memory; None
/// (logged) where the device refuses that much, so plans fall back to the first mma kernel.
/// The wgmma prefill kernel where the device is compute 9.0 (sm_90a), with its shared memory;
/// None elsewhere, or (logged) where it did not compile or load.
fn wg_function(ctx: &Arc<GpuContext>, name: &str) -> Option<CudaFunction> {
    Program::AttentionWg.arch_for(ctx.arch())?;
    let smem = super::attention::wg_smem();
    let loaded = ctx.function(Program::AttentionWg, name).and_then(|f| {
        ctx.cuda().bind_to_thread()?;
        let attr = cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        f.set_attribute(attr, smem as i32)?;
        Ok(f)
    });
    match loaded {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("{name} ({smem} bytes of shared memory) not loaded: {e}; prefill plans use the FA2 kernel");
            None
        }
    }
}

fn fa2_function(ctx: &Arc<GpuContext>, name: &str, smem: u32) -> Result<Option<CudaFunction>> {
    let f = ctx.function(Program::Attention, name)?;
    ctx.cuda().bind_to_thread()?;
    let attr =
        cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    match f.set_attribute(attr, smem as i32) {
        Ok(()) => Ok(Some(f)),
        Err(e) => {
            tracing::warn!(
                "{name}: {smem} bytes of shared memory refused ({e:?}); plans use another kernel"
            );
            Ok(None)
        }
    }
}

/// The cluster forms of the decode2 kernels (cp.async tiles, registers) and the largest cluster
/// they may use: 16 blocks where
/// the device accepts that non-portable size for the largest of them (one block per SM of a GPC
/// being enough), else the portable 8; none before sm_90 (no clusters) or with
/// `STRATA_DECODE_CLUSTER=0` (every decode on the split kernel, as `STRATA_PDL=0` for PDL).
/// The decode2 cluster forms' kernels (cp.async tiles, registers, registers split by query
/// heads) and the largest cluster they take (0: none).
struct ClusterForms {
    tiles: Vec<CudaFunction>,
    regs: Vec<CudaFunction>,
    halves: Vec<CudaFunction>,
    max: usize,
}
fn decode2_cluster_functions(ctx: &Arc<GpuContext>) -> Result<ClusterForms> {
    let sm: usize = ctx.arch().trim_start_matches("sm_").parse().unwrap_or(0);
    let off = std::env::var("STRATA_DECODE_CLUSTER").is_ok_and(|v| v == "0");
    if sm < 90 || off {
        return Ok(ClusterForms {
            tiles: Vec::new(),
            regs: Vec::new(),
            halves: Vec::new(),
            max: 0,
        });
    }
    let load = |names: &[&str]| {
        names
            .iter()
            .map(|n| ctx.function(Program::Attention, n))
            .collect::<Result<Vec<_>>>()
    };
    let fs = load(&super::attention::DECODE2C_NAMES)?;
    let rs = load(&super::attention::DECODE2R_NAMES)?;
    let hs = load(&super::attention::DECODE2RH_NAMES)?;
    ctx.cuda().bind_to_thread()?;
    use cudarc::driver::sys;
    let attr = sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED;
    let mut max = 16;
    for f in fs.iter().chain(&rs).chain(&hs) {
        if f.set_attribute(attr, 1).is_err() {
            max = 8;
        }
    }
    if max == 16 {
        // SAFETY: a query on a loaded function with a config that lives through the call.
        let n = unsafe {
            let mut value: sys::CUlaunchAttributeValue = std::mem::zeroed();
            value.clusterDim.x = 1;
            value.clusterDim.y = 1;
            value.clusterDim.z = 16;
            let mut at = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                pad: [0; 4],
                value,
            };
            let cfg = sys::CUlaunchConfig {
                gridDimX: 1,
                gridDimY: 1,
                gridDimZ: 16,
                blockDimX: 128,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: 0,
                hStream: std::ptr::null_mut(),
                attrs: &mut at,
                numAttrs: 1,
            };
            let mut n: std::ffi::c_int = 0;
            let big = fs.last().expect("one per decode2 shape");
            match sys::cuOccupancyMaxActiveClusters(&mut n, big.cu_function(), &cfg).result() {
                Ok(()) => n,
                Err(_) => 0,
            }
        };
        if n < 1 {
            max = 8;
        }
    }
    Ok(ClusterForms {
        tiles: fs,
        regs: rs,
        halves: hs,
        max,
    })
}
