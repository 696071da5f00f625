//! Regular-mode forwarding: pick a worker, send the body unchanged, retry retryable failures on
//! another worker with backoff, and pass the reply through (streamed chunk by chunk when the worker
//! streams).
//!
//! Invariants: a worker's load guard and the queue permit live until the reply body is finished or
//! dropped; only 5xx and connection failures are recorded against a worker's circuit; once a
//! reply has been handed to the client it is never retried.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;

use crate::client::{Reply, SendError};
use crate::error::{Result, RouterError};
use crate::policy::RouteKey;
use crate::request;
use crate::retry::{backoff, is_retryable, is_worker_failure};
use crate::worker::LoadGuard;
use crate::Router;

/// What a reply body holds on to until it ends.
#[derive(Debug, Default)]
pub struct Held {
    pub loads: Vec<LoadGuard>,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A body stream that keeps [`Held`] alive for as long as it is read.
pub struct Guarded<S> {
    inner: S,
    _held: Held,
}

impl<S: Stream + Unpin> Stream for Guarded<S> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Turns a worker reply into the client's reply: a small complete body as is, anything else
/// streamed piece by piece as it arrives.
pub async fn passthrough(reply: Reply, held: Held) -> Response {
    let status = reply.status;
    let mut headers = HeaderMap::with_capacity(reply.headers.len());
    for (k, v) in &reply.headers {
        if !matches!(
            k.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "date"
                | "server"
                | "content-length"
        ) {
            headers.append(k.clone(), v.clone());
        }
    }
    let body = if reply.is_full() {
        match reply.bytes().await {
            Ok(b) => Body::from(b),
            Err(_) => return upstream("reply cut").into_response(),
        }
    } else {
        Body::from_stream(Guarded {
            inner: reply.into_stream(),
            _held: held,
        })
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

fn upstream(why: &str) -> RouterError {
    RouterError::Upstream {
        attempts: 1,
        last: why.into(),
    }
}

/// Headers sent to workers: the content type, the request id, and the api key when configured
/// (else the client's own Authorization).
pub fn worker_headers(r: &Router, client: &HeaderMap, rid: &HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(4);
    let ct = client.get(header::CONTENT_TYPE).cloned();
    h.insert(
        header::CONTENT_TYPE,
        ct.unwrap_or(HeaderValue::from_static("application/json")),
    );
    h.insert(HeaderName::from_static("x-request-id"), rid.clone());
    if let Some(v) = &r.auth_header {
        h.insert(header::AUTHORIZATION, v.clone());
    } else if let Some(v) = client.get(header::AUTHORIZATION) {
        h.insert(header::AUTHORIZATION, v.clone());
    }
    h
}

/// The request id: the first configured request-id header the client sent, else a new one.
pub fn request_id(r: &Router, headers: &HeaderMap, prefix: &str) -> HeaderValue {
    for name in &r.cfg.request_id_headers {
        if let Some(v) = headers.get(name.as_str()) {
            return v.clone();
        }
    }
    let id = format!("{prefix}{:024x}", rand::random::<u128>() >> 32);
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Takes a queue permit when a concurrency limit is set.
pub async fn admit(r: &Router) -> Result<Option<OwnedSemaphorePermit>> {
    let Some(l) = &r.limiter else { return Ok(None) };
    match l.acquire().await {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            r.metrics
                .queue_rejections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(e)
        }
    }
}

/// Forwards one generate-style request in regular mode.
pub async fn forward(r: &Router, path: &str, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let permit = admit(r).await?;
    let pool = &r.regular;
    let probe = if pool.policy.needs_key() {
        Some(request::probe(&body, true)?)
    } else {
        None
    };
    let key = probe
        .as_ref()
        .map(|p| RouteKey {
            text: p.text.as_deref(),
            ids: p.ids.as_deref(),
        })
        .unwrap_or_default();
    let attempts = r.cfg.retry.max_retries;
    let mut tried = Vec::new();
    for attempt in 0..attempts {
        let last = attempt + 1 == attempts;
        let worker = pool.pick(&key, &tried).ok_or(RouterError::NoWorkers)?;
        let load = LoadGuard::new(worker.clone());
        let url = format!("{}{path}", worker.url);
        let ranked;
        let sent_body: &[u8] = match worker.dp_rank {
            Some(rank) => {
                ranked = request::inject(&body, &format!(r#""data_parallel_rank":{rank}"#))?;
                &ranked
            }
            None => &body,
        };
        let sent = r
            .client
            .send("POST", &url, &headers, sent_body, r.request_timeout)
            .await;
        let why = match sent {
            Ok(resp) => {
                let status = resp.status.as_u16();
                worker
                    .circuit
                    .record(!is_worker_failure(status), Instant::now());
                if !is_retryable(status) || last {
                    return Ok(passthrough(
                        resp,
                        Held {
                            loads: vec![load],
                            permit,
                        },
                    )
                    .await);
                }
                format!("worker replied {status}")
            }
            Err(e) => {
                worker.circuit.record(false, Instant::now());
                tracing::debug!(url = %worker.url, error = %e, "worker request failed");
                if last {
                    return Err(if matches!(e, SendError::Timeout) {
                        RouterError::UpstreamTimeout
                    } else {
                        RouterError::Upstream {
                            attempts,
                            last: "worker unreachable".into(),
                        }
                    });
                }
                "worker unreachable".to_string()
            }
        };
        drop(load);
        tried.push(worker.id);
        r.metrics
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let delay = backoff(&r.cfg.retry, attempt, &mut *r.rng.lock());
        tracing::debug!(attempt, ?delay, why, "retrying");
        tokio::time::sleep(delay).await;
    }
    Err(RouterError::NoWorkers)
}

/// GETs `path` from the first healthy worker of the serving pools and passes the reply through.
pub async fn get_first(r: &Router, path: &str) -> Result<Response> {
    let workers = r.serving_workers();
    let w = workers
        .iter()
        .find(|w| w.is_healthy())
        .ok_or(RouterError::NoWorkers)?;
    let url = format!("{}{path}", w.url);
    let resp = r
        .client
        .send("GET", &url, &r.auth_only(), b"", r.request_timeout)
        .await
        .map_err(|_| upstream("worker unreachable"))?;
    Ok(passthrough(resp, Held::default()).await)
}

/// Sends `method path` (no body) to each healthy serving worker in turn and passes through the
/// first reply that is not a 404 (the worker that holds the object), else the last 404.
pub async fn find(r: &Router, method: &str, path: &str) -> Result<Response> {
    let auth = r.auth_only();
    let mut last = None;
    for w in r.serving_workers().iter().filter(|w| w.is_healthy()) {
        let url = format!("{}{path}", w.url);
        let Ok(reply) = r
            .client
            .send(method, &url, &auth, b"", r.request_timeout)
            .await
        else {
            continue;
        };
        if reply.status != StatusCode::NOT_FOUND {
            return Ok(passthrough(reply, Held::default()).await);
        }
        last = Some(reply);
    }
    match last {
        Some(reply) => Ok(passthrough(reply, Held::default()).await),
        None => Err(RouterError::NoWorkers),
    }
}

/// Sends `method path` to every worker (once per server: replicas share theirs); 200 with
/// per-worker results when all succeed, else 500.
pub async fn fan_out(r: &Router, method: &str, path: &str) -> Response {
    let mut workers = r.all_workers();
    workers.retain(|w| w.dp_rank.unwrap_or(0) == 0);
    let auth = r.auth_only();
    let calls = workers.iter().map(|w| {
        let url = format!("{}{path}", w.url);
        let auth = &auth;
        async move {
            let ok = match r
                .client
                .send(method, &url, auth, b"", r.request_timeout)
                .await
            {
                Ok(reply) => reply.status.is_success() && reply.bytes().await.is_ok(),
                Err(_) => false,
            };
            serde_json::json!({ "url": w.url, "success": ok })
        }
    });
    let results = futures::future::join_all(calls).await;
    let all_ok = results.iter().all(|v| v["success"] == true);
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let body = serde_json::json!({ "success": all_ok, "workers": results });
    (status, axum::Json(body)).into_response()
}
