//! `strata gpu runner-logits`: runs prompts (token ids) through the bf16 CUDA runner and writes
//! every position's greedy pick plus the full logits of sampled positions, for
//! `scripts/hf_runner_compare.py` to hold against Hugging Face transformers on the same weights.
//!
//! Each prompt is prefilled through the paged pool (page size 16, pages in reverse order) whole
//! (`--chunk 0`) or in chunks of `--chunk` tokens, each chunk attending to the cached prefix
//! written by the earlier ones (the server's chunked prefill). Output: `--out PATH.json`
//! (`{"vocab", "prompts": [{"len", "argmax", "dump_positions"}]}`) and `PATH.bin`: the logits rows
//! of every prompt's dump positions, f32 little-endian, in order.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use strata_kernels::cuda::{select, BackendKind};
use strata_server::model::cuda::{CudaRunner, CudaRunnerOptions};
use strata_server::model::{ModelConfig, ModelRunner};

#[derive(ClapArgs)]
pub struct Args {
    /// Model directory (Hugging Face layout).
    #[arg(long)]
    model_path: PathBuf,
    /// JSON list of prompts, each a list of token ids.
    #[arg(long)]
    prompts: PathBuf,
    /// Output JSON path (the logits go to the same path with extension .bin).
    #[arg(long)]
    out: PathBuf,
    /// Prefill chunk (0: whole prompt in one forward).
    #[arg(long, default_value_t = 0)]
    chunk: usize,
    /// Dump full logits of every N-th position (and the last).
    #[arg(long, default_value_t = 64)]
    every: usize,
    #[command(flatten)]
    common: super::Common,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    const PAGE: usize = 16;
    let (kind, ctx) = select(a.common.base_gpu_id, false);
    let ctx = match (kind, ctx) {
        (BackendKind::Cuda { .. }, Some(c)) => c,
        (BackendKind::Cpu { reason }, _) => anyhow::bail!("no CUDA device: {reason}"),
        _ => anyhow::bail!("no CUDA device"),
    };
    let prompts: Vec<Vec<u32>> = serde_json::from_str(
        &std::fs::read_to_string(&a.prompts).with_context(|| a.prompts.display().to_string())?,
    )?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let cfg = ModelConfig::load(&a.model_path)?;
    let opts = CudaRunnerOptions {
        context_length: longest + 1,
        cuda_graph_bs: Vec::new(),
        max_prefill_tokens: longest,
        max_running_requests: 1,
        deterministic: strata_kernels::cuda::det::from_env(false),
    };
    let runner = CudaRunner::load(ctx, &a.model_path, &cfg, opts)?;
    let n_pages = longest.div_ceil(PAGE) + 3;
    let mut kv = runner.new_kv(n_pages, PAGE)?;
    let mut bin = std::io::BufWriter::new(std::fs::File::create(a.out.with_extension("bin"))?);
    let mut rows = Vec::new();
    let v = cfg.vocab_size;
    for ids in &prompts {
        let pages: Vec<u32> = (0..ids.len().div_ceil(PAGE) as u32)
            .rev()
            .map(|p| p + 2)
            .collect();
        let chunk = if a.chunk == 0 { ids.len() } else { a.chunk };
        let mut argmax = Vec::with_capacity(ids.len());
        let mut dump = Vec::new();
        let mut start = 0;
        while start < ids.len() {
            let end = (start + chunk).min(ids.len());
            let batch = super::golden::prefill_chunk(ids, &pages, PAGE, start..end);
            let (logits, picks) = runner.logits(&batch, &mut kv)?;
            argmax.extend(picks);
            for p in start..end {
                if p % a.every.max(1) == 0 || p + 1 == ids.len() {
                    let row = &logits[(p - start) * v..(p - start + 1) * v];
                    for x in row {
                        bin.write_all(&x.to_le_bytes())?;
                    }
                    dump.push(p);
                }
            }
            start = end;
        }
        rows.push(json!({"len": ids.len(), "argmax": argmax, "dump_positions": dump}));
    }
    bin.flush()?;
    let out: Value = json!({"vocab": v, "chunk": a.chunk, "prompts": rows});
    std::fs::write(&a.out, serde_json::to_string(&out)?)?;
    println!(
        "runner-logits: {} prompts (longest {longest}) chunk {} -> {}",
        prompts.len(),
        a.chunk,
        a.out.display()
    );
    Ok(())
}
