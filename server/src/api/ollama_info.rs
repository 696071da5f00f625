//! Ollama's model listing and probes, for the one model a server serves: `GET /api/tags`,
//! `POST /api/show` (details, parameter count and shape from config.json, the chat template,
//! capabilities from the configured parsers), `GET /api/ps`, `GET /api/version` and the CLI's
//! `GET` / `HEAD /` ("Ollama is running"). Model management (`/api/pull`, `/api/push`,
//! `/api/create`, `/api/copy`, `/api/delete`, blobs) answer a 501 in Ollama's error shape
//! (embeddings are `embed.rs`'s). Model names are not checked: like every other route, these describe the served
//! model whatever name a client uses.

use super::error::ApiError;
use super::ollama::ollama_error;
use super::AppState;
use crate::model::ModelConfig;
use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Ollama's management routes strata does not serve.
const UNSUPPORTED: &[&str] = &[
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs/{digest}",
];

/// `router` with Ollama's routes.
pub fn add(mut router: Router<AppState>) -> Router<AppState> {
    router = router
        .route("/", get(root).head(root))
        .route("/api/chat", post(super::ollama::chat))
        .route("/api/generate", post(super::ollama::generate))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/version", get(version));
    for &route in UNSUPPORTED {
        router = router.route(
            route,
            any(|m: Method, uri: axum::http::Uri| async move {
                ollama_error(ApiError::not_supported(format!(
                    "{m} {}: Ollama's model management is not served by strata serve",
                    uri.path()
                )))
            }),
        );
    }
    router
}

async fn root() -> &'static str {
    "Ollama is running"
}

async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// The time as Ollama writes it: RFC 3339 in UTC with nanoseconds.
pub fn now() -> String {
    rfc3339(SystemTime::now())
}

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date of a day count (Howard Hinnant's days_from_civil, inverted).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// What the listing says of the served model.
struct Described {
    name: String,
    size: u64,
    digest: String,
    modified_at: String,
    details: Value,
    config: Option<ModelConfig>,
    params: u64,
}

fn describe(st: &AppState) -> Described {
    let dir = Path::new(&st.info.model_path);
    let config = ModelConfig::load(dir).ok();
    let config_text = std::fs::read(dir.join("config.json")).unwrap_or_default();
    let size = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let modified_at = std::fs::metadata(dir.join("config.json"))
        .and_then(|m| m.modified())
        .map(rfc3339)
        .unwrap_or_else(|_| now());
    let mut h = Sha256::new();
    h.update(st.info.model_path.as_bytes());
    h.update(&config_text);
    let digest = format!("{:x}", h.finalize());
    let params = config.as_ref().map(parameter_count).unwrap_or(0);
    let family = st.info.model_type.clone();
    let dtype = config.as_ref().map(|c| c.dtype.clone()).unwrap_or_default();
    Described {
        name: st.info.served_model_name.clone(),
        size,
        digest,
        modified_at,
        details: json!({"parent_model": "", "format": "safetensors", "family": family,
            "families": [family], "parameter_size": parameter_size(params),
            "quantization_level": quantization(&dtype)}),
        config,
        params,
    }
}

/// The weights a decoder of `c`'s shape holds (embedding, per layer attention, MLP and norms,
/// the final norm and an untied LM head).
fn parameter_count(c: &ModelConfig) -> u64 {
    let (h, hd) = (c.hidden_size as u64, c.head_dim as u64);
    let (q, kv) = (c.num_heads as u64 * hd, c.num_kv_heads as u64 * hd);
    let mut layer = h * (q + 2 * kv) + q * h + 3 * h * c.intermediate_size as u64 + 2 * h;
    if c.qkv_bias {
        layer += q + 2 * kv;
    }
    if c.qk_norm {
        layer += 2 * hd;
    }
    let embed = c.vocab_size as u64 * h;
    let head = if c.tie_word_embeddings { 0 } else { embed };
    embed + c.num_layers as u64 * layer + h + head
}

/// "1.2B", "135M": Ollama's parameter_size.
fn parameter_size(n: u64) -> String {
    match n {
        0 => "unknown".into(),
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n => format!("{:.0}K", n as f64 / 1e3),
    }
}

/// The checkpoint's dtype as Ollama's quantization level names it.
fn quantization(dtype: &str) -> &'static str {
    match dtype {
        "bfloat16" => "BF16",
        "float16" => "F16",
        "float32" => "F32",
        _ => "",
    }
}

fn entry(d: &Described) -> Value {
    json!({"name": d.name, "model": d.name, "modified_at": d.modified_at, "size": d.size,
        "digest": d.digest, "details": d.details})
}

async fn tags(State(st): State<AppState>) -> Json<Value> {
    Json(json!({"models": [entry(&describe(&st))]}))
}

async fn ps(State(st): State<AppState>) -> Json<Value> {
    let d = describe(&st);
    let mut e = entry(&d);
    // Loaded for as long as the server runs.
    e["expires_at"] = json!("2318-01-01T00:00:00Z");
    e["size_vram"] = json!(if st.info.backend.contains("cuda") {
        d.size
    } else {
        0
    });
    Json(json!({"models": [e]}))
}

async fn show(State(st): State<AppState>, body: axum::body::Bytes) -> Response {
    if !body.is_empty() {
        if let Err(e) = serde_json::from_slice::<Value>(&body) {
            return ollama_error(ApiError::bad_request(format!("invalid JSON body: {e}")));
        }
    }
    let d = describe(&st);
    let arch = st.info.model_type.clone();
    let ctx = st.info.context_length;
    let mut info = json!({"general.architecture": arch, "general.name": d.name,
        "general.parameter_count": d.params});
    info[format!("{arch}.context_length")] = json!(ctx);
    info[format!("{arch}.vocab_size")] = json!(st.info.vocab_size);
    if let Some(c) = &d.config {
        info[format!("{arch}.embedding_length")] = json!(c.hidden_size);
        info[format!("{arch}.feed_forward_length")] = json!(c.intermediate_size);
        info[format!("{arch}.block_count")] = json!(c.num_layers);
        info[format!("{arch}.attention.head_count")] = json!(c.num_heads);
        info[format!("{arch}.attention.head_count_kv")] = json!(c.num_kv_heads);
        info[format!("{arch}.attention.key_length")] = json!(c.head_dim);
    }
    let mut caps = vec!["completion"];
    if st.tool_call_parser.is_some() {
        caps.push("tools");
    }
    if st.reasoning_parser.is_some() {
        caps.push("thinking");
    }
    Json(json!({
        "license": "",
        "modelfile": format!("FROM {}\nPARAMETER num_ctx {ctx}\n", st.info.model_path),
        "parameters": format!("num_ctx {ctx}"),
        "template": st.tokenizer.chat_template.clone().unwrap_or_default(),
        "details": d.details,
        "model_info": info,
        "capabilities": caps,
        "modified_at": d.modified_at,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_writes_utc_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 5);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_800);
        assert_eq!(rfc3339(t), "2100-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn parameter_sizes_read_as_ollama_writes_them() {
        assert_eq!(parameter_size(1_235_814_400), "1.2B");
        assert_eq!(parameter_size(8_030_261_248), "8.0B");
        assert_eq!(parameter_size(135_000_000), "135M");
        assert_eq!(parameter_size(0), "unknown");
    }
}
