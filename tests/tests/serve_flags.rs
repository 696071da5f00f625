//! End-to-end: SGLang's scheduling flags on `strata serve` (real processes on a made model).
//! `--random-seed`: two fresh servers with one seed give the same sampled answers to the same
//! request sequence, another seed gives others. `--stream-interval N`: streams arrive in chunks
//! of N tokens (after the first token, which comes alone) that add up to the non-streamed answer.
//! `--schedule-policy` rejects a value SGLang does not have. `--json-model-override-args`
//! replaces config.json keys (a smaller `max_position_embeddings` is the served context).
//! `--watchdog-timeout`: a round that hangs (a hidden test stall) ends the process with status
//! 70 and a log line saying so; `--soft-watchdog-timeout` only warns.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{serve_fails, MadeModel, Server};

/// The test's seed, printed; `STRATA_TEST_SEED` replays one.
fn test_seed() -> u64 {
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000)
                .unwrap_or(1)
        });
    eprintln!("serve_flags seed {seed} (replay with STRATA_TEST_SEED={seed})");
    seed
}

/// A fixed sequence of sampled requests (one prompt twice), one at a time, with a greedy
/// health check in between; the texts and ids in order.
async fn sampled_answers(s: &Server) -> Vec<Value> {
    let prompts = [
        "Once upon a time",
        "The quick brown fox",
        "Once upon a time",
        "In the evening",
    ];
    let mut out = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let body = json!({"text": p, "sampling_params": {"temperature": 0.9, "max_new_tokens": 24, "ignore_eos": true}});
        let (st, v) = s.post("/generate", &body).await;
        assert_eq!(st, 200, "{v}");
        out.push(json!([v["text"], v["output_ids"]]));
        if i == 1 {
            let (st, _) = s.get("/health_generate").await;
            assert_eq!(st, 200);
        }
    }
    let body = json!({"prompt": "Hello there", "max_tokens": 16, "temperature": 1.0});
    let (st, v) = s.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    out.push(v["choices"][0]["text"].clone());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_seed_makes_sampled_answers_reproducible() {
    let seed = test_seed();
    let m = MadeModel::new("llama", "tiny");
    let seed_s = seed.to_string();
    let a = {
        let s = Server::start(m.path(), &["--random-seed", &seed_s]);
        sampled_answers(&s).await
    };
    // The same prompt twice got two seeds: the answers differ (24 sampled tokens).
    assert_ne!(
        a[0], a[2],
        "seed {seed}: a repeated prompt got the same seed"
    );
    let b = {
        let s = Server::start(m.path(), &["--random-seed", &seed_s]);
        sampled_answers(&s).await
    };
    assert_eq!(a, b, "seed {seed}: two servers with one seed differ");
    let other = (seed + 1).to_string();
    let c = {
        let s = Server::start(m.path(), &["--random-seed", &other]);
        sampled_answers(&s).await
    };
    for (x, y) in a.iter().zip(&c).take(4) {
        assert_ne!(x, y, "seed {seed} and {other} gave one answer");
    }
    // A request's own seed still wins over the server's.
    let own = json!({"text": "Once upon a time", "sampling_params": {"temperature": 0.9, "max_new_tokens": 24, "sampling_seed": 5}});
    let s1 = Server::start(m.path(), &["--random-seed", &seed_s]);
    let s2 = Server::start(m.path(), &["--random-seed", &other]);
    let (_, v1) = s1.post("/generate", &own).await;
    let (_, v2) = s2.post("/generate", &own).await;
    assert_eq!(v1["output_ids"], v2["output_ids"]);
}

/// `output_ids` lengths of a `/generate` stream's events (without `[DONE]`).
fn stream_lengths(evs: &[String]) -> Vec<usize> {
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"));
    evs[..evs.len() - 1]
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["output_ids"].as_array().unwrap().len()
        })
        .collect()
}

fn deltas(evs: &[String], pick: impl Fn(&Value) -> Option<String>) -> Vec<String> {
    evs.iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| pick(&serde_json::from_str::<Value>(e).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_interval_sends_chunks_of_n_tokens() {
    let m = MadeModel::new("qwen2", "tiny");
    let s = Server::start(m.path(), &["--stream-interval", "4", "--page-size", "4"]);
    for p in ["Let me tell you a long story ", "ünïcödé 😀 and more"] {
        let sp = json!({"temperature": 0, "max_new_tokens": 30, "ignore_eos": true});
        let (_, plain) = s
            .post("/generate", &json!({"text": p, "sampling_params": sp}))
            .await;
        let evs = s
            .stream(
                "/generate",
                &json!({"text": p, "stream": true, "sampling_params": sp}),
            )
            .await;
        // The first token alone, then 4 at a time; the end carries the 30th with the reason.
        assert_eq!(
            stream_lengths(&evs),
            [1, 5, 9, 13, 17, 21, 25, 29, 30],
            "{p:?}"
        );
        let last: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
        assert_eq!(last["text"], plain["text"], "{p:?}");
        assert_eq!(last["output_ids"], plain["output_ids"]);
        assert!(last["meta_info"]["finish_reason"].is_object());
        // A request's own stream_interval overrides the server's.
        let mut sp8 = sp.clone();
        sp8["stream_interval"] = json!(8);
        let evs = s
            .stream(
                "/generate",
                &json!({"text": p, "stream": true, "sampling_params": sp8}),
            )
            .await;
        assert_eq!(stream_lengths(&evs), [1, 9, 17, 25, 30]);

        // OpenAI completions: deltas of the same chunks, concatenating to the plain answer.
        let body = json!({"prompt": p, "max_tokens": 30, "temperature": 0, "logprobs": 0});
        let (_, v) = s.post("/v1/completions", &body).await;
        let text = v["choices"][0]["text"].as_str().unwrap().to_string();
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let evs = s.stream("/v1/completions", &sb).await;
        let per_chunk: Vec<usize> = evs
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                v["choices"][0]["logprobs"]["tokens"]
                    .as_array()
                    .map_or(0, Vec::len)
            })
            .collect();
        let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
        assert_eq!(per_chunk.iter().sum::<usize>(), n);
        assert_eq!(per_chunk[0], 1, "chunk sizes {per_chunk:?}");
        // Every chunk but the last ends where one is due (1, 5, 9, ... tokens in all); a chunk
        // whose text is held back (an unfinished UTF-8 character) goes out with the next one.
        let mut sent = 0;
        for &k in &per_chunk[..per_chunk.len() - 1] {
            sent += k;
            assert_eq!(sent % 4, 1, "chunk sizes {per_chunk:?}");
        }
        let cat = deltas(&evs, |v| {
            v["choices"][0]["text"].as_str().map(str::to_string)
        });
        assert_eq!(cat.concat(), text, "completions stream for {p:?}");
    }
    // Chat: the streamed content equals the message.
    let body = json!({"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 30, "temperature": 0});
    let (st, v) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let evs = s.stream("/v1/chat/completions", &sb).await;
    let cat = deltas(&evs, |v| {
        v["choices"][0]["delta"]["content"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(cat.concat(), content);
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert!(
        cat.len() <= 2 + n.div_ceil(4),
        "{} chunks for {n} tokens",
        cat.len()
    );
}

#[test]
fn an_unknown_schedule_policy_is_a_start_up_error() {
    let m = MadeModel::new("llama", "tiny");
    let err = serve_fails(m.path(), &["--schedule-policy", "sjf"]);
    assert!(
        err.contains("sjf") && err.contains("lpm") && err.contains("dfs-weight"),
        "{err}"
    );
    assert!(serve_fails(m.path(), &["--stream-interval", "0"]).contains("--stream-interval 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_model_override_args_replace_config_keys() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(
        m.path(),
        &[
            "--json-model-override-args",
            r#"{"max_position_embeddings": 64}"#,
        ],
    );
    let (_, models) = s.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["max_model_len"], 64, "{models}");
    let long = "word ".repeat(100);
    let (st, v) = s
        .post(
            "/generate",
            &json!({"text": long, "sampling_params": {"max_new_tokens": 2}}),
        )
        .await;
    assert_eq!(st, 400, "a prompt past the overridden context: {v}");
    let (st, v) = s
        .post(
            "/generate",
            &json!({"text": "short", "sampling_params": {"max_new_tokens": 2}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_ends_a_server_whose_round_hangs() {
    let m = MadeModel::new("llama", "tiny");
    let body = json!({"text": "Hello", "sampling_params": {"max_new_tokens": 4}});
    // Soft: rounds of 0.6 s against a 0.3 s limit are logged, the answer still comes.
    let s = Server::start(
        m.path(),
        &[
            "--soft-watchdog-timeout",
            "0.3",
            "--test-round-stall-ms",
            "600",
        ],
    );
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    assert!(s.log_count("soft watchdog") > 0);
    // Hard: a round of 30 s against a 1 s limit ends the process, with the reason logged.
    let mut s = Server::start(
        m.path(),
        &["--watchdog-timeout", "1", "--test-round-stall-ms", "30000"],
    );
    let client = s.client.clone();
    let url = s.url("/generate");
    let req = tokio::spawn(async move { client.post(url).json(&body).send().await });
    let st = s
        .wait_exit(std::time::Duration::from_secs(20))
        .expect("the watchdog ended the server");
    assert_eq!(st.code(), Some(70), "{st:?}");
    assert!(s.log_count("watchdog: a scheduler round has run") > 0);
    assert!(
        req.await.unwrap().is_err(),
        "the hung request's connection closed"
    );
}
