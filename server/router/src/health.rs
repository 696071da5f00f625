//! Active health checks: a pure counter that turns probe outcomes into healthy/unhealthy
//! transitions (N consecutive failures down, M consecutive successes up), the periodic checker
//! task, and the start-up wait for configured workers.
//!
//! Request failures do not flip health (that is the circuit breaker's job); only probes do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::client::Client;
use crate::config::HealthConfig;
use crate::error::{Result, RouterError};
use crate::worker::Worker;
use crate::Router;

/// Consecutive probe outcomes of one worker.
#[derive(Debug, Default, Clone)]
pub struct HealthCounter {
    failures: u32,
    successes: u32,
}

impl HealthCounter {
    /// Records a probe; returns the new health when it changes.
    pub fn record(&mut self, ok: bool, healthy: bool, cfg: &HealthConfig) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            (!healthy && self.successes >= cfg.success_threshold.max(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (healthy && self.failures >= cfg.failure_threshold.max(1)).then_some(false)
        }
    }
}

/// One probe of `worker`'s health endpoint.
pub async fn probe(client: &Client, auth: &HeaderMap, url: &str, cfg: &HealthConfig) -> bool {
    let url = format!("{url}{}", cfg.endpoint);
    let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
    match client.send("GET", &url, auth, b"", timeout).await {
        Ok(r) => r.status.is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// Probes `worker` once and applies the outcome.
pub async fn check(router: &Router, worker: &Worker) {
    let cfg = &router.cfg.health;
    let ok = probe(&router.client, &router.auth_only(), &worker.url, cfg).await;
    let change = worker.health.lock().record(ok, worker.is_healthy(), cfg);
    if let Some(h) = change {
        worker.set_healthy(h);
        tracing::warn!(url = %worker.url, healthy = h, "worker health changed");
    }
}

/// Probes every worker every `interval_secs` until the router is dropped.
pub fn spawn_checker(router: &Arc<Router>) {
    if router.cfg.health.disabled {
        return;
    }
    let weak = Arc::downgrade(router);
    let every = Duration::from_secs(router.cfg.health.interval_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(r) = weak.upgrade() else { return };
            let all = r.all_workers();
            futures::future::join_all(all.iter().map(|w| check(&r, w))).await;
        }
    });
}

/// Waits until every URL answers its health endpoint, probing at most once a second (or every
/// `check_interval` if shorter), for at most `timeout`.
pub async fn wait_healthy(
    client: &Client,
    auth: &HeaderMap,
    urls: &[String],
    cfg: &HealthConfig,
    timeout: Duration,
    check_interval: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let step = check_interval
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(50));
    let mut pending: Vec<&String> = urls.iter().collect();
    loop {
        let oks =
            futures::future::join_all(pending.iter().map(|u| probe(client, auth, u, cfg))).await;
        pending = pending
            .into_iter()
            .zip(oks)
            .filter(|(_, ok)| !ok)
            .map(|(u, _)| u)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let urls = pending
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(RouterError::StartupTimeout {
                secs: timeout.as_secs(),
                urls,
            });
        }
        tracing::info!(
            waiting = pending.len(),
            "waiting for workers to become healthy"
        );
        tokio::time::sleep(step).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let cfg = HealthConfig::default(); // 3 down, 2 up
        let mut c = HealthCounter::default();
        assert_eq!(c.record(false, true, &cfg), None);
        assert_eq!(c.record(false, true, &cfg), None);
        assert_eq!(c.record(false, true, &cfg), Some(false));
        assert_eq!(c.record(true, false, &cfg), None);
        assert_eq!(
            c.record(false, false, &cfg),
            None,
            "a failure resets the success streak"
        );
        assert_eq!(c.record(true, false, &cfg), None);
        assert_eq!(c.record(true, false, &cfg), Some(true));
    }
}
