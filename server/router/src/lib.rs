//! strata-router, the router (`strata router`): an HTTP front for SGLang-compatible workers, in
//! regular mode (`--worker-urls`) or prefill/decode disaggregated mode (`--pd-disaggregation`).
//!
//! Layout: `config` (flags and defaults), `policy/` + `tree` (where a request goes), `worker`
//! (workers, pools, load accounting), `health` / `circuit` / `retry` / `queue` (resilience),
//! `request` (reading and rewriting bodies), `proxy` (regular forwarding), `pd` (PD forwarding),
//! `admin` (worker management), `conversations` (OpenAI conversations), `app` (the axum routes), `metrics`, `error` (the one error type
//! and its HTTP shape). [`Router`] is the shared state; [`run`] is what the command calls.

pub mod admin;
pub mod app;
pub mod circuit;
pub mod client;
pub mod config;
pub mod conversations;
pub mod error;
pub mod health;
pub mod metrics;
pub mod pd;
pub mod policy;
pub mod proxy;
pub mod queue;
pub mod request;
pub mod retry;
pub mod tree;
pub mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use config::RouterConfig;
pub use error::{Result, RouterError};

use worker::{Pool, Worker, WorkerKind};

/// Shared state of a running router.
#[derive(Debug)]
pub struct Router {
    pub cfg: RouterConfig,
    pub regular: Pool,
    pub prefill: Pool,
    pub decode: Pool,
    pub client: client::Client,
    pub limiter: Option<queue::Limiter>,
    pub metrics: metrics::Metrics,
    pub request_timeout: Duration,
    /// `Authorization: Bearer <api key>` sent to workers, when `--api-key` is set.
    pub auth_header: Option<HeaderValue>,
    /// Jitter for retry backoff.
    pub rng: Mutex<SmallRng>,
    /// OpenAI conversations (`conversations.rs`).
    pub conversations: conversations::Conversations,
}

impl Router {
    /// Builds the router from a validated config, with every configured worker marked healthy.
    /// `seed` drives the random policies and backoff jitter.
    pub fn new(cfg: RouterConfig, seed: u64) -> Result<Arc<Self>> {
        let ca = &cfg.cache_aware;
        let main = cfg.policy;
        let client = client::Client::default();
        let limiter = cfg.max_concurrent_requests.map(|n| {
            queue::Limiter::new(
                n,
                cfg.queue_size,
                Duration::from_secs(cfg.queue_timeout_secs),
            )
        });
        let auth_header =
            match &cfg.api_key {
                Some(k) => Some(HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    RouterError::Config("--api-key: not a valid header value".into())
                })?),
                None => None,
            };
        let r = Self {
            regular: Pool::new(policy::build(main, ca, seed)),
            prefill: Pool::new(policy::build(
                cfg.prefill_policy.unwrap_or(main),
                ca,
                seed + 1,
            )),
            decode: Pool::new(policy::build(
                cfg.decode_policy.unwrap_or(main),
                ca,
                seed + 2,
            )),
            client,
            limiter,
            metrics: metrics::Metrics::default(),
            request_timeout: Duration::from_secs(cfg.request_timeout_secs.max(1)),
            auth_header,
            rng: Mutex::new(SmallRng::seed_from_u64(seed ^ 0x5eed)),
            conversations: Default::default(),
            cfg,
        };
        for url in &r.cfg.worker_urls {
            r.regular.add(Worker::new(
                url.clone(),
                WorkerKind::Regular,
                &r.cfg.circuit,
            ));
        }
        for p in &r.cfg.prefill {
            let kind = WorkerKind::Prefill {
                bootstrap_port: p.bootstrap_port,
            };
            r.prefill
                .add(Worker::new(p.url.clone(), kind, &r.cfg.circuit));
        }
        for url in &r.cfg.decode {
            r.decode
                .add(Worker::new(url.clone(), WorkerKind::Decode, &r.cfg.circuit));
        }
        Ok(Arc::new(r))
    }

    pub fn pool(&self, kind: WorkerKind) -> &Pool {
        match kind {
            WorkerKind::Regular => &self.regular,
            WorkerKind::Prefill { .. } => &self.prefill,
            WorkerKind::Decode => &self.decode,
        }
    }

    /// Every worker of every pool.
    pub fn all_workers(&self) -> Vec<Arc<Worker>> {
        let mut v: Vec<Arc<Worker>> = self.regular.snapshot().iter().cloned().collect();
        v.extend(self.prefill.snapshot().iter().cloned());
        v.extend(self.decode.snapshot().iter().cloned());
        v
    }

    /// Workers that answer model/server info: regular ones, or prefill ones in PD mode.
    pub fn serving_workers(&self) -> Arc<Vec<Arc<Worker>>> {
        if self.cfg.pd_disaggregation {
            self.prefill.snapshot()
        } else {
            self.regular.snapshot()
        }
    }

    /// Ready to serve: a healthy worker (regular), or a healthy prefill and decode (PD).
    pub fn is_ready(&self) -> bool {
        if self.cfg.pd_disaggregation {
            self.prefill.any_healthy() && self.decode.any_healthy()
        } else {
            self.regular.any_healthy()
        }
    }

    /// `--dp-aware`: asks each regular worker without a rank for its `dp_size`
    /// (`/get_server_info`) and replaces a server of several data-parallel replicas by one worker
    /// per replica (`url@rank`), so that the policy (cache-aware above all) chooses the replica
    /// and the request carries it as `data_parallel_rank`. A worker that does not answer stays
    /// one worker.
    pub async fn expand_dp_ranks(&self) {
        if !self.cfg.dp_aware || self.cfg.pd_disaggregation {
            return;
        }
        let plain: Vec<Arc<Worker>> = self
            .regular
            .snapshot()
            .iter()
            .filter(|w| w.dp_rank.is_none())
            .cloned()
            .collect();
        for w in plain {
            let n = self.dp_size(&w.url).await;
            if n <= 1 {
                continue;
            }
            self.regular.remove(&w.url);
            for rank in 0..n {
                let kind = WorkerKind::Regular;
                let r = Worker::ranked(w.url.clone(), kind, &self.cfg.circuit, Some(rank));
                self.regular.add(r);
            }
            tracing::info!(url = %w.url, replicas = n, "dp-aware: one worker per data-parallel replica");
        }
    }

    /// The `dp_size` a worker's `/get_server_info` reports (1 when it says nothing).
    async fn dp_size(&self, url: &str) -> usize {
        let info = format!("{url}/get_server_info");
        let auth = self.auth_only();
        let Ok(reply) = self
            .client
            .send("GET", &info, &auth, b"", self.request_timeout)
            .await
        else {
            return 1;
        };
        let Ok(bytes) = reply.bytes().await else {
            return 1;
        };
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["dp_size"].as_u64())
            .map_or(1, |n| n.max(1) as usize)
    }

    /// Only the api key, for requests the router makes on its own behalf.
    pub fn auth_only(&self) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        if let Some(v) = &self.auth_header {
            h.insert(axum::http::header::AUTHORIZATION, v.clone());
        }
        h
    }

    fn spawn_upkeep(self: &Arc<Self>) {
        health::spawn_checker(self);
        let weak = Arc::downgrade(self);
        let every = Duration::from_secs(self.cfg.cache_aware.eviction_interval_secs.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else { return };
                for pool in [&r.regular, &r.prefill, &r.decode] {
                    pool.policy.maintain();
                }
            }
        });
    }
}

/// Runs `strata router` until SIGTERM or Ctrl-C: waits for the configured workers, starts health
/// checks, tree eviction and the metrics listener, then serves.
pub async fn run(cfg: RouterConfig) -> Result<()> {
    let cfg = cfg.validate()?;
    let seed = rand::random::<u64>();
    let router = Router::new(cfg, seed)?;
    let cfg = &router.cfg;
    // Bound before waiting for workers, so a taken port fails the start at once and by name
    // instead of leaving a router whose /metrics never answers.
    let prom = tokio::net::TcpListener::bind((cfg.prometheus_host.as_str(), cfg.prometheus_port))
        .await
        .map_err(|e| {
            RouterError::Config(format!(
                "cannot listen on {}:{} for metrics (--prometheus-port): {e}",
                cfg.prometheus_host, cfg.prometheus_port
            ))
        })?;
    let urls: Vec<String> = router.all_workers().iter().map(|w| w.url.clone()).collect();
    health::wait_healthy(
        &router.client,
        &router.auth_only(),
        &urls,
        &cfg.health,
        Duration::from_secs(cfg.worker_startup_timeout_secs),
        Duration::from_secs(cfg.worker_startup_check_interval),
    )
    .await?;
    router.expand_dp_ranks().await;
    router.spawn_upkeep();
    tracing::info!(addr = %prom.local_addr()?, "metrics listening");
    tokio::spawn(metrics::serve(router.clone(), prom));
    let threads = serving_threads();
    let listeners = app::bind(&cfg.host, cfg.port, threads).await?;
    tracing::info!(
        addr = %listeners[0].local_addr()?,
        mode = if cfg.pd_disaggregation { "pd" } else { "regular" },
        workers = urls.len(),
        threads,
        "router listening"
    );
    let grace = Duration::from_secs(cfg.shutdown_grace_period_secs);
    app::serve(router.clone(), listeners, grace).await
}

/// Serving threads: `STRATA_ROUTER_THREADS`, else one per available core.
fn serving_threads() -> usize {
    std::env::var("STRATA_ROUTER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
