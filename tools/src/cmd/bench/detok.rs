//! `strata bench detok`: what turning one output token into streamed text costs the HTTP side,
//! at several output lengths: the incremental decode `Output::push` does now (a window of the
//! last tokens) side by side with one decode of the whole output so far (what each token cost
//! before). The tokenizer is a model directory's (`--model-path`) or the made tiny model's.

use clap::Parser;
use std::time::Instant;
use strata_server::api::output::Output;
use strata_server::model::Tokenizer;
use strata_server::sampling::SamplingParams;
use strata_server::scheduler::request::Event;
use strata_server::seeded::SplitMix64;

#[derive(Parser)]
pub struct Args {
    /// A model directory whose tokenizer.json is used (else the made tiny model's).
    #[arg(long)]
    model_path: Option<std::path::PathBuf>,
    /// Output lengths at which the per-token cost is measured.
    #[arg(long, value_delimiter = ',', default_value = "256,2048,8192,32768")]
    lengths: Vec<usize>,
    /// Seed of the random output tokens.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let made = std::env::temp_dir().join(format!("strata-bench-detok-{}", std::process::id()));
    let dir = match &a.model_path {
        Some(d) => d.clone(),
        None => {
            strata_make_model::make_model(&strata_make_model::MakeModel::default(), &made)?;
            made.clone()
        }
    };
    let tok = Tokenizer::load(&dir);
    let _ = std::fs::remove_dir_all(&made);
    let tok = tok?;
    let vocab = tok.vocab_size() as u64;
    let mut rng = SplitMix64(a.seed);
    let p = SamplingParams::default();
    println!("tokenizer: {} ({vocab} tokens)", dir.display());
    println!(
        "{:>8} {:>22} {:>26} {:>8}",
        "length", "incremental (now), us", "whole output (before), us", "ratio"
    );
    for &n in &a.lengths {
        let ids: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect();
        // Now: every token through `Output::push`; the last 256 are timed.
        let mut out = Output::new(false);
        let mut now = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let t = Instant::now();
            std::hint::black_box(out.push(Event::Token { id, logprob: None }, &tok, &p));
            if i + 256 >= n {
                now.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        // Before: one decode of the whole output per token, at this length.
        let before: Vec<f64> = (0..16)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(tok.decode(&ids, true));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let (now, before) = (median(now), median(before));
        println!(
            "{n:>8} {now:>22.2} {before:>26.2} {:>8.1}",
            before / now.max(1e-9)
        );
    }
    Ok(())
}
