//! SGLang's probe, alias and control routes: `/ping`, `/ready`, `GET /v1/models/{model}`,
//! `/pause_generation`, `/continue_generation`, `/configure_logging` and the HiCache storage
//! backend's `/hicache/storage-backend` (docs/server.md, "Routes", says what each answers).

use super::error::{parse_body, ApiError};
use super::AppState;
use crate::scheduler::request::PauseMode;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// `GET /ping` (SageMaker's probe): 200 once the server serves, paused or not (the HTTP listener
/// opens only after the model is loaded and warmed up).
pub async fn ping() -> StatusCode {
    StatusCode::OK
}

/// `GET /ready`: 200 when the server takes new requests, 503 while generation is paused.
pub async fn ready(State(st): State<AppState>) -> StatusCode {
    if st.scheduler.is_paused() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// `GET /v1/models/{model}`: OpenAI's retrieve; the served model's card, else OpenAI's 404.
pub async fn retrieve_model(State(st): State<AppState>, Path(model): Path<String>) -> Response {
    if model != st.info.served_model_name {
        let body = json!({"error": {
            "message": format!("The model '{model}' does not exist"),
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"}});
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    Json(
        json!({"id": model, "object": "model", "created": 0, "owned_by": "sglang",
        "root": model, "parent": null, "max_model_len": st.info.context_length}),
    )
    .into_response()
}

/// A body that may be empty (read as `{}`).
fn parse_optional<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        parse_body(b"{}")
    } else {
        parse_body(body)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseWire {
    #[serde(default = "abort_mode")]
    mode: String,
    /// SGLang's request id field, accepted and unused.
    #[serde(default)]
    #[allow(dead_code)]
    rid: Option<Value>,
}

fn abort_mode() -> String {
    "abort".into()
}

/// `POST /pause_generation {"mode": "abort" | "in_place" | "retract"}` (default `abort`).
pub async fn pause_generation(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let w: PauseWire = parse_optional(&body)?;
    let mode = PauseMode::from_name(&w.mode).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Unknown pause mode '{}' (expected abort, in_place or retract).",
            w.mode
        ))
    })?;
    if !st.scheduler.pause(mode).await {
        return Err(ApiError::unavailable("The scheduler is gone."));
    }
    Ok(Json(
        json!({"message": "Generation paused successfully.", "status": "ok"}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ContinueWire {
    /// SGLang's CUDA allocator flag, accepted and unused.
    #[serde(default)]
    torch_empty_cache: Option<bool>,
    #[serde(default)]
    rid: Option<Value>,
}

/// `POST /continue_generation`: resumes the rounds (a no-op when not paused).
pub async fn continue_generation(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let _: ContinueWire = parse_optional(&body)?;
    if !st.scheduler.resume().await {
        return Err(ApiError::unavailable("The scheduler is gone."));
    }
    Ok(Json(
        json!({"message": "Generation continued successfully.", "status": "ok"}),
    ))
}

/// SGLang's `ConfigureLoggingReq` fields that Strata has nothing to map to.
const LOGGING_UNSUPPORTED: &[&str] = &[
    "log_requests_format",
    "log_level",
    "dump_requests_folder",
    "dump_requests_threshold",
    "crash_dump_folder",
    "dump_requests_exclude_meta_keys",
];

/// `GET|POST /configure_logging`: `log_requests` (bool) and `log_requests_level` (0..=3) switch
/// the request log; SGLang's other fields are a 400 when set (null is unchanged, as SGLang).
pub async fn configure_logging(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let w: serde_json::Map<String, Value> = parse_optional(&body)?;
    let mut on = None;
    let mut level = None;
    for (k, v) in &w {
        if v.is_null() || k == "rid" {
            continue;
        }
        match k.as_str() {
            "log_requests" => {
                on =
                    Some(v.as_bool().ok_or_else(|| {
                        ApiError::bad_request("`log_requests` must be a boolean.")
                    })?)
            }
            "log_requests_level" => {
                level = Some(v.as_u64().filter(|l| *l <= 3).ok_or_else(|| {
                    ApiError::bad_request("`log_requests_level` must be an integer in 0..=3.")
                })? as u8)
            }
            k if LOGGING_UNSUPPORTED.contains(&k) => {
                return Err(ApiError::bad_request(format!(
                    "/configure_logging: `{k}` is not supported by strata serve \
                     (only log_requests and log_requests_level are)."
                )))
            }
            k => {
                return Err(ApiError::bad_request(format!(
                    "/configure_logging: unknown field `{k}`."
                )))
            }
        }
    }
    st.request_log.configure(on, level);
    tracing::info!(log = ?st.request_log.get(), "request logging configured");
    Ok(StatusCode::OK)
}

/// `GET /hicache/storage-backend`: the L3 backend attached at launch and its policies, SGLang's
/// four fields (the backend null when the hierarchical cache is off).
pub async fn hicache_backend(State(st): State<AppState>) -> Json<Value> {
    if let Some(v) = st.l3_state.read().expect("l3 state").clone() {
        return Json(v);
    }
    let a = &st.info.server_args;
    let on = a["enable_hierarchical_cache"].as_bool().unwrap_or(false);
    let field = |k: &str| a.get(k).cloned().unwrap_or(Value::Null);
    Json(l3_json(
        if on {
            field("hicache_storage_backend")
        } else {
            Value::Null
        },
        field("hicache_storage_backend_extra_config"),
        field("hicache_storage_prefetch_policy"),
        field("hicache_write_policy"),
    ))
}

/// SGLang's four fields of `GET /hicache/storage-backend`.
fn l3_json(backend: Value, extra: Value, prefetch: Value, write: Value) -> Value {
    json!({"hicache_storage_backend": backend, "hicache_storage_backend_extra_config": extra,
        "hicache_storage_prefetch_policy": prefetch, "hicache_write_policy": write})
}

/// `PUT /hicache/storage-backend` (attach, SGLang's body) and `DELETE` (detach): allowed while
/// no request runs or waits. SGLang's plain-text answers, 200 or 400; the `GET` then reports
/// the new state.
pub async fn hicache_attach_detach(
    State(st): State<AppState>,
    method: axum::http::Method,
    body: Bytes,
) -> Response {
    let attach = method == axum::http::Method::PUT;
    let a: Option<crate::hicache::Attach> = if attach {
        match parse_body(&body) {
            Ok(a) => Some(a),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    // What `GET` reports once this succeeds (all null once detached).
    let state = match &a {
        Some(a) => l3_json(
            json!(a.hicache_storage_backend),
            json!(a.hicache_storage_backend_extra_config_json),
            json!(a.hicache_storage_prefetch_policy),
            json!(a.hicache_write_policy),
        ),
        None => l3_json(Value::Null, Value::Null, Value::Null, Value::Null),
    };
    let (verb, r) = (
        if attach { "attach" } else { "detach" },
        st.scheduler.l3(a).await,
    );
    match r {
        Ok(m) => {
            *st.l3_state.write().expect("l3 state") = Some(state);
            (
                StatusCode::OK,
                format!("HiCache storage backend {verb}ed.\n{m}\n"),
            )
                .into_response()
        }
        Err(m) => (
            StatusCode::BAD_REQUEST,
            format!("Failed to {verb} HiCache storage backend.\n{m}\n"),
        )
            .into_response(),
    }
}
