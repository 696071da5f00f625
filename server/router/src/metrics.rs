//! Prometheus metrics in the text exposition format, kept in atomics (no registry, no locks on the
//! request path) and served on `--prometheus-host:--prometheus-port` at `/metrics`.
//!
//! Names follow sglang-router's `sgl_router_*` so existing dashboards keep working. Per-worker
//! gauges are read from the pools at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Router;

/// Routes with their own request counters: the three generate-style routes (PD mode splits
/// them), then the single-worker forwards (embeddings, classification, rerank, Responses,
/// scoring, Anthropic messages, the tokenizer).
pub const ROUTES: [&str; 11] = [
    "/generate",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/classify",
    "/v1/rerank",
    "/v1/responses",
    "/v1/score",
    "/v1/messages",
    "/v1/tokenize",
    "/v1/detokenize",
];

/// Upper bounds (seconds) of the request duration histogram.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; ROUTES.len()],
    errors: [AtomicU64; ROUTES.len()],
    pub retries: AtomicU64,
    pub pd_requests: AtomicU64,
    pub queue_rejections: AtomicU64,
    hist: [AtomicU64; BUCKETS.len()],
    hist_count: AtomicU64,
    hist_sum_us: AtomicU64,
}

fn c(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    /// Counts a finished request on route `route` (an index into [`ROUTES`]).
    pub fn record(&self, route: usize, ok: bool, took: Duration) {
        self.requests[route].fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors[route].fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|&ub| secs <= ub) {
            self.hist[b].fetch_add(1, Ordering::Relaxed);
        }
        self.hist_count.fetch_add(1, Ordering::Relaxed);
        self.hist_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn requests(&self, route: usize) -> u64 {
        c(&self.requests[route])
    }
}

/// Renders every metric of `router`.
pub fn render(router: &Router) -> String {
    let m = &router.metrics;
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "# TYPE sgl_router_requests_total counter");
    for (i, r) in ROUTES.iter().enumerate() {
        let _ = writeln!(
            out,
            "sgl_router_requests_total{{route=\"{r}\"}} {}",
            c(&m.requests[i])
        );
    }
    let _ = writeln!(out, "# TYPE sgl_router_request_errors_total counter");
    for (i, r) in ROUTES.iter().enumerate() {
        let _ = writeln!(
            out,
            "sgl_router_request_errors_total{{route=\"{r}\"}} {}",
            c(&m.errors[i])
        );
    }
    let _ = writeln!(out, "# TYPE sgl_router_retries_total counter");
    let _ = writeln!(out, "sgl_router_retries_total {}", c(&m.retries));
    let _ = writeln!(out, "# TYPE sgl_router_pd_requests_total counter");
    let _ = writeln!(out, "sgl_router_pd_requests_total {}", c(&m.pd_requests));
    let _ = writeln!(out, "# TYPE sgl_router_queue_rejections_total counter");
    let _ = writeln!(
        out,
        "sgl_router_queue_rejections_total {}",
        c(&m.queue_rejections)
    );
    let _ = writeln!(out, "# TYPE sgl_router_generate_duration_seconds histogram");
    let mut cum = 0;
    for (i, ub) in BUCKETS.iter().enumerate() {
        cum += c(&m.hist[i]);
        let _ = writeln!(
            out,
            "sgl_router_generate_duration_seconds_bucket{{le=\"{ub}\"}} {cum}"
        );
    }
    let count = c(&m.hist_count);
    let _ = writeln!(
        out,
        "sgl_router_generate_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let sum = c(&m.hist_sum_us) as f64 / 1e6;
    let _ = writeln!(out, "sgl_router_generate_duration_seconds_sum {sum}");
    let _ = writeln!(out, "sgl_router_generate_duration_seconds_count {count}");
    let workers = router.all_workers();
    for (name, help) in [
        ("sgl_router_worker_load", "requests in flight"),
        ("sgl_router_worker_healthy", "1 when healthy"),
        ("sgl_router_cb_state", "0 closed, 1 open, 2 half-open"),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for w in workers.iter() {
            let v = match name {
                "sgl_router_worker_load" => w.load() as u64,
                "sgl_router_worker_healthy" => w.is_healthy() as u64,
                _ => w.circuit.state() as u64,
            };
            let kind = w.kind.name();
            let _ = writeln!(out, "{name}{{worker=\"{}\",type=\"{kind}\"}} {v}", w.name());
        }
    }
    out
}

/// Serves `/metrics` for `router` until the process exits.
pub async fn serve(router: std::sync::Arc<Router>, listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let r = router.clone();
            async move { render(&r) }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}
