//! End-to-end: server-wide defaults for what a request leaves out (real processes on a made
//! model). `--sampling-defaults model` (SGLang's default): a chat request's omitted temperature,
//! top_p, top_k, min_p and repetition_penalty come from the checkpoint's
//! `generation_config.json`; completions keep the OpenAI defaults; `--sampling-defaults openai`
//! ignores the file. `--preferred-sampling-params`: a `/generate` request takes its fields where
//! its own `sampling_params` do not set them, `/get_model_info` reports it.
//! `--default-chat-template-kwargs`: the template gets them under a request's own kwargs (and
//! under what a request's `reasoning_effort` says about thinking).
//! `--stream-response-default-include-usage`: streamed chats end with a usage chunk unasked.
//! `--incremental-streaming-output`: streamed `/generate` lines carry only what is new.
//! Bad values stop the start.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{json_lines, serve_fails, MadeModel, Server};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_kwargs_and_stream_usage_defaults() {
    let m = MadeModel::new("llama", "tiny");
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.jinja");
    std::fs::write(
        &t,
        "{% for m in messages %}{{ m.content }}{% endfor %}\
         {% if enable_thinking is defined and not enable_thinking %} NO THINKING HERE{% endif %}",
    )
    .unwrap();
    let t = t.to_str().unwrap();
    let s = Server::start(
        m.path(),
        &[
            "--chat-template",
            t,
            "--default-chat-template-kwargs",
            r#"{"enable_thinking": false}"#,
            "--stream-response-default-include-usage",
            "--incremental-streaming-output",
        ],
    );
    let plain = Server::start(m.path(), &["--chat-template", t]);
    let prompt_tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let body = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2});
    let (_, with_default) = s.post("/v1/chat/completions", &body).await;
    let (_, without) = plain.post("/v1/chat/completions", &body).await;
    assert!(
        prompt_tokens(&with_default) > prompt_tokens(&without),
        "the default kwarg reached the template: {with_default} vs {without}"
    );
    let mut own = body.clone();
    own["chat_template_kwargs"] = json!({"enable_thinking": true});
    let (_, v) = s.post("/v1/chat/completions", &own).await;
    assert_eq!(
        prompt_tokens(&v),
        prompt_tokens(&without),
        "the request's kwarg wins"
    );
    // reasoning_effort: "none" turns thinking off through the template, a level turns it on
    // (over the server's default kwargs); a bool is a 400.
    let mut effort = body.clone();
    effort["reasoning_effort"] = json!("none");
    let (_, v) = plain.post("/v1/chat/completions", &effort).await;
    assert_eq!(prompt_tokens(&v), prompt_tokens(&with_default), "{v}");
    effort["reasoning_effort"] = json!("high");
    let (_, v) = s.post("/v1/chat/completions", &effort).await;
    assert_eq!(prompt_tokens(&v), prompt_tokens(&without), "{v}");
    effort["reasoning_effort"] = json!(true);
    let (st, v) = s.post("/v1/chat/completions", &effort).await;
    assert_eq!(st, 400, "{v}");

    // Streams: a usage chunk without stream_options on `s` only.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let usage_chunks = |evs: &[String]| {
        json_lines(evs)
            .iter()
            .filter(|c| !c["usage"].is_null())
            .count()
    };
    assert_eq!(
        usage_chunks(&s.stream("/v1/chat/completions", &sb).await),
        1
    );
    assert_eq!(
        usage_chunks(&plain.stream("/v1/chat/completions", &sb).await),
        0
    );

    // /generate streams: disjoint pieces on `s` that add up to the whole answer, cumulative
    // lines on `plain`.
    let body = json!({"text": "Once upon a time", "sampling_params":
        {"temperature": 0, "max_new_tokens": 12, "ignore_eos": true}});
    let (_, whole) = s.post("/generate", &body).await;
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let pieces = json_lines(&s.stream("/generate", &sb).await);
    let text: String = pieces.iter().map(|l| l["text"].as_str().unwrap()).collect();
    let ids: Vec<Value> = pieces
        .iter()
        .flat_map(|l| l["output_ids"].as_array().unwrap().clone())
        .collect();
    assert_eq!(text, whole["text"].as_str().unwrap());
    assert_eq!(Value::Array(ids), whole["output_ids"]);
    assert!(
        pieces.len() > 2
            && pieces
                .iter()
                .all(|l| l["output_ids"].as_array().unwrap().len() <= 1)
    );
    let last = json_lines(&plain.stream("/generate", &sb).await)
        .pop()
        .unwrap();
    assert_eq!(
        last["output_ids"], whole["output_ids"],
        "cumulative without the flag"
    );
}

#[test]
fn bad_default_flags_stop_the_start() {
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
        (
            "--default-chat-template-kwargs",
            "true",
            "--default-chat-template-kwargs",
        ),
        (
            "--json-model-override-args",
            "[]",
            "--json-model-override-args",
        ),
    ] {
        let err = serve_fails(m.path(), &[flag, value]);
        assert!(err.contains(needle), "{flag} {value}: {err}");
    }
}
