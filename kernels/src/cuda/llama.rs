//! A Llama-architecture layer stack on the CUDA ops: random bf16 weights generated on the GPU,
//! a paged KV pool per layer, and one `forward` that serves prefill and decode alike.
//!
//! Used by `strata gpu bench` (decode and prefill against the bandwidth and GEMM floors) and the
//! template for the server's `CudaBackend` forward. Residual stream: `resid` holds the running
//! sum, each sub-layer writes its output to `y`, and the fused `rmsnorm(y, resid)` adds and
//! normalises in one pass (layer 0 normalises the embedding directly).

use cudarc::driver::CudaGraph;

use super::attention::{AttnPlan, AttnShape, QRope};
use super::error::Result;
use super::gemm::{Gemm, QkvInput};
use super::gemm_head::{head_and_pick, PickOut};
use super::gemm_tail::PostNorm;
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};

/// Model dimensions.
#[derive(Clone, Copy, Debug)]
pub struct LlamaShape {
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV heads.
    pub n_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// MLP intermediate size.
    pub inter: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
}

impl LlamaShape {
    /// Meta-Llama-3-8B dimensions.
    pub fn llama3_8b() -> Self {
        Self {
            hidden: 4096,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            inter: 14336,
            layers: 32,
            vocab: 128256,
            rope_theta: 500000.0,
            eps: 1e-5,
        }
    }
    /// Llama-3.2-1B dimensions (its LM head is tied to the embedding; here it is a separate
    /// matrix of the same size, so a decode step reads the same bytes).
    pub fn llama32_1b() -> Self {
        Self {
            hidden: 2048,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 64,
            inter: 8192,
            layers: 16,
            vocab: 128256,
            rope_theta: 500000.0,
            eps: 1e-5,
        }
    }
    /// Width of the fused qkv projection.
    pub fn qkv_width(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }
    /// Parameters of one decoder layer's matrices.
    pub fn layer_matrix_params(&self) -> usize {
        let h = self.hidden;
        self.qkv_width() * h + h * self.n_heads * self.head_dim + 3 * self.inter * h
    }
    /// Bytes a decode step must read at least once: every layer's weights, the final norm and
    /// the LM head (embedding rows are negligible).
    pub fn decode_weight_bytes(&self) -> usize {
        2 * (self.layers * (self.layer_matrix_params() + 2 * self.hidden)
            + self.hidden
            + self.vocab * self.hidden)
    }
}

struct Layer {
    in_norm: DTensor,
    qkv: DTensor,
    o: DTensor,
    post_norm: DTensor,
    gate_up: DTensor,
    down: DTensor,
    k_pool: DTensor,
    v_pool: DTensor,
}

/// Activations sized for up to `tokens` rows and `batch` sampled rows.
pub struct Workspace {
    tokens: usize,
    resid: DTensor,
    y: DTensor,
    /// The o projection's output (y still holds the down projection's when the input norm was
    /// staged into the qkv GEMV).
    y_o: DTensor,
    h: DTensor,
    qkv: DTensor,
    attn: DTensor,
    gu: DTensor,
    act: DTensor,
    last: DTensor,
    /// Logits of the sampled rows, [batch, vocab] f32.
    pub logits: DTensor,
    /// Their greedy picks, [batch] i32 (the forward's last kernel writes them, as the server's
    /// does).
    pub picks: DTensor,
    /// Where the one-row head's pick also goes (none by default; the pipelined bench's lean
    /// step sets it before capturing, as the server's graphs do).
    pub pick_out: std::cell::Cell<PickOut>,
}

/// One forward step's inputs (rows = new tokens of all sequences, in order).
pub struct StepInput {
    /// Token ids [rows] i32.
    pub ids: DTensor,
    /// Positions [rows] i32.
    pub pos: DTensor,
    /// KV slots [rows] i32.
    pub slots: DTensor,
    /// Host copy of `slots` (validated against the pool).
    pub host_slots: Vec<i32>,
    /// Attention plan for the batch.
    pub plan: AttnPlan,
    /// Rows whose logits are computed (last token of each sequence) [batch] i32.
    pub last_rows: DTensor,
}

/// A Llama model with random weights and its KV pool.
pub struct LlamaModel {
    /// Dimensions.
    pub shape: LlamaShape,
    /// Tokens per KV page.
    pub page_size: usize,
    /// Pages per layer pool.
    pub pool_pages: usize,
    embed: DTensor,
    layers: Vec<Layer>,
    norm: DTensor,
    lm_head: DTensor,
    inv_freq: DTensor,
}

impl LlamaModel {
    /// Allocates and fills every weight and KV pool with uniform noise on the GPU.
    pub fn random(
        ops: &CudaOps,
        shape: LlamaShape,
        page_size: usize,
        pool_pages: usize,
        seed: u64,
    ) -> Result<Self> {
        let ctx = ops.context();
        let s = shape;
        let mut seed = seed;
        let mut make = |dims: &[usize], scale: f32| -> Result<DTensor> {
            let t = ctx.alloc(DType::Bf16, dims)?;
            seed = seed.wrapping_add(0x9e37_79b9);
            ops.fill_uniform(&t, seed, scale)?;
            Ok(t)
        };
        let h = s.hidden;
        let ws = 1.0 / (h as f32).sqrt();
        let kv_dim = s.n_kv_heads * s.head_dim;
        let slots = page_size * pool_pages;
        let mut layers = Vec::with_capacity(s.layers);
        for _ in 0..s.layers {
            layers.push(Layer {
                in_norm: make(&[h], 1.0)?,
                qkv: make(&[s.qkv_width(), h], ws)?,
                o: make(&[h, s.n_heads * s.head_dim], ws)?,
                post_norm: make(&[h], 1.0)?,
                gate_up: make(&[2 * s.inter, h], ws)?,
                down: make(&[h, s.inter], 1.0 / (s.inter as f32).sqrt())?,
                k_pool: make(&[slots, kv_dim], 1.0)?,
                v_pool: make(&[slots, kv_dim], 1.0)?,
            });
        }
        let inv = crate::reference::rope_inv_freq(
            s.head_dim,
            s.rope_theta,
            Some(crate::reference::Llama3Scaling::default()),
        );
        Ok(Self {
            embed: make(&[s.vocab, h], 1.0)?,
            norm: make(&[h], 1.0)?,
            lm_head: make(&[s.vocab, h], ws)?,
            inv_freq: ctx.upload_f32(&[inv.len()], &inv)?,
            layers,
            shape,
            page_size,
            pool_pages,
        })
    }

    /// Attention geometry of this model's pool.
    pub fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.shape.n_heads,
            n_kv_heads: self.shape.n_kv_heads,
            head_dim: self.shape.head_dim,
            page_size: self.page_size,
            pool_pages: self.pool_pages,
        }
    }

    /// Activation buffers for up to `tokens` rows and `batch` sequences.
    pub fn workspace(&self, ops: &CudaOps, tokens: usize, batch: usize) -> Result<Workspace> {
        let c = ops.context();
        let s = self.shape;
        let b = |d: &[usize]| c.alloc(DType::Bf16, d);
        Ok(Workspace {
            tokens,
            resid: b(&[tokens, s.hidden])?,
            y: b(&[tokens, s.hidden])?,
            y_o: b(&[tokens, s.hidden])?,
            h: b(&[tokens, s.hidden])?,
            qkv: b(&[tokens, s.qkv_width()])?,
            attn: b(&[tokens, s.n_heads * s.head_dim])?,
            gu: b(&[tokens, 2 * s.inter])?,
            act: b(&[tokens, s.inter])?,
            last: b(&[batch, s.hidden])?,
            logits: c.alloc(DType::F32, &[batch, s.vocab])?,
            picks: c.alloc(DType::I32, &[batch])?,
            pick_out: Default::default(),
        })
    }

    /// Runs every layer for `input` and leaves the sampled rows' logits in `ws.logits` and their
    /// greedy picks in `ws.picks`.
    /// Asynchronous on the compute stream. `ws` must have been made for exactly
    /// `input.plan.rows()` tokens (activations are shaped per call).
    pub fn forward(
        &self,
        ops: &CudaOps,
        gemm: &Gemm,
        ws: &Workspace,
        input: &StepInput,
    ) -> Result<()> {
        self.forward_marked(ops, gemm, ws, input, &mut |_| Ok(()))
    }

    /// [`LlamaModel::forward`], calling `mark(op)` after each op's launches (`gpu bench` records
    /// a CUDA event there for its per-op breakdown).
    pub fn forward_marked(
        &self,
        ops: &CudaOps,
        gemm: &Gemm,
        ws: &Workspace,
        input: &StepInput,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        // Prefill-sized forwards without PDL, as the server's eager forwards (launch.rs).
        super::launch::prefill_forward(ws.tokens, || {
            self.forward_hooked(ops, gemm, ws, input, &|_| false, mark)
        })
    }

    /// Layer `layer`'s attention alone on what the last forward left in `ws` and the pools
    /// (`gpu bench`: the attention on the forward's own data, apart from the forward).
    pub fn layer_attention(
        &self,
        ops: &CudaOps,
        ws: &Workspace,
        input: &StepInput,
        layer: usize,
    ) -> Result<()> {
        let l = &self.layers[layer];
        let scale = 1.0 / (self.shape.head_dim as f32).sqrt();
        ops.paged_attention(
            &input.plan,
            &ws.qkv,
            0,
            &l.k_pool,
            &l.v_pool,
            &ws.attn,
            scale,
        )
    }

    /// Overwrites what layer `layer`'s attention reads (`ws.qkv` and the layer's K/V pools)
    /// with uniform noise in [-scale, scale] (`gpu bench`: the same attention on random data).
    pub fn randomize_attention_inputs(
        &self,
        ops: &CudaOps,
        ws: &Workspace,
        layer: usize,
        seed: u64,
        scale: f32,
    ) -> Result<()> {
        let l = &self.layers[layer];
        ops.fill_uniform(&ws.qkv, seed, scale)?;
        ops.fill_uniform(&l.k_pool, seed + 1, scale)?;
        ops.fill_uniform(&l.v_pool, seed + 2, scale)
    }

    /// Layer `layer`'s gate_up GEMM alone on `ws.h` into `ws.gu` (`gpu bench`: a forward's
    /// heaviest GEMM, run right before an op to time that op in the GEMMs' wake).
    pub fn layer_gate_up(&self, gemm: &Gemm, ws: &Workspace, layer: usize) -> Result<()> {
        gemm.linear(&ws.h, &self.layers[layer].gate_up, &ws.gu)
    }

    /// Ops of a layer [`LlamaModel::forward_hooked`] can leave out (`gpu bench` times a step's
    /// graph without each, for what that op adds to the step; the logits are then garbage).
    pub const LAYER_OPS: [&'static str; 8] = [
        "norm1",
        "qkv",
        "rope_kv_write",
        "attention",
        "o",
        "norm2",
        "gate_up",
        "silu+down",
    ];

    /// [`LlamaModel::forward_marked`] leaving out every layer op for which `skip(op)` holds
    /// (names in [`LlamaModel::LAYER_OPS`]).
    pub fn forward_hooked(
        &self,
        ops: &CudaOps,
        gemm: &Gemm,
        ws: &Workspace,
        input: &StepInput,
        skip: &dyn Fn(&str) -> bool,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        let s = self.shape;
        super::error::ensure(ws.tokens == input.plan.rows(), || {
            format!(
                "workspace for {} rows, step has {}",
                ws.tokens,
                input.plan.rows()
            )
        })?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let q_w = s.n_heads * s.head_dim;
        let kv_w = s.n_kv_heads * s.head_dim;
        ops.embedding(&input.ids, &self.embed, &ws.resid)?;
        mark("embedding")?;
        // Prefill-sized forwards add each sub-layer's output to the residual inside its last
        // GEMM (Gemm::linear_acc); otherwise the next norm adds it.
        let acc = gemm.acc_applies(ws.tokens);
        for (i, l) in self.layers.iter().enumerate() {
            // Layer 0 normalises the embedding; later layers add the previous sub-layer's y.
            let y = (i > 0 && !acc).then_some(&ws.y);
            // One row: the input norm staged into the qkv GEMV (the residual then gets both
            // sub-layer outputs in norm2), with RoPE and the K/V write in its epilogue (the
            // "qkv" op then includes norm1 and rope_kv_write).
            let staged = QkvInput::Norm {
                y,
                resid: &ws.resid,
                weight: &l.in_norm,
                eps: s.eps,
            };
            let qkv_rope = |qi: &QkvInput<'_>| {
                gemm.qkv_rope_t1(
                    ops,
                    qi,
                    &l.qkv,
                    &ws.qkv,
                    (s.n_heads, s.n_kv_heads, s.head_dim),
                    &input.pos,
                    &self.inv_freq,
                    (&l.k_pool, &l.v_pool),
                    &input.slots,
                    &input.host_slots,
                )
            };
            let norm_staged = !skip("qkv") && qkv_rope(&staged)?;
            if !norm_staged && !skip("norm1") {
                self.norm(ops, y, &ws.resid, &l.in_norm, &ws.h)?;
            }
            let fused = norm_staged || (!skip("qkv") && qkv_rope(&QkvInput::Row(&ws.h))?);
            if !skip("qkv") && !fused {
                gemm.linear(&ws.h, &l.qkv, &ws.qkv)?;
            }
            mark("norm+qkv")?;
            // The wgmma prefill attention rotates Q as it loads it: K alone here.
            let rope_q = gemm.attn_rope(&input.plan);
            if !skip("rope_kv_write") && !fused {
                ops.rope_kv_write(
                    &ws.qkv,
                    0,
                    if rope_q { 0 } else { s.n_heads },
                    q_w,
                    s.n_kv_heads,
                    q_w + kv_w,
                    s.head_dim,
                    &input.pos,
                    &self.inv_freq,
                    &l.k_pool,
                    &l.v_pool,
                    &input.slots,
                    &input.host_slots,
                )?;
            }
            mark("rope_kv_write")?;
            if !skip("attention") {
                ops.paged_attention_rope(
                    &input.plan,
                    &ws.qkv,
                    0,
                    &l.k_pool,
                    &l.v_pool,
                    &ws.attn,
                    scale,
                    rope_q.then_some(QRope {
                        pos: &input.pos,
                        inv_freq: &self.inv_freq,
                    }),
                )?;
            }
            mark("attention")?;
            // One row at hidden NORM_IN_QKV: o added into the residual in its epilogue, the
            // MLP's input norm staged in the gate GEMV (the "o" op then includes norm2 and
            // gate_up).
            let post = PostNorm {
                resid: &ws.resid,
                add: if norm_staged { y } else { None },
                weight: &l.post_norm,
                eps: s.eps,
            };
            let tail = !acc
                && !["o", "norm2", "gate_up"].iter().any(|op| skip(op))
                && gemm.o_norm_gate_t1(&ws.attn, &l.o, &post, &l.gate_up, &ws.act)?;
            if !skip("o") && !tail {
                let out = if acc { &ws.resid } else { &ws.y_o };
                gemm.linear_into(&ws.attn, &l.o, out, acc)?;
            }
            mark("o")?;
            if !skip("norm2") && !tail {
                match y {
                    _ if acc => ops.rmsnorm(&ws.resid, None, &l.post_norm, &ws.h, s.eps)?,
                    Some(y) if norm_staged => {
                        ops.rmsnorm_add2(y, &ws.y_o, &ws.resid, &l.post_norm, &ws.h, s.eps)?
                    }
                    _ => ops.rmsnorm(&ws.y_o, Some(&ws.resid), &l.post_norm, &ws.h, s.eps)?,
                }
            }
            // One row: the SiLU in gate_up's epilogue, down a plain GEMV. Otherwise gate_up,
            // then the SiLU staged in the single-row down GEMV or silu_mul.
            let gated = tail || gemm.gate_silu_applies(&ws.h, &l.gate_up);
            if !skip("gate_up") && !tail {
                if gated {
                    gemm.gate_silu(&ws.h, &l.gate_up, &ws.act)?;
                } else {
                    gemm.linear(&ws.h, &l.gate_up, &ws.gu)?;
                }
            }
            mark("norm+gate_up")?;
            if !skip("silu+down") {
                if acc {
                    if !gated {
                        ops.silu_mul(&ws.gu, &ws.act)?;
                    }
                    gemm.linear_acc(&ws.act, &l.down, &ws.resid)?;
                } else if gated {
                    gemm.linear(&ws.act, &l.down, &ws.y)?;
                } else if !gemm.silu_linear_t1(&ws.gu, &l.down, &ws.y)? {
                    ops.silu_mul(&ws.gu, &ws.act)?;
                    gemm.linear(&ws.act, &l.down, &ws.y)?;
                }
            }
            mark("silu+down")?;
        }
        let y = (!self.layers.is_empty() && !acc).then_some(&ws.y);
        self.norm(ops, y, &ws.resid, &self.norm, &ws.h)?;
        if ws.tokens == 1 && ws.logits.shape()[0] == 1 {
            // One row, the sampled one: no gather; the greedy pick in the GEMV's epilogue.
            head_and_pick(
                ops,
                gemm,
                &ws.h,
                &self.lm_head,
                &ws.logits,
                &ws.picks,
                ws.pick_out.get(),
            )?;
            return mark("norm+lm_head+argmax");
        }
        ops.embedding(&input.last_rows, &ws.h, &ws.last)?;
        mark("final norm+gather")?;
        gemm.linear(&ws.last, &self.lm_head, &ws.logits)?;
        ops.argmax_rows(&ws.logits, &ws.picks)?;
        mark("lm_head+argmax")
    }

    /// h = rmsnorm(resid [+= y]) * weight (the residual add in place when `y` is given).
    fn norm(
        &self,
        ops: &CudaOps,
        y: Option<&DTensor>,
        resid: &DTensor,
        weight: &DTensor,
        h: &DTensor,
    ) -> Result<()> {
        match y {
            Some(y) => ops.rmsnorm(y, Some(resid), weight, h, self.shape.eps),
            None => ops.rmsnorm(resid, None, weight, h, self.shape.eps),
        }
    }

    /// Captures `forward` for fixed inputs into a CUDA graph (replay with `launch()`): one
    /// launch instead of ~12 per layer for decode. Run `forward` once before capturing so that
    /// cuBLAS has chosen its kernels and workspace. Capture failure ends the capture and errors.
    pub fn capture(
        &self,
        ops: &CudaOps,
        gemm: &Gemm,
        ws: &Workspace,
        input: &StepInput,
    ) -> Result<CudaGraph> {
        self.capture_skipping(ops, gemm, ws, input, &|_| false)
    }

    /// [`LlamaModel::capture`] of [`LlamaModel::forward_hooked`] with `skip`.
    pub fn capture_skipping(
        &self,
        ops: &CudaOps,
        gemm: &Gemm,
        ws: &Workspace,
        input: &StepInput,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<CudaGraph> {
        ops.capture_graph(|| self.forward_hooked(ops, gemm, ws, input, skip, &mut |_| Ok(())))
    }
}
