//! `strata make-model`: writes a deterministic random-weight model in the Hugging Face layout.

use std::path::PathBuf;
use strata_make_model::{make_model, DType, MakeModel, Size};
use strata_server::model::Arch;

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (created if missing; files are overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Architecture: llama, qwen2 or qwen3 (default: the one a real-shape size is named after,
    /// else llama; another arch on a real shape keeps its dimensions).
    #[arg(long)]
    arch: Option<String>,
    /// tiny (~0.1M params, for tests), small (~10M params), or the real shapes of
    /// llama-3.2-1b, llama-3.1-8b, qwen3-8b (random weights; these imply --arch).
    #[arg(long, default_value = "tiny")]
    size: String,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// On-disk dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Write a random LoRA adapter (PEFT layout: adapter_config.json, adapter_model.safetensors)
    /// for the model in this directory instead of a model (--seed draws it).
    #[arg(long)]
    lora_for: Option<PathBuf>,
    /// The adapter's rank.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// The adapter's lora_alpha (its scale is alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// With --lora-for: write that model with this adapter merged into its weights (W + scale
    /// B A, f32) instead, the checkpoint an adapter's served answers should equal.
    #[arg(long)]
    merge_lora: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(model) = &a.lora_for {
        anyhow::ensure!(a.lora_rank >= 1, "--lora-rank must be at least 1");
        match &a.merge_lora {
            Some(adapter) => {
                strata_make_model::merge_lora(model, adapter, &a.out)?;
                eprintln!(
                    "wrote {} ({} merged into {})",
                    a.out.display(),
                    adapter.display(),
                    model.display()
                );
            }
            None => {
                strata_make_model::make_lora(model, &a.out, a.lora_rank, a.lora_alpha, a.seed)?;
                eprintln!(
                    "wrote {} (LoRA rank {} for {}, seed {})",
                    a.out.display(),
                    a.lora_rank,
                    model.display(),
                    a.seed
                );
            }
        }
        return Ok(());
    }
    anyhow::ensure!(
        a.merge_lora.is_none(),
        "--merge-lora needs --lora-for MODEL"
    );
    let size = Size::parse(&a.size).ok_or_else(|| {
        anyhow::anyhow!(
            "--size: unknown size `{}` (tiny, small, llama-3.2-1b, llama-3.1-8b, qwen3-8b)",
            a.size
        )
    })?;
    let arch = match a.arch.as_deref() {
        Some("llama") => Arch::Llama,
        Some("qwen2") => Arch::Qwen2,
        Some("qwen3") => Arch::Qwen3,
        None => size.arch().unwrap_or(Arch::Llama),
        Some(o) => anyhow::bail!("--arch: unknown architecture `{o}` (llama, qwen2, qwen3)"),
    };
    let dtype = match a.dtype.as_str() {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        o => anyhow::bail!("--dtype: unknown dtype `{o}` (f32, bf16, f16)"),
    };
    make_model(
        &MakeModel {
            arch,
            size,
            seed: a.seed,
            dtype,
        },
        &a.out,
    )?;
    eprintln!(
        "wrote {} ({}, {}, seed {})",
        a.out.display(),
        arch.hf_name(),
        a.size,
        a.seed
    );
    Ok(())
}
