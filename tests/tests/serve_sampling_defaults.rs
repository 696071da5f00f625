//! End-to-end: where omitted sampling parameters come from (real processes on a made model).
//! `--sampling-defaults model` (SGLang's default): a chat request's omitted temperature, top_p,
//! top_k, min_p and repetition_penalty come from the checkpoint's `generation_config.json`;
//! completions keep the OpenAI defaults; `--sampling-defaults openai` ignores the file.
//! `--preferred-sampling-params`: a `/generate` request takes its fields where its own
//! `sampling_params` do not set them, `/get_model_info` reports it, and a bad value stops the
//! start.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{bin, MadeModel, Server};
use std::process::Command;

/// A made model whose generation_config.json recommends greedy decoding with a repetition
/// penalty (and `top_k: 0`, transformers' "off").
fn model() -> MadeModel {
    let m = MadeModel::new("llama", "tiny");
    let path = m.path().join("generation_config.json");
    let mut g: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    g["temperature"] = json!(0.0);
    g["repetition_penalty"] = json!(1.3);
    g["top_k"] = json!(0);
    std::fs::write(&path, g.to_string()).unwrap();
    m
}

/// `base` with `extra`'s fields, posted to `path`; the first choice's text at `pick`.
async fn answer(s: &Server, path: &str, mut base: Value, extra: Value, pick: &str) -> String {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    let (st, v) = s.post(path, &base).await;
    assert_eq!(st, 200, "{v}");
    v["choices"][0]
        .pointer(pick)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

async fn chat(s: &Server, extra: Value) -> String {
    let base = json!({"messages": [{"role": "user", "content": "Tell me about the sea"}],
        "max_tokens": 24, "ignore_eos": true, "seed": 3});
    answer(s, "/v1/chat/completions", base, extra, "/message/content").await
}

async fn complete(s: &Server, extra: Value) -> String {
    let base = json!({"prompt": "The sea is", "max_tokens": 24, "ignore_eos": true, "seed": 3});
    answer(s, "/v1/completions", base, extra, "/text").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_takes_the_model_defaults_and_generate_the_preferred_ones() {
    let m = model();
    let preferred = r#"{"max_new_tokens": 5, "temperature": 0, "ignore_eos": true}"#;
    let s = Server::start(m.path(), &["--preferred-sampling-params", preferred]);
    let openai = Server::start(m.path(), &["--sampling-defaults", "openai"]);

    // Chat: the file's values, a request's own value over them.
    let plain = chat(&s, json!({})).await;
    let file = chat(&s, json!({"temperature": 0, "repetition_penalty": 1.3})).await;
    assert_eq!(
        plain, file,
        "omitted fields come from generation_config.json"
    );
    let own = chat(&s, json!({"temperature": 1.0})).await;
    let own_whole = chat(&s, json!({"temperature": 1.0, "repetition_penalty": 1.3})).await;
    assert_eq!(
        own, own_whole,
        "a request's temperature wins, the rest still the file's"
    );
    // `--sampling-defaults openai`: temperature 1, no penalty; completions never read the file.
    let o = chat(&openai, json!({})).await;
    let o_whole = chat(
        &openai,
        json!({"temperature": 1.0, "repetition_penalty": 1.0}),
    )
    .await;
    assert_eq!(o, o_whole, "openai defaults");
    let c = complete(&s, json!({})).await;
    let c_whole = complete(&s, json!({"temperature": 1.0})).await;
    assert_eq!(c, c_whole, "completions keep temperature 1");

    // /generate: the preferred fields where the request sets none.
    let (_, greedy5) = s
        .post(
            "/generate",
            &json!({"text": "Hi", "sampling_params": {"temperature": 0, "max_new_tokens": 5, "ignore_eos": true}}),
        )
        .await;
    let (_, v) = s.post("/generate", &json!({"text": "Hi"})).await;
    assert_eq!(v["output_ids"], greedy5["output_ids"], "{v}");
    assert_eq!(v["output_ids"].as_array().unwrap().len(), 5);
    let (_, v) = s
        .post(
            "/generate",
            &json!({"text": ["Hi", "Hi"], "sampling_params": [{"max_new_tokens": 3}, null]}),
        )
        .await;
    let lens: Vec<usize> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["output_ids"].as_array().unwrap().len())
        .collect();
    assert_eq!(lens, [3, 5], "{v}");
    let (_, info) = s.get("/get_model_info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["preferred_sampling_params"], preferred);
    let (_, info) = openai.get("/get_model_info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["preferred_sampling_params"], Value::Null);
}

#[test]
fn bad_sampling_default_flags_stop_the_start() {
    let m = MadeModel::new("llama", "tiny");
    for (flag, value, needle) in [
        (
            "--preferred-sampling-params",
            "[1]",
            "--preferred-sampling-params",
        ),
        (
            "--preferred-sampling-params",
            r#"{"temperature": -2}"#,
            "--preferred-sampling-params",
        ),
        ("--sampling-defaults", "vendor", "vendor"),
    ] {
        let out = Command::new(bin())
            .args(["serve", "--model-path"])
            .arg(m.path())
            .args([flag, value, "--port", "0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{flag} {value}: {err}");
    }
}
