//! End-to-end: SGLang's probe, alias, parser, control and unsupported routes on `strata serve`
//! (a real process on a made model, behind `--api-key`). Every new route answers SGLang's status
//! and shape with the key and a 401 without it; `/ready` is 503 while generation is paused; a
//! request sent while paused (in place) completes only after `/continue_generation`, and the
//! abort mode ends a running request; `/configure_logging` switches the request log at runtime;
//! the routes Strata cannot honour answer a 501 JSON error naming the route.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};
use std::time::Duration;

const KEY: &str = "sekrit";
const MODEL: &str = "org/tiny-llama";

/// One request with `method`, an optional JSON body and the key when `auth`; (status, body as
/// JSON, or as a string when it is not JSON).
async fn call(
    s: &Server,
    method: &str,
    path: &str,
    body: Option<&Value>,
    auth: bool,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = s.client.request(m, s.url(path));
    if auth {
        r = r.bearer_auth(KEY);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A POST of `body` with the key.
async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    call(s, "POST", path, Some(&body), true).await
}

fn assert_error(st: u16, v: &Value, want: u16) {
    assert_eq!(st, want, "{v}");
    assert_eq!(v["error"]["code"], want, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

/// A greedy `/generate` of `max_new` tokens that runs to its budget, sent in the background.
fn generate(s: &Server, max_new: usize) -> tokio::task::JoinHandle<(u16, Value)> {
    let client = s.client.clone();
    let url = s.url("/generate");
    tokio::spawn(async move {
        let r = client
            .post(url)
            .bearer_auth(KEY)
            .json(
                &json!({"text": "Once upon a time", "sampling_params": {"temperature": 0,
                "max_new_tokens": max_new, "ignore_eos": true}}),
            )
            .send()
            .await
            .expect("send");
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_routes_answer_sglang_shapes_behind_the_key() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--api-key", KEY, "--served-model-name", MODEL]);
    let gets = [
        "/ping",
        "/ready",
        "/server_info",
        "/model_info",
        "/v1/models/org/tiny-llama",
        "/hicache/storage-backend",
        "/start_profile",
        "/get_weight_version",
        "/get_weights_by_name",
    ];
    for p in gets {
        let (st, v) = call(&s, "GET", p, None, false).await;
        assert_error(st, &v, 401);
    }
    for p in [
        "/pause_generation",
        "/continue_generation",
        "/configure_logging",
        "/separate_reasoning",
        "/parse_function_call",
        "/hicache/storage-backend/clear",
        "/invocations",
        "/update_weights_from_disk",
    ] {
        let (st, v) = call(&s, "POST", p, Some(&json!({})), false).await;
        assert_error(st, &v, 401);
    }
    assert!(!s
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("generation paused")));

    // Probes and aliases.
    for p in ["/ping", "/ready"] {
        let (st, v) = call(&s, "GET", p, None, true).await;
        assert_eq!((st, v), (200, json!("")), "{p}");
    }
    let (st, v) = call(&s, "GET", "/server_info", None, true).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["version"].is_string() && v["internal_states"].is_array(),
        "{v}"
    );
    let (_, old) = call(&s, "GET", "/get_model_info", None, true).await;
    let (st, v) = call(&s, "GET", "/model_info", None, true).await;
    assert_eq!((st, &v), (200, &old));
    let (st, v) = call(&s, "GET", "/v1/models/org/tiny-llama", None, true).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (&v["id"], &v["object"], &v["root"]),
        (&json!(MODEL), &json!("model"), &json!(MODEL))
    );
    assert!(v["max_model_len"].as_u64().is_some_and(|n| n > 0), "{v}");
    let (st, v) = call(&s, "GET", "/v1/models/nope", None, true).await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");
    assert_eq!(v["error"]["param"], "model", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");

    // HiCache storage backend: none attached here.
    let (st, v) = call(&s, "GET", "/hicache/storage-backend", None, true).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hicache_storage_backend"], Value::Null, "{v}");
    assert!(
        v.get("hicache_write_policy").is_some()
            && v.get("hicache_storage_prefetch_policy").is_some()
    );
    let (st, v) = call(&s, "POST", "/hicache/storage-backend/clear", None, true).await;
    assert_error(st, &v, 400);
    // Attach and detach need the hierarchical cache (tests/tests/hicache_e2e.rs attaches one).
    let (st, v) = call(
        &s,
        "PUT",
        "/hicache/storage-backend",
        Some(&json!({})),
        true,
    )
    .await;
    assert_error(st, &v, 400);
    for (method, body) in [
        ("PUT", Some(json!({"hicache_storage_backend": "file"}))),
        ("DELETE", None),
    ] {
        let (st, v) = call(&s, method, "/hicache/storage-backend", body.as_ref(), true).await;
        assert_error(st, &v, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|t| t.contains("not enabled")),
            "{method}: {v}"
        );
    }

    // Parser utilities.
    let (st, v) = post(
        &s,
        "/separate_reasoning",
        json!({"text": "hmm</think>yes", "reasoning_parser": "deepseek-r1"}),
    )
    .await;
    assert_eq!(
        (st, v),
        (200, json!({"reasoning_text": "hmm", "text": "yes"}))
    );
    let (st, v) = post(
        &s,
        "/separate_reasoning",
        json!({"text": "<think>a</think>b", "reasoning_parser": "qwen3", "return_blocks": true}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["blocks"],
        json!([{"type": "reasoning", "text": "a"}, {"type": "text", "text": "b"}])
    );
    assert_eq!(
        (&v["reasoning_blocks"], &v["text_blocks"]),
        (&json!(["a"]), &json!(["b"]))
    );
    let (st, v) = post(
        &s,
        "/separate_reasoning",
        json!({"text": "x", "reasoning_parser": "nope"}),
    )
    .await;
    assert_error(st, &v, 400);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let (st, v) = post(&s, "/parse_function_call", json!({"tool_call_parser": "qwen25",
        "tools": tools, "text": "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"normal_text": "", "calls": [{"tool_index": 0, "name": "get_weather",
        "parameters": "{\"city\": \"Paris\"}"}]})
    );
    let (st, v) = post(
        &s,
        "/parse_function_call",
        json!({"tool_call_parser": "nope", "tools": tools, "text": "x"}),
    )
    .await;
    assert_error(st, &v, 400);

    // Tokenizer routes: ids round-trip to the text, lists give lists, /tokenize is an alias,
    // and the count is what /generate reports as the prompt's tokens.
    let text = "Once upon a time";
    let (st, v) = post(
        &s,
        "/v1/tokenize",
        json!({"model": MODEL, "prompt": text, "add_special_tokens": false}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let ids = v["tokens"].clone();
    assert_eq!(v["count"], json!(ids.as_array().unwrap().len()), "{v}");
    assert!(v["max_model_len"].as_u64().is_some_and(|n| n > 0), "{v}");
    let (st, with_bos) = post(&s, "/tokenize", json!({"prompt": [text, "hi"]})).await;
    assert_eq!(st, 200, "{with_bos}");
    let (_, gen) = generate(&s, 1).await.unwrap();
    assert_eq!(
        with_bos["count"][0], gen["meta_info"]["prompt_tokens"],
        "{with_bos} {gen}"
    );
    assert_eq!(
        with_bos["tokens"].as_array().unwrap().len(),
        2,
        "{with_bos}"
    );
    let (st, v) = post(&s, "/v1/detokenize", json!({"tokens": ids})).await;
    assert_eq!((st, v), (200, json!({"text": text})));
    let (st, v) = post(&s, "/detokenize", json!({"tokens": [ids.clone(), []]})).await;
    assert_eq!((st, v), (200, json!({"text": [text, ""]})));
    let (st, v) = post(&s, "/v1/detokenize", json!({"tokens": []})).await;
    assert_eq!((st, v), (200, json!({"text": ""})));
    for bad in [
        json!({"tokens": [-1]}),
        json!({"tokens": [4_000_000_000u64]}),
        json!({"tokens": "abc"}),
        json!({"prompt": 3}),
    ] {
        let path = if bad.get("prompt").is_some() {
            "/v1/tokenize"
        } else {
            "/v1/detokenize"
        };
        let (st, v) = call(&s, "POST", path, Some(&bad), true).await;
        assert_error(st, &v, 400);
    }

    // /invocations is chat completions; /generate takes PUT as SGLang.
    let (st, v) = post(
        &s,
        "/invocations",
        json!({"model": MODEL,
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion", "{v}");
    let (st, v) = call(
        &s,
        "PUT",
        "/generate",
        Some(&json!({"text": "hi", "sampling_params": {"max_new_tokens": 2}})),
        true,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["text"].is_string(), "{v}");

    // /configure_logging switches the request log at runtime.
    assert_eq!(s.log_count("Finish: rid="), 0);
    let (st, v) = post(
        &s,
        "/configure_logging",
        json!({"log_requests": true, "log_requests_level": 0}),
    )
    .await;
    assert_eq!((st, v), (200, json!("")));
    let (st, _) = generate(&s, 2).await.unwrap();
    assert_eq!(st, 200);
    assert_eq!(s.wait_log_count("Finish: rid=", 1), 1);
    let (st, _) = post(&s, "/configure_logging", json!({"log_requests": false})).await;
    assert_eq!(st, 200);
    generate(&s, 2).await.unwrap();
    // Switched back on, one more request: its line is the second (the log keeps order), so the
    // request in between logged nothing.
    let (st, _) = post(&s, "/configure_logging", json!({"log_requests": true})).await;
    assert_eq!(st, 200);
    generate(&s, 2).await.unwrap();
    assert_eq!(s.wait_log_count("Finish: rid=", 2), 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.log_count("Finish: rid="), 2);
    let (st, v) = post(&s, "/configure_logging", json!({"log_level": "debug"})).await;
    assert_error(st, &v, 400);
    let (st, v) = post(&s, "/configure_logging", json!({"log_requests_level": 9})).await;
    assert_error(st, &v, 400);

    // Unsupported routes: a 501 JSON error naming the route, whatever the method.
    for (method, p) in [
        ("GET", "/start_profile"),
        ("POST", "/start_profile"),
        ("POST", "/stop_profile"),
        ("POST", "/update_weights_from_tensor"),
        ("POST", "/init_weights_update_group"),
        ("POST", "/load_lora_adapter_from_tensors"),
        ("POST", "/start_expert_distribution_record"),
        ("POST", "/release_memory_occupation"),
        ("GET", "/get_hicache_l3_cache_layout"),
    ] {
        let (st, v) = call(&s, method, p, Some(&json!({})), true).await;
        assert_error(st, &v, 501);
        assert_eq!(v["error"]["type"], "not_supported_error", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(p) && msg.contains("not supported"),
            "{p}: {msg}"
        );
    }
    let (st, v) = call(&s, "GET", "/no/such/route", None, true).await;
    assert_error(st, &v, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_requests_until_continue_over_http() {
    let m = MadeModel::new("llama", "tiny");
    // No key here: the metrics polled below are read without one.
    let s = Server::start(m.path(), &[]);
    let (st, v) = post(&s, "/pause_generation", json!({"mode": "sideways"})).await;
    assert_error(st, &v, 400);

    // In place: a request sent while paused waits; /ready is 503, /ping stays 200.
    let (st, v) = post(&s, "/pause_generation", json!({"mode": "in_place"})).await;
    assert_eq!(
        (st, v),
        (
            200,
            json!({"message": "Generation paused successfully.", "status": "ok"})
        )
    );
    assert_eq!(call(&s, "GET", "/ready", None, true).await.0, 503);
    assert_eq!(call(&s, "GET", "/ping", None, true).await.0, 200);
    let waiting = generate(&s, 8);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !waiting.is_finished(),
        "a request finished while generation was paused"
    );
    let (st, v) = post(&s, "/continue_generation", json!({})).await;
    assert_eq!(
        (st, v),
        (
            200,
            json!({"message": "Generation continued successfully.", "status": "ok"})
        )
    );
    let (st, v) = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the paused request did not finish after continue")
        .unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["meta_info"]["completion_tokens"], 8, "{v}");
    assert_eq!(call(&s, "GET", "/ready", None, true).await.0, 200);

    // The default (abort) mode ends a running request; an empty body is accepted.
    let running = generate(&s, 100_000);
    s.wait_metric("num_running_reqs", 1.0).await;
    let r = s
        .client
        .post(s.url("/pause_generation"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (st, v) = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the running request did not end on an abort pause")
        .unwrap();
    if st == 200 {
        assert_eq!(v["meta_info"]["finish_reason"]["type"], "abort", "{v}");
    } else {
        assert!(v["error"]["message"].is_string(), "{st} {v}");
    }
    let after = generate(&s, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!after.is_finished());
    let r = s
        .client
        .post(s.url("/continue_generation"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (st, _) = tokio::time::timeout(Duration::from_secs(60), after)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st, 200);
}
