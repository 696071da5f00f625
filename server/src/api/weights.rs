//! SGLang's weight routes for RL rollouts: `POST /update_weights_from_disk` (a checkpoint of the
//! same shapes replaces the served weights; scheduler side in `scheduler/weights.rs`),
//! `POST /update_weight_version`, `GET /get_weight_version`, and `GET|POST /get_weights_by_name`
//! (a tensor's leading rows, read from the served checkpoint's files). The weight version is
//! reported in every `/generate` answer's `meta_info` and in `/get_model_info`, as SGLang does.

use super::error::{parse_body, ApiError};
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The served checkpoint and its version (changed by the routes here).
#[derive(Debug, Clone)]
pub struct Served {
    pub model_path: String,
    /// `--weight-version` ("default"), then the updates'.
    pub version: String,
}

/// `POST /update_weights_from_disk` (SGLang's fields; the ones without meaning here, such as
/// `load_format`, `is_async`, `torch_empty_cache`, `keep_pause`, `recapture_cuda_graph`,
/// `token_step` and `manifest`, are accepted and unused).
#[derive(Debug, Deserialize)]
struct UpdateWire {
    model_path: String,
    #[serde(default)]
    abort_all_requests: bool,
    #[serde(default)]
    weight_version: Option<String>,
    #[serde(default = "yes")]
    flush_cache: bool,
}

fn yes() -> bool {
    true
}

/// SGLang's answer: `{"success", "message", "num_paused_requests"}`, 200 on success, else 400.
pub async fn update_weights_from_disk(State(st): State<AppState>, body: Bytes) -> Response {
    let w: UpdateWire = match parse_body(&body) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let tag = w
        .weight_version
        .clone()
        .unwrap_or_else(|| w.model_path.clone());
    let r = st
        .scheduler
        .update_weights(
            w.model_path.clone().into(),
            w.abort_all_requests,
            w.flush_cache,
            tag,
        )
        .await;
    let (status, success, message) = match r {
        Ok(m) => {
            let mut s = st.served.write().expect("served");
            s.model_path = w.model_path;
            if let Some(v) = w.weight_version {
                s.version = v;
            }
            (StatusCode::OK, true, m)
        }
        Err(m) => (StatusCode::BAD_REQUEST, false, m),
    };
    let body = json!({"success": success, "message": message, "num_paused_requests": 0});
    (status, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct VersionWire {
    new_version: String,
    #[serde(default)]
    abort_all_requests: bool,
}

/// `POST /update_weight_version {"new_version", "abort_all_requests"}`.
pub async fn update_weight_version(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let w: VersionWire = parse_body(&body)?;
    if w.abort_all_requests {
        st.scheduler.abort("");
    }
    st.served.write().expect("served").version = w.new_version.clone();
    Ok(Json(json!({"success": true,
        "message": format!("Weight version updated to {}", w.new_version),
        "new_version": w.new_version})))
}

/// `GET /get_weight_version`.
pub async fn get_weight_version(State(st): State<AppState>) -> Json<Value> {
    Json(json!({"weight_version": st.served.read().expect("served").version}))
}

#[derive(Debug, Deserialize)]
struct ByNameWire {
    name: String,
    #[serde(default = "hundred")]
    truncate_size: usize,
}

fn hundred() -> usize {
    100
}

/// `GET|POST /get_weights_by_name {"name", "truncate_size": 100}`: the tensor's first
/// `truncate_size` entries along its first dimension as nested lists of floats (SGLang's
/// answer); 400 for a name the checkpoint lacks.
pub async fn get_weights_by_name(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let w: ByNameWire = parse_body(&body)?;
    let dir = std::path::PathBuf::from(&st.served.read().expect("served").model_path);
    let name = w.name.clone();
    let t = tokio::task::spawn_blocking(move || crate::model::weights::read_tensor(&dir, &name))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .ok_or_else(|| {
            ApiError::bad_request(format!("The model has no parameter named {}.", w.name))
        })?;
    Ok(Json(nested(&t.shape, &t.data, w.truncate_size)))
}

/// `data` of `shape` as nested lists, the first dimension cut to `keep`.
fn nested(shape: &[usize], data: &[f32], keep: usize) -> Value {
    match shape {
        [] => json!(data.first().copied().unwrap_or(0.0)),
        [n] => json!(data[..keep.min(*n)]),
        [n, rest @ ..] => {
            let row: usize = rest.iter().product();
            Value::Array(
                data.chunks(row.max(1))
                    .take(keep.min(*n))
                    .map(|r| nested(rest, r, usize::MAX))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_nest_by_shape_and_cut_the_first_dimension() {
        let d: Vec<f32> = (0..12).map(|x| x as f32).collect();
        assert_eq!(
            nested(&[3, 2, 2], &d, 2),
            json!([[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 7.0]]])
        );
        assert_eq!(nested(&[12], &d, 3), json!([0.0, 1.0, 2.0]));
        assert_eq!(nested(&[2, 6], &d, 100).as_array().unwrap().len(), 2);
    }
}
