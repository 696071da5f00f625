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

use crate::admin;
use crate::error::{Result, RouterError};
use crate::metrics::ROUTES;
use crate::{conversations, pd, proxy, Router};

/// The request-id prefix of each route of [`metrics::ROUTES`].
const PREFIXES: [&str; ROUTES.len()] = [
    "gnt-",
    "cmpl-",
    "chatcmpl-",
    "embd-",
    "clsf-",
    "rrnk-",
    "resp-",
    "scor-",
    "msg-",
    "tok-",
    "detok-",
];

/// Forwards a request of route `route` (an index into [`ROUTES`]) to one worker. The
/// generate-style routes take the PD path in PD mode; the others need a regular worker (a
/// PD router has none: 503).
async fn handle(r: Arc<Router>, route: usize, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let path = ROUTES[route];
    let rid = proxy::request_id(&r, &headers, PREFIXES[route]);
    let fwd = proxy::worker_headers(&r, &headers, &rid);
    let res = if r.cfg.pd_disaggregation && route < 3 {
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

/// A handler forwarding to route `I` of [`ROUTES`].
async fn forward_to<const I: usize>(
    State(r): State<Arc<Router>>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    handle(r, I, h, b).await
}

/// `POST /v1/responses`: in a conversation when it names one (`conversations.rs`), else
/// forwarded as it is.
async fn responses(State(r): State<Arc<Router>>, h: HeaderMap, b: Bytes) -> Response {
    let Some((req, id)) = conversations::named(&b) else {
        return handle(r, 6, h, b).await;
    };
    let start = Instant::now();
    let rid = proxy::request_id(&r, &h, PREFIXES[6]);
    let fwd = proxy::worker_headers(&r, &h, &rid);
    let mut resp = conversations::respond_in(&r, req, id, fwd).await;
    r.metrics
        .record(6, resp.status().is_success(), start.elapsed());
    resp.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), rid);
    resp
}

/// `GET` / `DELETE /v1/responses/{id}` and `POST .../cancel`: the worker that stored the response
/// answers (each worker is asked in turn until one knows the id).
async fn stored_response(
    State(r): State<Arc<Router>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    proxy::find(&r, method.as_str(), uri.path())
        .await
        .unwrap_or_else(IntoResponse::into_response)
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
        .route("/v1/embeddings", post(forward_to::<3>))
        .route("/v1/classify", post(forward_to::<4>))
        .route("/v1/rerank", post(forward_to::<5>))
        .route("/rerank", post(forward_to::<5>))
        .route("/v1/responses", post(responses))
        .route("/v1/conversations", post(conversations::create))
        .route(
            "/v1/conversations/{id}",
            get(conversations::get)
                .post(conversations::update)
                .delete(conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/items",
            get(conversations::list_items).post(conversations::add_items),
        )
        .route(
            "/v1/conversations/{id}/items/{item}",
            get(conversations::get_item).delete(conversations::delete_item),
        )
        .route(
            "/v1/responses/{id}",
            get(stored_response).delete(stored_response),
        )
        .route("/v1/responses/{id}/cancel", post(stored_response))
        .route("/v1/score", post(forward_to::<7>))
        .route("/v1/messages", post(forward_to::<8>))
        .route("/v1/tokenize", post(forward_to::<9>))
        .route("/tokenize", post(forward_to::<9>))
        .route("/v1/detokenize", post(forward_to::<10>))
        .route("/detokenize", post(forward_to::<10>))
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
    let limit = router.cfg.max_payload_size;
    open.merge(api)
        .layer(DefaultBodyLimit::max(router.cfg.max_payload_size))
        .layer(middleware::map_response(move |r: Response| {
            crate::error::json_rejections(r, limit)
        }))
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

/// Serves `router` on `listeners`, one single-threaded runtime (and thread) per listener, until
/// a shutdown signal; then lets in-flight requests finish for at most `grace`.
///
/// Why a runtime per thread: with one connection, a multi-threaded runtime hands the request,
/// the worker reply and the answer between its threads (a wake-up on another core per hop),
/// which was most of the router's added latency on a small machine. Here a client connection,
/// its worker connections and every wake-up stay on one thread; the kernel spreads client
/// connections over the threads' `SO_REUSEPORT` listeners. Shared state (pools, load counts,
/// trees, metrics) is thread-safe as before.
pub async fn serve(
    router: Arc<Router>,
    listeners: Vec<std::net::TcpListener>,
    grace: Duration,
) -> Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<()>>();
    let threads = listeners.len();
    for (i, listener) in listeners.into_iter().enumerate() {
        let router = router.clone();
        let stop = stop_rx.clone();
        let done = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("router-{i}"))
            .spawn(move || {
                let r = serve_one(i, router, listener, stop);
                let _ = done.send(r);
            })?;
    }
    drop(done_tx);
    let mut finished = 0;
    tokio::select! {
        _ = shutdown_signal() => {}
        r = done_rx.recv() => {
            // A serving thread ended without being asked to: report why.
            r.unwrap_or(Ok(()))?;
            finished += 1;
        }
    }
    tracing::info!("shutting down; draining in-flight requests");
    let _ = stop_tx.send(true);
    let drained = async {
        while finished < threads {
            if done_rx.recv().await.is_none() {
                break;
            }
            finished += 1;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("grace period over; dropping remaining requests");
    }
    Ok(())
}

/// One serving thread: its own runtime, connection pool slot and listener.
fn serve_one(
    i: usize,
    router: Arc<Router>,
    listener: std::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    crate::client::set_pool_slot(i + 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app(router))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await
    })
}

/// `threads` listening sockets on `host:port`, all with `SO_REUSEPORT` so that the kernel spreads
/// connections over them. Fails like a plain bind when anything else holds the address (a
/// plain bind is tried first, so a second router with the same port is refused, not joined);
/// port 0 picks one free port for all of them.
pub async fn bind(host: &str, port: u16, threads: usize) -> Result<Vec<std::net::TcpListener>> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| RouterError::Config(format!("--host {host}: no address")))?;
    let addr = {
        let probe = std::net::TcpListener::bind(addr)?;
        probe.local_addr()?
    };
    let mut out = Vec::with_capacity(threads);
    for _ in 0..threads.max(1) {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(addr)?;
        out.push(sock.listen(1024)?.into_std()?);
    }
    Ok(out)
}
