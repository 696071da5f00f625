//! End-to-end: bad inputs get 4xx with OpenAI-shaped JSON and the server keeps serving; abort and
//! disconnect free their pages; the informational endpoints answer; launch flags are checked.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{bin, MadeModel, Server};
use std::process::Command;

/// The error shape shared with `strata router` and sglang-router: `{"error": {message, type, code}}`.
fn assert_openai_error(status: u16, v: &Value, want: u16) {
    assert_eq!(status, want, "{v}");
    assert_eq!(v["error"]["code"], want, "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_400_and_the_server_keeps_serving() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--context-length", "64"]);
    let cases: Vec<(&str, String)> = vec![
        ("/generate", "{not json".into()),
        ("/generate", r#"{"text": 5}"#.into()),
        ("/generate", r#"{"text": "hi", "input_ids": [1]}"#.into()),
        ("/generate", r#"{}"#.into()),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"max_new_tokens": -1}}"#.into(),
        ),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"temperature": "hot"}}"#.into(),
        ),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"top_p": 0}}"#.into(),
        ),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"no_such_param": 1}}"#.into(),
        ),
        (
            "/generate",
            r#"{"text": "hi", "return_logprob": true, "logprob_start_len": 100}"#.into(),
        ),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"ebnf": "root ::= \"a\" root"}}"#.into(),
        ),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"regex": "(a"}}"#.into(),
        ),
        ("/generate", r#"{"input_ids": [100000]}"#.into()),
        ("/generate", r#"{"input_ids": []}"#.into()),
        (
            "/generate",
            json!({"text": "word ".repeat(200)}).to_string(),
        ),
        ("/v1/completions", r#"{"max_tokens": 4}"#.into()),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "max_tokens": -3}"#.into(),
        ),
        ("/v1/completions", r#"{"prompt": "hi", "n": 0}"#.into()),
        ("/v1/chat/completions", r#"{"messages": []}"#.into()),
        ("/v1/chat/completions", r#"{"messages": "hello"}"#.into()),
        ("/abort_request", r#"{}"#.into()),
    ];
    for (path, body) in &cases {
        let (st, v) = s.post_raw(path, body).await;
        assert_openai_error(st, &v, 400);
    }
    let (st, body) = s.get("/no/such/endpoint").await;
    assert_openai_error(st, &serde_json::from_str(&body).unwrap(), 404);
    // A 5 MB body is parsed (and refused for its content), not cut off by a body limit.
    let ids = vec![1u32; 2_500_000];
    let (st, v) = s.post("/generate", &json!({"input_ids": ids})).await;
    assert_openai_error(st, &v, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context length"),
        "{v}"
    );
    // A body without a JSON content type is a JSON error too.
    let r = s
        .client
        .post(s.url("/generate"))
        .body("{}")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_openai_error(st, &v, 400);
    // Unknown fields and every GenerateReqInput field a client may send (here the ones
    // sglang-router 0.3.2 adds when it re-serialises a body) are accepted, as SGLang does.
    let (st, v) = s
        .post(
            "/generate",
            &json!({"text": "hi", "no_such_field": 1, "model": null, "return_hidden_states": false,
                "background": false, "no_logs": false, "return_bytes": false, "return_entropy": false,
                "log_metrics": true, "lora_path": null, "image_data": null, "session_params": null,
                "bootstrap_host": null, "bootstrap_room": null, "custom_labels": null, "priority": 0,
                "sampling_params": {"max_new_tokens": 2, "json_schema": null, "stream_interval": 1}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // Still serving.
    let v = s.greedy("Let me tell you a long story ", 8).await;
    assert_eq!(v["meta_info"]["completion_tokens"], 8);
    // Generation is capped at the context length.
    let v = s.greedy("Let me tell you a long story ", 1000).await;
    assert_eq!(
        v["meta_info"]["completion_tokens"].as_u64().unwrap() + 11,
        64
    );
    assert_eq!(v["meta_info"]["finish_reason"]["type"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_disconnect_free_their_pages() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--disable-radix-cache", "--page-size", "4"]);
    let total = s.state().await["total_pages"].as_u64().unwrap();
    let long = json!({"text": "Let me tell you a long story ", "stream": true,
        "sampling_params": {"max_new_tokens": 4000, "ignore_eos": true, "temperature": 0.7, "seed": 1}});
    // Disconnect: read two events, then drop the response.
    {
        use futures::StreamExt;
        let r = s
            .client
            .post(s.url("/generate"))
            .json(&long)
            .send()
            .await
            .unwrap();
        let mut body = r.bytes_stream();
        let mut seen = 0;
        while seen < 2 {
            let c = body.next().await.unwrap().unwrap();
            seen += String::from_utf8_lossy(&c).matches("data: ").count();
        }
        let st = s.state().await;
        assert!(
            st["free_pages"].as_u64().unwrap() < total,
            "the request should hold pages: {st}"
        );
    }
    let st = s.wait_idle().await;
    assert_eq!(
        st["free_pages"].as_u64().unwrap(),
        total,
        "pages leaked after disconnect: {st}"
    );
    // /abort_request by rid: the stream ends with an abort finish reason.
    let mut body = long.clone();
    body["rid"] = json!("abort-me");
    let fut = s.stream("/generate", &body);
    let abort = async {
        loop {
            if s.state().await["num_running_reqs"].as_u64().unwrap() > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (st, _) = s.post("/abort_request", &json!({"rid": "abort-me"})).await;
        assert_eq!(st, 200);
    };
    let (evs, ()) = tokio::join!(fut, abort);
    let last: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
    assert_eq!(
        last["meta_info"]["finish_reason"]["type"], "abort",
        "{last}"
    );
    assert!(last["meta_info"]["completion_tokens"].as_u64().unwrap() < 4000);
    let st = s.wait_idle().await;
    assert_eq!(
        st["free_pages"].as_u64().unwrap(),
        total,
        "pages leaked after abort: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_endpoints_answer() {
    let m = MadeModel::new("qwen2", "tiny");
    let s = Server::start(m.path(), &["--served-model-name", "tiny-qwen2"]);
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/health_generate").await.0, 200);
    let (_, v) = s.get("/v1/models").await;
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["data"][0]["id"], "tiny-qwen2");
    let (_, v) = s.get("/get_model_info").await;
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["is_generation"], true);
    assert_eq!(v["architectures"][0], "Qwen2ForCausalLM");
    let (_, v) = s.get("/get_server_info").await;
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["page_size"], 1);
    assert!(v["max_total_num_tokens"].as_u64().unwrap() > 0);
    // NVML's GPU list: an array (empty on a machine without an NVIDIA driver).
    assert!(v["gpus"].is_array(), "{v}");
    let _ = s.greedy("Hello", 4).await;
    let (_, metrics) = s.get("/metrics").await;
    for name in [
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:gen_throughput",
        "sglang:cache_hit_rate",
        "sglang:time_to_first_token_seconds_bucket",
        "sglang:inter_token_latency_seconds_count",
        "sglang:generation_tokens_total",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    // Batch /generate answers in input order.
    let (st, v) = s
        .post("/generate", &json!({"text": ["Hello", "World"], "sampling_params": {"temperature": 0, "max_new_tokens": 3}}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["output_ids"], s.greedy("Hello", 3).await["output_ids"]);
    // input_ids in, and stop_token_ids end generation at the first occurrence of the token.
    let plain = s.greedy("Hello world", 12).await;
    let out: Vec<u64> = plain["output_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let stop = out[3];
    let first = out.iter().position(|&t| t == stop).unwrap();
    let (_, v) = s
        .post("/generate", &json!({"text": "Hello world", "sampling_params": {"temperature": 0, "max_new_tokens": 12, "stop_token_ids": [stop]}}))
        .await;
    assert_eq!(v["output_ids"].as_array().unwrap().len(), first + 1, "{v}");
    assert_eq!(
        v["meta_info"]["finish_reason"],
        json!({"type": "stop", "matched": stop})
    );
    let (_, ids) = s.get("/get_model_info").await;
    assert!(ids.contains("Qwen2ForCausalLM"));
    let (st, v) = s.post("/generate", &json!({"input_ids": [5, 6, 7], "sampling_params": {"temperature": 0, "max_new_tokens": 4}})).await;
    assert_eq!(st, 200);
    assert_eq!(v["meta_info"]["prompt_tokens"], 3);
    // A seeded sampled request reproduces itself.
    let body = json!({"text": "Hello", "sampling_params": {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 7, "max_new_tokens": 16}});
    let (_, a) = s.post("/generate", &body).await;
    let (_, b) = s.post("/generate", &body).await;
    assert_eq!(a["output_ids"], b["output_ids"]);
    // return_logprob gives one log-probability per output token.
    let (_, v) = s.post("/generate", &json!({"text": "Hello", "return_logprob": true, "sampling_params": {"max_new_tokens": 3}})).await;
    assert_eq!(
        v["meta_info"]["output_token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_launch_flags_are_enforced() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--api-key", "sekrit"]);
    let (st, v) = s.post("/generate", &json!({"text": "hi"})).await;
    assert_openai_error(st, &v, 401);
    let r = s
        .client
        .post(s.url("/generate"))
        .bearer_auth("sekrit")
        .json(&json!({"text": "hi", "sampling_params": {"max_new_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(s);
    let out = Command::new(bin())
        .args(["serve", "--model-path"])
        .arg(m.path())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = Command::new(bin())
        .args(["serve", "--model-path"])
        .arg(m.path())
        .args(["--tp-size", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tp-size"));
    let out = Command::new(bin())
        .args(["serve", "--model-path", "/nonexistent/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
    // A broken config.json is named in the error.
    let bad = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(m.path().join(f), bad.path().join(f)).unwrap();
    }
    std::fs::write(
        bad.path().join("config.json"),
        "{\"architectures\": [\"GPT2LMHeadModel\"]}",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["serve", "--model-path"])
        .arg(bad.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("config.json") && err.contains("GPT2LMHeadModel"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_serve_drives_both_backends() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--page-size", "16"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");
    let runs: [&[&str]; 2] = [
        &[
            "--backend",
            "sglang",
            "--num-prompts",
            "8",
            "--random-input-len",
            "32",
            "--random-output-len",
            "8",
            "--max-concurrency",
            "4",
        ],
        &[
            "--backend",
            "openai",
            "--dataset-name",
            "generated-shared-prefix",
            "--gsp-num-groups",
            "2",
            "--gsp-prompts-per-group",
            "3",
            "--gsp-system-prompt-len",
            "64",
            "--gsp-question-len",
            "8",
            "--gsp-output-len",
            "4",
            "--request-rate",
            "50",
        ],
    ];
    for args in runs {
        let o = Command::new(bin())
            .args(["bench", "serve", "--base-url", &s.base, "--output-file"])
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "bench failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("Serving Benchmark Result"));
        // Not a terminal: no progress bar in the captured output.
        assert!(!String::from_utf8_lossy(&o.stderr).contains("requests ["));
    }
    // On a terminal (a pty from Python's `pty` module) the run shows a progress bar.
    let o = Command::new("python3")
        .args([
            "-c",
            "import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)",
        ])
        .arg(bin())
        .args([
            "bench",
            "serve",
            "--base-url",
            &s.base,
            "--num-prompts",
            "4",
        ])
        .args(["--random-input-len", "8", "--random-output-len", "4"])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert!(
        tty.contains("/4 requests ["),
        "no progress bar on a terminal: {tty}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["completed"], 8);
    assert_eq!(lines[0]["failed"], 0);
    assert_eq!(lines[0]["total_output_tokens"], 8 * 8);
    assert_eq!(lines[1]["completed"], 6);
    assert_eq!(lines[1]["total_output_tokens"], 6 * 4);
    assert!(lines[1]["median_ttft_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_multiturn_records_and_replays_answers() {
    // The multiturn benchmark keeps the answers it got, and a second run replays them: its
    // histories are the first run's conversations (prompt tokens and cache hits as the first
    // run's), whatever the server answers this time.
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--page-size", "16"]);
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers.json");
    let multiturn = |flag: &str| {
        Command::new(bin())
            .args(["bench", "serve", "--base-url", &s.base])
            .args([
                "--dataset-name",
                "multiturn",
                "--num-clients",
                "2",
                "--num-rounds",
                "3",
            ])
            .args([
                "--request-length",
                "20",
                "--output-length",
                "4",
                "--seed",
                "5",
                flag,
            ])
            .arg(&answers)
            .output()
            .unwrap()
    };
    let run = |flag: &str| {
        let o = multiturn(flag);
        assert!(
            o.status.success(),
            "multiturn failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let first = run("--record-answers");
    let recorded: Vec<Vec<Vec<u32>>> =
        serde_json::from_slice(&std::fs::read(&answers).unwrap()).unwrap();
    assert_eq!(recorded.len(), 3, "rounds");
    assert!(recorded
        .iter()
        .all(|r| r.len() == 2 && r.iter().all(|a| a.len() == 4)));
    let second = run("--replay-answers");
    // Same prompt lengths per round (column 2 of the round lines); the replay's rounds 2-3 hit
    // the first run's cached conversations.
    let prompts = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.parse::<u32>().is_ok())
            })
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(prompts(&first), vec!["20", "44", "68"], "{first}");
    assert_eq!(prompts(&first), prompts(&second), "{second}");
    let hits: Vec<f64> = second
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<u32>().is_ok())
        })
        .map(|l| l.split_whitespace().last().unwrap().parse().unwrap())
        .collect();
    assert!(
        hits.iter().all(|&h| h > 0.5),
        "replayed rounds should hit the cache: {second}"
    );
    // A file that covers fewer rounds is refused.
    std::fs::write(&answers, "[[[1,2]]]").unwrap();
    let o = multiturn("--replay-answers");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("fewer rounds"));
}
