//! Handlers that are not request forwarding: liveness/readiness, loads, info passthrough, cache
//! flush fan-out, and worker management (`/workers`, `/add_worker`, `/remove_worker`,
//! `/list_workers`).
//!
//! A worker added at run time must answer its health endpoint within
//! `--worker-startup-timeout-secs` before it receives traffic, as at start-up.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::config::normalize_url;
use crate::error::{Result, RouterError};
use crate::health::wait_healthy;
use crate::proxy::{fan_out, get_first};
use crate::worker::{Worker, WorkerKind};
use crate::Router;

type S = State<Arc<Router>>;

pub async fn liveness() -> &'static str {
    "OK"
}

pub async fn readiness(State(r): S) -> Response {
    let body = json!({
        "status": if r.is_ready() { "ready" } else { "not ready" },
        "healthy_workers": r.all_workers().iter().filter(|w| w.is_healthy()).count(),
        "total_workers": r.all_workers().len(),
    });
    let status = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn health_generate(State(r): S) -> Result<Response> {
    if !r.cfg.pd_disaggregation {
        return get_first(&r, "/health_generate").await;
    }
    for pool in [&r.prefill, &r.decode] {
        let snap = pool.snapshot();
        let w = snap
            .iter()
            .find(|w| w.is_healthy())
            .ok_or(RouterError::NoWorkers)?;
        let url = format!("{}/health_generate", w.url);
        let reply = r
            .client
            .send("GET", &url, &r.auth_only(), b"", r.request_timeout)
            .await;
        let ok = match reply {
            Ok(reply) => reply.status.is_success() && reply.bytes().await.is_ok(),
            Err(_) => false,
        };
        if !ok {
            return Err(RouterError::Upstream {
                attempts: 1,
                last: "health_generate failed".into(),
            });
        }
    }
    Ok("OK".into_response())
}

pub async fn info(State(r): S, uri: axum::http::Uri) -> Result<Response> {
    get_first(&r, uri.path()).await
}

pub async fn flush_cache(State(r): S) -> Response {
    fan_out(&r, "POST", "/flush_cache").await
}

pub async fn get_loads(State(r): S) -> Json<serde_json::Value> {
    let workers: Vec<_> = r
        .all_workers()
        .iter()
        .map(|w| json!({ "worker": w.name(), "worker_type": w.kind.name(), "load": w.load() }))
        .collect();
    Json(json!({ "workers": workers }))
}

#[derive(Debug, Deserialize)]
pub struct AddWorker {
    pub url: String,
    #[serde(default)]
    pub worker_type: Option<String>,
    #[serde(default)]
    pub bootstrap_port: Option<u16>,
}

fn kind_of(r: &Router, req: &AddWorker) -> Result<WorkerKind> {
    match (req.worker_type.as_deref(), r.cfg.pd_disaggregation) {
        (None | Some("regular"), false) => Ok(WorkerKind::Regular),
        (Some("prefill"), true) => Ok(WorkerKind::Prefill {
            bootstrap_port: req.bootstrap_port,
        }),
        (Some("decode"), true) => Ok(WorkerKind::Decode),
        (t, pd) => Err(RouterError::BadRequest(format!(
            "worker_type {t:?} does not fit {} mode",
            if pd { "PD (prefill|decode)" } else { "regular" }
        ))),
    }
}

async fn add(r: &Router, req: AddWorker) -> Result<Response> {
    let url = normalize_url(&req.url).map_err(|e| RouterError::BadRequest(e.to_string()))?;
    let kind = kind_of(r, &req)?;
    if r.all_workers().iter().any(|w| w.url == url) {
        return Err(RouterError::WorkerExists(url));
    }
    let timeout = Duration::from_secs(r.cfg.worker_startup_timeout_secs);
    let step = Duration::from_secs(r.cfg.worker_startup_check_interval);
    wait_healthy(
        &r.client,
        &r.auth_only(),
        std::slice::from_ref(&url),
        &r.cfg.health,
        timeout,
        step,
    )
    .await?;
    let w = Worker::new(url.clone(), kind, &r.cfg.circuit);
    if !r.pool(kind).add(w.clone()) {
        return Err(RouterError::WorkerExists(url));
    }
    tracing::info!(url = %w.url, kind = kind.name(), "worker added");
    r.expand_dp_ranks().await;
    Ok((
        StatusCode::OK,
        Json(json!({ "status": "added", "worker": w.json() })),
    )
        .into_response())
}

fn remove(r: &Router, url: &str) -> Result<Response> {
    let url = url.trim_end_matches('/');
    for pool in [&r.regular, &r.prefill, &r.decode] {
        if pool.remove(url).is_some() {
            tracing::info!(url, "worker removed");
            return Ok(Json(json!({ "status": "removed", "url": url })).into_response());
        }
    }
    Err(RouterError::NotFound(format!("worker {url}")))
}

/// Takes the JSON body whatever its Content-Type, as scripts often omit it.
pub async fn workers_post(State(r): S, body: bytes::Bytes) -> Result<Response> {
    let req: AddWorker = serde_json::from_slice(&body)
        .map_err(|e| RouterError::BadRequest(format!("invalid worker spec: {e}")))?;
    add(&r, req).await
}

pub async fn workers_list(State(r): S) -> Json<serde_json::Value> {
    let all: Vec<_> = r.all_workers().iter().map(|w| w.json()).collect();
    Json(json!({ "total": all.len(), "workers": all }))
}

pub async fn workers_delete(State(r): S, Path(url): Path<String>) -> Result<Response> {
    remove(&r, &url)
}

pub async fn add_worker(State(r): S, Query(req): Query<AddWorker>) -> Result<Response> {
    add(&r, req).await
}

#[derive(Debug, Deserialize)]
pub struct UrlQuery {
    url: String,
}

pub async fn remove_worker(State(r): S, Query(q): Query<UrlQuery>) -> Result<Response> {
    remove(&r, &q.url)
}

pub async fn list_workers(State(r): S) -> Json<serde_json::Value> {
    let urls: Vec<_> = r.all_workers().iter().map(|w| w.name()).collect();
    Json(json!({ "urls": urls }))
}
