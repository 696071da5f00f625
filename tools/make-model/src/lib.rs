//! strata-make-model: a deterministic random-weight checkpoint in the Hugging Face layout, for
//! `strata make-model` and the tests (kept out of the server library).
//!
//! Output is a pure function of (arch, size, seed, dtype) on every platform: weights come from a
//! SplitMix64 stream (`strata_server::seeded`, Box–Muller in f64), the tokenizer is a byte-level BPE
//! trained by a deterministic greedy merge loop (ties broken by the pair's text) on a corpus embedded here, and
//! JSON/safetensors are written with sorted keys. Files: `config.json`, `generation_config.json`,
//! `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`.

mod bpe;
mod files;
mod large;
mod lora;

pub use bpe::byte_chars;
pub use files::shard_checkpoint;
pub use lora::{make_lora, merge_lora};

use bpe::train_bpe;
use files::{write_json, write_safetensors};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use strata_server::seeded::SplitMix64;

/// Model sizes offered by `--size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Tiny,
    Small,
    /// The shapes of Llama-3.2-1B (tied embeddings), random weights.
    Llama32_1b,
    /// The shapes of Llama-3.1-8B, random weights.
    Llama31_8b,
    /// The shapes of Qwen3-8B, random weights.
    Qwen3_8b,
}

impl Size {
    /// Parses a `--size` name.
    pub fn parse(s: &str) -> Option<Size> {
        Some(match s {
            "tiny" => Size::Tiny,
            "small" => Size::Small,
            "llama-3.2-1b" | "llama3.2-1b" | "1b" => Size::Llama32_1b,
            "llama-3.1-8b" | "llama3.1-8b" | "8b" => Size::Llama31_8b,
            "qwen3-8b" => Size::Qwen3_8b,
            _ => return None,
        })
    }
    /// The architecture a real-shape size is named after (None: any); the default of `--arch`.
    pub fn arch(self) -> Option<strata_server::model::Arch> {
        use strata_server::model::Arch;
        match self {
            Size::Tiny | Size::Small => None,
            Size::Llama32_1b | Size::Llama31_8b => Some(Arch::Llama),
            Size::Qwen3_8b => Some(Arch::Qwen3),
        }
    }
    fn is_large(self) -> bool {
        self.arch().is_some()
    }
}

/// On-disk dtype of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct MakeModel {
    pub arch: strata_server::model::Arch,
    pub size: Size,
    pub seed: u64,
    pub dtype: DType,
}

impl Default for MakeModel {
    /// `strata make-model`'s defaults for the tiny size: Llama, seed 0, f32 weights. (Also how
    /// the server crate's own unit tests get a model: they cannot name this crate's `Arch`.)
    fn default() -> Self {
        MakeModel {
            arch: strata_server::model::Arch::Llama,
            size: Size::Tiny,
            seed: 0,
            dtype: DType::F32,
        }
    }
}

/// Special tokens appended after the BPE vocabulary, in id order.
pub const SPECIAL_TOKENS: [&str; 4] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
];

const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

struct Dims {
    /// (rope_theta, llama3 factor, original max positions) for Llama; max positions; tied.
    rope: (f64, f64, usize),
    max_pos: usize,
    tied: Option<bool>,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    merges: usize,
}

fn dims(arch: strata_server::model::Arch, size: Size) -> Dims {
    use strata_server::model::Arch;
    let small_theta = if arch == Arch::Llama {
        500000.0
    } else {
        1000000.0
    };
    match size {
        Size::Tiny => Dims {
            rope: (small_theta, 8.0, 256),
            max_pos: 4096,
            tied: None,
            hidden: 64,
            inter: 160,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: if arch == Arch::Qwen3 { 32 } else { 16 },
            vocab: 512,
            merges: 240,
        },
        Size::Small => Dims {
            rope: (small_theta, 8.0, 256),
            max_pos: 4096,
            tied: None,
            hidden: 384,
            inter: 1024,
            layers: 6,
            heads: 6,
            kv_heads: 2,
            head_dim: 64,
            vocab: 2048,
            merges: 1500,
        },
        Size::Llama32_1b => Dims {
            rope: (500000.0, 32.0, 8192),
            max_pos: 131072,
            tied: Some(true),
            hidden: 2048,
            inter: 8192,
            layers: 16,
            heads: 32,
            kv_heads: 8,
            head_dim: 64,
            vocab: 128256,
            merges: 1500,
        },
        Size::Llama31_8b => Dims {
            rope: (500000.0, 8.0, 8192),
            max_pos: 131072,
            tied: Some(false),
            hidden: 4096,
            inter: 14336,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            vocab: 128256,
            merges: 1500,
        },
        Size::Qwen3_8b => Dims {
            rope: (1000000.0, 1.0, 0),
            max_pos: 40960,
            tied: Some(false),
            hidden: 4096,
            inter: 12288,
            layers: 36,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            vocab: 151936,
            merges: 1500,
        },
    }
}

/// Writes the model to `out` (created if needed).
pub fn make_model(spec: &MakeModel, out: &Path) -> std::io::Result<()> {
    use strata_server::model::Arch;
    std::fs::create_dir_all(out)?;
    let d = dims(spec.arch, spec.size);
    let (bpe_vocab, merges) = train_bpe(d.merges);
    let first_special = bpe_vocab.len();
    assert!(
        first_special + SPECIAL_TOKENS.len() <= d.vocab,
        "vocab too small for the tokenizer"
    );
    let special_id = |i: usize| (first_special + i) as u32;
    let (bos, eos, im_end) = (special_id(0), special_id(1), special_id(3));
    let llama = spec.arch == Arch::Llama;

    // Tokenizer.
    let vocab: serde_json::Map<String, Value> = bpe_vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": special_id(i), "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let post = if llama {
        json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": SPECIAL_TOKENS[0], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": SPECIAL_TOKENS[0], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": SPECIAL_TOKENS[0], "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {SPECIAL_TOKENS[0]: {"id": SPECIAL_TOKENS[0], "ids": [bos], "tokens": [SPECIAL_TOKENS[0]]}}})
    } else {
        Value::Null
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    });
    write_json(&out.join("tokenizer.json"), &tokenizer)?;
    let eos_tok = if llama {
        SPECIAL_TOKENS[1]
    } else {
        SPECIAL_TOKENS[3]
    };
    write_json(
        &out.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": if llama { json!(SPECIAL_TOKENS[0]) } else { Value::Null },
            "eos_token": eos_tok, "pad_token": SPECIAL_TOKENS[1], "model_max_length": 4096, "chat_template": CHAT_TEMPLATE}),
    )?;

    // Config.
    let tied = d.tied.unwrap_or(spec.arch != Arch::Llama);
    let mut cfg = json!({
        "architectures": [spec.arch.hf_name()],
        "model_type": match spec.arch { Arch::Llama => "llama", Arch::Qwen2 => "qwen2", Arch::Qwen3 => "qwen3" },
        "vocab_size": d.vocab, "hidden_size": d.hidden, "intermediate_size": d.inter,
        "num_hidden_layers": d.layers, "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim, "hidden_act": "silu", "max_position_embeddings": d.max_pos, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied, "bos_token_id": bos, "eos_token_id": if llama { eos } else { im_end },
        "torch_dtype": match spec.dtype { DType::F32 => "float32", DType::BF16 => "bfloat16", DType::F16 => "float16" },
        "attention_dropout": 0.0, "use_cache": true,
    });
    let o = cfg.as_object_mut().expect("object");
    match spec.arch {
        Arch::Llama => {
            o.insert("rope_theta".into(), json!(d.rope.0));
            o.insert("attention_bias".into(), json!(false));
            o.insert("mlp_bias".into(), json!(false));
            o.insert(
                "rope_scaling".into(),
                json!({"rope_type": "llama3", "factor": d.rope.1, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": d.rope.2}),
            );
        }
        Arch::Qwen2 | Arch::Qwen3 => {
            o.insert("rope_theta".into(), json!(d.rope.0));
            o.insert("use_sliding_window".into(), json!(false));
            o.insert("sliding_window".into(), Value::Null);
            o.insert("max_window_layers".into(), json!(d.layers));
            if spec.arch == Arch::Qwen3 {
                o.insert("attention_bias".into(), json!(false));
            }
        }
    }
    write_json(&out.join("config.json"), &cfg)?;
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": bos, "eos_token_id": [eos, im_end], "do_sample": false}),
    )?;

    // Weights, drawn in a fixed order.
    let specs = weight_specs(spec.arch, &d, tied);
    let path = out.join("model.safetensors");
    if spec.size.is_large() {
        return large::write(&path, specs, spec.seed, spec.dtype);
    }
    let mut rng = SplitMix64(spec.seed);
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for t in specs {
        let n: usize = t.shape.iter().product();
        let data = (0..n)
            .map(|_| (t.mean + t.std * rng.normal()) as f32)
            .collect();
        tensors.insert(t.name, (t.shape, data));
    }
    write_safetensors(&path, &tensors, spec.dtype)
}

/// Every tensor of the checkpoint with its distribution, in drawing order.
fn weight_specs(arch: strata_server::model::Arch, d: &Dims, tied: bool) -> Vec<large::Spec> {
    use strata_server::model::Arch;
    let mut v = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, std: f64, mean: f64| {
        v.push(large::Spec {
            name,
            shape,
            std,
            mean,
        })
    };
    let (h, qd, kvd) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim);
    // Projections are scaled by 1/sqrt(fan-in); norms are 1 + noise; biases and embeddings noise.
    let (by_h, by_qd, by_inter) = (
        1.0 / (h as f64).sqrt(),
        1.0 / (qd as f64).sqrt(),
        1.0 / (d.inter as f64).sqrt(),
    );
    let embed = "model.embed_tokens.weight".to_string();
    put(embed, vec![d.vocab, h], 0.1, 0.0);
    for l in 0..d.layers {
        // (name, shape, std, mean), in the order they are drawn.
        let mut w: Vec<(&str, Vec<usize>, f64, f64)> = vec![
            ("input_layernorm.weight", vec![h], 0.1, 1.0),
            ("self_attn.q_proj.weight", vec![qd, h], by_h, 0.0),
            ("self_attn.k_proj.weight", vec![kvd, h], by_h, 0.0),
            ("self_attn.v_proj.weight", vec![kvd, h], by_h, 0.0),
        ];
        if arch == Arch::Qwen2 {
            w.push(("self_attn.q_proj.bias", vec![qd], 0.1, 0.0));
            w.push(("self_attn.k_proj.bias", vec![kvd], 0.1, 0.0));
            w.push(("self_attn.v_proj.bias", vec![kvd], 0.1, 0.0));
        }
        if arch == Arch::Qwen3 {
            w.push(("self_attn.q_norm.weight", vec![d.head_dim], 0.1, 1.0));
            w.push(("self_attn.k_norm.weight", vec![d.head_dim], 0.1, 1.0));
        }
        w.extend([
            ("self_attn.o_proj.weight", vec![h, qd], by_qd, 0.0),
            ("post_attention_layernorm.weight", vec![h], 0.1, 1.0),
            ("mlp.gate_proj.weight", vec![d.inter, h], by_h, 0.0),
            ("mlp.up_proj.weight", vec![d.inter, h], by_h, 0.0),
            ("mlp.down_proj.weight", vec![h, d.inter], by_inter, 0.0),
        ]);
        for (name, shape, std, mean) in w {
            put(format!("model.layers.{l}.{name}"), shape, std, mean);
        }
    }
    put("model.norm.weight".into(), vec![h], 0.1, 1.0);
    if !tied {
        put("lm_head.weight".into(), vec![d.vocab, h], by_h, 0.0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let m = byte_chars();
        let mut s: Vec<char> = m.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 256);
        assert_eq!(m[b' ' as usize], 'Ġ');
    }
}
