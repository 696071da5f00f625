//! Retries and backoff, the circuit breaker, health transitions, and the concurrency queue.

use std::time::{Duration, Instant};

use serde_json::json;

use super::mock::{Mock, Opts};
use super::*;
use crate::circuit::CircuitState;
use crate::health;

fn body() -> Option<Value> {
    Some(json!({"text": "x"}))
}

#[tokio::test]
async fn retryable_failures_move_to_another_worker() {
    let (bad, good) = (Mock::ok("bad").await, Mock::ok("good").await);
    bad.s.set_fail(1.0, 503);
    let r = router(regular(&[&bad.url, &good.url], PolicyKind::RoundRobin));
    for _ in 0..10 {
        let (st, _, b) = call(&r, "POST", "/generate", body(), &[]).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(json(&b)["worker"], "good");
    }
    assert!(bad.s.hits() >= 1);
    assert!(r.metrics.retries.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn seeded_flaky_workers_mostly_succeed_with_retries() {
    let seed = 99;
    println!("mock seed {seed}");
    let flaky = Opts {
        fail_rate: 0.5,
        fail_status: 502,
        seed,
        ..Default::default()
    };
    let flaky2 = Opts {
        seed: seed + 1,
        ..flaky.clone()
    };
    let ms = [
        Mock::start("a", flaky).await,
        Mock::start("b", flaky2).await,
    ];
    let mut cfg = regular(&[&ms[0].url, &ms[1].url], PolicyKind::RoundRobin);
    cfg.disable_circuit_breaker = true;
    let r = router(cfg);
    let mut ok = 0;
    for _ in 0..40 {
        if call(&r, "POST", "/generate", body(), &[]).await.0 == StatusCode::OK {
            ok += 1;
        }
    }
    // Each request fails only if all 5 attempts fail (p = 1/32).
    assert!(ok >= 35, "{ok}/40 succeeded");
}

#[tokio::test]
async fn retries_exhausted_pass_the_last_reply_through_after_backoff() {
    let m = Mock::ok("a").await;
    m.s.set_fail(1.0, 503);
    let mut cfg = regular(&[&m.url], PolicyKind::RoundRobin);
    cfg.retry = crate::config::RetryConfig {
        max_retries: 3,
        initial_backoff_ms: 50,
        max_backoff_ms: 1000,
        backoff_multiplier: 1.5,
        jitter_factor: 0.0,
    };
    let r = router(cfg);
    let t0 = Instant::now();
    let (st, _, b) = call(&r, "POST", "/generate", body(), &[]).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&b)["error"]["message"], "mock failure");
    assert_eq!(m.s.hits(), 3);
    assert!(
        t0.elapsed() >= Duration::from_millis(125),
        "50 + 75 ms of backoff: {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn client_errors_are_not_retried_and_do_not_trip_the_circuit() {
    let m = Mock::ok("a").await;
    m.s.set_fail(1.0, 400);
    let mut cfg = regular(&[&m.url], PolicyKind::RoundRobin);
    cfg.circuit.failure_threshold = 2;
    let r = router(cfg);
    for _ in 0..5 {
        assert_eq!(
            call(&r, "POST", "/generate", body(), &[]).await.0,
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(m.s.hits(), 5);
    assert_eq!(
        r.regular.snapshot()[0].circuit.state(),
        CircuitState::Closed
    );
}

#[tokio::test]
async fn circuit_opens_then_half_opens_and_closes() {
    let (a, b) = (Mock::ok("a").await, Mock::ok("b").await);
    a.s.set_fail(1.0, 500);
    let mut cfg = regular(&[&a.url, &b.url], PolicyKind::RoundRobin);
    cfg.disable_retries = true;
    cfg.circuit.failure_threshold = 3;
    cfg.circuit.success_threshold = 2;
    cfg.circuit.timeout_duration_secs = 1;
    let r = router(cfg);
    for _ in 0..6 {
        call(&r, "POST", "/generate", body(), &[]).await;
    }
    let wa = r.regular.find(&a.url).unwrap();
    assert_eq!(wa.circuit.state(), CircuitState::Open);
    assert_eq!(a.s.hits(), 3);
    for _ in 0..6 {
        let (st, _, bd) = call(&r, "POST", "/generate", body(), &[]).await;
        assert_eq!(
            (st, json(&bd)["worker"].clone()),
            (StatusCode::OK, json!("b"))
        );
    }
    assert_eq!(a.s.hits(), 3, "an open circuit gets no traffic");
    a.s.set_fail(0.0, 500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..4 {
        assert_eq!(
            call(&r, "POST", "/generate", body(), &[]).await.0,
            StatusCode::OK
        );
    }
    assert!(a.s.hits() >= 5);
    assert_eq!(wa.circuit.state(), CircuitState::Closed);
}

#[tokio::test]
async fn health_checks_take_workers_out_and_back() {
    let (a, b) = (Mock::ok("a").await, Mock::ok("b").await);
    let r = router(regular(&[&a.url, &b.url], PolicyKind::RoundRobin));
    let wa = r.regular.find(&a.url).unwrap();
    a.s.healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    for i in 0..3 {
        assert!(wa.is_healthy(), "still healthy before failure {}", i + 1);
        health::check(&r, &wa).await;
    }
    assert!(!wa.is_healthy(), "3 failed probes take it out");
    for _ in 0..4 {
        let (_, _, bd) = call(&r, "POST", "/generate", body(), &[]).await;
        assert_eq!(json(&bd)["worker"], "b");
    }
    assert_eq!(
        call(&r, "GET", "/readiness", None, &[]).await.0,
        StatusCode::OK
    );
    a.s.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    health::check(&r, &wa).await;
    assert!(!wa.is_healthy());
    health::check(&r, &wa).await;
    assert!(wa.is_healthy(), "2 good probes bring it back");
    // With every worker down the router is not ready and answers 503.
    for w in r.all_workers() {
        w.set_healthy(false);
    }
    assert_eq!(
        call(&r, "GET", "/readiness", None, &[]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (st, _, bd) = call(&r, "POST", "/generate", body(), &[]).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&bd)["error"]["code"], 503);
}

#[tokio::test]
async fn background_checker_marks_a_dead_worker() {
    let a = Mock::ok("a").await;
    let mut cfg = regular(&[&a.url], PolicyKind::RoundRobin);
    cfg.health.disabled = false;
    cfg.health.interval_secs = 1;
    cfg.health.failure_threshold = 1;
    let r = router(cfg);
    health::spawn_checker(&r);
    a.s.healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let w = r.regular.snapshot()[0].clone();
    assert!(eventually(3.0, || !w.is_healthy()).await);
}

#[tokio::test]
async fn queue_full_is_429_and_queue_timeout_is_408() {
    let m2 = Mock::start(
        "slow",
        Opts {
            latency: Duration::from_millis(2500),
            ..Default::default()
        },
    )
    .await;
    let mut cfg = regular(&[&m2.url], PolicyKind::RoundRobin);
    cfg.max_concurrent_requests = Some(1);
    cfg.queue_size = 1;
    cfg.queue_timeout_secs = 1;
    let r = router(cfg);
    let first = tokio::spawn({
        let r = r.clone();
        async move { call(&r, "POST", "/generate", body(), &[]).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = tokio::spawn({
        let r = r.clone();
        async move { call(&r, "POST", "/generate", body(), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (st, _, b) = call(&r, "POST", "/generate", body(), &[]).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&b)["error"]["code"], 429);
    let (st, _, b) = queued.await.unwrap();
    assert_eq!(st, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(json(&b)["error"]["code"], 408);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(m2.s.hits(), 1);
    assert_eq!(
        r.metrics
            .queue_rejections
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}
