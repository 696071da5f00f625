//! `strata bench serve --dataset-name multiturn`: multi-turn conversations, modelled on SGLang's
//! `benchmark/hicache/bench_multiturn.py`.
//!
//! `--num-clients` conversations run for `--num-rounds` rounds. Round 1 sends a prompt of
//! `--request-length` random tokens; every later round sends the whole history (all earlier
//! prompts and answers) plus a new question of `--request-length` tokens, so the reusable prefix
//! grows each round. A round starts only when every client finished the previous one (a barrier),
//! so per-round numbers compare like with like. Requests are streamed `POST /generate` with
//! `input_ids` (exact lengths, no tokenizer round trip); per round the tool reports TTFT (mean,
//! median, p90), the prompt length and the cache hit ratio `Σ cached_tokens / Σ prompt_tokens`
//! from `meta_info`. `--record-answers FILE` keeps the answers; `--replay-answers FILE` builds the
//! histories from recorded answers instead of this server's own, so a second server continues
//! exactly the conversations the first one had (a bf16 GPU server's greedy answers depend on the
//! batch it ran in, so without a replay two servers' conversations part after the first answer
//! and the second finds nothing of the first's later rounds in a shared L3).

use super::serve::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Instant;
use strata_server::seeded::SplitMix64;

/// One streamed turn's measurements.
struct Turn {
    ttft: f64,
    prompt: usize,
    cached: usize,
    output: Vec<u32>,
}

async fn turn(client: &reqwest::Client, a: &Args, ids: &[u32]) -> anyhow::Result<Turn> {
    let body = json!({"input_ids": ids, "stream": true,
        "sampling_params": {"temperature": 0.0, "max_new_tokens": a.output_length, "ignore_eos": true}});
    let start = Instant::now();
    let r = client
        .post(format!("{}/generate", a.base_url))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "HTTP {}: {}",
        r.status(),
        r.text().await?
    );
    let mut s = r.bytes_stream();
    let (mut buf, mut ttft, mut last) = (String::new(), None, Value::Null);
    while let Some(chunk) = s.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            let Some(data) = ev.trim().strip_prefix("data:").map(str::trim) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if ttft.is_none() && v["output_ids"].as_array().is_some_and(|o| !o.is_empty()) {
                ttft = Some(start.elapsed().as_secs_f64());
            }
            last = v;
        }
    }
    let m = &last["meta_info"];
    Ok(Turn {
        ttft: ttft.ok_or_else(|| anyhow::anyhow!("no tokens received"))?,
        prompt: m["prompt_tokens"].as_u64().unwrap_or(ids.len() as u64) as usize,
        cached: m["cached_tokens"].as_u64().unwrap_or(0) as usize,
        output: last["output_ids"]
            .as_array()
            .map(|o| {
                o.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((p * (v.len() - 1) as f64).round()) as usize];
    (v.iter().sum::<f64>() / v.len() as f64, at(0.5), at(0.9))
}

/// Runs the conversations; `vocab` bounds the random token ids.
pub async fn run(client: &reqwest::Client, a: &Args, vocab: usize) -> anyhow::Result<()> {
    let mut rng = SplitMix64(a.seed);
    let vocab = (vocab * 9 / 10).max(8) as u64;
    let question = |rng: &mut SplitMix64| -> Vec<u32> {
        (0..a.request_length)
            .map(|_| 3 + (rng.next_u64() % (vocab - 3)) as u32)
            .collect()
    };
    let mut history: Vec<Vec<u32>> = (0..a.num_clients).map(|_| Vec::new()).collect();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(
        a.max_concurrency.unwrap_or(a.num_clients).max(1),
    ));
    println!("==================== Multi-turn benchmark ====================");
    println!(
        "{:<6}{:>10}{:>14}{:>14}{:>14}{:>12}",
        "round", "prompt", "mean TTFT ms", "p50 TTFT ms", "p90 TTFT ms", "cache hit"
    );
    let replay: Option<Vec<Vec<Vec<u32>>>> = match &a.replay_answers {
        Some(p) => {
            let v: Vec<Vec<Vec<u32>>> = serde_json::from_slice(&std::fs::read(p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            anyhow::ensure!(
                v.len() >= a.num_rounds && v.iter().all(|r| r.len() >= a.num_clients),
                "{}: recorded answers cover fewer rounds or clients than asked",
                p.display()
            );
            Some(v)
        }
        None => None,
    };
    let mut answers: Vec<Vec<Vec<u32>>> = Vec::new();
    let mut rounds = Vec::new();
    for round in 1..=a.num_rounds {
        let prompts: Vec<Vec<u32>> = history
            .iter()
            .map(|h| {
                let mut p = h.clone();
                p.extend(question(&mut rng));
                p
            })
            .collect();
        let futs = prompts.iter().map(|p| {
            let sem = sem.clone();
            async move {
                let _permit = sem.acquire().await?;
                turn(client, a, p).await
            }
        });
        let turns: Vec<Turn> = futures::future::join_all(futs)
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let mut ttft: Vec<f64> = turns.iter().map(|t| t.ttft * 1e3).collect();
        let (mean, p50, p90) = stats(&mut ttft);
        let prompt: usize = turns.iter().map(|t| t.prompt).sum();
        let cached: usize = turns.iter().map(|t| t.cached).sum();
        let hit = cached as f64 / prompt.max(1) as f64;
        let avg_prompt = prompt / turns.len().max(1);
        println!("{round:<6}{avg_prompt:>10}{mean:>14.2}{p50:>14.2}{p90:>14.2}{hit:>12.3}");
        rounds.push(
            json!({"round": round, "mean_prompt_tokens": avg_prompt, "mean_ttft_ms": mean,
            "median_ttft_ms": p50, "p90_ttft_ms": p90, "cache_hit_ratio": hit}),
        );
        let given: Vec<Vec<u32>> = turns.iter().map(|t| t.output.clone()).collect();
        let used = replay.as_ref().map_or(&given, |r| &r[round - 1]);
        for ((h, p), out) in history.iter_mut().zip(prompts).zip(used) {
            *h = p;
            h.extend(out);
        }
        answers.push(given);
    }
    if let Some(p) = &a.record_answers {
        std::fs::write(p, serde_json::to_vec(&answers)?)?;
    }
    println!("==============================================================");
    if let Some(path) = &a.output_file {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(
            f,
            "{}",
            json!({"dataset_name": "multiturn", "num_clients": a.num_clients,
                "request_length": a.request_length, "output_length": a.output_length, "rounds": rounds})
        )?;
    }
    Ok(())
}
