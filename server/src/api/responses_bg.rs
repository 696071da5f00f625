//! Background responses (`background: true`, stored): the request is answered at once with the
//! response `queued`; a task runs it through the chat route (the response id as its request id)
//! and stores it `in_progress`, then `completed` / `incomplete` (or `failed`), for
//! `GET /v1/responses/{id}` to poll. `POST /v1/responses/{id}/cancel` aborts a queued or running
//! one and stores it `cancelled` (the task then leaves it so).

use super::error::ApiError;
use super::responses::{response_object, to_response, usage_of, Keep};
use super::responses_store::Stored;
use super::{openai, relay, AppState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

/// Whether the response stored under `id` was cancelled.
fn cancelled(keep: &Keep, id: &str) -> bool {
    keep.store
        .get(id)
        .is_some_and(|s| s.response["status"] == "cancelled")
}

/// Stores `r` under `id` with `status`.
fn put(keep: &Keep, id: &str, mut r: Value, status: &str) {
    r["status"] = json!(status);
    keep.store.put(
        id.to_string(),
        Stored {
            response: r,
            history: Vec::new(),
        },
    );
}

/// Starts `chat` (the chat request of `req`) in the background; the queued response.
pub(super) fn start(
    st: AppState,
    headers: HeaderMap,
    req: Value,
    mut chat: Value,
    keep: Keep,
) -> Value {
    let id = crate::parsers::hex_id("resp_", 32);
    chat["rid"] = json!(id);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = chat
        .get("model")
        .cloned()
        .unwrap_or_else(|| json!(st.info.served_model_name));
    let mut queued = response_object(
        &req,
        &id,
        &json!(created),
        &model,
        Vec::new(),
        usage_of(&Value::Null),
        "stop",
    );
    queued["background"] = json!(true);
    put(&keep, &id, queued.clone(), "queued");
    let pending = queued.clone();
    tokio::spawn(async move {
        if cancelled(&keep, &id) {
            return;
        }
        put(&keep, &id, pending.clone(), "in_progress");
        let answer = async {
            let a =
                openai::chat_completions(State(st), headers, Bytes::from(chat.to_string())).await?;
            relay::chat_json(a.into_body()).await
        }
        .await;
        if cancelled(&keep, &id) {
            return;
        }
        match answer {
            Ok(c) => {
                let mut r = to_response(&req, &c);
                r["id"] = json!(id);
                r["background"] = json!(true);
                keep.save(&r);
            }
            Err(e) => {
                let mut r = pending;
                r["error"] = json!({"code": "server_error", "message": e.message});
                put(&keep, &id, r, "failed");
            }
        }
    });
    queued["status"] = json!("queued");
    queued
}

/// `POST /v1/responses/{id}/cancel`.
pub async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = st
        .responses
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("Response with id '{id}' not found.")))?;
    if !matches!(
        s.response["status"].as_str(),
        Some("queued" | "in_progress")
    ) {
        return Err(ApiError::bad_request(format!(
            "Cannot cancel response '{id}': it is not a queued or running background response."
        )));
    }
    st.scheduler.abort(&id);
    let mut r = s.response;
    r["status"] = json!("cancelled");
    st.responses.put(
        id,
        Stored {
            response: r.clone(),
            history: s.history,
        },
    );
    Ok(Json(r))
}
