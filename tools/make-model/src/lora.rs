//! Random LoRA adapters in PEFT's layout for a made (or any Llama-family) checkpoint, and the
//! merged checkpoint an adapter stands for (W + scale B A), for the tests that check served
//! adapters against it.
//!
//! Files of an adapter: `adapter_config.json` (`peft_type` LORA, `r`, `lora_alpha`,
//! `target_modules`) and `adapter_model.safetensors` (`base_model.model.model.layers.{i}.
//! {self_attn|mlp}.{module}.lora_{A,B}.weight`, A [r, in], B [out, r], f32). Deterministic in
//! (model, rank, alpha, seed).

use super::files::{write_json, write_safetensors};
use super::DType;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use strata_server::model::lora::Target;
use strata_server::model::weights::WeightMap;
use strata_server::model::ModelConfig;
use strata_server::seeded::SplitMix64;

fn bad(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The block of a layer that holds `t` (`self_attn` or `mlp`).
fn block(t: Target) -> &'static str {
    match t {
        Target::Q | Target::K | Target::V | Target::O => "self_attn",
        _ => "mlp",
    }
}

/// The tensor name of `t`'s LoRA A (or B) in layer `l`.
fn tensor_name(l: usize, t: Target, b: bool) -> String {
    let block = block(t);
    let ab = if b { "B" } else { "A" };
    format!(
        "base_model.model.model.layers.{l}.{block}.{}.lora_{ab}.weight",
        t.module()
    )
}

/// Writes a random adapter of `rank` for the model in `model_dir` into `out`, targeting every
/// projection. Entries are normal with standard deviations that make the adapter's change to a
/// projection's output about a tenth of the output itself.
pub fn make_lora(
    model_dir: &Path,
    out: &Path,
    rank: usize,
    alpha: f64,
    seed: u64,
) -> std::io::Result<()> {
    let cfg = ModelConfig::load(model_dir).map_err(bad)?;
    std::fs::create_dir_all(out)?;
    let mut rng = SplitMix64(seed ^ 0x10ba);
    let scale = alpha / rank as f64;
    let mut tensors = BTreeMap::new();
    for l in 0..cfg.num_layers {
        for t in Target::ALL {
            let (din, dout) = t.dims(&cfg);
            // |A x| ~ |x| (std 1/sqrt(in)); B's std so that scale B A x ~ 0.1 of W x, with
            // W's std ~ 1/sqrt(in) (the made models' init) the output's scale is |x|.
            let sa = 1.0 / (din as f64).sqrt();
            let sb = 0.1 / (scale * (rank as f64).sqrt());
            let mut draw = |n: usize, s: f64| {
                (0..n)
                    .map(|_| (s * rng.normal()) as f32)
                    .collect::<Vec<f32>>()
            };
            let a = draw(rank * din, sa);
            let b = draw(dout * rank, sb);
            tensors.insert(tensor_name(l, t, false), (vec![rank, din], a));
            tensors.insert(tensor_name(l, t, true), (vec![dout, rank], b));
        }
    }
    write_safetensors(&out.join("adapter_model.safetensors"), &tensors, DType::F32)?;
    let modules: Vec<&str> = Target::ALL.iter().map(|t| t.module()).collect();
    write_json(
        &out.join("adapter_config.json"),
        &json!({
            "peft_type": "LORA",
            "base_model_name_or_path": model_dir.display().to_string(),
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "task_type": "CAUSAL_LM",
            "target_modules": modules,
            "use_rslora": false,
        }),
    )
}

/// Writes into `out` the checkpoint of `model_dir` with the adapter in `adapter_dir` merged
/// (every targeted projection W + scale B A, f32), the other files copied. A reference for
/// tests: O(out × in × rank) per projection in f64, meant for the small made models.
pub fn merge_lora(model_dir: &Path, adapter_dir: &Path, out: &Path) -> std::io::Result<()> {
    let cfg = ModelConfig::load(model_dir).map_err(bad)?;
    let conf: Value =
        serde_json::from_slice(&std::fs::read(adapter_dir.join("adapter_config.json"))?)?;
    let rank = conf["r"]
        .as_u64()
        .ok_or_else(|| bad("adapter_config.json: no r"))? as usize;
    let scale = conf["lora_alpha"].as_f64().unwrap_or(8.0) / rank as f64;
    let mut ad =
        WeightMap::load_file(&adapter_dir.join("adapter_model.safetensors")).map_err(bad)?;
    let mut base = WeightMap::load(model_dir).map_err(bad)?;
    std::fs::create_dir_all(out)?;
    for e in std::fs::read_dir(model_dir)? {
        let p = e?.path();
        let name = p.file_name().expect("file").to_owned();
        if p.is_file() && !name.to_string_lossy().contains("safetensors") {
            std::fs::copy(&p, out.join(name))?;
        }
    }
    let mut merged = BTreeMap::new();
    for l in 0..cfg.num_layers {
        for t in Target::ALL {
            let (din, dout) = t.dims(&cfg);
            let (Some(a), Some(b)) = (
                ad.take_opt(&tensor_name(l, t, false)),
                ad.take_opt(&tensor_name(l, t, true)),
            ) else {
                continue;
            };
            let name = format!("model.layers.{l}.{}.{}.weight", block(t), t.module());
            let mut w = base.take(&name, &[dout, din]).map_err(bad)?;
            for o in 0..dout {
                for i in 0..din {
                    let d: f64 = (0..rank)
                        .map(|k| b[o * rank + k] as f64 * a[k * din + i] as f64)
                        .sum();
                    w[o * din + i] += (scale * d) as f32;
                }
            }
            merged.insert(name, (vec![dout, din], w));
        }
    }
    for (name, shape, data) in base.drain() {
        merged.insert(name, (shape, data));
    }
    write_safetensors(&out.join("model.safetensors"), &merged, DType::F32)
}
