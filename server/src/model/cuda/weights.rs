//! The CUDA runner's weights: read from a checkpoint as bf16 host tensors in the runner's fused
//! layout (q/k/v and gate/up concatenated along the output dimension), uploaded once at load,
//! and written over in place by `/update_weights_from_disk`: the device buffers keep their
//! addresses, so the decode graphs captured at start-up stay valid and no second copy of the
//! model is ever on the GPU. The whole new checkpoint is read and checked before the first byte
//! is written, so a bad checkpoint leaves the served weights as they were.

use super::super::{ModelConfig, ModelError};
use super::load::Bf16Map;
use std::path::Path;
use strata_kernels::cuda::{DTensor, GpuContext};

/// One decoder layer on the GPU.
pub(super) struct Layer {
    pub in_norm: DTensor,
    pub qkv: DTensor,
    pub qkv_bias: Option<DTensor>,
    pub qk_norm: Option<(DTensor, DTensor)>,
    pub o: DTensor,
    pub post_norm: DTensor,
    pub gate_up: DTensor,
    pub down: DTensor,
}

/// Every weight of the model on the GPU.
pub(super) struct Weights {
    pub embed: DTensor,
    pub layers: Vec<Layer>,
    pub norm: DTensor,
    /// None: tied to the embedding.
    pub lm_head: Option<DTensor>,
    /// RoPE's inverse frequencies (from config.json's theta and scaling).
    pub inv_freq: DTensor,
}

/// A checkpoint's tensors in the order [`Weights::tensors`] lists them, with their shapes.
struct Host {
    tensors: Vec<(Vec<usize>, Vec<u16>)>,
    tied: bool,
    inv_freq: Vec<f32>,
}

/// Reads and checks every tensor `cfg` asks for from the checkpoint in `dir`.
fn read(dir: &Path, cfg: &ModelConfig) -> Result<Host, ModelError> {
    let mut w = Bf16Map::load(dir)?;
    let hd = cfg.head_dim;
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (cfg.num_heads * hd, cfg.kv_dim());
    let tied = cfg.tie_word_embeddings && !w.contains("lm_head.weight");
    let mut t = Vec::new();
    t.push((vec![v, h], w.take("model.embed_tokens.weight", &[v, h])?));
    for l in 0..cfg.num_layers {
        let n = |s: &str| format!("model.layers.{l}.{s}");
        t.push((vec![h], w.take(&n("input_layernorm.weight"), &[h])?));
        let qkv = w.take_cat(&[
            (n("self_attn.q_proj.weight"), vec![qd, h]),
            (n("self_attn.k_proj.weight"), vec![kvd, h]),
            (n("self_attn.v_proj.weight"), vec![kvd, h]),
        ])?;
        t.push((vec![qd + 2 * kvd, h], qkv));
        if cfg.qkv_bias {
            let b = w.take_cat(&[
                (n("self_attn.q_proj.bias"), vec![qd]),
                (n("self_attn.k_proj.bias"), vec![kvd]),
                (n("self_attn.v_proj.bias"), vec![kvd]),
            ])?;
            t.push((vec![qd + 2 * kvd], b));
        }
        if cfg.qk_norm {
            t.push((vec![hd], w.take(&n("self_attn.q_norm.weight"), &[hd])?));
            t.push((vec![hd], w.take(&n("self_attn.k_norm.weight"), &[hd])?));
        }
        t.push((
            vec![h, qd],
            w.take(&n("self_attn.o_proj.weight"), &[h, qd])?,
        ));
        t.push((
            vec![h],
            w.take(&n("post_attention_layernorm.weight"), &[h])?,
        ));
        let gate_up = w.take_cat(&[
            (n("mlp.gate_proj.weight"), vec![i, h]),
            (n("mlp.up_proj.weight"), vec![i, h]),
        ])?;
        t.push((vec![2 * i, h], gate_up));
        t.push((vec![h, i], w.take(&n("mlp.down_proj.weight"), &[h, i])?));
    }
    t.push((vec![h], w.take("model.norm.weight", &[h])?));
    if !tied {
        t.push((vec![v, h], w.take("lm_head.weight", &[v, h])?));
    }
    let inv_freq = strata_kernels::rope::inv_freq(hd, cfg.rope_theta, &cfg.rope_scaling);
    Ok(Host {
        tensors: t,
        tied,
        inv_freq,
    })
}

impl Weights {
    /// Loads the checkpoint in `dir` onto the GPU of `ctx`.
    pub fn load(ctx: &GpuContext, dir: &Path, cfg: &ModelConfig) -> Result<Self, ModelError> {
        let host = read(dir, cfg)?;
        let mut up = host
            .tensors
            .iter()
            .map(|(shape, data)| ctx.upload_bf16_bits(shape, data));
        let mut next = || {
            up.next()
                .expect("read() lists every tensor the layout takes")
        };
        let embed = next()?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            let in_norm = next()?;
            let qkv = next()?;
            let qkv_bias = if cfg.qkv_bias { Some(next()?) } else { None };
            let qk_norm = if cfg.qk_norm {
                Some((next()?, next()?))
            } else {
                None
            };
            layers.push(Layer {
                in_norm,
                qkv,
                qkv_bias,
                qk_norm,
                o: next()?,
                post_norm: next()?,
                gate_up: next()?,
                down: next()?,
            });
        }
        let norm = next()?;
        let lm_head = if host.tied { None } else { Some(next()?) };
        let inv_freq = ctx.upload_f32(&[host.inv_freq.len()], &host.inv_freq)?;
        Ok(Weights {
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// Every bf16 tensor, in the order `read` produces them.
    fn tensors(&self) -> Vec<&DTensor> {
        let mut t = vec![&self.embed];
        for l in &self.layers {
            t.extend([&l.in_norm, &l.qkv]);
            t.extend(&l.qkv_bias);
            if let Some((q, k)) = &l.qk_norm {
                t.extend([q, k]);
            }
            t.extend([&l.o, &l.post_norm, &l.gate_up, &l.down]);
        }
        t.push(&self.norm);
        t.extend(&self.lm_head);
        t
    }

    /// Writes the checkpoint in `dir` (config `cfg`, same shapes as the served one) over these
    /// weights in place. Nothing is written unless the whole checkpoint reads and matches.
    pub fn overwrite(
        &self,
        ctx: &GpuContext,
        dir: &Path,
        cfg: &ModelConfig,
    ) -> Result<(), ModelError> {
        let host = read(dir, cfg)?;
        let dev = self.tensors();
        if host.tied != self.lm_head.is_none() || host.tensors.len() != dev.len() {
            return Err(ModelError::bad(
                dir,
                "the new checkpoint ties (or unties) the LM head to the embedding unlike the served one",
            ));
        }
        for (d, (shape, _)) in dev.iter().zip(&host.tensors) {
            if d.shape() != shape.as_slice() {
                return Err(ModelError::bad(
                    dir,
                    format!(
                        "a tensor of shape {shape:?} replaces one of {:?}",
                        d.shape()
                    ),
                ));
            }
        }
        for (d, (_, data)) in dev.into_iter().zip(&host.tensors) {
            ctx.overwrite(d, data)?;
        }
        ctx.overwrite(&self.inv_freq, &host.inv_freq)?;
        Ok(())
    }
}
