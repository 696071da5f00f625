//! OpenAI's Conversations API, kept by the router as sglang-router 0.3.2 keeps it (in memory, one
//! store for all workers): `POST /v1/conversations {"metadata", "items"}`, `GET` / `POST`
//! (metadata update) / `DELETE /v1/conversations/{id}`, and its items: `POST
//! /v1/conversations/{id}/items {"items"}`, `GET .../items?limit&order&after`, `GET` / `DELETE
//! .../items/{item_id}`.
//!
//! Beyond sglang-router (whose HTTP mode passes `conversation` on to the worker): a non-streamed
//! `POST /v1/responses` naming a `conversation` runs with the conversation's items before its own
//! input, and its input and output items join the conversation, so a client can hold a
//! conversation through any worker. A streamed one with `conversation` is a 400 here.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{Result, RouterError};
use crate::Router;

/// The most items one list call answers (OpenAI's bound).
const MAX_LIMIT: usize = 100;

#[derive(Debug)]
struct Conversation {
    created_at: u64,
    metadata: Value,
    items: Vec<Value>,
}

impl Conversation {
    fn object(&self, id: &str) -> Value {
        json!({"id": id, "object": "conversation", "created_at": self.created_at,
            "metadata": self.metadata})
    }
}

/// The router's conversations.
#[derive(Debug, Default)]
pub struct Conversations(Mutex<HashMap<String, Conversation>>);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex_id(prefix: &str) -> String {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    format!("{prefix}{a:032x}{:018x}", b >> 56)
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "Conversation not found"})),
    )
        .into_response()
}

fn bad(msg: impl Into<String>) -> RouterError {
    RouterError::BadRequest(msg.into())
}

/// An item as stored: an id (kept when given, else `msg_...` for messages and `item_...` for
/// the rest), `status` and `created_at` added.
fn stored(mut item: Value) -> Result<Value> {
    let Some(o) = item.as_object_mut() else {
        return Err(bad("each item must be an object"));
    };
    if !o.contains_key("id") {
        let prefix = match o.get("type").and_then(Value::as_str) {
            Some("message") | None => "msg_",
            _ => "item_",
        };
        o.insert("id".into(), json!(hex_id(prefix)));
    }
    o.entry("type").or_insert(json!("message"));
    o.entry("status").or_insert(json!("completed"));
    o.insert("created_at".into(), json!(now()));
    Ok(item)
}

fn items_of(v: &Value) -> Result<Vec<Value>> {
    match v.get("items") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().cloned().map(stored).collect(),
        Some(_) => Err(bad("items must be a list")),
    }
}

fn body(b: &Bytes) -> Result<Value> {
    if b.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(b).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// A body and the items it carries.
fn body_items(b: &Bytes) -> Result<(Value, Vec<Value>)> {
    let v = body(b)?;
    let items = items_of(&v)?;
    Ok((v, items))
}

fn list(items: &[Value]) -> Value {
    json!({"object": "list", "data": items, "has_more": false,
        "first_id": items.first().map(|i| i["id"].clone()),
        "last_id": items.last().map(|i| i["id"].clone())})
}

impl Conversations {
    /// The items of conversation `id` (None: no such conversation).
    fn items(&self, id: &str) -> Option<Vec<Value>> {
        self.0.lock().get(id).map(|c| c.items.clone())
    }

    /// Appends items to conversation `id` (false: it is gone).
    fn append(&self, id: &str, items: Vec<Value>) -> bool {
        match self.0.lock().get_mut(id) {
            Some(c) => {
                c.items.extend(items);
                true
            }
            None => false,
        }
    }
}

type St = State<Arc<Router>>;

/// `POST /v1/conversations`.
pub async fn create(State(r): St, b: Bytes) -> Response {
    let (v, items) = match body_items(&b) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let id = hex_id("conv_");
    let c = Conversation {
        created_at: now(),
        metadata: v.get("metadata").cloned().unwrap_or(Value::Null),
        items,
    };
    let out = c.object(&id);
    r.conversations.0.lock().insert(id, c);
    Json(out).into_response()
}

/// `GET /v1/conversations/{id}`.
pub async fn get(State(r): St, Path(id): Path<String>) -> Response {
    match r.conversations.0.lock().get(&id) {
        Some(c) => Json(c.object(&id)).into_response(),
        None => not_found(),
    }
}

/// `POST /v1/conversations/{id}`: replaces the metadata.
pub async fn update(State(r): St, Path(id): Path<String>, b: Bytes) -> Response {
    let v = match body(&b) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let mut map = r.conversations.0.lock();
    let Some(c) = map.get_mut(&id) else {
        return not_found();
    };
    c.metadata = v.get("metadata").cloned().unwrap_or(Value::Null);
    Json(c.object(&id)).into_response()
}

/// `DELETE /v1/conversations/{id}`.
pub async fn delete(State(r): St, Path(id): Path<String>) -> Response {
    match r.conversations.0.lock().remove(&id) {
        Some(_) => Json(json!({"id": id, "object": "conversation.deleted", "deleted": true}))
            .into_response(),
        None => not_found(),
    }
}

/// `POST /v1/conversations/{id}/items`: answers the added items.
pub async fn add_items(State(r): St, Path(id): Path<String>, b: Bytes) -> Response {
    let items = match body_items(&b) {
        Ok((_, items)) => items,
        Err(e) => return e.into_response(),
    };
    if !r.conversations.append(&id, items.clone()) {
        return not_found();
    }
    Json(list(&items)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    order: Option<String>,
    after: Option<String>,
}

/// `GET /v1/conversations/{id}/items`: newest first unless `order=asc`, `limit` (20) after the
/// item `after`.
pub async fn list_items(
    State(r): St,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(mut items) = r.conversations.items(&id) else {
        return not_found();
    };
    match q.order.as_deref() {
        Some("asc") => {}
        None | Some("desc") => items.reverse(),
        Some(o) => {
            return bad(format!("order {o:?}: expected \"asc\" or \"desc\"")).into_response()
        }
    }
    if let Some(after) = &q.after {
        match items.iter().position(|i| i["id"] == after.as_str()) {
            Some(k) => {
                items.drain(..=k);
            }
            None => {
                return bad(format!("after: no item {after} in the conversation")).into_response()
            }
        }
    }
    let limit = q.limit.unwrap_or(20).clamp(1, MAX_LIMIT);
    let more = items.len() > limit;
    items.truncate(limit);
    let mut out = list(&items);
    out["has_more"] = json!(more);
    Json(out).into_response()
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn get_item(State(r): St, Path((id, item)): Path<(String, String)>) -> Response {
    let Some(items) = r.conversations.items(&id) else {
        return not_found();
    };
    match items.into_iter().find(|i| i["id"] == item.as_str()) {
        Some(i) => Json(i).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Item not found"})),
        )
            .into_response(),
    }
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`: answers the conversation.
pub async fn delete_item(State(r): St, Path((id, item)): Path<(String, String)>) -> Response {
    let mut map = r.conversations.0.lock();
    let Some(c) = map.get_mut(&id) else {
        return not_found();
    };
    let before = c.items.len();
    c.items.retain(|i| i["id"] != item.as_str());
    if c.items.len() == before {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Item not found"})),
        )
            .into_response();
    }
    Json(c.object(&id)).into_response()
}

/// The conversation a Responses request names (`"conv_..."` or `{"id": "conv_..."}`), when the
/// body names one.
pub fn named(body: &[u8]) -> Option<(Map<String, Value>, String)> {
    // Most requests name none: skip the parse.
    if !body.windows(12).any(|w| w == b"conversation") {
        return None;
    }
    let v: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let id = match v.get("conversation")? {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("id")?.as_str()?.to_string(),
        _ => return None,
    };
    Some((v, id))
}

/// Runs a Responses request inside conversation `id`: the conversation's items go before the
/// request's input, and the input and output items join the conversation afterwards.
pub async fn respond_in(
    r: &Router,
    mut req: Map<String, Value>,
    id: String,
    headers: HeaderMap,
) -> Response {
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        return bad("a streamed response cannot run in a conversation through strata router; send it unstreamed or pass the history as input").into_response();
    }
    let Some(history) = r.conversations.items(&id) else {
        return not_found();
    };
    let own: Vec<Value> = match req.remove("input") {
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user", "content": s})],
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return bad("input must be a string or a list of items").into_response(),
    };
    req.remove("conversation");
    let mut input: Vec<Value> = history
        .iter()
        .map(|i| {
            let mut i = i.clone();
            if let Some(o) = i.as_object_mut() {
                o.remove("created_at");
            }
            i
        })
        .collect();
    input.extend(own.iter().cloned());
    req.insert("input".into(), Value::Array(input));
    let sent = Bytes::from(serde_json::to_vec(&req).expect("a JSON map serialises"));
    let resp = match crate::proxy::forward(r, "/v1/responses", headers, sent).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let status = resp.status();
    let bytes = match axum::body::to_bytes(resp.into_body(), usize::MAX).await {
        Ok(b) => b,
        Err(_) => return RouterError::UpstreamTimeout.into_response(),
    };
    if !status.is_success() {
        return (status, bytes).into_response();
    }
    let Ok(mut out) = serde_json::from_slice::<Value>(&bytes) else {
        return (status, bytes).into_response();
    };
    let mut new = Vec::new();
    for i in own
        .into_iter()
        .chain(out["output"].as_array().cloned().unwrap_or_default())
    {
        match stored(i) {
            Ok(i) => new.push(i),
            Err(e) => return e.into_response(),
        }
    }
    r.conversations.append(&id, new);
    out["conversation"] = json!({"id": id});
    (status, Json(out)).into_response()
}
