//! Router tests against in-process mock workers: `oneshot` where no socket is needed, a real
//! listener where streaming, timing or disconnects matter.

mod admin;
mod mock;
mod pd;
mod regular;
mod resilience;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use crate::config::{PolicyKind, PrefillSpec, RouterConfig};
use crate::Router;

/// A regular-mode config over `urls` with fast retries and no background health checks.
pub fn regular(urls: &[&str], policy: PolicyKind) -> RouterConfig {
    let mut c = RouterConfig {
        worker_urls: urls.iter().map(|u| u.to_string()).collect(),
        policy,
        ..Default::default()
    };
    c.retry.initial_backoff_ms = 1;
    c.retry.max_backoff_ms = 5;
    c.health.disabled = true;
    c
}

/// A PD config: `prefill` as (url, bootstrap port), `decode` urls.
pub fn pd(prefill: &[(&str, Option<u16>)], decode: &[&str], policy: PolicyKind) -> RouterConfig {
    let mut c = regular(&[], policy);
    c.pd_disaggregation = true;
    c.prefill = prefill
        .iter()
        .map(|(u, p)| PrefillSpec {
            url: u.to_string(),
            bootstrap_port: *p,
        })
        .collect();
    c.decode = decode.iter().map(|u| u.to_string()).collect();
    c
}

pub fn router(cfg: RouterConfig) -> Arc<Router> {
    let seed = 12345;
    println!("router seed {seed}");
    Router::new(cfg.validate().unwrap(), seed).unwrap()
}

/// Sends one request through `app` without a socket; returns status, headers and body.
pub async fn call(
    r: &Arc<Router>,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = match body {
        Some(v) => Body::from(serde_json::to_vec(&v).unwrap()),
        None => Body::empty(),
    };
    let resp = crate::app::app(r.clone())
        .oneshot(b.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, headers, bytes.to_vec())
}

pub fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not json: {}", String::from_utf8_lossy(b)))
}

/// Serves `r` on a real socket; returns its base URL.
pub async fn listen(r: &Arc<Router>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = crate::app::app(r.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// Polls `f` for up to `secs` seconds.
pub async fn eventually(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    f()
}
