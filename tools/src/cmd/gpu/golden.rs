//! `strata gpu golden`: the CUDA backend's forward pass against the golden logits from Hugging Face
//! `transformers` (tests/fixtures/golden/<arch>.json) and against the CPU backend on the same
//! model directory (made by `strata make-model` with the fixture's size, seed and dtype).
//!
//! Each prompt runs through the paged forward pass with page size 16 in reverse page order, once
//! whole and once in chunks of 37 tokens (prefill over a cached prefix). Passes when, at every
//! fixture position, max |Δ| / max |ref| <= `--tol` against the fixture, and when every position's
//! argmax equals the CPU backend's. The CUDA-vs-CPU difference is printed for the record.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;
use serde_json::Value;
use strata_kernels::cuda::{select, CudaBackend};
use strata_kernels::{Backend, CpuBackend};
use strata_server::model::{ForwardBatch, Model, SeqSlice, Tokenizer};

#[derive(ClapArgs)]
pub struct Args {
    /// Model directory (`strata make-model --size tiny --arch ARCH`, seed 0, f32).
    #[arg(long)]
    model_path: PathBuf,
    /// Golden fixture (tests/fixtures/golden/ARCH.json).
    #[arg(long)]
    fixture: PathBuf,
    /// Largest relative error against the fixture (f32 tolerance by default).
    #[arg(long, default_value_t = 1e-4)]
    tol: f32,
    #[command(flatten)]
    common: super::Common,
}

/// Prompt tokens `range` of `ids` as one sequence's prefill chunk over the pages `pages` (page
/// size `page`, every position's logits asked for): the chunked prefill `gpu golden` and
/// `gpu runner-logits` run.
pub(super) fn prefill_chunk(
    ids: &[u32],
    pages: &[u32],
    page: usize,
    range: std::ops::Range<usize>,
) -> ForwardBatch {
    let (start, end) = (range.start, range.end);
    ForwardBatch {
        tokens: ids[range.clone()].to_vec(),
        positions: (start as u32..end as u32).collect(),
        slots: range
            .map(|p| pages[p / page] * page as u32 + (p % page) as u32)
            .collect(),
        seqs: vec![SeqSlice {
            q_start: 0,
            q_len: end - start,
            kv_len: end,
            pages: pages[..end.div_ceil(page)].to_vec().into(),
            decode: false,
            lora: None,
        }],
        logit_rows: (0..end - start).collect(),
        from_prev: Vec::new(),
    }
}

fn logits_all<B: Backend>(
    m: &Model<B>,
    ids: &[u32],
    chunk: usize,
) -> anyhow::Result<Vec<Vec<f32>>> {
    const PAGE: usize = 16;
    let n_pages = ids.len().div_ceil(PAGE);
    let mut kv = m.new_kv(n_pages + 3, PAGE)?;
    let pages: Vec<u32> = (0..n_pages as u32).rev().map(|p| p + 2).collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < ids.len() {
        let end = (start + chunk).min(ids.len());
        let batch = prefill_chunk(ids, &pages, PAGE, start..end);
        let l = m.forward(&batch, &mut kv)?;
        out.extend(l.chunks(m.cfg.vocab_size).map(|c| c.to_vec()));
        start = end;
    }
    Ok(out)
}

fn rel(got: &[f32], want: &[f32]) -> f32 {
    let scale = want
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (kind, ctx) = select(a.common.base_gpu_id, false);
    let ctx = ctx.with_context(|| format!("no usable GPU: {kind:?}"))?;
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&a.fixture)?)
        .with_context(|| format!("reading {}", a.fixture.display()))?;
    let tok = Tokenizer::load(&a.model_path)?;
    let gpu = Model::load(&a.model_path, CudaBackend::new(ctx)?, 1024)?;
    let cpu = Model::load(&a.model_path, CpuBackend, 1024)?;
    let arch = fx["arch"].as_str().unwrap_or("?");
    let mut failures = 0;
    for case in fx["cases"].as_array().context("fixture has no cases")? {
        let prompt = case["prompt"].as_str().context("case without prompt")?;
        let ids = tok.encode(prompt, true).map_err(anyhow::Error::msg)?;
        let want_ids: Vec<u32> = serde_json::from_value(case["ids"].clone())?;
        if ids != want_ids {
            anyhow::bail!("{arch}: tokenisation of {prompt:?} differs from the fixture");
        }
        let full = logits_all(&gpu, &ids, usize::MAX)?;
        let chunked = logits_all(&gpu, &ids, 37)?;
        let on_cpu = logits_all(&cpu, &ids, usize::MAX)?;
        let chunk_rel = full
            .iter()
            .zip(&chunked)
            .fold(0f32, |m, (a, b)| m.max(rel(b, a)));
        let cpu_rel = full
            .iter()
            .zip(&on_cpu)
            .fold(0f32, |m, (a, b)| m.max(rel(a, b)));
        let argmax_same = full
            .iter()
            .zip(&on_cpu)
            .all(|(a, b)| argmax(a) == argmax(b));
        let positions: Vec<usize> = serde_json::from_value(case["positions"].clone())?;
        let wants: Vec<Vec<f32>> = serde_json::from_value(case["logits"].clone())?;
        let mut worst = 0f32;
        for (pos, want) in positions.iter().zip(&wants) {
            worst = worst.max(rel(&full[*pos], want));
        }
        let ok = worst <= a.tol && chunk_rel <= a.tol && argmax_same;
        failures += usize::from(!ok);
        println!(
            "{} {arch} prompt_len={} vs_golden={worst:.2e} chunked_vs_whole={chunk_rel:.2e} \
             vs_cpu={cpu_rel:.2e} argmax_equal_cpu={argmax_same}",
            if ok { "PASS" } else { "FAIL" },
            ids.len()
        );
    }
    if failures > 0 {
        anyhow::bail!("gpu golden: {failures} case(s) failed");
    }
    println!("gpu golden: all cases passed ({arch}, tol {:e})", a.tol);
    Ok(())
}
