//! `config.json` (+ `generation_config.json`) of a Hugging Face Llama-family checkpoint.
//!
//! Parsed once at start-up into [`ModelConfig`]; every inconsistency (unknown architecture, heads
//! that do not divide the hidden size, an unsupported rope type) is an error naming the file and the
//! field, so a bad checkpoint fails before any weight is read.

use crate::model::ModelError;
use serde_json::Value;
use std::path::Path;
use strata_kernels::RopeScaling;

/// Supported architectures (`architectures[0]` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM` and `MistralForCausalLM`.
    Llama,
    /// `Qwen2ForCausalLM`: bias on q/k/v.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on q and k.
    Qwen3,
}

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// The parts of the configuration the forward pass needs.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    /// `architectures[0]` as config.json names it (`MistralModel`, `Qwen2ForCausalLM`, ...).
    pub architecture: String,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub dtype: String,
    /// A backbone architecture without an LM head (`LlamaModel`, `MistralModel`, ...): served
    /// only as an embedding model (its tensors may lack the `model.` prefix).
    pub embedding_only: bool,
    /// Matryoshka embeddings: `Some(None)` for `is_matryoshka`, `Some(Some(sizes))` for
    /// `matryoshka_dimensions` (None: neither; `dimensions` requests are refused).
    pub matryoshka: Option<Option<Vec<usize>>>,
    /// A sequence-classification checkpoint (`LlamaForSequenceClassification`, reward models):
    /// its class labels (`id2label`, else `LABEL_i` for `num_labels`); the `score.weight` head
    /// applies to the last token's final hidden state.
    pub labels: Option<Vec<String>>,
    /// The sampling values `generation_config.json` recommends (what SGLang's default
    /// `--sampling-defaults model` fills a chat request's omitted fields with).
    pub generation_defaults: GenerationDefaults,
}

/// Sampling values a checkpoint's `generation_config.json` sets, of the five SGLang takes from
/// it (temperature, top_p, top_k, min_p, repetition_penalty); None where the file sets none (a
/// `null` or a non-number too: transformers' own defaults are not filled in).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl GenerationDefaults {
    /// The values of a parsed `generation_config.json`.
    pub fn from_json(g: &Value) -> Self {
        let f = |k: &str| g.get(k).and_then(Value::as_f64).map(|x| x as f32);
        GenerationDefaults {
            temperature: f("temperature"),
            top_p: f("top_p"),
            top_k: g.get("top_k").and_then(Value::as_i64),
            min_p: f("min_p"),
            repetition_penalty: f("repetition_penalty"),
        }
    }
}

/// `--json-model-override-args`: keys that replace config.json's own at every load in this
/// process (SGLang updates the Hugging Face config with them: top-level keys, whole values).
static OVERRIDES: std::sync::RwLock<Option<serde_json::Map<String, Value>>> =
    std::sync::RwLock::new(None);

/// Sets the process's config.json overrides (None: none); every later [`ModelConfig::load`]
/// applies them (the runners and replicas load the config themselves).
pub fn set_overrides(o: Option<serde_json::Map<String, Value>>) {
    *OVERRIDES.write().unwrap_or_else(|e| e.into_inner()) = o;
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// A classifier's labels in id order: `id2label` (`{"0": "neg", ...}`), else `LABEL_i` for
/// `num_labels` (transformers' default 2).
fn class_labels(v: &Value) -> Vec<String> {
    if let Some(m) = v.get("id2label").and_then(Value::as_object) {
        let mut pairs: Vec<(usize, String)> = m
            .iter()
            .filter_map(|(k, l)| Some((k.parse().ok()?, l.as_str()?.to_string())))
            .collect();
        pairs.sort();
        if !pairs.is_empty() && pairs.iter().enumerate().all(|(i, p)| p.0 == i) {
            return pairs.into_iter().map(|p| p.1).collect();
        }
    }
    let n = v.get("num_labels").and_then(Value::as_u64).unwrap_or(2) as usize;
    (0..n).map(|i| format!("LABEL_{i}")).collect()
}

impl ModelConfig {
    /// An error unless `new` has this configuration's architecture and tensor shapes (what a
    /// weight update may not change).
    pub fn check_same_shapes(&self, new: &ModelConfig) -> Result<(), ModelError> {
        let shape = |c: &ModelConfig| {
            (
                c.arch,
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
                c.tie_word_embeddings,
                c.qkv_bias,
                c.qk_norm,
            )
        };
        if shape(self) == shape(new) {
            return Ok(());
        }
        Err(ModelError::Bad {
            path: "config.json".into(),
            msg: format!(
                "the new checkpoint's shapes differ from the served model's (architecture, vocabulary, hidden, intermediate, layers, heads, KV heads, head dim, tied embeddings, biases, QK norm): {:?} vs {:?}",
                shape(new),
                shape(self)
            ),
        })
    }

    /// Reads `dir/config.json` (with the process's [`set_overrides`] over its keys) and, when
    /// present, `dir/generation_config.json` (extra EOS ids, recommended sampling values).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let mut v: Value =
            serde_json::from_str(&text).map_err(|e| ModelError::bad(&path, e.to_string()))?;
        if let (Some(o), Value::Object(m)) = (
            OVERRIDES.read().unwrap_or_else(|e| e.into_inner()).as_ref(),
            &mut v,
        ) {
            for (k, x) in o {
                m.insert(k.clone(), x.clone());
            }
        }
        let mut cfg = Self::from_json(&v).map_err(|m| ModelError::bad(&path, m))?;
        let gen = dir.join("generation_config.json");
        if gen.exists() {
            let text = std::fs::read_to_string(&gen).map_err(|e| ModelError::io(&gen, e))?;
            let g: Value =
                serde_json::from_str(&text).map_err(|e| ModelError::bad(&gen, e.to_string()))?;
            for id in ids(g.get("eos_token_id")) {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
            cfg.generation_defaults = GenerationDefaults::from_json(&g);
        }
        Ok(cfg)
    }

    /// Parses a config.json value; the error is a message about the offending field.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let arch_name = v["architectures"][0]
            .as_str()
            .ok_or("missing `architectures`")?;
        let arch = match arch_name {
            "LlamaForCausalLM"
            | "MistralForCausalLM"
            | "LlamaModel"
            | "MistralModel"
            | "LlamaEmbeddingModel"
            | "LlamaForSequenceClassification"
            | "MistralForSequenceClassification" => Arch::Llama,
            "Qwen2ForCausalLM" | "Qwen2Model" | "Qwen2ForSequenceClassification" => Arch::Qwen2,
            "Qwen3ForCausalLM" | "Qwen3Model" | "Qwen3ForSequenceClassification" => Arch::Qwen3,
            other => return Err(format!("unsupported architecture `{other}`")),
        };
        let usize_of = |k: &str| -> Result<usize, String> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| format!("missing or non-integer `{k}`"))
        };
        let hidden_size = usize_of("hidden_size")?;
        let num_heads = usize_of("num_attention_heads")?;
        let num_kv_heads = v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"));
        }
        let head_dim = match v.get("head_dim").and_then(Value::as_u64) {
            Some(h) => h as usize,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(format!(
                    "hidden_size {hidden_size} not divisible by num_attention_heads {num_heads}"
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(format!(
                "head_dim {head_dim} must be even for rotary embeddings"
            ));
        }
        let rope_obj = v
            .get("rope_scaling")
            .filter(|x| !x.is_null())
            .or_else(|| v.get("rope_parameters"));
        let rope_theta = v
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| {
                rope_obj
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10000.0) as f32;
        let rope_scaling = match rope_obj {
            None | Some(Value::Null) => RopeScaling::None,
            Some(r) => {
                let ty = r
                    .get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let f = |k: &str| r.get(k).and_then(Value::as_f64).map(|x| x as f32);
                match ty {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: f("factor").ok_or("rope_scaling.factor missing")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor").ok_or("rope_scaling.factor missing")?,
                        low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
                        original_max_position_embeddings: f("original_max_position_embeddings")
                            .ok_or("rope_scaling.original_max_position_embeddings missing")?,
                    },
                    other => return Err(format!("unsupported rope_scaling type `{other}`")),
                }
            }
        };
        let max_position_embeddings = usize_of("max_position_embeddings").unwrap_or(4096);
        let embedding_only = !arch_name.ends_with("ForCausalLM");
        let labels = arch_name
            .ends_with("ForSequenceClassification")
            .then(|| class_labels(v));
        let matryoshka = match v.get("matryoshka_dimensions").and_then(Value::as_array) {
            Some(a) => Some(Some(
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as usize)
                    .collect(),
            )),
            None => v
                .get("is_matryoshka")
                .and_then(Value::as_bool)
                .filter(|&m| m)
                .map(|_| None),
        };
        Ok(ModelConfig {
            embedding_only,
            matryoshka,
            generation_defaults: GenerationDefaults::default(),
            labels,
            architecture: arch_name.to_string(),
            arch,
            model_type: v["model_type"].as_str().unwrap_or("llama").to_string(),
            vocab_size: usize_of("vocab_size")?,
            hidden_size,
            intermediate_size: usize_of("intermediate_size")?,
            num_layers: usize_of("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            // A backbone has no LM head: its logits (never sampled) come from the embedding.
            tie_word_embeddings: embedding_only
                || v.get("tie_word_embeddings")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2
                || v.get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            qk_norm: arch == Arch::Qwen3,
            bos_token_id: v
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_ids: ids(v.get("eos_token_id")),
            dtype: v
                .get("torch_dtype")
                .or_else(|| v.get("dtype"))
                .and_then(Value::as_str)
                .unwrap_or("float32")
                .to_string(),
        })
    }

    /// Floats of K (or V) per token per layer.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generation_defaults_take_only_what_the_file_sets() {
        let g = json!({"temperature": 0.6, "top_p": 0.9, "top_k": 20, "do_sample": true,
            "repetition_penalty": null, "eos_token_id": [1, 2]});
        assert_eq!(
            GenerationDefaults::from_json(&g),
            GenerationDefaults {
                temperature: Some(0.6),
                top_p: Some(0.9),
                top_k: Some(20),
                min_p: None,
                repetition_penalty: None,
            }
        );
        assert_eq!(
            GenerationDefaults::from_json(&json!({"bos_token_id": 1})),
            GenerationDefaults::default()
        );
    }
}
