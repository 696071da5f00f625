//! `strata make-model`: writes a deterministic random-weight model in the Hugging Face layout.

use std::path::PathBuf;
use strata_make_model::{make_model, DType, MakeModel, Size};
use strata_server::model::Arch;

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (created if missing; files are overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Architecture: llama, qwen2 or qwen3.
    #[arg(long, default_value = "llama")]
    arch: String,
    /// tiny (~0.1M params, for tests) or small (~10M params, for benchmarks).
    #[arg(long, default_value = "tiny")]
    size: String,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// On-disk dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let arch = match a.arch.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        o => anyhow::bail!("--arch: unknown architecture `{o}` (llama, qwen2, qwen3)"),
    };
    let size = match a.size.as_str() {
        "tiny" => Size::Tiny,
        "small" => Size::Small,
        o => anyhow::bail!("--size: unknown size `{o}` (tiny, small)"),
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
        a.arch,
        a.size,
        a.seed
    );
    Ok(())
}
