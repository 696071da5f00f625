//! `strata bench serve`: an online serving load generator in the spirit of `sglang.bench_serving`.
//!
//! Sends requests to any server with SGLang's API (`--backend sglang` streams `POST /generate`;
//! `--backend openai` streams `POST /v1/completions`; `--backend embeddings` posts each prompt to
//! `POST /v1/embeddings`, an embedding server's route: its TTFT is the time to the vector, no
//! output tokens) at a Poisson `--request-rate` and/or with at most `--max-concurrency` in flight, and reports throughput and TTFT / inter-token / end-to-end
//! latency percentiles. Datasets: `random` (random token ids decoded to text, so prompts have the
//! asked length under the server's tokenizer) and `generated-shared-prefix` (groups of prompts that
//! share a long system prompt). Prompts need the model's `tokenizer.json`: `--tokenizer`, or the
//! `model_path` that `/get_model_info` reports when it is a local directory. Everything random is
//! drawn from `--seed`.

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_server::model::Tokenizer;
use strata_server::seeded::SplitMix64;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:30000")]
    pub(super) base_url: String,
    /// sglang (POST /generate), openai (POST /v1/completions) or embeddings (POST
    /// /v1/embeddings, an embedding server).
    #[arg(long, default_value = "sglang")]
    backend: String,
    /// random, generated-shared-prefix or multiturn.
    #[arg(long, default_value = "random")]
    pub(super) dataset_name: String,
    /// Requests in the run (random dataset).
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    /// Prompt tokens per request (random dataset).
    #[arg(long, default_value_t = 128)]
    random_input_len: usize,
    /// Output tokens per request (random dataset).
    #[arg(long, default_value_t = 64)]
    random_output_len: usize,
    /// Lengths are drawn uniformly from [len × ratio, len].
    #[arg(long, default_value_t = 1.0)]
    random_range_ratio: f64,
    /// Shared-prefix groups (generated-shared-prefix dataset).
    #[arg(long, default_value_t = 4)]
    gsp_num_groups: usize,
    /// Requests per group.
    #[arg(long, default_value_t = 8)]
    gsp_prompts_per_group: usize,
    /// Tokens of each group's shared system prompt.
    #[arg(long, default_value_t = 512)]
    gsp_system_prompt_len: usize,
    /// Tokens of each request's own question.
    #[arg(long, default_value_t = 32)]
    gsp_question_len: usize,
    /// Output tokens per request (generated-shared-prefix dataset).
    #[arg(long, default_value_t = 32)]
    gsp_output_len: usize,
    /// multiturn: concurrent conversations.
    #[arg(long, default_value_t = 8)]
    pub(super) num_clients: usize,
    /// multiturn: rounds per conversation.
    #[arg(long, default_value_t = 4)]
    pub(super) num_rounds: usize,
    /// multiturn: tokens of each round's new question.
    #[arg(long, default_value_t = 512)]
    pub(super) request_length: usize,
    /// multiturn: tokens of each answer.
    #[arg(long, default_value_t = 32)]
    pub(super) output_length: usize,
    /// multiturn: write the answers the server gave (per round and client, JSON) to this file.
    #[arg(long)]
    pub(super) record_answers: Option<std::path::PathBuf>,
    /// multiturn: build each history from the answers in this file (written by
    /// `--record-answers`) instead of this server's, so another server continues the same
    /// conversations (what a client moving between servers sends).
    #[arg(long)]
    pub(super) replay_answers: Option<std::path::PathBuf>,
    /// Requests per second (Poisson arrivals); inf sends all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    request_rate: f64,
    /// Most requests in flight.
    #[arg(long)]
    pub(super) max_concurrency: Option<usize>,
    /// tokenizer.json or a model directory (default: the server's model_path).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Model name sent to the OpenAI endpoint.
    #[arg(long)]
    model: Option<String>,
    /// Seed of the dataset and the arrival times.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Let generation stop at EOS (by default EOS is ignored so output lengths are exact).
    #[arg(long)]
    disable_ignore_eos: bool,
    /// Requests sent (and not measured) before the run.
    #[arg(long, default_value_t = 1)]
    warmup_requests: usize,
    /// Append the results as one JSON line to this file.
    #[arg(long)]
    pub(super) output_file: Option<PathBuf>,
    /// LoRA adapters the requests name (`lora_path`; request i names the (i mod n)-th), as
    /// sglang.bench_serving's --lora-name.
    #[arg(long, num_args = 1..)]
    lora_name: Vec<String>,
    /// A JSON object added to every request's body, as sglang.bench_serving's
    /// --extra-request-body (e.g. '{"sampling_params": {"temperature": 0.7, "top_p": 0.9}}' for
    /// /generate, '{"temperature": 0.7}' for the OpenAI backend); a `sampling_params` object is
    /// merged into the request's own (its max_new_tokens and ignore_eos stay unless named).
    #[arg(long, value_parser = json_object)]
    extra_request_body: Option<Value>,
}

fn json_object(s: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Adds `extra`'s keys to `body` (a `sampling_params` object key by key).
fn merge_extra(body: &mut Value, extra: &Value) {
    let Some(extra) = extra.as_object() else {
        return;
    };
    for (k, v) in extra {
        match (
            body.get_mut(k).and_then(Value::as_object_mut),
            v.as_object(),
        ) {
            (Some(mine), Some(theirs)) if k == "sampling_params" => {
                mine.extend(theirs.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            _ => body[k] = v.clone(),
        }
    }
}

struct Prompt {
    text: String,
    input_len: usize,
    output_len: usize,
    /// The LoRA adapter it names (`--lora-name`), if any.
    lora: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    ok: bool,
    error: String,
    ttft: f64,
    itl: Vec<f64>,
    e2e: f64,
    output_tokens: usize,
}

fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    Tokenizer::load(&dir)
        .map_err(|e| anyhow::anyhow!("loading tokenizer from {}: {e}", path.display()))
}

/// Random text of `len` tokens under `tok`.
fn random_text(tok: &Tokenizer, rng: &mut SplitMix64, len: usize) -> String {
    // Byte-level ids below 256 and merged tokens decode to text; special tokens are avoided by
    // keeping to the first 90% of the vocabulary.
    let vocab = (tok.vocab_size() * 9 / 10).max(2) as u64;
    let ids: Vec<u32> = (0..len).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let mut text = tok.decode(&ids, true);
    // Re-encoding can merge differently; trim or pad to the asked length.
    for _ in 0..4 {
        let enc = tok.encode(&text, false).unwrap_or_default();
        if enc.len() == len {
            break;
        }
        if enc.len() > len {
            text = tok.decode(&enc[..len], true);
        } else {
            let extra: Vec<u32> = (0..len - enc.len())
                .map(|_| (rng.next_u64() % vocab) as u32)
                .collect();
            text.push_str(&tok.decode(&extra, true));
        }
    }
    text
}

fn pick_len(rng: &mut SplitMix64, len: usize, ratio: f64) -> usize {
    let lo = ((len as f64) * ratio.clamp(0.0, 1.0)).round() as usize;
    let lo = lo.clamp(1, len.max(1));
    lo + (rng.next_u64() as usize) % (len.max(1) - lo + 1)
}

fn dataset(a: &Args, tok: &Tokenizer) -> anyhow::Result<Vec<Prompt>> {
    let mut rng = SplitMix64(a.seed);
    let count = |t: &str| tok.encode(t, true).map(|v| v.len()).unwrap_or(0);
    let mut out = Vec::new();
    match a.dataset_name.as_str() {
        "random" => {
            for _ in 0..a.num_prompts {
                let il = pick_len(&mut rng, a.random_input_len, a.random_range_ratio);
                let ol = pick_len(&mut rng, a.random_output_len, a.random_range_ratio);
                let text = random_text(tok, &mut rng, il);
                out.push(Prompt {
                    input_len: count(&text),
                    text,
                    output_len: ol,
                    lora: None,
                });
            }
        }
        "generated-shared-prefix" => {
            for _ in 0..a.gsp_num_groups {
                let system = random_text(tok, &mut rng, a.gsp_system_prompt_len);
                for _ in 0..a.gsp_prompts_per_group {
                    let text = format!(
                        "{system}\n{}",
                        random_text(tok, &mut rng, a.gsp_question_len)
                    );
                    out.push(Prompt {
                        input_len: count(&text),
                        text,
                        output_len: a.gsp_output_len,
                        lora: None,
                    });
                }
            }
            // Interleave groups (seeded Fisher–Yates) as real traffic would.
            for i in (1..out.len()).rev() {
                let j = (rng.next_u64() as usize) % (i + 1);
                out.swap(i, j);
            }
        }
        other => {
            anyhow::bail!(
                "--dataset-name {other}: expected random, generated-shared-prefix or multiturn"
            )
        }
    }
    Ok(out)
}

/// POSTs `body`; a reply that is not a success is an error naming its status and body.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<reqwest::Response, String> {
    match client.post(url).json(body).send().await {
        Ok(r) if r.status().is_success() => Ok(r),
        Ok(r) => Err(format!(
            "HTTP {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// One embedding request: done when its vector arrives (TTFT = end-to-end latency).
async fn send_embedding(client: &reqwest::Client, a: &Args, p: &Prompt) -> Outcome {
    let start = Instant::now();
    let mut o = Outcome::default();
    let url = format!("{}/v1/embeddings", a.base_url);
    let v: Value = match post(client, &url, &json!({"input": p.text})).await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(e) => {
            o.error = e;
            return o;
        }
    };
    o.e2e = start.elapsed().as_secs_f64();
    o.ttft = o.e2e;
    o.ok = v["data"][0]["embedding"].is_array();
    if !o.ok {
        o.error = format!("no embedding in {v}");
    }
    o
}

async fn send(client: &reqwest::Client, a: &Args, p: &Prompt) -> Outcome {
    if a.backend == "embeddings" {
        return send_embedding(client, a, p).await;
    }
    let start = Instant::now();
    let ignore_eos = !a.disable_ignore_eos;
    let (url, body) = if a.backend == "openai" {
        let mut b = json!({"prompt": p.text, "max_tokens": p.output_len, "temperature": 0.0, "stream": true,
            "ignore_eos": ignore_eos, "stream_options": {"include_usage": true}});
        if let Some(m) = &a.model {
            b["model"] = json!(m);
        }
        (format!("{}/v1/completions", a.base_url), b)
    } else {
        (
            format!("{}/generate", a.base_url),
            json!({"text": p.text, "stream": true,
                "sampling_params": {"temperature": 0.0, "max_new_tokens": p.output_len, "ignore_eos": ignore_eos}}),
        )
    };
    let mut body = body;
    if let Some(l) = &p.lora {
        body["lora_path"] = json!(l);
    }
    if let Some(x) = &a.extra_request_body {
        merge_extra(&mut body, x);
    }
    let mut o = Outcome::default();
    let resp = match post(client, &url, &body).await {
        Ok(r) => r,
        Err(e) => {
            o.error = e;
            return o;
        }
    };
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    // Where the search for the end of the event in `buf` resumes (long lines come in pieces).
    let mut scanned = 0;
    let mut last = start;
    let mut chunks = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            o.error = "stream broken".into();
            return o;
        };
        buf.extend_from_slice(&chunk);
        while let Some(i) = find_event_end(&buf, scanned) {
            let now = Instant::now();
            let has_tokens = chunk_tokens(&buf[..i], &a.backend, &mut o.output_tokens);
            buf.drain(..i + 2);
            scanned = 0;
            if !has_tokens {
                continue;
            }
            chunks += 1;
            if chunks == 1 {
                o.ttft = (now - start).as_secs_f64();
            } else {
                o.itl.push((now - last).as_secs_f64());
            }
            last = now;
        }
        scanned = buf.len().saturating_sub(1);
    }
    if o.output_tokens == 0 {
        o.output_tokens = chunks;
    }
    o.e2e = start.elapsed().as_secs_f64();
    o.ok = chunks > 0;
    if !o.ok {
        o.error = "no tokens received".into();
    }
    o
}

/// The end (`\n\n`) of the first event in `buf`, searching from `from`.
fn find_event_end(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.min(buf.len());
    buf[from..]
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i)
}

/// The fields of a streamed line the load generator reads; the rest (long log-probability
/// lists among them) is skipped without being built.
#[derive(serde::Deserialize)]
struct Line {
    meta_info: Option<Counts>,
    usage: Option<Counts>,
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(serde::Deserialize)]
struct Counts {
    completion_tokens: Option<u64>,
}

/// Reads one SSE event: whether it brought output tokens (`output_tokens` keeps the count the
/// server reported).
fn chunk_tokens(event: &[u8], backend: &str, output_tokens: &mut usize) -> bool {
    let event = event.trim_ascii();
    let Some(data) = event.strip_prefix(b"data:").map(<[u8]>::trim_ascii) else {
        return false;
    };
    if data == b"[DONE]" {
        return false;
    }
    let Ok(line) = serde_json::from_slice::<Line>(data) else {
        return false;
    };
    let count = |c: Option<Counts>| c.and_then(|c| c.completion_tokens);
    if backend == "openai" {
        if let Some(n) = count(line.usage) {
            *output_tokens = n as usize;
        }
        line.choices.is_some_and(|c| !c.is_empty())
    } else {
        let n = count(line.meta_info).unwrap_or(0) as usize;
        let grew = n > *output_tokens;
        *output_tokens = n;
        grew
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let tok_path = match &a.tokenizer {
        Some(p) => p.clone(),
        None => {
            let v: Value = client
                .get(format!("{}/get_model_info", a.base_url))
                .send()
                .await
                .context("GET /get_model_info (pass --tokenizer to skip)")?
                .json()
                .await?;
            PathBuf::from(
                v["tokenizer_path"]
                    .as_str()
                    .or(v["model_path"].as_str())
                    .unwrap_or("."),
            )
        }
    };
    let tok = load_tokenizer(&tok_path)?;
    if a.dataset_name == "multiturn" {
        return super::multiturn::run(&client, &a, tok.vocab_size()).await;
    }
    let mut prompts = dataset(&a, &tok)?;
    for (i, p) in prompts.iter_mut().enumerate() {
        p.lora = (!a.lora_name.is_empty()).then(|| a.lora_name[i % a.lora_name.len()].clone());
    }
    let prompts = Arc::new(prompts);
    let a = Arc::new(a);
    for p in prompts.iter().take(a.warmup_requests) {
        let o = send(&client, &a, p).await;
        anyhow::ensure!(o.ok, "warm-up request failed: {}", o.error);
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(
        a.max_concurrency.unwrap_or(usize::MAX >> 4),
    ));
    let mut rng = SplitMix64(a.seed ^ 0xA11CE);
    // Progress on a terminal (as sglang.bench_serving's tqdm bar), nothing in pipes and files.
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(prompts.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests [{elapsed_precise}<{eta_precise}]",
        )
        .expect("template"),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..prompts.len() {
        if a.request_rate.is_finite() && a.request_rate > 0.0 {
            let gap = -(1.0 - rng.next_f64()).ln() / a.request_rate;
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        }
        let permit = sem.clone().acquire_owned().await?;
        let (client, a, prompts, bar) = (client.clone(), a.clone(), prompts.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let o = send(&client, &a, &prompts[i]).await;
            drop(permit);
            bar.inc(1);
            o
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await?);
    }
    bar.finish_and_clear();
    let duration = start.elapsed().as_secs_f64();
    report(&a, &prompts, &outcomes, duration)
}

fn report(a: &Args, prompts: &[Prompt], outcomes: &[Outcome], duration: f64) -> anyhow::Result<()> {
    let ok: Vec<(&Prompt, &Outcome)> = prompts.iter().zip(outcomes).filter(|(_, o)| o.ok).collect();
    let failed = outcomes.len() - ok.len();
    if let Some((_, o)) = prompts.iter().zip(outcomes).find(|(_, o)| !o.ok) {
        eprintln!("first failure: {}", o.error);
    }
    let input: usize = ok.iter().map(|(p, _)| p.input_len).sum();
    let output: usize = ok.iter().map(|(_, o)| o.output_tokens).sum();
    let mut ttft: Vec<f64> = ok.iter().map(|(_, o)| o.ttft * 1e3).collect();
    let mut itl: Vec<f64> = ok
        .iter()
        .flat_map(|(_, o)| o.itl.iter().map(|x| x * 1e3))
        .collect();
    let mut e2e: Vec<f64> = ok.iter().map(|(_, o)| o.e2e * 1e3).collect();
    let r = json!({
        "backend": a.backend, "dataset_name": a.dataset_name, "request_rate": if a.request_rate.is_finite() { json!(a.request_rate) } else { json!("inf") },
        "max_concurrency": a.max_concurrency, "extra_request_body": a.extra_request_body,
        "completed": ok.len(), "failed": failed, "duration_s": duration,
        "total_input_tokens": input, "total_output_tokens": output,
        "request_throughput": ok.len() as f64 / duration, "input_throughput": input as f64 / duration,
        "output_throughput": output as f64 / duration, "total_throughput": (input + output) as f64 / duration,
        "mean_ttft_ms": mean(&ttft), "median_ttft_ms": pct(&mut ttft, 50.0), "p90_ttft_ms": pct(&mut ttft, 90.0), "p99_ttft_ms": pct(&mut ttft, 99.0),
        "mean_itl_ms": mean(&itl), "median_itl_ms": pct(&mut itl, 50.0), "p90_itl_ms": pct(&mut itl, 90.0), "p99_itl_ms": pct(&mut itl, 99.0),
        "mean_e2e_latency_ms": mean(&e2e), "median_e2e_latency_ms": pct(&mut e2e, 50.0), "p99_e2e_latency_ms": pct(&mut e2e, 99.0),
    });
    println!("============ Serving Benchmark Result ============");
    let rows = [
        ("Backend", "backend"),
        ("Dataset", "dataset_name"),
        ("Traffic request rate", "request_rate"),
        ("Max request concurrency", "max_concurrency"),
        ("Successful requests", "completed"),
        ("Failed requests", "failed"),
        ("Benchmark duration (s)", "duration_s"),
        ("Total input tokens", "total_input_tokens"),
        ("Total generated tokens", "total_output_tokens"),
        ("Request throughput (req/s)", "request_throughput"),
        ("Input token throughput (tok/s)", "input_throughput"),
        ("Output token throughput (tok/s)", "output_throughput"),
        ("Total token throughput (tok/s)", "total_throughput"),
        ("Mean TTFT (ms)", "mean_ttft_ms"),
        ("Median TTFT (ms)", "median_ttft_ms"),
        ("P90 TTFT (ms)", "p90_ttft_ms"),
        ("P99 TTFT (ms)", "p99_ttft_ms"),
        ("Mean ITL (ms)", "mean_itl_ms"),
        ("Median ITL (ms)", "median_itl_ms"),
        ("P90 ITL (ms)", "p90_itl_ms"),
        ("P99 ITL (ms)", "p99_itl_ms"),
        ("Mean E2E latency (ms)", "mean_e2e_latency_ms"),
        ("Median E2E latency (ms)", "median_e2e_latency_ms"),
        ("P99 E2E latency (ms)", "p99_e2e_latency_ms"),
    ];
    for (label, key) in rows {
        let v = &r[key];
        let s = match v.as_f64() {
            Some(f) if v.is_f64() => format!("{f:.2}"),
            _ => v.to_string().trim_matches('"').to_string(),
        };
        println!("{label:<40}{s:>12}");
    }
    println!("==================================================");
    if let Some(path) = &a.output_file {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{r}")?;
    }
    anyhow::ensure!(!ok.is_empty(), "every request failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_request_body_merges_sampling_params_and_sets_the_rest() {
        let mut body = json!({"text": "t", "stream": true,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": 9, "ignore_eos": true}});
        let extra =
            json_object(r#"{"sampling_params": {"temperature": 0.7, "top_p": 0.9}, "rid": "x"}"#)
                .unwrap();
        merge_extra(&mut body, &extra);
        assert_eq!(
            body,
            json!({"text": "t", "stream": true, "rid": "x", "sampling_params":
                {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 9, "ignore_eos": true}})
        );
        assert!(json_object("[1]").is_err());
        assert!(json_object("{").is_err());
    }
}
