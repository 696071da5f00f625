//! Golden logits: the CPU backend against Hugging Face `transformers` on the made models.
//!
//! The fixture (tests/fixtures/golden/<arch>.json, written by scripts/golden_logits.py) holds token
//! ids from the Python `tokenizers` package and reference logits at a few positions. This test
//! regenerates the same model from its seed, checks tokenisation id for id, runs the prompt through
//! the paged forward pass (page size 16, so the long prompt spans many pages; also in chunks to cover
//! prefill over a cached prefix) and requires max |Δ| / max |ref| <= 1e-4 at every position.

use serde_json::Value;
use std::path::PathBuf;
use strata_kernels::CpuBackend;
use strata_make_model::{make_model, DType, MakeModel, Size};
use strata_server::model::{Arch, ForwardBatch, Model, SeqSlice, Tokenizer};

fn fixture(arch: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/golden")
        .join(format!("{arch}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Runs `ids` in chunks of `chunk` tokens through a fresh paged cache; returns logits of every
/// position.
fn logits_all(
    model: &Model<CpuBackend>,
    ids: &[u32],
    page_size: usize,
    chunk: usize,
) -> Vec<Vec<f32>> {
    let pages_needed = ids.len().div_ceil(page_size);
    let mut kv = model.new_kv(pages_needed + 3, page_size).unwrap();
    // Use a non-trivial page order to exercise the page table.
    let pages: Vec<u32> = (0..pages_needed as u32).rev().map(|p| p + 2).collect();
    let vocab = model.cfg.vocab_size;
    let mut out = Vec::new();
    let mut start = 0;
    while start < ids.len() {
        let end = (start + chunk).min(ids.len());
        let n = end - start;
        let batch = ForwardBatch {
            tokens: ids[start..end].to_vec(),
            positions: (start as u32..end as u32).collect(),
            slots: (start..end)
                .map(|p| pages[p / page_size] * page_size as u32 + (p % page_size) as u32)
                .collect(),
            seqs: vec![SeqSlice {
                q_start: 0,
                q_len: n,
                kv_len: end,
                pages: pages[..end.div_ceil(page_size)].to_vec().into(),
                decode: false,
                lora: None,
            }],
            logit_rows: (0..n).collect(),
            from_prev: Vec::new(),
        };
        let l = model.forward(&batch, &mut kv).unwrap();
        out.extend(l.chunks(vocab).map(|c| c.to_vec()));
        start = end;
    }
    out
}

fn check(arch: Arch, name: &str) {
    let fx = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    make_model(
        &MakeModel {
            arch,
            size: Size::Tiny,
            seed: 0,
            dtype: DType::F32,
        },
        dir.path(),
    )
    .unwrap();
    let tok = Tokenizer::load(dir.path()).unwrap();
    let model = Model::load(dir.path(), CpuBackend, 1024).unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(prompt, true).unwrap();
        assert_eq!(
            ids, want_ids,
            "{name}: tokenisation of {prompt:?} differs from Python tokenizers"
        );
        let full = logits_all(&model, &ids, 16, usize::MAX);
        let chunked = logits_all(&model, &ids, 16, 37);
        assert_eq!(full, chunked, "{name}: chunked prefill changed the logits");
        for (pos, want) in case["positions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["logits"].as_array().unwrap())
        {
            let pos = pos.as_u64().unwrap() as usize;
            let want: Vec<f32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let got = &full[pos];
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let rel = err / scale;
            eprintln!(
                "{name} prompt_len={} pos={pos} max_rel_err={rel:.2e}",
                ids.len()
            );
            assert!(
                rel <= 1e-4,
                "{name}: position {pos} of {prompt:?}: max relative error {rel:e} > 1e-4"
            );
        }
    }
}

#[test]
fn golden_llama() {
    check(Arch::Llama, "llama");
}

#[test]
fn golden_qwen2() {
    check(Arch::Qwen2, "qwen2");
}

#[test]
fn golden_qwen3() {
    check(Arch::Qwen3, "qwen3");
}

#[test]
fn sharded_checkpoint_gives_identical_logits() {
    let one = tempfile::tempdir().unwrap();
    let sharded = tempfile::tempdir().unwrap();
    for d in [&one, &sharded] {
        make_model(
            &MakeModel {
                arch: Arch::Qwen2,
                size: Size::Tiny,
                seed: 9,
                dtype: DType::F32,
            },
            d.path(),
        )
        .unwrap();
    }
    strata_make_model::shard_checkpoint(sharded.path(), 3).unwrap();
    assert!(!sharded.path().join("model.safetensors").exists());
    assert!(sharded
        .path()
        .join("model-00003-of-00003.safetensors")
        .exists());
    let a = Model::load(one.path(), CpuBackend, 64).unwrap();
    let b = Model::load(sharded.path(), CpuBackend, 64).unwrap();
    let ids = [1u32, 50, 7, 300, 2];
    assert_eq!(logits_all(&a, &ids, 4, 64), logits_all(&b, &ids, 4, 64));
    // A shard that the index names but that is missing is an error naming the file.
    std::fs::remove_file(sharded.path().join("model-00002-of-00003.safetensors")).unwrap();
    let err = Model::load(sharded.path(), CpuBackend, 64)
        .err()
        .expect("load must fail")
        .to_string();
    assert!(err.contains("model-00002-of-00003.safetensors"), "{err}");
}
