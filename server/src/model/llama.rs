//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over any compute [`Backend`].
//!
//! One [`Model::forward`] runs a mixed batch: any number of sequences, each contributing a run of
//! new tokens (a prefill chunk or one decode token) whose K/V are written into the paged cache at
//! the given slots before attention reads them. Logits are computed only for `logit_rows`.
//! Cost per call: O(tokens × params) for the projections plus O(Σ q_len × kv_len × hidden) for
//! attention. The layer shapes are validated once at load time.

use super::lora::{LoraAdapter, Target};
use super::weights::WeightMap;
use super::{ModelConfig, ModelError};
use std::path::Path;
use std::sync::Arc;
use strata_kernels::{AttnSeq, AttnShape, Backend, RopeTable};

/// One sequence's part of a forward batch (see [`AttnSeq`] for the meaning of the fields).
#[derive(Debug, Clone)]
pub struct SeqSlice {
    pub q_start: usize,
    pub q_len: usize,
    pub kv_len: usize,
    /// The sequence's page table, shared with the scheduler (no copy per step).
    pub pages: std::sync::Arc<Vec<u32>>,
    /// The slice is one generated token being decoded (not prompt tokens). Runners in
    /// batch-invariant mode compute such rows with the decode kernels and every prompt row with
    /// the prefill kernels, so a row's result does not depend on how its prompt was chunked.
    pub decode: bool,
    /// The LoRA adapter its rows run with (`model/lora.rs`), if any.
    pub lora: Option<std::sync::Arc<super::lora::LoraAdapter>>,
}

/// The input of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    /// KV slot (`page * page_size + offset`) of each token.
    pub slots: Vec<u32>,
    pub seqs: Vec<SeqSlice>,
    /// Rows whose logits are returned, in this order.
    pub logit_rows: Vec<usize>,
    /// Overlap scheduling: `(j, r)` means input token `j` is the token the previous launch
    /// ([`super::ModelRunner::launch`], still queued) samples in its logits row `r`; `tokens[j]`
    /// is a placeholder. Empty unless the previous launch was queued.
    pub from_prev: Vec<(usize, usize)>,
}

/// The paged KV cache in backend memory: one K and one V buffer per layer, layer-first, each of
/// `num_pages × page_size × kv_dim` floats.
pub struct KvBuffers<B: Backend> {
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub page_size: usize,
    pub num_pages: usize,
}

struct Layer<B: Backend> {
    attn_norm: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    q_bias: Option<B::Buf>,
    k_bias: Option<B::Buf>,
    v_bias: Option<B::Buf>,
    q_norm: Option<B::Buf>,
    k_norm: Option<B::Buf>,
    o: B::Buf,
    mlp_norm: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    down: B::Buf,
}

/// A loaded model.
pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    backend: B,
    embed: B::Buf,
    layers: Vec<Layer<B>>,
    norm: B::Buf,
    lm_head: Option<B::Buf>,
    rope: RopeTable,
}

impl<B: Backend> Model<B> {
    /// Loads `config.json` and the safetensors weights from `dir`; rope tables cover
    /// `max_positions` positions.
    pub fn load(dir: &Path, backend: B, max_positions: usize) -> Result<Self, ModelError> {
        let cfg = ModelConfig::load(dir)?;
        let mut w = WeightMap::load(dir)?;
        Self::from_weights(cfg, &mut w, backend, max_positions)
    }

    /// Builds the model from an already-read weight map.
    pub fn from_weights(
        cfg: ModelConfig,
        w: &mut WeightMap,
        backend: B,
        max_positions: usize,
    ) -> Result<Self, ModelError> {
        let (embed, layers, norm, lm_head) = Self::upload(&cfg, w, &backend)?;
        let rope = RopeTable::new(
            cfg.head_dim,
            cfg.rope_theta,
            &cfg.rope_scaling,
            max_positions,
        );
        Ok(Model {
            cfg,
            backend,
            embed,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

    /// Replaces the weights with the checkpoint in `dir` (`/update_weights_from_disk`), which
    /// must have this model's shapes. The new weights are read in full before any old one is
    /// dropped, so an error leaves the model as it was.
    pub fn reload(&mut self, dir: &Path) -> Result<(), ModelError> {
        let cfg = ModelConfig::load(dir)?;
        self.cfg.check_same_shapes(&cfg)?;
        let mut w = WeightMap::load(dir)?;
        let (embed, layers, norm, lm_head) = Self::upload(&cfg, &mut w, &self.backend)?;
        (self.embed, self.layers, self.norm, self.lm_head) = (embed, layers, norm, lm_head);
        self.cfg = cfg;
        Ok(())
    }

    /// The weight buffers of `cfg`'s tensors, read from `w` onto `b`.
    #[allow(clippy::type_complexity)]
    fn upload(
        cfg: &ModelConfig,
        w: &mut WeightMap,
        b: &B,
    ) -> Result<(B::Buf, Vec<Layer<B>>, B::Buf, Option<B::Buf>), ModelError> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.num_heads * cfg.head_dim, cfg.kv_dim());
        let tied = cfg.tie_word_embeddings && !w.contains("lm_head.weight");
        let mut up =
            |name: &str, shape: &[usize], on: bool| -> Result<Option<B::Buf>, ModelError> {
                if !on {
                    return Ok(None);
                }
                Ok(Some(b.upload(&w.take(name, shape)?)?))
            };
        macro_rules! req {
            ($name:expr, $shape:expr) => {
                up(&$name, $shape, true)?.expect("requested tensor")
            };
        }
        let embed = req!("model.embed_tokens.weight", &[v, h]);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        let (bias, qkn, hd) = (cfg.qkv_bias, cfg.qk_norm, cfg.head_dim);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let attn_norm = req!(format!("{p}.input_layernorm.weight"), &[h]);
            let q = req!(format!("{p}.self_attn.q_proj.weight"), &[qd, h]);
            let k = req!(format!("{p}.self_attn.k_proj.weight"), &[kvd, h]);
            let vw = req!(format!("{p}.self_attn.v_proj.weight"), &[kvd, h]);
            let o = req!(format!("{p}.self_attn.o_proj.weight"), &[h, qd]);
            let mlp_norm = req!(format!("{p}.post_attention_layernorm.weight"), &[h]);
            let gate = req!(format!("{p}.mlp.gate_proj.weight"), &[i, h]);
            let upw = req!(format!("{p}.mlp.up_proj.weight"), &[i, h]);
            let down = req!(format!("{p}.mlp.down_proj.weight"), &[h, i]);
            layers.push(Layer {
                attn_norm,
                q,
                k,
                v: vw,
                q_bias: up(&format!("{p}.self_attn.q_proj.bias"), &[qd], bias)?,
                k_bias: up(&format!("{p}.self_attn.k_proj.bias"), &[kvd], bias)?,
                v_bias: up(&format!("{p}.self_attn.v_proj.bias"), &[kvd], bias)?,
                q_norm: up(&format!("{p}.self_attn.q_norm.weight"), &[hd], qkn)?,
                k_norm: up(&format!("{p}.self_attn.k_norm.weight"), &[hd], qkn)?,
                o,
                mlp_norm,
                gate,
                up: upw,
                down,
            });
        }
        let norm = req!("model.norm.weight", &[h]);
        let lm_head = up("lm_head.weight", &[v, h], !tied)?;
        Ok((embed, layers, norm, lm_head))
    }

    /// The backend this model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Allocates a zeroed paged KV cache of `num_pages` pages.
    pub fn new_kv(&self, num_pages: usize, page_size: usize) -> Result<KvBuffers<B>, ModelError> {
        let floats = num_pages * page_size * self.cfg.kv_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..self.cfg.num_layers {
            k.push(self.backend.alloc(floats)?);
            v.push(self.backend.alloc(floats)?);
        }
        Ok(KvBuffers {
            k,
            v,
            page_size,
            num_pages,
        })
    }

    /// Bytes of KV cache per token (all layers, K and V, f32).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.cfg.num_layers * self.cfg.kv_dim() * 4
    }

    /// Runs the batch; returns `logit_rows.len() × vocab` logits.
    pub fn forward(
        &self,
        batch: &ForwardBatch,
        kv: &mut KvBuffers<B>,
    ) -> Result<Vec<f32>, ModelError> {
        Ok(self.forward_rows(batch, kv, false)?.0)
    }

    /// Runs the batch; returns `logit_rows.len() × vocab` logits and, when `hidden`, the same
    /// rows' hidden states after the final norm (`logit_rows.len() × hidden_size`; else empty).
    pub fn forward_rows(
        &self,
        batch: &ForwardBatch,
        kv: &mut KvBuffers<B>,
        hidden: bool,
    ) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let c = &self.cfg;
        let b = &self.backend;
        let n = batch.tokens.len();
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd) = (c.num_heads * hd, c.kv_dim());
        let mut x = b.alloc(n * h)?;
        b.embedding(&self.embed, h, &batch.tokens, &mut x)?;
        let mut normed = b.alloc(n * h)?;
        let mut q = b.alloc(n * qd)?;
        let mut k = b.alloc(n * kvd)?;
        let mut v = b.alloc(n * kvd)?;
        let mut attn = b.alloc(n * qd)?;
        let mut proj = b.alloc(n * h)?;
        let mut gate = b.alloc(n * c.intermediate_size)?;
        let mut upb = b.alloc(n * c.intermediate_size)?;
        let seqs: Vec<AttnSeq<'_>> = batch
            .seqs
            .iter()
            .map(|s| AttnSeq {
                q_start: s.q_start,
                q_len: s.q_len,
                kv_len: s.kv_len,
                pages: &s.pages,
            })
            .collect();
        let shape = AttnShape {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: hd,
            page_size: kv.page_size,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let loras = super::lora::rows_by_adapter(batch);
        let lora =
            |li: usize, t: Target, x: &B::Buf, y: &mut B::Buf| self.lora(&loras, li, t, x, y);
        for (li, l) in self.layers.iter().enumerate() {
            b.rms_norm(&x, &l.attn_norm, n, h, c.rms_norm_eps, &mut normed)?;
            b.linear(&normed, n, h, &l.q, qd, l.q_bias.as_ref(), &mut q)?;
            b.linear(&normed, n, h, &l.k, kvd, l.k_bias.as_ref(), &mut k)?;
            b.linear(&normed, n, h, &l.v, kvd, l.v_bias.as_ref(), &mut v)?;
            lora(li, Target::Q, &normed, &mut q)?;
            lora(li, Target::K, &normed, &mut k)?;
            lora(li, Target::V, &normed, &mut v)?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                let mut tmp = b.alloc(n * qd)?;
                b.rms_norm(&q, qn, n * c.num_heads, hd, c.rms_norm_eps, &mut tmp)?;
                std::mem::swap(&mut q, &mut tmp);
                let mut tmp = b.alloc(n * kvd)?;
                b.rms_norm(&k, kn, n * c.num_kv_heads, hd, c.rms_norm_eps, &mut tmp)?;
                std::mem::swap(&mut k, &mut tmp);
            }
            b.rope(&mut q, c.num_heads, hd, &batch.positions, &self.rope)?;
            b.rope(&mut k, c.num_kv_heads, hd, &batch.positions, &self.rope)?;
            b.store_kv(&mut kv.k[li], &mut kv.v[li], &k, &v, kvd, &batch.slots)?;
            b.attention(&q, &kv.k[li], &kv.v[li], &seqs, shape, &mut attn)?;
            b.linear(&attn, n, qd, &l.o, h, None, &mut proj)?;
            lora(li, Target::O, &attn, &mut proj)?;
            b.add_inplace(&mut x, &proj, n * h)?;
            b.rms_norm(&x, &l.mlp_norm, n, h, c.rms_norm_eps, &mut normed)?;
            b.linear(&normed, n, h, &l.gate, c.intermediate_size, None, &mut gate)?;
            b.linear(&normed, n, h, &l.up, c.intermediate_size, None, &mut upb)?;
            lora(li, Target::Gate, &normed, &mut gate)?;
            lora(li, Target::Up, &normed, &mut upb)?;
            let len = n * c.intermediate_size;
            let mut act = b.alloc(len)?;
            b.silu_mul(&gate, &upb, len, &mut act)?;
            b.linear(&act, n, c.intermediate_size, &l.down, h, None, &mut proj)?;
            lora(li, Target::Down, &act, &mut proj)?;
            b.add_inplace(&mut x, &proj, n * h)?;
        }
        let rows = batch.logit_rows.len();
        let mut last = b.alloc(rows * h)?;
        b.gather_rows(&x, h, &batch.logit_rows, &mut last)?;
        let mut last_n = b.alloc(rows * h)?;
        b.rms_norm(&last, &self.norm, rows, h, c.rms_norm_eps, &mut last_n)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = b.alloc(rows * c.vocab_size)?;
        b.linear(&last_n, rows, h, head, c.vocab_size, None, &mut logits)?;
        let mut out = vec![0f32; rows * c.vocab_size];
        b.download(&logits, &mut out)?;
        let mut states = Vec::new();
        if hidden {
            states = vec![0f32; rows * h];
            b.download(&last_n, &mut states)?;
        }
        Ok((out, states))
    }

    /// Adds each adapter's change to projection `t` of layer `li`: y [n, out] += the adapter's
    /// B A x [n, in] on its rows (through host copies of x and y; nothing when no row's adapter
    /// targets the projection).
    fn lora(
        &self,
        groups: &[(Arc<LoraAdapter>, Vec<usize>)],
        li: usize,
        t: Target,
        x: &B::Buf,
        y: &mut B::Buf,
    ) -> Result<(), ModelError> {
        if !groups.iter().any(|(a, _)| a.targets(li, t)) {
            return Ok(());
        }
        let b = &self.backend;
        let mut hx = vec![0f32; b.len(x)];
        b.download(x, &mut hx)?;
        let mut hy = vec![0f32; b.len(y)];
        b.download(y, &mut hy)?;
        for (a, rows) in groups {
            a.add(li, t, &hx, &mut hy, rows);
        }
        *y = b.upload(&hy)?;
        Ok(())
    }
}
