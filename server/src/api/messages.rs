//! `POST /v1/messages` and `/v1/messages/count_tokens`: Anthropic's Messages API, as SGLang
//! serves it for chat models. A request becomes a chat completion (`system` the system message,
//! text blocks the content, `tool_use` blocks the assistant's calls and `tool_result` blocks the
//! tool messages, `max_tokens`, `stop_sequences`, `tools` with `input_schema`, `tool_choice`
//! auto / any / tool / none) run through the chat route; its answer becomes a message (`thinking`,
//! `text` and `tool_use` content blocks, `stop_reason` end_turn / max_tokens / stop_sequence /
//! tool_use, `usage`), streamed as Anthropic's events (`message_start`, `content_block_start` /
//! `_delta` / `_stop`, `message_delta`, `message_stop`). Errors use Anthropic's shape
//! (`{"type": "error", "error": {"type": ..., "message": ...}}`). Image blocks are refused.

use super::error::ApiError;
use super::{openai, relay, AppState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

/// An error in Anthropic's shape.
fn anthropic_error(e: ApiError) -> Response {
    let kind = match e.status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_request_error",
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": e.message}});
    (e.status, Json(body)).into_response()
}

pub async fn messages(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    run(st, headers, body).await.unwrap_or_else(anthropic_error)
}

pub async fn count_tokens(State(st): State<AppState>, body: Bytes) -> Response {
    let count = || -> Result<usize, ApiError> {
        let req: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
        let chat = to_chat(&req)?;
        openai::chat_prompt_len(&st, chat.to_string().as_bytes())
    };
    match count() {
        Ok(n) => Json(json!({"input_tokens": n})).into_response(),
        Err(e) => anthropic_error(e),
    }
}

async fn run(st: AppState, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let req: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
    if req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err(ApiError::bad_request(
            "max_tokens: a positive integer is required.",
        ));
    }
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let chat = to_chat(&req)?;
    let answer =
        openai::chat_completions(State(st), headers, Bytes::from(chat.to_string())).await?;
    let body = answer.into_body();
    if !stream {
        let c = relay::chat_json(body).await?;
        return Ok(Json(to_message(&req, &c)).into_response());
    }
    Ok(relay::relay(body, Events::new(req)).into_response())
}

/// The chat completion request of a Messages request.
fn to_chat(req: &Value) -> Result<Value, ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    let mut messages = Vec::new();
    match req.get("system") {
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(blocks @ Value::Array(_)) => {
            messages.push(json!({"role": "system", "content": relay::text_of(blocks)}))
        }
        Some(Value::Null) | None => {}
        Some(v) => return bad(format!("system: a string or text blocks, got {v}.")),
    }
    let Some(turns) = req.get("messages").and_then(Value::as_array) else {
        return bad("messages: a list of messages is required.".into());
    };
    for m in turns {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        if !matches!(role, "user" | "assistant") {
            return bad(format!(
                "messages: role {role:?} (user or assistant expected)."
            ));
        }
        match m.get("content") {
            Some(Value::String(s)) => messages.push(json!({"role": role, "content": s})),
            Some(Value::Array(blocks)) => turn(role, blocks, &mut messages)?,
            _ => return bad("messages: content must be a string or a list of blocks.".into()),
        }
    }
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(messages));
    relay::copy_fields(
        req,
        &mut chat,
        &[
            ("model", "model"),
            ("max_tokens", "max_tokens"),
            ("stop_sequences", "stop"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("stream", "stream"),
        ],
    );
    let custom = |k: Option<&str>| k.is_none_or(|k| k == "custom");
    if let Some(tools) = relay::function_tools(
        req,
        "input_schema",
        custom,
        "server tools are not supported",
    )? {
        chat.insert("tools".into(), tools);
    }
    if let Some(tc) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": tc["name"]}}),
            _ => return bad(format!("tool_choice: auto, any, tool or none, got {tc}.")),
        };
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            chat.insert("parallel_tool_calls".into(), json!(false));
        }
        chat.insert("tool_choice".into(), choice);
    }
    Ok(relay::chat_request(chat))
}

/// One message's blocks as chat messages: a user turn's `tool_result` blocks become tool
/// messages (before its text), an assistant turn's `tool_use` blocks its calls.
fn turn(role: &str, blocks: &[Value], out: &mut Vec<Value>) -> Result<(), ApiError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str).unwrap_or("text") {
            "text" => text += b.get("text").and_then(Value::as_str).unwrap_or(""),
            "tool_use" => {
                calls.push(json!({"id": b["id"], "type": "function", "function": {
                "name": b["name"], "arguments": b.get("input").unwrap_or(&json!({})).to_string()}}))
            }
            "tool_result" => {
                let content = relay::text_of(b.get("content").unwrap_or(&Value::Null));
                out.push(
                    json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": content}),
                );
            }
            // Earlier thinking is not replayed (as SGLang's chat templates drop it).
            "thinking" | "redacted_thinking" => {}
            k => {
                return Err(ApiError::bad_request(format!(
                    "content blocks of type {k} are not supported by this server."
                )))
            }
        }
    }
    if role == "assistant" && !calls.is_empty() {
        out.push(json!({"role": "assistant", "content": text, "tool_calls": calls}));
    } else if !text.is_empty()
        || calls.is_empty() && !out.last().is_some_and(|m| m["role"] == "tool")
    {
        out.push(json!({"role": role, "content": text}));
    }
    Ok(())
}

/// Anthropic's stop reason of a chat finish (and the stop sequence that ended it).
fn stop_reason(req: &Value, finish: &str, matched: &Value) -> (&'static str, Value) {
    let stops = req["stop_sequences"].as_array();
    match finish {
        "length" => ("max_tokens", Value::Null),
        "tool_calls" => ("tool_use", Value::Null),
        _ if matched.is_string() && stops.is_some_and(|s| s.contains(matched)) => {
            ("stop_sequence", matched.clone())
        }
        _ => ("end_turn", Value::Null),
    }
}

fn usage(u: &Value) -> Value {
    json!({"input_tokens": u["prompt_tokens"].as_u64().unwrap_or(0),
        "output_tokens": u["completion_tokens"].as_u64().unwrap_or(0)})
}

/// A message id of the chat answer's id.
fn msg_id(chat_id: &str) -> String {
    format!("msg_{}", chat_id.trim_start_matches("chatcmpl-"))
}

/// A `tool_use` block's `input`: the call's arguments as an object.
fn input_of(arguments: &Value) -> Value {
    arguments
        .as_str()
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_else(|| json!({}))
}

/// The message of a non-streamed chat answer.
fn to_message(req: &Value, c: &Value) -> Value {
    let ch = &c["choices"][0];
    let m = &ch["message"];
    let mut content = Vec::new();
    if let Some(r) = m["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for tc in m["tool_calls"].as_array().into_iter().flatten() {
        content.push(
            json!({"type": "tool_use", "id": tc["id"], "name": tc["function"]["name"],
            "input": input_of(&tc["function"]["arguments"])}),
        );
    }
    let (reason, seq) = stop_reason(
        req,
        ch["finish_reason"].as_str().unwrap_or("stop"),
        &ch["matched_stop"],
    );
    json!({"id": msg_id(c["id"].as_str().unwrap_or("")), "type": "message", "role": "assistant",
        "model": c["model"], "content": content, "stop_reason": reason, "stop_sequence": seq,
        "usage": usage(&c["usage"])})
}

/// What the open content block is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    /// A tool call of this chat `tool_calls` index.
    Tool(u64),
}

/// The state of one streamed message.
struct Events {
    req: Value,
    started: bool,
    /// The open block and its index.
    open: Option<(Block, usize)>,
    next: usize,
    finish: String,
    matched: Value,
    usage: Value,
}

impl Events {
    fn new(req: Value) -> Self {
        Events {
            req,
            started: false,
            open: None,
            next: 0,
            finish: "stop".into(),
            matched: Value::Null,
            usage: usage(&Value::Null),
        }
    }

    fn event(kind: &str, mut data: Value) -> SseEvent {
        data["type"] = json!(kind);
        SseEvent::default().event(kind).data(data.to_string())
    }

    /// Closes the open block unless it is `b`, then opens `b` (with `start` as its content
    /// block) if it is not open; returns its index.
    fn block(&mut self, b: Block, start: impl FnOnce() -> Value, out: &mut Vec<SseEvent>) -> usize {
        if let Some((open, i)) = self.open {
            if open == b {
                return i;
            }
            out.push(Self::event("content_block_stop", json!({"index": i})));
        }
        let i = self.next;
        self.next += 1;
        self.open = Some((b, i));
        out.push(Self::event(
            "content_block_start",
            json!({"index": i, "content_block": start()}),
        ));
        i
    }
}

impl relay::Translate for Events {
    type Item = SseEvent;

    fn on_chunk(&mut self, c: &Value) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let msg = json!({"id": msg_id(c["id"].as_str().unwrap_or("")), "type": "message",
                "role": "assistant", "model": c["model"], "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}});
            out.push(Self::event("message_start", json!({"message": msg})));
        }
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            self.usage = usage(u);
        }
        let Some(ch) = c["choices"].get(0) else {
            return out;
        };
        if let Some(f) = ch["finish_reason"].as_str() {
            self.finish = f.to_string();
            self.matched = ch["matched_stop"].clone();
        }
        let d = &ch["delta"];
        if let Some(r) = d["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
            let i = self.block(
                Block::Thinking,
                || json!({"type": "thinking", "thinking": "", "signature": ""}),
                &mut out,
            );
            out.push(Self::event(
                "content_block_delta",
                json!({"index": i, "delta": {"type": "thinking_delta", "thinking": r}}),
            ));
        }
        if let Some(t) = d["content"].as_str().filter(|t| !t.is_empty()) {
            let i = self.block(
                Block::Text,
                || json!({"type": "text", "text": ""}),
                &mut out,
            );
            out.push(Self::event(
                "content_block_delta",
                json!({"index": i, "delta": {"type": "text_delta", "text": t}}),
            ));
        }
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            let k = tc["index"].as_u64().unwrap_or(0);
            let i = self.block(
                Block::Tool(k),
                || json!({"type": "tool_use", "id": tc["id"], "name": tc["function"]["name"], "input": {}}),
                &mut out,
            );
            if let Some(a) = tc["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.push(Self::event(
                    "content_block_delta",
                    json!({"index": i, "delta": {"type": "input_json_delta", "partial_json": a}}),
                ));
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if let Some((_, i)) = self.open.take() {
            out.push(Self::event("content_block_stop", json!({"index": i})));
        }
        let (reason, seq) = stop_reason(&self.req, &self.finish, &self.matched);
        out.push(Self::event(
            "message_delta",
            json!({"delta": {"stop_reason": reason, "stop_sequence": seq}, "usage": self.usage}),
        ));
        out.push(Self::event("message_stop", json!({})));
        out
    }
}
