//! In-process mock workers for the router tests: axum on 127.0.0.1:0 with configurable latency,
//! failure rate (seeded), health, streaming and a record of every request body and header seen.
//!
//! Generate-style replies are deterministic: `{"text":"<name>","worker":"<name>","meta_info":
//! {"input_token_logprobs":[[<n>]]}}`, or for `"stream": true` a fixed SSE sequence, so that
//! pass-through can be compared byte for byte. A handler that is dropped before its latency
//! elapses (the router cancelled it) counts in `cancelled`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Opts {
    pub latency: Duration,
    /// Fraction of generate requests answered with `fail_status`.
    pub fail_rate: f64,
    pub fail_status: u16,
    pub chunks: usize,
    pub chunk_delay: Duration,
    pub seed: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fail_status: 500,
            chunks: 3,
            chunk_delay: Duration::ZERO,
            seed: 1,
        }
    }
}

#[derive(Debug)]
pub struct MockState {
    pub name: String,
    pub opts: Mutex<Opts>,
    pub healthy: AtomicBool,
    rng: Mutex<StdRng>,
    pub bodies: Mutex<Vec<Value>>,
    pub headers: Mutex<Vec<HeaderMap>>,
    pub hits: AtomicUsize,
    pub cancelled: AtomicUsize,
    pub completed: AtomicUsize,
    pub flushes: AtomicUsize,
    /// The `dp_size` its `/get_server_info` reports.
    pub dp_size: AtomicUsize,
}

impl MockState {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
    pub fn set_fail(&self, rate: f64, status: u16) {
        let mut o = self.opts.lock();
        o.fail_rate = rate;
        o.fail_status = status;
    }
    pub fn last_body(&self) -> Value {
        self.bodies.lock().last().cloned().unwrap_or(Value::Null)
    }
}

pub struct Mock {
    pub url: String,
    pub s: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct CancelGuard<'a>(&'a MockState, bool);

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        let c = if self.1 {
            &self.0.completed
        } else {
            &self.0.cancelled
        };
        c.fetch_add(1, Ordering::SeqCst);
    }
}

/// The SSE bytes a mock named `name` streams for `chunks` chunks.
pub fn sse_chunk(name: &str, i: usize) -> String {
    format!("data: {{\"text\":\"{name}-{i}\",\"index\":{i}}}\n\n")
}

async fn generate(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.bodies.lock().push(v.clone());
    s.headers.lock().push(headers);
    let opts = s.opts.lock().clone();
    let mut guard = CancelGuard(&s, false);
    tokio::time::sleep(opts.latency).await;
    guard.1 = true;
    drop(guard);
    let fail = opts.fail_rate > 0.0 && s.rng.lock().random_bool(opts.fail_rate.min(1.0));
    if fail {
        let status = StatusCode::from_u16(opts.fail_status).unwrap();
        return (
            status,
            axum::Json(json!({"error": {"message": "mock failure"}})),
        )
            .into_response();
    }
    if v["stream"] == true {
        let name = s.name.clone();
        let delay = opts.chunk_delay;
        let n = opts.chunks;
        let stream = futures::stream::unfold(0usize, move |i| {
            let name = name.clone();
            async move {
                if i > n {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(delay).await;
                }
                let chunk = if i == n {
                    "data: [DONE]\n\n".to_string()
                } else {
                    sse_chunk(&name, i)
                };
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), i + 1))
            }
        });
        return (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(stream),
        )
            .into_response();
    }
    let reply = json!({
        "text": s.name,
        "worker": s.name,
        "meta_info": {"id": "x", "input_token_logprobs": [[s.hits()]]},
    });
    axum::Json(reply).into_response()
}

async fn health(State(s): State<Arc<MockState>>) -> StatusCode {
    if s.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn info(State(s): State<Arc<MockState>>) -> axum::Json<Value> {
    let dp = s.dp_size.load(Ordering::SeqCst);
    axum::Json(json!({"model_path": "mock", "worker": s.name, "dp_size": dp}))
}

async fn flush(State(s): State<Arc<MockState>>) -> &'static str {
    s.flushes.fetch_add(1, Ordering::SeqCst);
    "flushed"
}

impl Mock {
    pub async fn start(name: &str, opts: Opts) -> Mock {
        let s = Arc::new(MockState {
            name: name.to_string(),
            rng: Mutex::new(StdRng::seed_from_u64(opts.seed)),
            opts: Mutex::new(opts),
            healthy: AtomicBool::new(true),
            bodies: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            flushes: AtomicUsize::new(0),
            dp_size: AtomicUsize::new(1),
        });
        let app = axum::Router::new()
            .route("/generate", post(generate))
            .route("/v1/completions", post(generate))
            .route("/v1/chat/completions", post(generate))
            .route("/health", get(health))
            .route("/health_generate", get(health))
            .route("/v1/models", get(info))
            .route("/get_model_info", get(info))
            .route("/get_server_info", get(info))
            .route("/flush_cache", post(flush))
            .with_state(s.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Mock { url, s, task }
    }

    pub async fn ok(name: &str) -> Mock {
        Self::start(name, Opts::default()).await
    }
}
