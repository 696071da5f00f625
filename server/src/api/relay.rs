//! What the APIs served over the chat route (`responses.rs`, `messages.rs`, `ollama.rs`) share:
//! building the chat request (copied fields, function tools, the streamed usage chunk), reading a
//! chat answer back as JSON, and relaying a streamed one's SSE chunks through a translator into
//! the other API's events (SSE, or Ollama's newline-delimited JSON).

use super::error::ApiError;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::convert::Infallible;

/// Largest chat answer read back (the chat route bounds it anyway).
const BODY_LIMIT: usize = 64 << 20;

/// Copies `req`'s non-null fields into the chat request, each `(from, to)` renamed.
pub fn copy_fields(req: &Value, chat: &mut Map<String, Value>, fields: &[(&str, &str)]) {
    for (from, to) in fields {
        if let Some(v) = req.get(*from).filter(|v| !v.is_null()) {
            chat.insert((*to).into(), v.clone());
        }
    }
}

/// The chat's function tool of tool `t`: its `name`, `description` and the JSON schema in its
/// field `schema`.
fn function_tool(t: &Value, schema: &str) -> Value {
    json!({"type": "function", "function": {"name": t["name"],
        "description": t.get("description").cloned().unwrap_or(Value::Null),
        "parameters": t.get(schema).cloned().unwrap_or(json!({}))}})
}

/// The chat's function tools of `req["tools"]` (None without them): each tool whose `type`
/// (None when it has none) `accept`s, with its JSON schema in field `schema`; another tool is a
/// 400 saying `refusal`.
pub fn function_tools(
    req: &Value,
    schema: &str,
    accept: fn(Option<&str>) -> bool,
    refusal: &str,
) -> Result<Option<Value>, ApiError> {
    let Some(tools) = req.get("tools").and_then(Value::as_array) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for t in tools {
        if !accept(t.get("type").and_then(Value::as_str)) {
            return Err(ApiError::bad_request(format!("tools: {refusal}, got {t}.")));
        }
        out.push(function_tool(t, schema));
    }
    Ok(Some(Value::Array(out)))
}

/// The chat request of `chat`: a streamed one also asks for the usage chunk (the other APIs
/// report usage at their end).
pub fn chat_request(mut chat: Map<String, Value>) -> Value {
    if chat.get("stream") == Some(&json!(true)) {
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(chat)
}

/// The text of a content field: a string, or the texts of its parts.
pub fn text_of(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// A non-streamed chat answer's JSON.
pub async fn chat_json(body: axum::body::Body) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading the chat answer: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::unavailable(format!("the chat answer: {e}")))
}

/// Turns streamed chat chunks into another API's events.
pub trait Translate: Send + 'static {
    /// One event of the other API (an SSE event, or a line of NDJSON).
    type Item: Send + 'static;
    /// The events of one chat chunk.
    fn on_chunk(&mut self, c: &Value) -> Vec<Self::Item>;
    /// The closing events, at `[DONE]` or when the chat stream ends.
    fn finish(&mut self) -> Vec<Self::Item>;
}

/// The events `ev` makes of a streamed chat answer (`body`: its SSE chunks), as SSE.
pub fn relay<T: Translate<Item = SseEvent>>(
    body: axum::body::Body,
    ev: T,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    use futures::StreamExt;
    Sse::new(translated(body, ev).map(Ok))
}

/// The same as newline-delimited JSON (Ollama's streams): each item one line.
pub fn relay_ndjson<T: Translate<Item = Value>>(body: axum::body::Body, ev: T) -> Response {
    use futures::StreamExt;
    let lines = translated(body, ev).map(|v| Ok::<_, Infallible>(format!("{v}\n")));
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// The items `ev` makes of the chat chunks in `body`.
fn translated<T: Translate>(body: axum::body::Body, ev: T) -> impl futures::Stream<Item = T::Item> {
    use futures::StreamExt;
    let chunks = body.into_data_stream();
    futures::stream::unfold(
        (chunks, String::new(), ev, false),
        |(mut chunks, mut buf, mut ev, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(at) = buf.find("\n\n") {
                    let event: String = buf.drain(..at + 2).collect();
                    let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    if data.trim() == "[DONE]" {
                        let out = ev.finish();
                        return Some((out, (chunks, buf, ev, true)));
                    }
                    if let Ok(c) = serde_json::from_str::<Value>(data) {
                        let out = ev.on_chunk(&c);
                        if !out.is_empty() {
                            return Some((out, (chunks, buf, ev, false)));
                        }
                    }
                    continue;
                }
                match chunks.next().await {
                    Some(Ok(b)) => buf.push_str(&String::from_utf8_lossy(&b)),
                    _ => {
                        let out = ev.finish();
                        return Some((out, (chunks, buf, ev, true)));
                    }
                }
            }
        },
    )
    .flat_map(futures::stream::iter)
}
