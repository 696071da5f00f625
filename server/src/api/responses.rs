//! `POST /v1/responses`: OpenAI's Responses API for text, tools and structured output, as SGLang
//! serves it for chat models. A request becomes a chat completion (`instructions` the system
//! message, `input` a string or message items, `function_call` / `function_call_output` items the
//! call history, `max_output_tokens`, `tools`, `tool_choice`, `text.format`), run through the chat
//! route, and its answer becomes a response object (`reasoning`, `message` and `function_call`
//! output items, `usage` in input/output tokens). Streamed, the chat chunks become the Responses
//! events (`response.created` ... `response.output_text.delta` ... `response.completed`).
//! Responses are stored unless `store` is false (`responses_store.rs`, in memory):
//! `previous_response_id` continues a stored conversation (404 when unknown), `GET` / `DELETE
//! /v1/responses/{id}` read and forget one; `background` runs one as a task to poll and cancel
//! (`responses_bg.rs`). `conversation` objects are 400s.

use super::error::ApiError;
use super::responses_store::{ResponseStore, Stored};
use super::{openai, relay, AppState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub async fn responses(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let history = match req.get("previous_response_id").filter(|v| !v.is_null()) {
        Some(id) => {
            let id = id.as_str().unwrap_or_default();
            st.responses
                .get(id)
                .ok_or_else(|| {
                    ApiError::not_found(format!("Previous response with id '{id}' not found."))
                })?
                .history
        }
        None => Vec::new(),
    };
    let (chat, inputs) = to_chat(&req, &history)?;
    // What a stored response keeps: the conversation through its input.
    let keep = (req.get("store").and_then(Value::as_bool) != Some(false)).then(|| Keep {
        store: st.responses.clone(),
        history: [history, inputs].concat(),
    });
    if req.get("background").and_then(Value::as_bool) == Some(true) {
        let Some(keep) = keep.filter(|_| !stream) else {
            return Err(ApiError::bad_request(
                "background responses must be stored and are not streamed by this server: \
                 send store true (the default) and poll GET /v1/responses/{id}.",
            ));
        };
        return Ok(Json(super::responses_bg::start(st, headers, req, chat, keep)).into_response());
    }
    let answer =
        openai::chat_completions(State(st), headers, Bytes::from(chat.to_string())).await?;
    let body = answer.into_body();
    if !stream {
        let c = relay::chat_json(body).await?;
        let r = to_response(&req, &c);
        if let Some(k) = keep {
            k.save(&r);
        }
        return Ok(Json(r).into_response());
    }
    Ok(relay::relay(body, Events::new(req, keep)).into_response())
}

/// `GET /v1/responses/{id}`: a stored response.
pub async fn retrieve(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.responses
        .get(&id)
        .map(|s| Json(s.response))
        .ok_or_else(|| ApiError::not_found(format!("Response with id '{id}' not found.")))
}

/// `DELETE /v1/responses/{id}`: forgets a stored response.
pub async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !st.responses.remove(&id) {
        return Err(ApiError::not_found(format!(
            "Response with id '{id}' not found."
        )));
    }
    Ok(Json(
        json!({"id": id, "object": "response", "deleted": true}),
    ))
}

/// Where a response is stored once it is complete, with the conversation through its input.
pub(super) struct Keep {
    pub(super) store: Arc<ResponseStore>,
    history: Vec<Value>,
}

impl Keep {
    /// Stores `r` with the conversation through its output (reasoning is not carried over).
    pub(super) fn save(self, r: &Value) {
        let mut history = self.history;
        for it in r["output"].as_array().into_iter().flatten() {
            if it["type"] != "reasoning" {
                if let Ok(m) = input_item(it) {
                    history.push(m);
                }
            }
        }
        let id = r["id"].as_str().unwrap_or_default().to_string();
        self.store.put(
            id,
            Stored {
                response: r.clone(),
                history,
            },
        );
    }
}

/// The chat completion request of a Responses request continuing `history` (the chat messages
/// of a stored conversation), and the messages of its own input.
fn to_chat(req: &Value, history: &[Value]) -> Result<(Value, Vec<Value>), ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    if req.get("conversation").is_some_and(|v| !v.is_null()) {
        return bad(
            "conversation: conversation objects are not supported by this server; use \
             previous_response_id or send the whole input."
                .into(),
        );
    }
    let mut inputs = Vec::new();
    match req.get("input") {
        Some(Value::String(s)) => inputs.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for it in items {
                inputs.push(input_item(it)?);
            }
        }
        _ => return bad("`input` must be a string or a list of items.".into()),
    }
    let mut messages = Vec::new();
    if let Some(i) = req.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": i}));
    }
    messages.extend(history.iter().cloned());
    messages.extend(inputs.iter().cloned());
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(messages));
    relay::copy_fields(
        req,
        &mut chat,
        &[
            ("model", "model"),
            ("max_output_tokens", "max_tokens"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("min_p", "min_p"),
            ("repetition_penalty", "repetition_penalty"),
            ("frequency_penalty", "frequency_penalty"),
            ("presence_penalty", "presence_penalty"),
            ("stop", "stop"),
            ("seed", "seed"),
            ("parallel_tool_calls", "parallel_tool_calls"),
            ("stream", "stream"),
            ("chat_template_kwargs", "chat_template_kwargs"),
            ("reasoning", "reasoning"),
            ("request_id", "rid"),
        ],
    );
    let function = |k: Option<&str>| k == Some("function");
    if let Some(tools) = relay::function_tools(
        req,
        "parameters",
        function,
        "only function tools are supported",
    )? {
        chat.insert("tools".into(), tools);
    }
    match req.get("tool_choice") {
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}}),
            );
        }
        Some(v) if !v.is_null() => {
            chat.insert("tool_choice".into(), v.clone());
        }
        _ => {}
    }
    if let Some(f) = req.pointer("/text/format").filter(|f| !f.is_null()) {
        let rf = match f.get("type").and_then(Value::as_str) {
            Some("json_schema") => json!({"type": "json_schema", "json_schema": {
                "name": f.get("name").cloned().unwrap_or(json!("response")),
                "schema": f.get("schema").cloned().unwrap_or(json!({}))}}),
            _ => f.clone(),
        };
        chat.insert("response_format".into(), rf);
    }
    Ok((relay::chat_request(chat), inputs))
}

/// One `input` item as a chat message.
fn input_item(it: &Value) -> Result<Value, ApiError> {
    let kind = it.get("type").and_then(Value::as_str).unwrap_or("message");
    Ok(match kind {
        "message" => {
            // The Responses API's `developer` role is the chat's system role.
            let role = match it.get("role").and_then(Value::as_str) {
                Some("developer") => "system",
                Some(r) => r,
                None => "user",
            };
            json!({"role": role, "content": relay::text_of(it.get("content").unwrap_or(&Value::Null))})
        }
        "function_call" => json!({"role": "assistant", "content": "", "tool_calls": [{
            "id": it.get("call_id").cloned().unwrap_or(Value::Null), "type": "function",
            "function": {"name": it["name"], "arguments": it.get("arguments").cloned().unwrap_or(json!("{}"))}}]}),
        "function_call_output" => json!({"role": "tool",
            "tool_call_id": it.get("call_id").cloned().unwrap_or(Value::Null),
            "content": relay::text_of(it.get("output").unwrap_or(&Value::Null))}),
        "reasoning" => json!({"role": "assistant", "content": ""}),
        k => {
            return Err(ApiError::bad_request(format!(
                "input items of type {k} are not supported by this server."
            )))
        }
    })
}

/// An id of `prefix` from the chat answer's id.
fn id_of(prefix: &str, chat_id: &str) -> String {
    format!("{prefix}_{}", chat_id.trim_start_matches("chatcmpl-"))
}

/// The response object: `status` completed (incomplete when the length ran out), `output`.
pub(super) fn response_object(
    req: &Value,
    id: &str,
    created: &Value,
    model: &Value,
    output: Vec<Value>,
    usage: Value,
    finish: &str,
) -> Value {
    let incomplete = finish == "length";
    json!({"id": id, "object": "response", "created_at": created,
        "status": if incomplete { "incomplete" } else { "completed" },
        "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "error": null, "model": model, "output": output,
        "instructions": req.get("instructions").cloned().unwrap_or(Value::Null),
        "max_output_tokens": req.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        "temperature": req.get("temperature").cloned().unwrap_or(json!(1.0)),
        "top_p": req.get("top_p").cloned().unwrap_or(json!(1.0)),
        "tools": req.get("tools").cloned().unwrap_or(json!([])),
        "tool_choice": req.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "parallel_tool_calls": req.get("parallel_tool_calls").cloned().unwrap_or(json!(true)),
        "previous_response_id": req.get("previous_response_id").cloned().unwrap_or(Value::Null),
        "store": req.get("store").and_then(Value::as_bool) != Some(false), "truncation": "disabled",
        "text": req.get("text").cloned().unwrap_or(json!({"format": {"type": "text"}})),
        "metadata": req.get("metadata").cloned().unwrap_or(json!({})), "usage": usage})
}

/// The Responses `usage` of a chat `usage`.
pub(super) fn usage_of(u: &Value) -> Value {
    let (i, o) = (
        u["prompt_tokens"].as_u64().unwrap_or(0),
        u["completion_tokens"].as_u64().unwrap_or(0),
    );
    json!({"input_tokens": i, "output_tokens": o, "total_tokens": i + o,
        "input_tokens_details": {"cached_tokens": u.pointer("/prompt_tokens_details/cached_tokens").cloned().unwrap_or(json!(0))},
        "output_tokens_details": {"reasoning_tokens": 0}})
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [],
        "content": [{"type": "reasoning_text", "text": text}], "status": "completed"})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(id: &str, call_id: &Value, name: &Value, arguments: &Value) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": "completed"})
}

/// The response of a non-streamed chat answer.
pub(super) fn to_response(req: &Value, c: &Value) -> Value {
    let chat_id = c["id"].as_str().unwrap_or("");
    let m = &c["choices"][0]["message"];
    let mut output = Vec::new();
    if let Some(r) = m["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
        output.push(reasoning_item(&id_of("rs", chat_id), r));
    }
    if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(&id_of("msg", chat_id), t, "completed"));
    }
    for (k, tc) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
        output.push(call_item(
            &format!("{}_{k}", id_of("fc", chat_id)),
            &tc["id"],
            &tc["function"]["name"],
            &tc["function"]["arguments"],
        ));
    }
    let finish = c["choices"][0]["finish_reason"].as_str().unwrap_or("stop");
    response_object(
        req,
        &id_of("resp", chat_id),
        &c["created"],
        &c["model"],
        output,
        usage_of(&c["usage"]),
        finish,
    )
}

/// The text items of a streamed response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Reasoning,
    Message,
}

/// An open output item of a streamed response.
struct Item {
    index: usize,
    id: String,
    text: String,
    /// function calls: (call id, name)
    call: Option<(Value, Value)>,
}

/// The state of one streamed response.
struct Events {
    req: Value,
    seq: u64,
    id: String,
    chat_id: String,
    created: Value,
    model: Value,
    started: bool,
    next: usize,
    reasoning: Option<Item>,
    message: Option<Item>,
    calls: Vec<Item>,
    done_items: Vec<(usize, Value)>,
    finish: String,
    usage: Value,
    /// Stores the final response (`store` not false).
    keep: Option<Keep>,
}

impl Events {
    fn new(req: Value, keep: Option<Keep>) -> Self {
        Events {
            req,
            keep,
            seq: 0,
            id: String::new(),
            chat_id: String::new(),
            created: Value::Null,
            model: Value::Null,
            started: false,
            next: 0,
            reasoning: None,
            message: None,
            calls: Vec::new(),
            done_items: Vec::new(),
            finish: "stop".into(),
            usage: usage_of(&Value::Null),
        }
    }

    fn event(&mut self, kind: &str, mut data: Value) -> SseEvent {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        SseEvent::default().event(kind).data(data.to_string())
    }

    fn response(&self, status: &str, output: Vec<Value>) -> Value {
        let mut r = response_object(
            &self.req,
            &self.id,
            &self.created,
            &self.model,
            output,
            self.usage.clone(),
            &self.finish,
        );
        if status == "in_progress" {
            r["status"] = json!("in_progress");
            r["incomplete_details"] = Value::Null;
        }
        r
    }

    /// Appends `text` to the reasoning or message item, opening it (with its `added` events)
    /// first; returns its output index and id.
    fn append(&mut self, slot: Slot, text: &str, out: &mut Vec<SseEvent>) -> (usize, String) {
        let open = match slot {
            Slot::Reasoning => self.reasoning.is_some(),
            Slot::Message => self.message.is_some(),
        };
        if !open {
            let (prefix, added) = match slot {
                Slot::Reasoning => (
                    "rs",
                    json!({"type": "reasoning", "summary": [], "content": [], "status": "in_progress"}),
                ),
                Slot::Message => (
                    "msg",
                    json!({"type": "message", "status": "in_progress", "role": "assistant", "content": []}),
                ),
            };
            let item = Item {
                index: self.next,
                id: id_of(prefix, &self.chat_id),
                text: String::new(),
                call: None,
            };
            self.next += 1;
            let mut added = added;
            added["id"] = json!(item.id);
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": item.index, "item": added}),
            ));
            if slot == Slot::Message {
                out.push(self.event(
                    "response.content_part.added",
                    json!({"item_id": item.id,
                    "output_index": item.index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
                ));
            }
            match slot {
                Slot::Reasoning => self.reasoning = Some(item),
                Slot::Message => self.message = Some(item),
            }
        }
        let it = match slot {
            Slot::Reasoning => self.reasoning.as_mut(),
            Slot::Message => self.message.as_mut(),
        }
        .expect("opened above");
        it.text += text;
        (it.index, it.id.clone())
    }

    /// Closes the reasoning item, if one is open (the chat sends reasoning before content).
    fn close_reasoning(&mut self) -> Vec<SseEvent> {
        let Some(Item {
            index, id, text, ..
        }) = self.reasoning.take()
        else {
            return Vec::new();
        };
        let item = reasoning_item(&id, &text);
        self.done_items.push((index, item.clone()));
        vec![
            self.event(
                "response.reasoning_text.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
            ),
            self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            ),
        ]
    }
}

impl relay::Translate for Events {
    type Item = SseEvent;

    fn on_chunk(&mut self, c: &Value) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            self.chat_id = c["id"].as_str().unwrap_or("").to_string();
            self.id = id_of("resp", &self.chat_id);
            self.created = c["created"].clone();
            self.model = c["model"].clone();
            let r = self.response("in_progress", Vec::new());
            out.push(self.event("response.created", json!({"response": r})));
            out.push(self.event("response.in_progress", json!({"response": r})));
        }
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            self.usage = usage_of(u);
        }
        let Some(ch) = c["choices"].get(0) else {
            return out;
        };
        if let Some(f) = ch["finish_reason"].as_str() {
            self.finish = f.to_string();
        }
        let d = &ch["delta"];
        if let Some(r) = d["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
            let (index, id) = self.append(Slot::Reasoning, r, &mut out);
            out.push(self.event(
                "response.reasoning_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": r}),
            ));
        }
        if let Some(t) = d["content"].as_str().filter(|t| !t.is_empty()) {
            out.extend(self.close_reasoning());
            let (index, id) = self.append(Slot::Message, t, &mut out);
            out.push(self.event(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t}),
            ));
        }
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            out.extend(self.close_reasoning());
            let k = tc["index"].as_u64().unwrap_or(0) as usize;
            let args = tc["function"]["arguments"].as_str().unwrap_or("");
            if tc.get("id").is_some_and(|i| !i.is_null()) || k >= self.calls.len() {
                let item = Item {
                    index: self.next,
                    id: format!("{}_{k}", id_of("fc", &self.chat_id)),
                    text: String::new(),
                    call: Some((tc["id"].clone(), tc["function"]["name"].clone())),
                };
                self.next += 1;
                let added = json!({"type": "function_call", "id": item.id, "call_id": tc["id"],
                    "name": tc["function"]["name"], "arguments": "", "status": "in_progress"});
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": item.index, "item": added}),
                ));
                self.calls.push(item);
            }
            if !args.is_empty() {
                let Some(it) = self.calls.get_mut(k) else {
                    continue;
                };
                it.text += args;
                let (index, id) = (it.index, it.id.clone());
                out.push(self.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": args}),
                ));
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = self.close_reasoning();
        if let Some(it) = self.message.take() {
            let part = json!({"type": "output_text", "text": it.text, "annotations": []});
            out.push(self.event("response.output_text.done", json!({"item_id": it.id, "output_index": it.index, "content_index": 0, "text": it.text})));
            out.push(self.event("response.content_part.done", json!({"item_id": it.id, "output_index": it.index, "content_index": 0, "part": part})));
            let item = message_item(&it.id, &it.text, "completed");
            out.push(self.event(
                "response.output_item.done",
                json!({"output_index": it.index, "item": item}),
            ));
            self.done_items.push((it.index, item));
        }
        for it in std::mem::take(&mut self.calls) {
            let (call_id, name) = it.call.clone().unwrap_or_default();
            out.push(self.event(
                "response.function_call_arguments.done",
                json!({"item_id": it.id, "output_index": it.index, "arguments": it.text}),
            ));
            let item = call_item(&it.id, &call_id, &name, &json!(it.text));
            out.push(self.event(
                "response.output_item.done",
                json!({"output_index": it.index, "item": item}),
            ));
            self.done_items.push((it.index, item));
        }
        self.done_items.sort_by_key(|(i, _)| *i);
        let output = self.done_items.iter().map(|(_, v)| v.clone()).collect();
        let r = self.response("completed", output);
        if let Some(k) = self.keep.take() {
            k.save(&r);
        }
        let kind = if r["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(kind, json!({"response": r})));
        out
    }
}
