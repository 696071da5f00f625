//! LoRA adapters at the API (SGLang's): `POST /load_lora_adapter` {lora_name, lora_path},
//! `POST /unload_lora_adapter` {lora_name}, a request's `lora_path` (on `/generate` one name for
//! every prompt or a list with one name or null per prompt; on the OpenAI routes one name, or
//! the `model` field's part after `:` as in `base-model:adapter`), and the adapters listed in
//! `/v1/models`. The adapters themselves: `model/lora.rs`.

use super::error::{parse_body, ApiError};
use super::AppState;
use crate::sampling::LoraRef;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The adapter a request names (None: no name, or null).
pub fn resolve(st: &AppState, name: Option<&str>) -> Result<Option<LoraRef>, ApiError> {
    match name {
        None | Some("") => Ok(None),
        Some(n) => st
            .loras
            .resolve(n)
            .map(|a| Some(LoraRef(a)))
            .map_err(ApiError::bad_request),
    }
}

/// `/generate`'s `lora_path` for `n` prompts: a string for all, or a list of strings / nulls.
pub fn per_prompt(
    st: &AppState,
    v: &Option<Value>,
    n: usize,
) -> Result<Vec<Option<LoraRef>>, ApiError> {
    let name = |v: &Value| -> Result<Option<LoraRef>, ApiError> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => resolve(st, Some(s)),
            other => Err(ApiError::bad_request(format!(
                "lora_path must be a string, a list of strings or null, got {other}."
            ))),
        }
    };
    match v {
        None => Ok(vec![None; n]),
        Some(Value::Array(a)) if a.len() == n => a.iter().map(name).collect(),
        Some(Value::Array(a)) => Err(ApiError::bad_request(format!(
            "lora_path has {} entries for {n} prompts.",
            a.len()
        ))),
        Some(v) => Ok(vec![name(v)?; n]),
    }
}

/// An OpenAI request's adapter: its `lora_path`, else the part of `model` after the first `:`
/// when LoRA is on (`base-model:adapter`; otherwise `model` is only a label).
pub fn for_openai(
    st: &AppState,
    lora_path: Option<&str>,
    model: Option<&str>,
) -> Result<Option<LoraRef>, ApiError> {
    if lora_path.is_some() {
        return resolve(st, lora_path);
    }
    match model.and_then(|m| m.split_once(':')) {
        Some((_, adapter)) if st.loras.enabled => resolve(st, Some(adapter)),
        _ => Ok(None),
    }
}

#[derive(Debug, Deserialize)]
struct LoadWire {
    lora_name: String,
    lora_path: Option<String>,
}

/// SGLang's answer to both routes: `{"success", "error_message", "loaded_adapters"}` (name ->
/// path), 200 on success, else 400.
fn answer(st: &AppState, r: Result<(), String>) -> Response {
    let loaded: serde_json::Map<String, Value> = st
        .loras
        .list()
        .into_iter()
        .map(|(n, p)| (n, Value::String(p)))
        .collect();
    let (status, ok, msg) = match r {
        Ok(()) => (StatusCode::OK, true, String::new()),
        Err(m) => (StatusCode::BAD_REQUEST, false, m),
    };
    let body = json!({"success": ok, "error_message": msg, "loaded_adapters": loaded});
    (status, Json(body)).into_response()
}

/// `POST /load_lora_adapter`.
pub async fn load_lora_adapter(State(st): State<AppState>, body: Bytes) -> Response {
    let w: LoadWire = match parse_body(&body) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let r = if !st.loras.enabled {
        Err("LoRA is not enabled; start the server with --enable-lora.".to_string())
    } else {
        let path = w.lora_path.unwrap_or_else(|| w.lora_name.clone());
        let reg = st.loras.clone();
        let name = w.lora_name.clone();
        tokio::task::spawn_blocking(move || {
            reg.load(&name, std::path::Path::new(&path)).map(|_| ())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    };
    answer(&st, r)
}

/// `POST /unload_lora_adapter`.
pub async fn unload_lora_adapter(State(st): State<AppState>, body: Bytes) -> Response {
    let w: LoadWire = match parse_body(&body) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let r = st.loras.unload(&w.lora_name);
    answer(&st, r)
}

/// `/v1/models` entries of the loaded adapters (SGLang's: the adapter's name, its path as the
/// root, the served model as the parent).
pub fn model_entries(st: &AppState) -> Vec<Value> {
    st.loras
        .list()
        .into_iter()
        .map(|(name, path)| {
            json!({"id": name, "object": "model", "created": 0, "owned_by": "sglang",
                   "root": path, "parent": st.info.served_model_name,
                   "max_model_len": st.info.context_length})
        })
        .collect()
}
