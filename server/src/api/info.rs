//! Small endpoints: health, model and server information, cache flush, abort.

use super::driver::Driver;
use super::error::{parse_body, ApiError};
use super::AppState;
use crate::sampling::SamplingParams;
use crate::stats::Stats;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

pub async fn health() -> StatusCode {
    StatusCode::OK
}

/// Runs a one-token generation through the whole stack. Greedy, so that under `--random-seed`
/// it draws no seed and health checks do not change the sampled requests' outputs.
pub async fn health_generate(State(st): State<AppState>) -> Result<StatusCode, ApiError> {
    let mut params = SamplingParams {
        max_new_tokens: 1,
        ..SamplingParams::default()
    };
    params.sample.temperature = 0.0;
    let first = st.info.vocab_size.min(1) as u32;
    let mut d = if st.info.is_embedding {
        // An embedding server's probe is an embedding request (as SGLang's).
        Driver::submit_embed(&st, vec![first], None)?
    } else {
        Driver::submit(&st, vec![first], params, None, None)?
    };
    let run = d.run_to_end();
    match tokio::time::timeout(std::time::Duration::from_secs(20), run).await {
        Ok(_) if d.out.ids.len() == 1 || d.out.embedding.is_some() => Ok(StatusCode::OK),
        _ => Err(ApiError::unavailable("The generation health check failed.")),
    }
}

pub async fn models(State(st): State<AppState>) -> Json<Value> {
    let mut data = vec![json!({
        "id": st.info.served_model_name, "object": "model", "created": 0, "owned_by": "sglang",
        "root": st.info.model_path, "max_model_len": st.info.context_length})];
    data.extend(super::lora::model_entries(&st));
    Json(json!({"object": "list", "data": data}))
}

pub async fn model_info(State(st): State<AppState>) -> Json<Value> {
    let served = st.served.read().expect("served").clone();
    Json(json!({
        "model_path": served.model_path, "tokenizer_path": st.info.model_path, "is_generation": !st.info.is_embedding,
        "preferred_sampling_params": st.info.preferred_sampling_params.as_ref().map(|p| &p.text), "weight_version": served.version, "has_image_understanding": false,
        "has_audio_understanding": false, "model_type": st.info.model_type, "architectures": st.info.architectures,
    }))
}

/// The GPUs NVML sees (name, memory, utilisation); empty without NVML (no driver, CPU machine).
pub async fn gpus() -> Vec<strata_kernels::cuda::GpuInfo> {
    tokio::task::spawn_blocking(|| strata_kernels::cuda::gpu_inventory().unwrap_or_default())
        .await
        .unwrap_or_default()
}

pub async fn server_info(State(st): State<AppState>) -> Json<Value> {
    let s = &st.stats;
    let mut v = st.info.server_args.clone();
    let gpus: Vec<Value> = gpus()
        .await
        .into_iter()
        .map(|g| {
            json!({
                "index": g.index,
                "name": g.name,
                "memory_total_bytes": g.memory_total,
                "memory_used_bytes": g.memory_used,
                "utilization_percent": g.utilization_percent,
            })
        })
        .collect();
    let extra = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backend": st.info.backend,
        "gpus": gpus,
        "max_total_num_tokens": st.info.max_total_tokens,
        "internal_states": [{
            "num_running_reqs": Stats::get(&s.running),
            "num_waiting_reqs": Stats::get(&s.waiting),
            "total_pages": Stats::get(&s.total_pages),
            "free_pages": Stats::get(&s.free_pages),
            "cached_pages": Stats::get(&s.cached_pages),
            "retractions": Stats::get(&s.retractions),
            "last_gen_throughput": Stats::get(&s.gen_throughput_milli) as f64 / 1000.0,
        }],
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    Json(v)
}

/// `GET /get_load`: SGLang's per-replica load, one entry per data-parallel rank: unfinished
/// requests, those of them waiting for admission, and their tokens (prompt + `max_new_tokens`).
pub async fn get_load(State(st): State<AppState>) -> Json<Value> {
    let loads: Vec<Value> = st
        .scheduler
        .loads()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            json!({"dp_rank": i, "num_reqs": l.requests(), "num_waiting_reqs": l.waiting(),
                "num_tokens": l.tokens()})
        })
        .collect();
    Json(Value::Array(loads))
}

pub async fn flush_cache(State(st): State<AppState>) -> Response {
    if st.scheduler.flush().await {
        (StatusCode::OK, "Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting requests, the operation will not be performed.)\n").into_response()
    } else {
        ApiError::bad_request("Cache not flushed: requests are running.").into_response()
    }
}

/// `/clear_hicache_storage_backend`: removes every page from the L3 store.
pub async fn clear_hicache_storage(State(st): State<AppState>) -> Response {
    match st.scheduler.clear_storage().await {
        Ok(()) => (
            StatusCode::OK,
            "Hierarchical cache storage backend cleared.\n",
        )
            .into_response(),
        Err(e) => ApiError::bad_request(format!(
            "Hierarchical cache storage backend not cleared: {e}"
        ))
        .into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortWire {
    #[serde(default)]
    rid: String,
    #[serde(default)]
    abort_all: bool,
}

pub async fn abort_request(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let w: AbortWire = parse_body(&body)?;
    if w.abort_all {
        st.scheduler.abort("");
    } else if w.rid.is_empty() {
        return Err(ApiError::bad_request(
            "`rid` is required unless `abort_all` is true.",
        ));
    } else {
        st.scheduler.abort(&w.rid);
    }
    Ok(StatusCode::OK)
}
