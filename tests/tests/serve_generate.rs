//! End-to-end: `strata serve` on a made model, driven over HTTP. Greedy output must not depend on
//! the prefix cache, chunked prefill, page size, batching with 16 concurrent requests, or
//! retraction under memory pressure; streaming must concatenate to the non-streamed text; a shared
//! long prefix must report `cached_tokens`, within its `extra_key` / `cache_salt` only.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{json_lines, MadeModel, Server};

const SMOKE: &str = "Let me tell you a long story ";

fn prompts() -> Vec<String> {
    let long = "Once upon a time there was a king who wanted to know everything. ".repeat(8);
    vec![
        SMOKE.to_string(),
        "Hello world! How are you today?".into(),
        "The quick brown fox jumps over the lazy dog.".into(),
        format!("{long}And then"),
        "In the evening the family gathered around the table".into(),
        "A server answers requests; a cache remembers".into(),
        "1, 2, 3, 4, 5, 6, 7,".into(),
        "ünïcödé 😀 and more".into(),
    ]
}

fn ids(v: &Value) -> Vec<u64> {
    v["output_ids"]
        .as_array()
        .expect("output_ids")
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

async fn alone(s: &Server, n: usize) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for p in prompts() {
        out.push(ids(&s.greedy(&p, n).await));
    }
    out
}

async fn concurrent16(s: &Server, n: usize) -> Vec<Vec<u64>> {
    let ps = prompts();
    let futs = (0..16).map(|i| {
        let p = ps[i % ps.len()].clone();
        async move { ids(&s.greedy(&p, n).await) }
    });
    futures::future::join_all(futs).await
}

/// Request i of a concurrent batch answered as prompt i % n was alone.
fn same_as_alone(batch: &[Vec<u64>], reference: &[Vec<u64>], what: &str) {
    for (i, x) in batch.iter().enumerate() {
        assert_eq!(x, &reference[i % reference.len()], "{what} {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_request_is_deterministic() {
    let m = MadeModel::new("llama", "tiny");
    let body = json!({"text": SMOKE, "sampling_params": {"temperature": 0}});
    let s = Server::start(m.path(), &["--page-size", "64"]);
    let (st, first) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{first}");
    let text = first["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    assert_eq!(first["meta_info"]["prompt_tokens"], 11);
    for _ in 0..3 {
        let (_, again) = s.post("/generate", &body).await;
        assert_eq!(again["text"], first["text"]);
        assert_eq!(again["output_ids"], first["output_ids"]);
    }
    drop(s);
    // A fresh server process gives the same text.
    let s = Server::start(m.path(), &["--page-size", "64"]);
    let (_, again) = s.post("/generate", &body).await;
    assert_eq!(again["text"], first["text"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_is_invariant_to_cache_chunking_batching_and_retraction() {
    let m = MadeModel::new("qwen3", "tiny");
    let n = 24;
    let a = Server::start(m.path(), &["--page-size", "4"]);
    let reference = alone(&a, n).await;
    assert!(
        reference.iter().all(|r| r.len() == n || r.len() < n),
        "lengths"
    );
    // Again on the same server: now served from the radix cache.
    assert_eq!(
        alone(&a, n).await,
        reference,
        "radix cache changed greedy output"
    );
    same_as_alone(
        &concurrent16(&a, n).await,
        &reference,
        "batch of 16 changed request",
    );
    drop(a);
    // No radix cache, page size 1, tiny prefill chunks.
    let b = Server::start(
        m.path(),
        &["--disable-radix-cache", "--chunked-prefill-size", "7"],
    );
    assert_eq!(
        alone(&b, n).await,
        reference,
        "no-radix + chunked prefill changed greedy output"
    );
    same_as_alone(
        &concurrent16(&b, n).await,
        &reference,
        "chunked batch changed request",
    );
    drop(b);
    // A pool far too small for 16 requests at once: retraction must requeue, never corrupt.
    let c = Server::start(
        m.path(),
        &[
            "--page-size",
            "4",
            "--max-total-tokens",
            "320",
            "--chunked-prefill-size",
            "32",
        ],
    );
    same_as_alone(
        &concurrent16(&c, n).await,
        &reference,
        "retraction changed request",
    );
    let (_, metrics) = c.get("/metrics").await;
    let retractions: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sglang:num_retractions_total "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        retractions > 0.0,
        "expected the small pool to force retractions"
    );
    c.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_concatenates_to_the_non_streamed_text() {
    let m = MadeModel::new("qwen2", "tiny");
    let s = Server::start(m.path(), &["--page-size", "16"]);
    for p in prompts().iter().take(4) {
        let plain = s.greedy(p, 40).await;
        let text = plain["text"].as_str().unwrap();
        // /generate streams cumulative text.
        let evs = s
            .stream("/generate", &json!({"text": p, "stream": true, "sampling_params": {"temperature": 0, "max_new_tokens": 40}}))
            .await;
        assert_eq!(evs.last().map(String::as_str), Some("[DONE]"));
        let last: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
        // Ids first: a differing text then says whether the tokens or their decoding differ.
        assert_eq!(
            last["output_ids"], plain["output_ids"],
            "generate stream ids for {p:?} (plain meta {}, streamed meta {})",
            plain["meta_info"], last["meta_info"]
        );
        assert_eq!(last["text"], plain["text"], "generate stream for {p:?}");
        assert!(last["meta_info"]["finish_reason"].is_object());
        // OpenAI completions stream deltas.
        let body = json!({"prompt": p, "max_tokens": 40, "temperature": 0, "stream": true});
        let evs = s.stream("/v1/completions", &body).await;
        let cat: String = evs
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(cat, text, "completions stream for {p:?}");
        let (st, v) = s
            .post(
                "/v1/completions",
                &json!({"prompt": p, "max_tokens": 40, "temperature": 0}),
            )
            .await;
        assert_eq!(st, 200);
        assert_eq!(v["choices"][0]["text"], plain["text"]);
        assert_eq!(
            v["usage"]["completion_tokens"],
            plain["meta_info"]["completion_tokens"]
        );
        // A stop string taken from the middle of the greedy text cuts both forms identically.
        let chars: Vec<char> = text.chars().collect();
        if chars.len() > 12 {
            let stop: String = chars[8..11].iter().collect();
            let want = &text[..text.find(&stop).unwrap()];
            let body = json!({"text": p, "sampling_params": {"temperature": 0, "max_new_tokens": 40, "stop": stop}});
            let (_, v) = s.post("/generate", &body).await;
            assert_eq!(v["text"], want, "stop string {stop:?}");
            assert_eq!(v["meta_info"]["finish_reason"]["matched"], stop.as_str());
            let body = json!({"prompt": p, "max_tokens": 40, "temperature": 0, "stream": true, "stop": [stop]});
            let cat: String = s
                .stream("/v1/completions", &body)
                .await
                .iter()
                .filter(|e| *e != "[DONE]")
                .map(|e| {
                    serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                })
                .collect();
            assert_eq!(cat, want, "streamed stop string {stop:?}");
        }
    }
    // Chat: streamed deltas equal the message content.
    let body = json!({"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 30, "temperature": 0});
    let (st, v) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let evs = s.stream("/v1/chat/completions", &sb).await;
    let mut cat = String::new();
    let mut usage = Value::Null;
    for e in evs.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            cat.push_str(c);
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(cat, content);
    assert_eq!(usage["completion_tokens"], v["usage"]["completion_tokens"]);
}

/// Streamed log-probabilities: every line carries each list from its first entry (SGLang's
/// format), so line k's lists are the first entries of the final answer's, and the last line's
/// equal the non-streamed answer's (the lists are serialized once per entry and copied per line,
/// `api/logprob_lists.rs`). With `--incremental-streaming-output` (as `sglang==0.5.23`) a
/// line's output-side lists hold only its new tokens' entries, which add up to the answer's,
/// and the prompt-side lists stay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_logprob_lists_grow_to_the_non_streamed_answer() {
    let m = MadeModel::new("llama", "tiny");
    let lists = [
        "input_token_logprobs",
        "output_token_logprobs",
        "input_top_logprobs",
        "output_top_logprobs",
        "input_token_ids_logprobs",
        "output_token_ids_logprobs",
    ];
    for flags in [&[][..], &["--incremental-streaming-output"][..]] {
        let mut args = vec!["--page-size", "16"];
        args.extend_from_slice(flags);
        let s = Server::start(m.path(), &args);
        let mut body = json!({"text": SMOKE, "return_logprob": true, "logprob_start_len": 2,
            "top_logprobs_num": 3, "token_ids_logprob": [5, 7], "return_text_in_logprobs": true,
            "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": true}});
        let raw = reqwest::Client::new()
            .post(s.url("/generate"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let plain: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
        let want = &plain["meta_info"];
        assert_eq!(want["output_top_logprobs"].as_array().unwrap().len(), 24);
        // SGLang 0.5.23's counts beside the lists (no reasoning parser: 0 reasoning tokens).
        assert_eq!(want["output_token_logprobs_length"], 24);
        assert_eq!(want["num_retractions"], 0);
        assert_eq!(want["reasoning_tokens"], 0);
        body["stream"] = json!(true);
        let evs = s.stream("/generate", &body).await;
        let lines = json_lines(&evs);
        assert!(lines.len() > 1, "{flags:?}: {} lines", lines.len());
        let incremental = !flags.is_empty();
        let mut before = 0;
        for (k, line) in lines.iter().enumerate() {
            let meta = &line["meta_info"];
            let n = meta["completion_tokens"].as_u64().unwrap() as usize;
            assert_eq!(
                meta["output_token_logprobs_length"], n,
                "line {k}: the whole count"
            );
            if incremental {
                let ids = line["output_ids"].as_array().unwrap().len();
                assert_eq!(ids, n - before, "line {k}: output_ids are this line's");
            }
            for name in lists {
                let got = meta[name]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name} in {meta}"));
                let full = want[name].as_array().unwrap();
                let range = match name.starts_with("output") {
                    true if incremental => before..n,
                    true => 0..n,
                    false => 0..full.len(),
                };
                assert_eq!(got[..], full[range], "{flags:?} line {k}: {name}");
            }
            before = n;
        }
        let last = &lines[lines.len() - 1]["meta_info"];
        assert_eq!(last["completion_tokens"], 24, "{flags:?}");
        if incremental {
            continue;
        }
        for name in lists {
            assert_eq!(last[name], want[name], "{flags:?}: last line's {name}");
        }
        // The same text too (the lists close both objects): a number read back from its text
        // and written again may change in its last digit.
        let tail = |s: &str| s[s.find("\"input_token_logprobs\"").unwrap()..].to_string();
        assert_eq!(tail(&evs[evs.len() - 2]), tail(raw.trim_end()), "{flags:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_long_prefix_reports_cached_tokens() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--page-size", "16"]);
    let prefix =
        "Water flows down the river to the sea, and the sea returns it to the sky as clouds. "
            .repeat(6);
    let first = s.greedy(&format!("{prefix}What happens next?"), 4).await;
    assert_eq!(first["meta_info"]["cached_tokens"], 0);
    let prompt_tokens = first["meta_info"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 100, "prefix too short: {prompt_tokens}");
    let second = s
        .greedy(&format!("{prefix}Tell me about the rain."), 4)
        .await;
    let cached = second["meta_info"]["cached_tokens"].as_u64().unwrap();
    assert!(
        cached >= prompt_tokens - 32 && cached % 16 == 0,
        "cached_tokens {cached} of {prompt_tokens}"
    );
    let (_, metrics) = s.get("/metrics").await;
    let hit: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sglang:cache_hit_rate "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hit > 0.3, "cache hit rate {hit}");
    // /flush_cache drops the cached pages; the same prompt then reports no reuse.
    let (st, _) = s.post("/flush_cache", &json!({})).await;
    assert_eq!(st, 200);
    let third = s
        .greedy(&format!("{prefix}Tell me about the rain."), 4)
        .await;
    assert_eq!(third["meta_info"]["cached_tokens"], 0);
    assert_eq!(third["output_ids"], second["output_ids"]);
}

/// SGLang's cache isolation: `extra_key` on `/generate`, `cache_salt` + `extra_key` on the
/// OpenAI routes. A prefix cached under one key is reused under the same key only; answers
/// are the same whatever the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_keys_and_cache_salts_isolate_cached_prefixes() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--page-size", "16"]);
    let prefix = "Snow falls on the mountain and melts into the streams of spring. ".repeat(6);
    let gen = |key: Option<&str>, tail: &str| {
        let mut body = json!({"text": format!("{prefix}{tail}"),
            "sampling_params": {"temperature": 0, "max_new_tokens": 4}});
        if let Some(k) = key {
            body["extra_key"] = json!(k);
        }
        body
    };
    let cached = |v: &Value| v["meta_info"]["cached_tokens"].as_u64().unwrap();
    let (_, first) = s.post("/generate", &gen(Some("tenant-1"), "Where?")).await;
    assert_eq!(cached(&first), 0, "{first}");
    let (_, same) = s.post("/generate", &gen(Some("tenant-1"), "Why?")).await;
    assert!(cached(&same) >= 96, "same key: {same}");
    for key in [Some("tenant-2"), None] {
        let (_, other) = s.post("/generate", &gen(key, "Why?")).await;
        assert_eq!(cached(&other), 0, "{key:?} read tenant-1's pages: {other}");
        assert_eq!(other["output_ids"], same["output_ids"], "{key:?}");
    }
    // A batch with one key per prompt.
    let body = json!({"text": [format!("{prefix}Who?"), format!("{prefix}Who?")],
        "extra_key": ["tenant-1", "tenant-3"],
        "sampling_params": {"temperature": 0, "max_new_tokens": 4}});
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    assert!(cached(&v[0]) >= 96 && cached(&v[1]) == 0, "{v}");
    assert_eq!(v[0]["output_ids"], v[1]["output_ids"]);

    // The OpenAI routes: `cache_salt` then `extra_key`, joined.
    let chat = |salt: Value, key: Value| {
        json!({"messages": [{"role": "user", "content": format!("{prefix}Tell me more.")}],
            "max_tokens": 4, "temperature": 0, "cache_salt": salt, "extra_key": key})
    };
    let hit = |v: &Value| {
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    let (st, a) = s
        .post("/v1/chat/completions", &chat(json!("ab"), json!("c")))
        .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(hit(&a), 0, "{a}");
    let (_, b) = s
        .post("/v1/chat/completions", &chat(json!("a"), json!("bc")))
        .await;
    assert!(hit(&b) >= 96, "the same joined key: {b}");
    let (_, c) = s
        .post("/v1/chat/completions", &chat(json!("ab"), Value::Null))
        .await;
    assert_eq!(hit(&c), 0, "another key: {c}");
    assert_eq!(a["choices"][0]["message"], c["choices"][0]["message"]);
    let (st, v) = s
        .post("/v1/completions", &json!({"prompt": "hi", "cache_salt": 5}))
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("cache_salt"), "{v}");
}
