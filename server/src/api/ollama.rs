//! Ollama's API, as SGLang serves it so that the `ollama` CLI and Python library can use the
//! server: `POST /api/chat` and `POST /api/generate` (streamed by default, as newline-delimited
//! JSON), beside the model listing of `ollama_info.rs`. A chat becomes a chat completion run
//! through the chat route (so tools, `think` and the reasoning parser, and `format` as JSON
//! mode or a JSON schema work as they do there); `/api/generate` templates its `system` and
//! `prompt` as a one-turn chat, as Ollama does, or with `raw: true` sends the prompt as is through
//! the completion route. `options` map onto the sampling parameters (`num_predict` ->
//! `max_tokens`, `repeat_penalty` -> `repetition_penalty`, `temperature`, `top_p`, `top_k`,
//! `min_p`, `seed`, `stop`, the two penalties); Ollama's runtime options (`num_ctx`, `num_gpu`,
//! ...) and `keep_alive` are accepted and have no effect, and so are `/api/generate`'s
//! deprecated `context`, `suffix` and `template`. An empty conversation or prompt answers
//! `done_reason: "load"` at once (the CLI sends one to load the model). Errors are Ollama's
//! `{"error": "..."}`; `images` are refused (no vision model is served).

use super::error::ApiError;
use super::{openai, relay, AppState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// An error in Ollama's shape.
pub fn ollama_error(e: ApiError) -> Response {
    (e.status, Json(json!({"error": e.message}))).into_response()
}

pub async fn chat(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    run(st, headers, body, Kind::Chat)
        .await
        .unwrap_or_else(ollama_error)
}

pub async fn generate(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    run(st, headers, body, Kind::Generate)
        .await
        .unwrap_or_else(ollama_error)
}

/// Which endpoint: the answer's text is `message.content` (chat) or `response` (generate).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Generate,
}

async fn run(
    st: AppState,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !req.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&st.info.served_model_name);
    let lines = Lines::new(kind, model, start);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let raw = kind == Kind::Generate && req.get("raw").and_then(Value::as_bool) == Some(true);
    let (path_chat, out) = match kind {
        Kind::Chat => (true, chat_request(&req)?),
        Kind::Generate if raw => (false, raw_request(&req)?),
        Kind::Generate => (true, generate_request(&req)?),
    };
    let Some(mut out_req) = out else {
        // Nothing to run: the model is loaded.
        let line = lines.load();
        return Ok(if stream {
            ndjson_once(line)
        } else {
            Json(line).into_response()
        });
    };
    sampling(&req, &mut out_req)?;
    out_req.insert("stream".into(), json!(stream));
    let body = relay::chat_request(out_req).to_string();
    let answer = if path_chat {
        openai::chat_completions(State(st), headers, Bytes::from(body)).await?
    } else {
        openai::completions(State(st), headers, Bytes::from(body)).await?
    };
    let body = answer.into_body();
    if stream {
        return Ok(relay::relay_ndjson(body, lines));
    }
    let c = relay::chat_json(body).await?;
    Ok(Json(lines.whole(&c)).into_response())
}

/// One line of NDJSON as the whole streamed answer.
fn ndjson_once(line: Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        format!("{line}\n"),
    )
        .into_response()
}

fn refuse_images(m: &Value) -> Result<(), ApiError> {
    if m.get("images")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(ApiError::bad_request(
            "images: the served model takes no images",
        ));
    }
    Ok(())
}

/// The chat completion request of an `/api/chat` request; `None` when it has no messages.
fn chat_request(req: &Value) -> Result<Option<Map<String, Value>>, ApiError> {
    let turns = match req.get("messages") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::bad_request(
                "messages: a list of messages expected",
            ))
        }
    };
    let mut messages = Vec::new();
    for m in turns {
        refuse_images(m)?;
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "content: a string expected, got {v}"
                )))
            }
        };
        let mut out = json!({"role": role, "content": content});
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            // Ollama's calls carry their arguments as an object and no id.
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({"id": format!("call_{i}"), "type": "function", "function": {
                        "name": c["function"]["name"],
                        "arguments": c["function"].get("arguments").cloned().unwrap_or(json!({}))}})
                })
                .collect();
            out["tool_calls"] = Value::Array(calls);
        }
        if let Some(name) = m.get("tool_name").filter(|v| v.is_string()) {
            out["name"] = name.clone();
        }
        messages.push(out);
    }
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(messages));
    relay::copy_fields(req, &mut chat, &[("model", "model"), ("tools", "tools")]);
    think(req, &mut chat);
    Ok(Some(chat))
}

/// `/api/generate`'s prompt; `None` when empty.
fn prompt_of(req: &Value) -> Result<Option<&str>, ApiError> {
    refuse_images(req)?;
    Ok(req
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty()))
}

/// `/api/generate` without `raw`: `system` and `prompt` as a one-turn chat.
fn generate_request(req: &Value) -> Result<Option<Map<String, Value>>, ApiError> {
    let Some(prompt) = prompt_of(req)? else {
        return Ok(None);
    };
    let mut messages = Vec::new();
    if let Some(s) = req
        .get("system")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(messages));
    relay::copy_fields(req, &mut chat, &[("model", "model")]);
    think(req, &mut chat);
    Ok(Some(chat))
}

/// `/api/generate` with `raw: true`: the prompt as is, through the completion route.
fn raw_request(req: &Value) -> Result<Option<Map<String, Value>>, ApiError> {
    let Some(prompt) = prompt_of(req)? else {
        return Ok(None);
    };
    let mut c = Map::new();
    c.insert("prompt".into(), json!(prompt));
    relay::copy_fields(req, &mut c, &[("model", "model")]);
    Ok(Some(c))
}

/// `think`: on (true or a level) or off for templates that switch thinking.
fn think(req: &Value, chat: &mut Map<String, Value>) {
    let on = match req.get("think") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(_)) => true,
        _ => return,
    };
    chat.insert(
        "chat_template_kwargs".into(),
        json!({"enable_thinking": on, "thinking": on}),
    );
}

/// `options` and `format` onto the request's sampling fields.
fn sampling(req: &Value, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    if let Some(o) = req.get("options").filter(|o| !o.is_null()) {
        if !o.is_object() {
            return Err(ApiError::bad_request("options: an object expected"));
        }
        relay::copy_fields(
            o,
            out,
            &[
                ("temperature", "temperature"),
                ("top_p", "top_p"),
                ("top_k", "top_k"),
                ("min_p", "min_p"),
                ("seed", "seed"),
                ("stop", "stop"),
                ("presence_penalty", "presence_penalty"),
                ("frequency_penalty", "frequency_penalty"),
                ("repeat_penalty", "repetition_penalty"),
            ],
        );
        // -1 (until the end of the text) and -2 (fill the context) set no limit.
        if let Some(n) = o
            .get("num_predict")
            .and_then(Value::as_i64)
            .filter(|&n| n >= 0)
        {
            out.insert("max_tokens".into(), json!(n));
        }
    }
    match req.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "format: \"json\" or a JSON schema expected, got {v}"
            )))
        }
    }
    Ok(())
}

/// Builds Ollama's answers: whole, or streamed line by line from the chat chunks.
struct Lines {
    kind: Kind,
    model: String,
    start: Instant,
    /// When the first text arrived (the prompt's evaluation ends there).
    first: Option<Instant>,
    /// Streamed tool calls by index: name and argument text so far.
    calls: Vec<(String, String)>,
    done_reason: &'static str,
    /// (prompt tokens, output tokens) from the usage chunk.
    usage: Option<(u64, u64)>,
}

impl Lines {
    fn new(kind: Kind, model: &str, start: Instant) -> Self {
        Self {
            kind,
            model: model.to_string(),
            start,
            first: None,
            calls: Vec::new(),
            done_reason: "stop",
            usage: None,
        }
    }

    /// A line with `text` (and `thinking`, `tool_calls` where given) and `done`.
    fn line(&self, text: &str, thinking: Option<&str>, calls: Option<Value>, done: bool) -> Value {
        let mut v =
            json!({"model": self.model, "created_at": super::ollama_info::now(), "done": done});
        match self.kind {
            Kind::Chat => {
                let mut m = json!({"role": "assistant", "content": text});
                if let Some(t) = thinking {
                    m["thinking"] = json!(t);
                }
                if let Some(c) = calls {
                    m["tool_calls"] = c;
                }
                v["message"] = m;
            }
            Kind::Generate => {
                v["response"] = json!(text);
                if let Some(t) = thinking {
                    v["thinking"] = json!(t);
                }
            }
        }
        v
    }

    /// The answer of an empty request.
    fn load(&self) -> Value {
        let mut v = self.line("", None, None, true);
        v["done_reason"] = json!("load");
        v
    }

    /// The closing fields: reason, durations (ns) and token counts.
    fn close(&self, v: &mut Value) {
        let total = self.start.elapsed().as_nanos() as u64;
        v["done_reason"] = json!(self.done_reason);
        v["total_duration"] = json!(total);
        v["load_duration"] = json!(0);
        if let Some((p, o)) = self.usage {
            v["prompt_eval_count"] = json!(p);
            v["eval_count"] = json!(o);
        }
        if let Some(f) = self.first {
            let to_first = f.duration_since(self.start).as_nanos() as u64;
            v["prompt_eval_duration"] = json!(to_first);
            v["eval_duration"] = json!(total - to_first);
        }
    }

    fn reason(&mut self, finish: &Value) {
        self.done_reason = if finish.as_str() == Some("length") {
            "length"
        } else {
            "stop"
        };
    }

    /// The token counts of `c`'s usage, when it has one (the last chunk, or a whole answer).
    fn read_usage(&mut self, c: &Value) {
        if let Some(u) = c.get("usage").filter(|u| u.is_object()) {
            let n = |k: &str| u[k].as_u64().unwrap_or(0);
            self.usage = Some((n("prompt_tokens"), n("completion_tokens")));
        }
    }

    /// The non-streamed answer of a chat or completion answer `c`.
    fn whole(mut self, c: &Value) -> Value {
        let choice = &c["choices"][0];
        self.reason(&choice["finish_reason"]);
        self.read_usage(c);
        let msg = &choice["message"];
        let text = msg["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .unwrap_or("");
        let calls = msg["tool_calls"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|a| {
                Value::Array(
                    a.iter()
                        .map(|t| ollama_call(&t["function"]["name"], &t["function"]["arguments"]))
                        .collect(),
                )
            });
        let mut v = self.line(text, msg["reasoning_content"].as_str(), calls, true);
        self.close(&mut v);
        v
    }
}

/// An Ollama tool call: the arguments as an object (the chat's are JSON text).
fn ollama_call(name: &Value, args: &Value) -> Value {
    let args = match args {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        v => v.clone(),
    };
    json!({"function": {"name": name, "arguments": args}})
}

impl relay::Translate for Lines {
    type Item = Value;

    fn on_chunk(&mut self, c: &Value) -> Vec<Value> {
        self.read_usage(c);
        let mut out = Vec::new();
        let Some(choice) = c["choices"].as_array().and_then(|a| a.first()) else {
            return out;
        };
        let delta = &choice["delta"];
        let text = delta["content"]
            .as_str()
            .or_else(|| choice["text"].as_str());
        let thinking = delta["reasoning_content"]
            .as_str()
            .filter(|t| !t.is_empty());
        if text.is_some_and(|t| !t.is_empty()) || thinking.is_some() {
            self.first.get_or_insert_with(Instant::now);
            out.push(self.line(text.unwrap_or(""), thinking, None, false));
        }
        for t in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = t["index"].as_u64().unwrap_or(0) as usize;
            if self.calls.len() <= i {
                self.calls.resize(i + 1, Default::default());
            }
            if let Some(n) = t["function"]["name"].as_str() {
                self.calls[i].0 = n.to_string();
            }
            if let Some(a) = t["function"]["arguments"].as_str() {
                self.calls[i].1.push_str(a);
            }
        }
        if !choice["finish_reason"].is_null() {
            self.reason(&choice["finish_reason"]);
            if !self.calls.is_empty() {
                // Ollama sends a reply's calls whole, in one line before the last.
                let calls = self
                    .calls
                    .drain(..)
                    .map(|(n, a)| ollama_call(&json!(n), &json!(a)))
                    .collect();
                out.push(self.line("", None, Some(Value::Array(calls)), false));
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<Value> {
        let mut v = self.line("", None, None, true);
        self.close(&mut v);
        vec![v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::Translate;

    #[test]
    fn chat_requests_carry_calls_tools_think_and_options() {
        let req = json!({"model": "m", "think": "high", "tools": [{"type": "function",
            "function": {"name": "f", "parameters": {}}}],
            "messages": [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "f", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "2", "tool_name": "f"}],
            "options": {"num_predict": 5, "repeat_penalty": 1.1, "num_ctx": 8192, "stop": "\n"},
            "format": {"type": "object"}});
        let mut c = chat_request(&req).unwrap().unwrap();
        sampling(&req, &mut c).unwrap();
        let m = &c["messages"];
        assert_eq!(
            m[1]["tool_calls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(m[1]["tool_calls"][0]["id"], "call_0");
        assert_eq!(m[2]["name"], "f");
        assert_eq!(c["tools"][0]["function"]["name"], "f");
        assert_eq!(c["chat_template_kwargs"]["enable_thinking"], true);
        assert_eq!(c["max_tokens"], 5);
        assert_eq!(c["repetition_penalty"], 1.1);
        assert_eq!(c["stop"], "\n");
        assert!(c.get("num_ctx").is_none());
        assert_eq!(
            c["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        // -1: no limit.
        let mut c = Map::new();
        sampling(&json!({"options": {"num_predict": -1}}), &mut c).unwrap();
        assert!(c.get("max_tokens").is_none());
        assert!(
            chat_request(&json!({"messages": [{"content": "x", "images": ["aGk="]}]})).is_err()
        );
    }

    #[test]
    fn streamed_calls_arrive_whole_before_the_closing_line() {
        let mut l = Lines::new(Kind::Chat, "m", Instant::now());
        let chunk = |d: Value, f: Value| json!({"choices": [{"delta": d, "finish_reason": f}]});
        assert!(l
            .on_chunk(&chunk(json!({"tool_calls": [{"index": 0, "function": {"name": "get", "arguments": "{\"a\""}}]}), Value::Null))
            .is_empty());
        l.on_chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            Value::Null,
        ));
        let out = l.on_chunk(&chunk(json!({}), json!("tool_calls")));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["done"], false);
        assert_eq!(
            out[0]["message"]["tool_calls"][0]["function"],
            json!({"name": "get", "arguments": {"a": 1}})
        );
        l.on_chunk(&json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}));
        let last = l.finish();
        assert_eq!(last[0]["done"], true);
        assert_eq!(last[0]["done_reason"], "stop");
        assert_eq!(last[0]["prompt_eval_count"], 7);
        assert_eq!(last[0]["eval_count"], 3);
        // A reasoning delta is `thinking`; generate lines carry `response`.
        let mut g = Lines::new(Kind::Generate, "m", Instant::now());
        let out = g.on_chunk(&chunk(json!({"reasoning_content": "hmm"}), Value::Null));
        assert_eq!(out[0]["thinking"], "hmm");
        assert_eq!(out[0]["response"], "");
    }
}
