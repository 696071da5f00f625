//! The CUDA model runner: the bf16 stack of `strata_kernels::cuda` (cuBLAS/cuBLASLt GEMMs and the
//! single-row GEMV, fused RMSNorm + residual, fused RoPE + KV write, the paged decode kernels)
//! over real weights from a safetensors checkpoint (bf16, f16 or f32 on disk, bf16 on the GPU),
//! for Llama, Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm).
//!
//! One forward per scheduler round. The batch metadata (token ids, positions, KV slots, the rows
//! whose logits are needed) goes up in one copy; the attention plan's block tables in one more.
//! Decode-only batches up to the largest captured size (`--cuda-graph-bs` / `--cuda-graph-max-bs`)
//! replay a CUDA graph captured at start-up for the next batch-size bucket (padded rows write no
//! KV and are discarded); other
//! batches (prefill chunks, mixed, larger) run eagerly. Every row is sampled on the GPU: plain
//! greedy rows by the argmax kernel in the forward, the others (temperature, top-k/p, min-p,
//! penalties, logit bias, banned tokens, logprobs, scored prompt rows) by `sample_rows` /
//! `logprob_rows` with the semantics of [`sample_host`] and the request's own uniform draw, so a
//! seed means what it means on the CPU runner (up to the boundary cases docs/gpu.md states). Only
//! token ids and the asked-for logprob values come back; the host path remains for a scored
//! prompt token outside the vocabulary.

mod graph;
pub use graph::{graph_sizes, Layout as ReplayLayout};
mod ipc;
mod kv;
mod load;
mod lora;
mod lora_slots;
mod queue;
mod sample;
mod weights;

pub use kv::CudaKv;

/// `kv` as PD transfers reach it over CUDA IPC (what a PD server's runner hands the bootstrap
/// server and the fetcher; `strata bench pd-transfer` uses it without a model).
pub fn device_kv(kv: &CudaKv) -> Result<Arc<dyn crate::pd::share::DeviceKv>, String> {
    Ok(Arc::new(ipc::CudaDeviceKv::new(kv)?))
}

use super::runner::{check_sampling, with_uncounted_counted, ModelRunner, SampleReq, Sampled};
use super::{ForwardBatch, ModelConfig, ModelError};
use crate::kv::{HostKvPool, PageId};
use lora::Proj;
use std::path::Path;
use std::sync::Arc;
use strata_kernels::cuda::{
    head_and_pick, launch, AttnPlan, AttnSeq, AttnShape, CudaError, CudaOps, DTensor, DType, Gemm,
    GpuContext, PickOut, PlanOpts, PostNorm, QRope, QkvInput,
};
use weights::Weights;

/// Start-up options of the CUDA runner.
#[derive(Debug, Clone)]
pub struct CudaRunnerOptions {
    /// Longest sequence (sizes the graphs' page tables).
    pub context_length: usize,
    /// The decode batch sizes captured as CUDA graphs, ascending (empty: none;
    /// [`graph_sizes`] builds it from the flags).
    pub cuda_graph_bs: Vec<usize>,
    /// Tokens of the largest eager forward (reserved out of the KV budget).
    pub max_prefill_tokens: usize,
    /// Largest number of sequences in one forward (reserved out of the KV budget).
    pub max_running_requests: usize,
    /// Batch-invariant mode (`strata_kernels::cuda::det`): a row's logits do not depend on the
    /// rest of the batch, graph padding or how its prompt was chunked.
    pub deterministic: bool,
}

/// Activations for `tokens` rows, `rows` of which get logits.
struct Acts {
    resid: DTensor,
    /// The down projection's output (the MLP sub-layer's y).
    y: DTensor,
    /// The o projection's output (the attention sub-layer's y): apart from `y`, which a qkv
    /// GEMV with the input norm staged still reads (`QkvInput::Norm`).
    y_o: DTensor,
    h: DTensor,
    qkv: DTensor,
    attn: DTensor,
    gu: DTensor,
    act: DTensor,
    /// [rows, hidden], [rows, vocab] f32 and [rows] i32 (argmax); None when rows == 0.
    head: Option<(DTensor, DTensor, DTensor)>,
}

/// The attention of rows `rows` of a forward (all of them unless batch-invariant mode splits a
/// mixed round into its decode and prompt parts).
struct AttnPart {
    rows: std::ops::Range<usize>,
    plan: AttnPlan,
}

/// The per-forward inputs in one i32 buffer: ids, positions, slots (each `tokens`), then the
/// logits rows.
struct Meta {
    ids: DTensor,
    pos: DTensor,
    slots: DTensor,
    last: DTensor,
    buf: DTensor,
    host_slots: Vec<i32>,
    /// How the rows' LoRA adapters apply (None: no row has one).
    lora: Option<lora::Run>,
    /// Where the one-row head's pick also goes (a lean decode graph's, graph.rs; none for an
    /// eager forward).
    pick: PickOut,
    /// Set by each forward over this metadata: its head honoured `pick` (the fused one-row
    /// head ran and `pick` names a host cell).
    picked: std::cell::Cell<bool>,
}

impl Meta {
    fn views(
        buf: DTensor,
        tokens: usize,
        rows: usize,
        host_slots: Vec<i32>,
    ) -> Result<Self, CudaError> {
        Ok(Meta {
            ids: buf.view(0, &[tokens])?,
            pos: buf.view(tokens, &[tokens])?,
            slots: buf.view(2 * tokens, &[tokens])?,
            last: buf.view(3 * tokens, &[rows])?,
            buf,
            host_slots,
            lora: None,
            pick: PickOut::default(),
            picked: std::cell::Cell::new(false),
        })
    }
}

/// The bf16 runner on one GPU.
pub struct CudaRunner {
    cfg: ModelConfig,
    ctx: Arc<GpuContext>,
    ops: CudaOps,
    gemm: Gemm,
    w: Weights,
    opts: CudaRunnerOptions,
    graphs: graph::Graphs,
    /// Batch-invariant mode with every row on the prefill attention kernel
    /// (`STRATA_DET_ATTN=prefill`, `det::decode_as_prefill`).
    one_kernel: bool,
    /// Forwards run and how many of them replayed a graph (logged every 1024 forwards).
    counts: (u64, u64),
    /// Where the time of graph-replayed decode steps goes (logged with the counts).
    prof: StepProfile,
    /// LoRA adapters on the GPU.
    loras: lora::Cache,
    /// Forwards launched without waiting (overlap scheduling, `queue.rs`).
    queue: queue::Queue,
    /// Queue rows with output penalties or logprobs too (`runner::overlap_wide_from_env`).
    overlap_wide: bool,
    /// Queue rows under a grammar too (`runner::overlap_grammar_from_env`).
    overlap_grammar: bool,
}

/// Bytes of activations per token row of a forward, and per logits row.
fn act_bytes(cfg: &ModelConfig) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let qd = cfg.num_heads * cfg.head_dim;
    let qkvw = qd + 2 * cfg.kv_dim();
    (
        2 * (4 * h + qkvw + qd + 3 * i) + 12,
        2 * h + 4 * cfg.vocab_size + 8,
    )
}

impl CudaRunner {
    /// Loads the checkpoint in `dir` onto the GPU of `ctx`.
    pub fn load(
        ctx: Arc<GpuContext>,
        dir: &Path,
        cfg: &ModelConfig,
        opts: CudaRunnerOptions,
    ) -> Result<Self, ModelError> {
        let hd = cfg.head_dim;
        let group = cfg.num_heads / cfg.num_kv_heads.max(1);
        if hd % 32 != 0 || hd > 128 || 16 % group != 0 {
            return Err(ModelError::bad(
                dir,
                format!(
                    "head_dim {hd} / GQA group {group}: the bf16 CUDA kernels need head_dim a multiple of 32 up to 128 and a group dividing 16; use --dtype float32"
                ),
            ));
        }
        let ops = CudaOps::new(ctx.clone())?;
        let gemm = Gemm::new(ctx.clone())?.with_deterministic(opts.deterministic)?;
        let one_kernel =
            opts.deterministic && strata_kernels::cuda::det::decode_as_prefill_from_env();
        if one_kernel {
            tracing::info!(
                "batch-invariant (deterministic) inference: one cuBLASLt algorithm per weight shape, every row (decode included) on the prefill attention kernel, unsplit (STRATA_DET_ATTN=prefill)"
            );
        } else if opts.deterministic {
            tracing::info!(
                "batch-invariant (deterministic) inference: one cuBLASLt algorithm per weight shape, fixed decode splits, prompt and decode rows on their own attention kernels"
            );
        }
        let w = Weights::load(&ctx, dir, cfg)?;
        Ok(CudaRunner {
            cfg: cfg.clone(),
            ops,
            gemm,
            w,
            graphs: graph::Graphs::default(),
            one_kernel,
            counts: (0, 0),
            prof: StepProfile::default(),
            loras: lora::Cache::default(),
            queue: queue::Queue::default(),
            overlap_wide: super::runner::overlap_wide_from_env(),
            overlap_grammar: super::runner::overlap_grammar_from_env(),
            opts,
            ctx,
        })
    }

    /// Counts a forward; logs the counts every 1024 and the step profile every 512.
    fn count_forward(&mut self) {
        self.counts.0 += 1;
        if self.counts.0 % 1024 == 0 {
            tracing::info!(
                forwards = self.counts.0,
                graph_replays = self.counts.1,
                "CUDA runner"
            );
        }
        if self.counts.0 % 512 == 0 {
            self.prof.log();
        }
    }

    /// The GPU this runner uses.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Bytes kept out of the KV budget for activations and graph workspaces.
    fn reserve_bytes(&self) -> usize {
        let (per_tok, per_row) = act_bytes(&self.cfg);
        let graph_rows: usize = self.opts.cuda_graph_bs.iter().sum();
        let eager = self.opts.max_prefill_tokens + self.opts.max_running_requests;
        (eager + graph_rows) * per_tok
            + (self.opts.max_running_requests + graph_rows) * per_row
            + (1 << 30)
    }

    fn attn_shape(&self, kv: &CudaKv) -> AttnShape {
        AttnShape {
            n_heads: self.cfg.num_heads,
            n_kv_heads: self.cfg.num_kv_heads,
            head_dim: self.cfg.head_dim,
            page_size: kv.page_size,
            pool_pages: kv.num_pages,
        }
    }

    fn acts(&self, tokens: usize, rows: usize) -> Result<Acts, CudaError> {
        let c = &self.cfg;
        let b = |d: &[usize]| self.ctx.alloc(DType::Bf16, d);
        let qd = c.num_heads * c.head_dim;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let head = if rows > 0 {
            Some((
                b(&[rows, h])?,
                self.ctx.alloc(DType::F32, &[rows, c.vocab_size])?,
                self.ctx.alloc(DType::I32, &[rows])?,
            ))
        } else {
            None
        };
        Ok(Acts {
            resid: b(&[tokens, h])?,
            y: b(&[tokens, h])?,
            y_o: b(&[tokens, h])?,
            h: b(&[tokens, h])?,
            qkv: b(&[tokens, qd + 2 * c.kv_dim()])?,
            attn: b(&[tokens, qd])?,
            gu: b(&[tokens, 2 * i])?,
            act: b(&[tokens, i])?,
            head,
        })
    }

    /// Queues the whole forward (and the greedy argmax of the logits rows) on the stream.
    fn forward(&self, a: &Acts, m: &Meta, plan: &AttnPlan, kv: &CudaKv) -> Result<(), CudaError> {
        self.forward_parts(a, m, std::slice::from_ref(plan), &[], kv)
    }

    /// The attention options every plan of this runner uses (batch-invariant mode: its split
    /// length, fixed by `--context-length`).
    fn plan_opts(&self) -> PlanOpts {
        PlanOpts {
            splits: None,
            deterministic: self.opts.deterministic,
            det_split_len: strata_kernels::cuda::det::split_len(self.opts.context_length),
            prefill: self.one_kernel,
            no_cluster: false,
        }
    }

    /// The attention plans of an eager batch: one over every row, or in batch-invariant mode one
    /// per run of consecutive sequences of the same kind (decoding a generated token, or prompt
    /// rows), each with its own kernel and split policy.
    fn attn_parts(&self, batch: &ForwardBatch, kv: &CudaKv) -> Result<Vec<AttnPart>, CudaError> {
        let seq = |s: &crate::model::SeqSlice| AttnSeq {
            q_len: s.q_len,
            kv_len: s.kv_len,
            pages: s.pages.iter().map(|&p| p as i32).collect(),
        };
        let n = batch.tokens.len();
        if !self.opts.deterministic || self.one_kernel {
            // One plan over every row (batch-invariant with one kernel: the prefill kernel).
            let seqs: Vec<AttnSeq> = batch.seqs.iter().map(seq).collect();
            let plan =
                self.ops
                    .attention_plan_with(self.attn_shape(kv), &seqs, self.plan_opts())?;
            return Ok(vec![AttnPart { rows: 0..n, plan }]);
        }
        let mut parts = Vec::new();
        let mut i = 0;
        while i < batch.seqs.len() {
            let decode = batch.seqs[i].decode;
            let mut j = i;
            let mut end = batch.seqs[i].q_start;
            while j < batch.seqs.len() && batch.seqs[j].decode == decode {
                if batch.seqs[j].q_start != end {
                    return Err(CudaError::Shape(format!(
                        "sequence {j} starts at row {} instead of {end}",
                        batch.seqs[j].q_start
                    )));
                }
                end += batch.seqs[j].q_len;
                j += 1;
            }
            let seqs: Vec<AttnSeq> = batch.seqs[i..j].iter().map(seq).collect();
            let opts = PlanOpts {
                prefill: !decode,
                ..self.plan_opts()
            };
            let plan = self
                .ops
                .attention_plan_with(self.attn_shape(kv), &seqs, opts)?;
            parts.push(AttnPart {
                rows: batch.seqs[i].q_start..end,
                plan,
            });
            i = j;
        }
        Ok(parts)
    }

    /// [`CudaRunner::forward`] with the attention given as `single` (one plan over every row) or,
    /// when `single` is empty, as `parts` (row ranges of the batch with their own plans).
    fn forward_parts(
        &self,
        a: &Acts,
        m: &Meta,
        single: &[AttnPlan],
        parts: &[AttnPart],
        kv: &CudaKv,
    ) -> Result<(), CudaError> {
        let c = &self.cfg;
        let (ops, gemm) = (&self.ops, &self.gemm);
        let (nh, nkv, hd, eps) = (c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps);
        let (q_w, kv_w) = (nh * hd, nkv * hd);
        let scale = 1.0 / (hd as f32).sqrt();
        ops.embedding(&m.ids, &self.w.embed, &a.resid)?;
        // Prefill-sized forwards add each sub-layer's output to the residual inside its last
        // GEMM (Gemm::linear_acc); otherwise the next norm adds it.
        let acc = gemm.acc_applies(a.resid.shape()[0]);
        let lora = m.lora.as_ref();
        // The wgmma prefill attention rotates Q as it loads it when every plan of the forward
        // runs it: rope_kv_write then rotates and writes K alone (layers whose qkv GEMV does
        // both in its epilogue aside).
        let mut plans = single
            .iter()
            .chain(parts.iter().map(|p| &p.plan))
            .peekable();
        let attn_rope = plans.peek().is_some() && plans.all(|p| gemm.attn_rope(p));
        for (li, l) in self.w.layers.iter().enumerate() {
            // Layer 0 normalises the embedding; later layers add the previous sub-layer's y.
            let y = (li > 0 && !acc).then_some(&a.y);
            // One row of a model without qkv bias or qk-norm: RoPE and the K/V write in the qkv
            // GEMV's epilogue (Gemm::qkv_rope_t1), and at hidden NORM_IN_QKV the input norm
            // staged in it too (the residual then gets both sub-layer outputs in norm2).
            let plain_model = l.qkv_bias.is_none() && l.qk_norm.is_none();
            // Adapter rows take the unfused projections (their change is added to the GEMMs'
            // outputs before RoPE, the qk-norm and the SiLU).
            let plain = plain_model && lora.is_none();
            let qkv_rope = |input: &QkvInput<'_>| {
                gemm.qkv_rope_t1(
                    ops,
                    input,
                    &l.qkv,
                    &a.qkv,
                    (nh, nkv, hd),
                    &m.pos,
                    &self.w.inv_freq,
                    (&kv.k[li], &kv.v[li]),
                    &m.slots,
                    &m.host_slots,
                )
            };
            let staged = QkvInput::Norm {
                y,
                resid: &a.resid,
                weight: &l.in_norm,
                eps,
            };
            let norm_staged = plain && qkv_rope(&staged)?;
            if !norm_staged {
                ops.rmsnorm(
                    y.unwrap_or(&a.resid),
                    y.map(|_| &a.resid),
                    &l.in_norm,
                    &a.h,
                    eps,
                )?;
            }
            let fused = norm_staged || (plain && qkv_rope(&QkvInput::Row(&a.h))?);
            let rope_q = !fused && attn_rope;
            if !fused {
                gemm.linear(&a.h, &l.qkv, &a.qkv)?;
                if let Some(p) = lora {
                    p.apply(ops, gemm, li, Proj::Qkv, &a.h, &a.qkv)?;
                }
                if !plain_model {
                    let qn = l.qk_norm.as_ref().map(|(q, k)| (q, k));
                    ops.qkv_bias_norm(&a.qkv, l.qkv_bias.as_ref(), qn, nh, nkv, hd, eps)?;
                }
                ops.rope_kv_write(
                    &a.qkv,
                    0,
                    if rope_q { 0 } else { nh },
                    q_w,
                    nkv,
                    q_w + kv_w,
                    hd,
                    &m.pos,
                    &self.w.inv_freq,
                    &kv.k[li],
                    &kv.v[li],
                    &m.slots,
                    &m.host_slots,
                )?;
            }
            // A pending L2 -> L1 load: this layer's pages must have landed (later layers may
            // still be crossing the bus).
            kv.wait_layer(li)?;
            let inv_freq = &self.w.inv_freq;
            if let Some(plan) = single.first() {
                let r = rope_q.then_some(QRope {
                    pos: &m.pos,
                    inv_freq,
                });
                ops.paged_attention_rope(plan, &a.qkv, 0, &kv.k[li], &kv.v[li], &a.attn, scale, r)?;
            }
            for p in parts {
                // Row views of q, its positions and the output (the whole tensors when one part
                // covers all).
                let (qw, ow) = (a.qkv.shape()[1], a.attn.shape()[1]);
                let rows = p.rows.len();
                let q = a.qkv.view(p.rows.start * qw, &[rows, qw])?;
                let o = a.attn.view(p.rows.start * ow, &[rows, ow])?;
                let pos = m.pos.view(p.rows.start, &[rows])?;
                let r = rope_q.then_some(QRope {
                    pos: &pos,
                    inv_freq,
                });
                ops.paged_attention_rope(&p.plan, &q, 0, &kv.k[li], &kv.v[li], &o, scale, r)?;
            }
            // One row at hidden NORM_IN_QKV: o added into the residual in its epilogue, the
            // MLP's input norm staged in the gate GEMV (Gemm::o_norm_gate_t1).
            let post = PostNorm {
                resid: &a.resid,
                add: if norm_staged { y } else { None },
                weight: &l.post_norm,
                eps,
            };
            if lora.is_none()
                && !acc
                && gemm.o_norm_gate_t1(&a.attn, &l.o, &post, &l.gate_up, &a.act)?
            {
                gemm.linear(&a.act, &l.down, &a.y)?;
                continue;
            }
            let o_out = if acc { &a.resid } else { &a.y_o };
            gemm.linear_into(&a.attn, &l.o, o_out, acc)?;
            if let Some(p) = lora {
                p.apply(ops, gemm, li, Proj::O, &a.attn, o_out)?;
            }
            match y {
                _ if acc => ops.rmsnorm(&a.resid, None, &l.post_norm, &a.h, eps)?,
                Some(y) if norm_staged => {
                    ops.rmsnorm_add2(y, &a.y_o, &a.resid, &l.post_norm, &a.h, eps)?
                }
                _ => ops.rmsnorm(&a.y_o, Some(&a.resid), &l.post_norm, &a.h, eps)?,
            }
            self.mlp(a, li, acc, lora)?;
        }
        if let Some((last, logits, tokens)) = &a.head {
            let head = self.w.lm_head.as_ref().unwrap_or(&self.w.embed);
            if self.w.layers.is_empty() || acc {
                ops.rmsnorm(&a.resid, None, &self.w.norm, &a.h, eps)?;
            } else {
                ops.rmsnorm(&a.y, Some(&a.resid), &self.w.norm, &a.h, eps)?;
            }
            if a.h.shape()[0] == 1 && logits.shape()[0] == 1 {
                // One row, the sampled one: no gather; the greedy pick in the GEMV's epilogue
                // where it applies.
                let stored = head_and_pick(ops, gemm, &a.h, head, logits, tokens, m.pick)?;
                m.picked.set(stored && m.pick.host_cell != 0);
            } else {
                ops.embedding(&m.last, &a.h, last)?;
                gemm.linear(last, head, logits)?;
                ops.argmax_rows(logits, tokens)?;
            }
        }
        Ok(())
    }

    /// The MLP sub-layer of layer `li` on `a.h`, its output added into `a.resid` (`acc`) or
    /// written to `a.y`. One row without an adapter: the SiLU in gate_up's epilogue
    /// (`Gemm::gate_silu`) or staged in the down GEMV (`silu_linear_t1`); adapter rows take
    /// gate_up unfused (their change lands before the SiLU).
    fn mlp(
        &self,
        a: &Acts,
        li: usize,
        acc: bool,
        lora: Option<&lora::Run>,
    ) -> Result<(), CudaError> {
        let (ops, gemm, l) = (&self.ops, &self.gemm, &self.w.layers[li]);
        let out = if acc { &a.resid } else { &a.y };
        if lora.is_none() && gemm.gate_silu(&a.h, &l.gate_up, &a.act)? {
            return gemm.linear_into(&a.act, &l.down, out, acc);
        }
        gemm.linear(&a.h, &l.gate_up, &a.gu)?;
        match lora {
            Some(p) => p.apply(ops, gemm, li, Proj::GateUp, &a.h, &a.gu)?,
            None if !acc && gemm.silu_linear_t1(&a.gu, &l.down, out)? => return Ok(()),
            None => {}
        }
        ops.silu_mul(&a.gu, &a.act)?;
        gemm.linear_into(&a.act, &l.down, out, acc)?;
        if let Some(p) = lora {
            p.apply(ops, gemm, li, Proj::Down, &a.act, out)?;
        }
        Ok(())
    }

    /// Queues `batch` eagerly (no graph); returns its activations (logits in `head`).
    fn eager(&self, batch: &ForwardBatch, kv: &CudaKv) -> Result<Acts, CudaError> {
        let n = batch.tokens.len();
        let rows = batch.logit_rows.len();
        let slots_cap = kv.num_pages * kv.page_size;
        if batch.positions.len() != n
            || batch.slots.len() != n
            || batch.logit_rows.iter().any(|&r| r >= n)
            || batch.slots.iter().any(|&s| s as usize >= slots_cap)
        {
            return Err(CudaError::Shape(format!(
                "batch of {n} tokens: positions, slots (< {slots_cap}) or logit rows do not fit"
            )));
        }
        let mut host = Vec::with_capacity(3 * n + rows);
        host.extend(batch.tokens.iter().map(|&t| t as i32));
        host.extend(batch.positions.iter().map(|&p| p as i32));
        host.extend(batch.slots.iter().map(|&s| s as i32));
        host.extend(batch.logit_rows.iter().map(|&r| r as i32));
        let host_slots = host[2 * n..3 * n].to_vec();
        let buf = self.ctx.upload_i32(&[host.len()], &host)?;
        let mut meta = Meta::views(buf, n, rows, host_slots)?;
        // Per row (as the graphs do) up to SEG_MAX_ROWS rows and always in batch-invariant mode.
        let per_row = n <= lora::SEG_MAX_ROWS || self.opts.deterministic;
        meta.lora = self.loras.run(&self.ctx, &self.cfg, batch, per_row)?;
        let parts = self.attn_parts(batch, kv)?;
        let acts = self.acts(n, rows)?;
        // Prefill-sized batches without programmatic dependent launch (launch.rs).
        launch::prefill_forward(n, || self.forward_parts(&acts, &meta, &[], &parts, kv))?;
        Ok(acts)
    }

    /// [`ModelRunner::run_batch`] once every row's counts are whole.
    fn run_counted(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut CudaKv,
    ) -> Result<Vec<Sampled>, ModelError> {
        let entered = std::time::Instant::now();
        self.count_forward();
        // Rows whose hidden states come back run eagerly (the graphs keep none).
        let graph = if sampling.iter().any(|r| r.embed || r.hidden) {
            None
        } else {
            // Out while it runs: a batch with adapters may capture its bucket's LoRA graph.
            let mut graphs = std::mem::take(&mut self.graphs);
            let run = graphs.try_run(self, batch, sampling, kv);
            self.graphs = graphs;
            run?
        };
        let out = match graph {
            Some((out, launched)) => {
                self.counts.1 += 1;
                self.prof.add(entered, launched);
                out
            }
            None => self.run_eager(batch, sampling, kv)?,
        };
        kv.settle()?;
        self.prof.last_return = Some(std::time::Instant::now());
        Ok(out)
    }

    /// Runs a batch without a graph and samples it.
    fn run_eager(
        &self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &CudaKv,
    ) -> Result<Vec<Sampled>, CudaError> {
        let acts = self.eager(batch, kv)?;
        match &acts.head {
            Some((last, logits, tokens)) => {
                let mut out = self.sample(logits, tokens, sampling)?;
                if sampling.iter().any(|r| r.embed || r.hidden) {
                    // The one-row forward normed into `h` without the gather (forward_parts).
                    let one = acts.h.shape()[0] == 1 && logits.shape()[0] == 1;
                    let states = self.hidden_rows(if one { &acts.h } else { last }, out.len())?;
                    for ((r, s), state) in sampling.iter().zip(&mut out).zip(states) {
                        if r.embed {
                            *s = Sampled::embedding(state);
                        } else if r.hidden {
                            s.embedding = Some(state);
                        }
                    }
                }
                Ok(out)
            }
            None => {
                self.ctx.synchronize()?;
                Ok(Vec::new())
            }
        }
    }

    /// The first `rows` rows of a [rows, hidden] bf16 tensor, as f32 (one copy).
    fn hidden_rows(&self, t: &DTensor, rows: usize) -> Result<Vec<Vec<f32>>, CudaError> {
        let h = self.cfg.hidden_size;
        let mut bytes = vec![0u8; 2 * h * rows];
        self.ctx.download_bytes(t, 0, &mut bytes)?;
        Ok(bytes
            .chunks_exact(2 * h)
            .map(|row| {
                row.chunks_exact(2)
                    .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                    .collect()
            })
            .collect())
    }

    /// Runs `batch` eagerly and returns the logits of its `logit_rows` ([rows, vocab] f32) and
    /// their greedy picks (for correctness checks against a reference implementation).
    pub fn logits(
        &self,
        batch: &ForwardBatch,
        kv: &mut CudaKv,
    ) -> Result<(Vec<f32>, Vec<i32>), ModelError> {
        let acts = self.eager(batch, kv)?;
        kv.settle()?;
        match &acts.head {
            Some((_, logits, tokens)) => Ok((
                self.ctx.download_f32(logits)?,
                self.ctx.download_i32(tokens)?,
            )),
            None => Ok((Vec::new(), Vec::new())),
        }
    }
}

impl ModelRunner for CudaRunner {
    type Kv = CudaKv;

    fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn kv_bytes_per_token(&self) -> usize {
        2 * self.cfg.num_layers * self.cfg.kv_dim() * 2
    }
    fn kv_budget_bytes(&self, mem_fraction_static: f64) -> Option<usize> {
        let (free, total) = self.ctx.mem_info().ok()?;
        let budget = strata_kernels::cuda::info::kv_budget(total, free, mem_fraction_static);
        Some(budget.saturating_sub(self.reserve_bytes()))
    }
    fn new_kv(&self, num_pages: usize, page_size: usize) -> Result<CudaKv, ModelError> {
        Ok(CudaKv::new(
            &self.ctx,
            self.cfg.num_layers,
            self.cfg.kv_dim(),
            num_pages,
            page_size,
        )?)
    }
    fn kv_elem_bytes(&self) -> usize {
        2
    }
    fn supports_lora(&self) -> bool {
        true
    }
    fn kv_page_io(&self) -> bool {
        true
    }
    fn save_pages(
        &self,
        kv: &CudaKv,
        dev: &[PageId],
        host: &HostKvPool,
        host_pages: &[PageId],
    ) -> Result<(), ModelError> {
        Ok(kv.save_pages(dev, host, host_pages)?)
    }
    fn load_pages(
        &self,
        kv: &mut CudaKv,
        host: &HostKvPool,
        host_pages: &[PageId],
        dev: &[PageId],
    ) -> Result<(), ModelError> {
        Ok(kv.load_pages(host, host_pages, dev)?)
    }
    fn device_kv(&self, kv: &CudaKv) -> Option<Arc<dyn crate::pd::share::DeviceKv>> {
        if !crate::pd::share::ipc_enabled() {
            return None;
        }
        match device_kv(kv) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("PD: no CUDA IPC path: {e}");
                None
            }
        }
    }
    fn attach_host(
        &self,
        kv: &mut CudaKv,
        host: &HostKvPool,
        direct_io: bool,
    ) -> Result<(), ModelError> {
        let io = if direct_io {
            strata_kernels::cuda::HostIo::Direct
        } else {
            strata_kernels::cuda::HostIo::Kernel
        };
        Ok(kv.attach_host(host, io)?)
    }
    fn finish_host_io(&self, kv: &mut CudaKv) -> Result<(), ModelError> {
        kv.settle()?;
        Ok(self.ctx.synchronize()?)
    }
    fn warmup(&mut self, kv: &mut CudaKv) -> Result<(), ModelError> {
        let t0 = std::time::Instant::now();
        let graphs = graph::Graphs::capture(self, kv)?;
        tracing::info!(
            buckets = ?graphs.sizes(),
            secs = t0.elapsed().as_secs_f64(),
            "CUDA graphs captured for decode"
        );
        self.graphs = graphs;
        Ok(())
    }
    /// In place (`weights.rs`): the graphs keep reading the same buffers.
    fn reload_weights(&mut self, dir: &Path, _kv: &mut CudaKv) -> Result<(), ModelError> {
        let cfg = ModelConfig::load(dir)?;
        self.cfg.check_same_shapes(&cfg)?;
        self.ctx.synchronize()?;
        self.w.overwrite(&self.ctx, dir, &cfg)?;
        self.cfg = cfg;
        Ok(())
    }
    fn run_batch(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut CudaKv,
    ) -> Result<Vec<Sampled>, ModelError> {
        check_sampling(batch, sampling)?;
        with_uncounted_counted(batch, sampling, |s| self.run_counted(batch, s, kv))
    }
    fn queues(&self) -> bool {
        true
    }
    fn launch(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut CudaKv,
    ) -> Result<crate::model::Launch, ModelError> {
        self.launch_batch(batch, sampling, kv)
    }
    fn launch_later(&mut self, batch: &ForwardBatch, kv: &mut CudaKv) -> Result<(), ModelError> {
        self.launch_forward_only(batch, kv)
    }
    fn sample_later(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut CudaKv,
    ) -> Result<crate::model::Launch, ModelError> {
        self.sample_launched(batch, sampling, kv)
    }
    fn collect(
        &mut self,
        q: crate::model::Queued,
        _kv: &mut CudaKv,
    ) -> Result<Vec<Sampled>, ModelError> {
        self.collect_batch(q)
    }
}

/// Time of graph-replayed decode steps, split at the runner's edges: `between` (the previous
/// step's return to this step's call: the scheduler, token delivery, the next batch), `prep`
/// (the call to the graph launch: metadata and plan tables written) and `run` (the launch to
/// the return: the GPU's step, the sampler and the token download; about nothing for a queued
/// launch), and `wait` (blocked taking queued forwards' tokens back). Logged every 512 forwards.
#[derive(Default)]
struct StepProfile {
    steps: u64,
    between: f64,
    prep: f64,
    run: f64,
    wait: f64,
    last_return: Option<std::time::Instant>,
}

impl StepProfile {
    fn add(&mut self, entered: std::time::Instant, launched: std::time::Instant) {
        let now = std::time::Instant::now();
        // A gap over 50 ms is the server idling between requests, not a step's overhead.
        let gap = self
            .last_return
            .map(|r| entered.duration_since(r).as_secs_f64());
        if gap.is_some_and(|g| g < 0.05) {
            self.steps += 1;
            self.between += gap.unwrap_or(0.0);
            self.prep += launched.duration_since(entered).as_secs_f64();
            self.run += now.duration_since(launched).as_secs_f64();
        }
    }

    fn log(&mut self) {
        if self.steps > 0 {
            let us = |x: f64| (x / self.steps as f64 * 1e6).round();
            tracing::info!(
                steps = self.steps,
                between_us = us(self.between),
                prep_us = us(self.prep),
                run_us = us(self.run),
                wait_us = us(self.wait),
                "CUDA runner: back-to-back graph decode steps"
            );
        }
        *self = StepProfile {
            last_return: self.last_return,
            ..Default::default()
        };
    }
}
