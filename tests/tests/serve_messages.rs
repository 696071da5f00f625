//! End-to-end: Anthropic's Messages API on `strata serve` (a real process on a made model):
//! `/v1/messages` answers what the chat completion of the same conversation answers (text,
//! usage, stop reasons: max_tokens, stop_sequence), streamed as Anthropic's events;
//! `/v1/messages/count_tokens` counts the chat prompt; tool_use / tool_result blocks become the
//! chat's call history; errors in Anthropic's shape; `x-api-key` passes `--api-key`.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};

/// The chat completion of `messages` (greedy, `max_tokens`).
async fn chat(s: &Server, messages: Value, max_tokens: u64) -> Value {
    let (st, c) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_api_matches_the_chat_completion() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let c = chat(
        &s,
        json!([{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me a story"}]),
        8,
    )
    .await;
    let text = c["choices"][0]["message"]["content"].as_str().unwrap();
    let req = json!({"system": "Be brief.", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me a story"}]}]});
    let (st, r) = s.post("/v1/messages", &req).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["type"], "message", "{r}");
    assert_eq!(r["role"], "assistant", "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("msg_"), "{r}");
    assert_eq!(r["content"][0]["type"], "text", "{r}");
    assert_eq!(r["content"][0]["text"], text, "{r}");
    assert_eq!(r["stop_reason"], "max_tokens", "{r}");
    assert_eq!(r["usage"]["output_tokens"], 8, "{r}");
    assert_eq!(
        r["usage"]["input_tokens"], c["usage"]["prompt_tokens"],
        "{r}"
    );
    // count_tokens counts the same prompt without running it.
    let (st, n) = s.post("/v1/messages/count_tokens", &req).await;
    assert_eq!(st, 200, "{n}");
    assert_eq!(n["input_tokens"], c["usage"]["prompt_tokens"], "{n}");
    // A stop sequence from the text ends it there (the sequence not in the text).
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[3..5].iter().collect();
    let mut sreq = req.clone();
    sreq["stop_sequences"] = json!([stop]);
    let (st, r2) = s.post("/v1/messages", &sreq).await;
    assert_eq!(st, 200, "{r2}");
    assert_eq!(r2["stop_reason"], "stop_sequence", "{r2}");
    assert_eq!(r2["stop_sequence"], stop.as_str(), "{r2}");
    let cut = r2["content"][0]["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with(cut) && cut.len() < text.len(),
        "{cut:?} vs {text:?}"
    );
    // Streamed: message_start first, the text deltas add up, message_delta, message_stop last.
    let mut streq = req.clone();
    streq["stream"] = json!(true);
    let events: Vec<Value> = s
        .stream("/v1/messages", &streq)
        .await
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "message_start", "{events:?}");
    assert_eq!(events[1]["type"], "content_block_start", "{events:?}");
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .map(|e| e["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, text);
    let n = events.len();
    assert_eq!(events[n - 3]["type"], "content_block_stop", "{events:?}");
    assert_eq!(events[n - 2]["type"], "message_delta", "{events:?}");
    assert_eq!(events[n - 2]["delta"]["stop_reason"], "max_tokens");
    assert_eq!(events[n - 2]["usage"]["output_tokens"], 8);
    assert_eq!(events[n - 1]["type"], "message_stop", "{events:?}");
    // tool_use / tool_result blocks are the chat's call history: the same prompt.
    let history = json!({"max_tokens": 4, "temperature": 0, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]});
    let (st, h) = s.post("/v1/messages", &history).await;
    assert_eq!(st, 200, "{h}");
    let hc = chat(
        &s,
        json!([{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [{"id": "toolu_1",
                "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]),
        4,
    )
    .await;
    assert_eq!(
        h["usage"]["input_tokens"], hc["usage"]["prompt_tokens"],
        "{h}"
    );
    assert_eq!(
        h["content"][0]["text"], hc["choices"][0]["message"]["content"],
        "{h}"
    );
    // Errors in Anthropic's shape.
    for bad in [
        json!({"messages": [{"role": "user", "content": "x"}]}),
        json!({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}]}),
        json!({"max_tokens": 4, "messages": "x"}),
    ] {
        let (st, e) = s.post("/v1/messages", &bad).await;
        assert_eq!(st, 400, "{bad} -> {e}");
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    }
    drop(s);
    // Behind --api-key, Anthropic clients' x-api-key header passes.
    let k = Server::start(m.path(), &["--api-key", "sk-test"]);
    let send = |key: Option<&str>| {
        let mut r = k.client.post(k.url("/v1/messages/count_tokens")).json(&req);
        if let Some(key) = key {
            r = r.header("x-api-key", key);
        }
        r.send()
    };
    assert_eq!(send(Some("sk-test")).await.unwrap().status().as_u16(), 200);
    assert_eq!(send(Some("wrong")).await.unwrap().status().as_u16(), 401);
    assert_eq!(send(None).await.unwrap().status().as_u16(), 401);
}
