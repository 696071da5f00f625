//! LoRA adapters against the merged checkpoint they stand for (strata-make-model writes both).

use super::*;
use crate::model::{ForwardBatch, Model, SeqSlice};
use strata_kernels::CpuBackend;

#[test]
fn tensor_names() {
    let n = |s: &str| parse_name(s);
    assert_eq!(
        n("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
        Some((3, 0, false))
    );
    assert_eq!(
        n("base_model.model.model.layers.12.mlp.down_proj.lora_B.weight"),
        Some((12, 6, true))
    );
    assert_eq!(
        n("base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight"),
        Some((0, 5, false))
    );
    assert_eq!(
        n("base_model.model.model.layers.0.mlp.up_proj.weight"),
        None
    );
    assert_eq!(n("base_model.model.lm_head.lora_A.weight"), None);
    assert_eq!(
        n("base_model.model.model.layers.x.mlp.up_proj.lora_A.weight"),
        None
    );
}

#[test]
fn lora_paths_forms() {
    assert_eq!(
        parse_lora_path("a=/x/y").unwrap(),
        ("a".into(), "/x/y".into())
    );
    assert_eq!(
        parse_lora_path("/x/y").unwrap(),
        ("/x/y".into(), "/x/y".into())
    );
    assert_eq!(
        parse_lora_path(r#"{"lora_name": "b", "lora_path": "/p", "pinned": true}"#).unwrap(),
        ("b".into(), "/p".into())
    );
    assert!(parse_lora_path("=x").is_err());
    assert!(parse_lora_path(r#"{"lora_name": "b"}"#).is_err());
}

fn batch(tokens: &[u32], lora: Option<Arc<LoraAdapter>>) -> ForwardBatch {
    let n = tokens.len();
    ForwardBatch {
        tokens: tokens.to_vec(),
        positions: (0..n as u32).collect(),
        slots: (0..n as u32).collect(),
        seqs: vec![SeqSlice {
            q_start: 0,
            q_len: n,
            kv_len: n,
            pages: std::sync::Arc::new((0..n as u32).collect()),
            decode: false,
            lora,
        }],
        logit_rows: (0..n).collect(),
        from_prev: Vec::new(),
    }
}

/// The served base model with the adapter gives the merged checkpoint's logits (f32: the two
/// differ by rounding only), and differs from the base model without it.
#[test]
fn adapter_equals_merged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad, merged) = (
        dir.path().join("base"),
        dir.path().join("ad"),
        dir.path().join("merged"),
    );
    strata_make_model::make_model(&Default::default(), &base).unwrap();
    strata_make_model::make_lora(&base, &ad, 4, 8.0, 7).unwrap();
    strata_make_model::merge_lora(&base, &ad, &merged).unwrap();
    let cfg = ModelConfig::load(&base).unwrap();
    let reg = Registry::new(true, cfg.clone());
    let a = reg.load("ad", &ad).unwrap();
    assert_eq!(a.rank, 4);
    let tokens: Vec<u32> = (0..23)
        .map(|i| (i * 37 + 5) % cfg.vocab_size as u32)
        .collect();
    let run = |dir: &Path, lora: Option<Arc<LoraAdapter>>| {
        let m = Model::load(dir, CpuBackend, 64).unwrap();
        let mut kv = m.new_kv(64, 1).unwrap();
        m.forward(&batch(&tokens, lora), &mut kv).unwrap()
    };
    let with = run(&base, Some(a.clone()));
    let want = run(&merged, None);
    let plain = run(&base, None);
    let max = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(
        max(&with, &want) < 1e-4 * scale.max(1.0),
        "adapter vs merged: {} (scale {scale})",
        max(&with, &want)
    );
    assert!(
        max(&plain, &want) > 1e-2 * scale,
        "the adapter changes nothing: {}",
        max(&plain, &want)
    );
}

#[test]
fn registry_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = (dir.path().join("base"), dir.path().join("ad"));
    strata_make_model::make_model(&Default::default(), &base).unwrap();
    strata_make_model::make_lora(&base, &ad, 4, 8.0, 1).unwrap();
    let cfg = ModelConfig::load(&base).unwrap();
    let off = Registry::new(false, cfg.clone());
    assert!(off.resolve("ad").unwrap_err().contains("not enabled"));
    let mut reg = Registry::new(true, cfg.clone());
    reg.max_rank = Some(2);
    assert!(reg.load("ad", &ad).unwrap_err().contains("--max-lora-rank"));
    reg.max_rank = None;
    reg.targets = Some(vec!["q_proj".into(), "v_proj".into()]);
    assert!(reg
        .load("ad", &ad)
        .unwrap_err()
        .contains("--lora-target-modules"));
    reg.targets = None;
    reg.load("ad", &ad).unwrap();
    assert!(reg.load("ad", &ad).unwrap_err().contains("already loaded"));
    assert_eq!(reg.resolve(&ad.display().to_string()).unwrap().name, "ad");
    assert!(reg.resolve("other").unwrap_err().contains("not loaded"));
    reg.unload("ad").unwrap();
    assert!(reg.unload("ad").is_err());
    assert!(reg
        .load("x", &dir.path().join("missing"))
        .unwrap_err()
        .contains("adapter_config.json"));
    // An adapter for another shape names the tensor that does not fit.
    let small = dir.path().join("small");
    strata_make_model::make_model(
        &strata_make_model::MakeModel {
            size: strata_make_model::Size::Small,
            ..Default::default()
        },
        &small,
    )
    .unwrap();
    let other = dir.path().join("other");
    strata_make_model::make_lora(&small, &other, 4, 8.0, 1).unwrap();
    let e = reg.load("other", &other).unwrap_err();
    assert!(
        e.contains("adapter_model.safetensors: tensor `base_model.model.model.layers."),
        "{e}"
    );
}
