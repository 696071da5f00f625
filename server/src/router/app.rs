//! The HTTP surface: `fn app(router) -> axum::Router`, the generate-style handlers, the api-key
//! layer, and serving with graceful shutdown.
//!
//! With `--api-key`, every route except `/health`, `/liveness` and `/readiness` needs
//! `Authorization: Bearer <key>`. Every generate-style reply carries `x-request-id`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderName};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;

use crate::router::admin;
use crate::router::error::{Result, RouterError};
use crate::router::{pd, proxy, Router};

async fn handle(r: Arc<Router>, route: usize, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let (path, prefix) = match route {
        0 => ("/generate", "gnt-"),
        1 => ("/v1/completions", "cmpl-"),
        _ => ("/v1/chat/completions", "chatcmpl-"),
    };
    let rid = proxy::request_id(&r, &headers, prefix);
    let fwd = proxy::worker_headers(&r, &headers, &rid);
    let res = if r.cfg.pd_disaggregation {
        pd::forward(&r, path, fwd, body).await
    } else {
        proxy::forward(&r, path, fwd, body).await
    };
    let mut resp = res.unwrap_or_else(IntoResponse::into_response);
    r.metrics
        .record(route, resp.status().is_success(), start.elapsed());
    resp.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), rid);
    resp
}

async fn generate(State(r): State<Arc<Router>>, h: HeaderMap, b: Bytes) -> Response {
    handle(r, 0, h, b).await
}

async fn completions(State(r): State<Arc<Router>>, h: HeaderMap, b: Bytes) -> Response {
    handle(r, 1, h, b).await
}

async fn chat(State(r): State<Arc<Router>>, h: HeaderMap, b: Bytes) -> Response {
    handle(r, 2, h, b).await
}

async fn require_key(State(r): State<Arc<Router>>, req: Request, next: Next) -> Response {
    let want = r.auth_header.as_ref().map(|v| v.as_bytes());
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if want.is_some() && want != got {
        return RouterError::Unauthorized.into_response();
    }
    next.run(req).await
}

async fn not_found(uri: axum::http::Uri) -> RouterError {
    RouterError::NotFound(uri.path().to_string())
}

/// All routes of the router.
pub fn app(router: Arc<Router>) -> axum::Router {
    let mut api = axum::Router::new()
        .route("/generate", post(generate))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(admin::info))
        .route("/get_model_info", get(admin::info))
        .route("/get_server_info", get(admin::info))
        .route("/flush_cache", post(admin::flush_cache))
        .route("/health_generate", get(admin::health_generate))
        .route("/get_loads", get(admin::get_loads))
        .route(
            "/workers",
            post(admin::workers_post).get(admin::workers_list),
        )
        .route("/workers/{*url}", delete(admin::workers_delete))
        .route("/add_worker", post(admin::add_worker))
        .route("/remove_worker", post(admin::remove_worker))
        .route("/list_workers", get(admin::list_workers))
        .fallback(not_found);
    if router.auth_header.is_some() {
        api = api.layer(middleware::from_fn_with_state(router.clone(), require_key));
    }
    let open = axum::Router::new()
        .route("/health", get(admin::liveness))
        .route("/liveness", get(admin::liveness))
        .route("/readiness", get(admin::readiness));
    open.merge(api)
        .layer(DefaultBodyLimit::max(router.cfg.max_payload_size))
        .with_state(router)
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Serves `router` on `listener` until a shutdown signal, then lets in-flight requests finish for
/// at most `grace`.
pub async fn serve(
    router: Arc<Router>,
    listener: tokio::net::TcpListener,
    grace: Duration,
) -> Result<()> {
    use axum::serve::ListenerExt;
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app(router)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down; draining in-flight requests");
        let _ = tx.send(true);
    });
    tokio::select! {
        r = std::future::IntoFuture::into_future(server) => r?,
        _ = async {
            let _ = rx.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("grace period over; dropping remaining requests"),
    }
    Ok(())
}
