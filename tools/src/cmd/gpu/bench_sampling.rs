//! `strata gpu bench --only sampling`: the GPU sampler (`sample_rows`, plus `logprob_rows` where
//! asked) on random logits rows at the Llama 3 and Qwen vocabularies, batches 1 to 256, against
//! what the CUDA runner did before for a non-greedy row: download the f32 row and run the host
//! sampler (`sample_host`). GPU times are CUDA-event medians of the launches (the upload of the
//! packed parameters included); "step" is the host wall time of the whole call with the token
//! (and logprob) download. Penalties are re-applied to the same buffer on every repeat (the
//! logits drift; the work per launch does not change).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use strata_kernels::cuda::{CudaOps, DType};
use strata_kernels::sample_rows::{count_tokens, pack_rows};
use strata_server::logprobs::LogprobSpec;
use strata_server::model::runner::{gpu_row, sample_host, SampleReq};
use strata_server::sampling::{SamplingParams, SamplingParamsWire};

use super::bench::{gpu_ms, median};

fn params(json: &str) -> anyhow::Result<SamplingParams> {
    serde_json::from_str::<SamplingParamsWire>(json)?
        .validate()
        .map_err(anyhow::Error::msg)
}

pub fn run(ops: &CudaOps, summary: &mut Vec<String>) -> anyhow::Result<Value> {
    let ctx = ops.context();
    let mut rng = StdRng::seed_from_u64(14);
    let lp = |top_n| {
        Some(LogprobSpec {
            start: 0,
            top_n,
            token_ids: None,
        })
    };
    let presets = [
        ("temp0.7", params(r#"{"temperature": 0.7}"#)?, None),
        (
            "all+pen",
            params(
                r#"{"temperature": 0.7, "top_p": 0.9, "top_k": 50, "min_p": 0.05, "frequency_penalty": 0.3, "presence_penalty": 0.2, "repetition_penalty": 1.1}"#,
            )?,
            None,
        ),
        // Top-N logprobs: up to 8 and up to 32 on the kernel's candidates (merged by a warp, by
        // rank), 33 by radix selection (the form every N above 8 took before).
        ("temp0.7+lp5", params(r#"{"temperature": 0.7}"#)?, lp(5)),
        ("temp0.7+lp20", params(r#"{"temperature": 0.7}"#)?, lp(20)),
        ("temp0.7+lp33", params(r#"{"temperature": 0.7}"#)?, lp(33)),
    ];
    let mut rows_out = Vec::new();
    for vocab in [128256usize, 151936] {
        let max_b = 256;
        let logits: Vec<f32> = (0..max_b * vocab)
            .map(|_| {
                let s: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum();
                s * 2.0
            })
            .collect();
        let outputs: Vec<Vec<u32>> = (0..max_b)
            .map(|_| {
                (0..256)
                    .map(|_| rng.random_range(0..vocab as u32))
                    .collect()
            })
            .collect();
        // Counted once, as the scheduler keeps them per sequence (a step adds its token).
        let counts: Vec<Vec<(u32, u32)>> = outputs.iter().map(|o| count_tokens(o)).collect();
        for b in [1usize, 16, 64, 256] {
            let gl = ctx.upload_f32(&[b, vocab], &logits[..b * vocab])?;
            let tokens = ctx.alloc(DType::I32, &[b])?;
            for (name, p, lp) in &presets {
                let reqs: Vec<SampleReq> = (0..b)
                    .map(|r| SampleReq {
                        params: p,
                        counts: &counts[r],
                        banned: &[],
                        allow: None,
                        uniform: (r as f64 + 0.5) / b as f64,
                        logprobs: lp.as_ref(),
                        score: None,
                        embed: false,
                        hidden: false,
                        uncounted: None,
                    })
                    .collect();
                let specs: Vec<_> = reqs.iter().map(gpu_row).collect();
                let packed = pack_rows(&specs, vocab);
                let gpu = gpu_ms(ctx, false, 2, 9, || {
                    ops.sample_rows(&gl, &packed, &tokens, None)?;
                    Ok(())
                })?;
                let mut walls = Vec::new();
                for _ in 0..5 {
                    let t = Instant::now();
                    let packed = pack_rows(&specs, vocab);
                    let out = ops.sample_rows(&gl, &packed, &tokens, None)?;
                    ctx.download_i32(&tokens)?;
                    if let Some(o) = out {
                        ops.download_logprobs(&packed, &o)?;
                    }
                    walls.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let step = median(walls);
                // The previous path: download each row and sample it on the host (batches up
                // to 16; it grows linearly).
                let host = if b <= 16 {
                    let t = Instant::now();
                    for (r, req) in reqs.iter().enumerate() {
                        let mut row = ctx.download_f32_range(&gl, r * vocab, vocab)?;
                        sample_host(&mut row, req);
                    }
                    Some(t.elapsed().as_secs_f64() * 1e3)
                } else {
                    None
                };
                println!(
                    "sampling V{vocab} B{b:<3} {name:<12} gpu {gpu:>7.3} ms  step {step:>7.3} ms  host path {}",
                    host.map_or("-".into(), |h| format!("{h:.3} ms"))
                );
                rows_out.push(json!({"vocab": vocab, "batch": b, "preset": name,
                    "gpu_ms": gpu, "step_ms": step, "host_path_ms": host}));
                if vocab == 151936 && name.contains("+lp") && b == 64 {
                    summary.push(format!(
                        "GPU sampling V{vocab} B{b} {name}: {gpu:.3} ms GPU, {step:.3} ms step"
                    ));
                }
                if vocab == 151936 && *name == "all+pen" && (b == 64 || b == 256) {
                    summary.push(format!(
                        "GPU sampling V{vocab} B{b} all filters + penalties: {gpu:.3} ms GPU, {step:.3} ms step"
                    ));
                }
            }
        }
    }
    Ok(json!(rows_out))
}
