//! Regular mode: policies over real mock workers, body and stream pass-through, request ids,
//! api keys.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::mock::{sse_chunk, Mock, Opts};
use super::*;

#[tokio::test]
async fn round_robin_spreads_and_passes_body_unchanged() {
    let ms = [
        Mock::ok("a").await,
        Mock::ok("b").await,
        Mock::ok("c").await,
    ];
    let urls: Vec<&str> = ms.iter().map(|m| m.url.as_str()).collect();
    let r = router(regular(&urls, PolicyKind::RoundRobin));
    let body = json!({"text": "hello", "sampling_params": {"temperature": 0}, "extra": [1, 2]});
    for _ in 0..9 {
        let (st, _, b) = call(&r, "POST", "/generate", Some(body.clone()), &[]).await;
        assert_eq!(st, StatusCode::OK);
        assert!(json(&b)["worker"].is_string());
    }
    for m in &ms {
        assert_eq!(m.s.hits(), 3);
        assert_eq!(m.s.last_body(), body);
    }
    assert_eq!(r.metrics.requests(0), 9);
    assert!(
        r.all_workers().iter().all(|w| w.load() == 0),
        "loads return to zero"
    );
}

#[tokio::test]
async fn cache_aware_keeps_prefix_affinity_and_spreads_new_prefixes() {
    let ms = [Mock::ok("a").await, Mock::ok("b").await];
    let r = router(regular(&[&ms[0].url, &ms[1].url], PolicyKind::CacheAware));
    let sys = "You are a helpful assistant that answers questions about the weather. ";
    let mut workers = Vec::new();
    for i in 0..10 {
        let body = json!({"text": format!("{sys} question {i}")});
        let (_, _, b) = call(&r, "POST", "/generate", Some(body), &[]).await;
        workers.push(json(&b)["worker"].as_str().unwrap().to_string());
    }
    assert!(workers.iter().all(|w| *w == workers[0]), "{workers:?}");
    let (_, _, b) = call(
        &r,
        "POST",
        "/generate",
        Some(json!({"text": "Completely different"})),
        &[],
    )
    .await;
    assert_ne!(
        json(&b)["worker"],
        workers[0].as_str(),
        "a new prefix goes to the emptier tree"
    );
    // Chat messages route by their content too.
    let chat = json!({"messages": [{"role": "user", "content": "same conversation"}]});
    let (_, _, b1) = call(&r, "POST", "/v1/chat/completions", Some(chat.clone()), &[]).await;
    let (_, _, b2) = call(&r, "POST", "/v1/chat/completions", Some(chat), &[]).await;
    assert_eq!(json(&b1)["worker"], json(&b2)["worker"]);
}

#[tokio::test]
async fn cache_aware_burst_does_not_pile_onto_one_worker() {
    let slow = Opts {
        latency: Duration::from_millis(300),
        ..Default::default()
    };
    let ms = [
        Mock::start("a", slow.clone()).await,
        Mock::start("b", slow).await,
    ];
    let mut cfg = regular(&[&ms[0].url, &ms[1].url], PolicyKind::CacheAware);
    cfg.cache_aware.balance_abs_threshold = 2;
    let r = router(cfg);
    let calls = (0..12).map(|i| {
        let r = r.clone();
        async move {
            let body = json!({"text": format!("the same long shared prefix, request {i}")});
            call(&r, "POST", "/generate", Some(body), &[]).await.0
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    let (a, b) = (ms[0].s.hits(), ms[1].s.hits());
    assert_eq!(a + b, 12);
    assert!(
        a >= 3 && b >= 3,
        "load counted at dispatch spreads the burst: {a} / {b}"
    );
}

#[tokio::test]
async fn random_and_power_of_two_reach_every_worker() {
    for policy in [PolicyKind::Random, PolicyKind::PowerOfTwo] {
        let ms = [
            Mock::ok("a").await,
            Mock::ok("b").await,
            Mock::ok("c").await,
        ];
        let urls: Vec<&str> = ms.iter().map(|m| m.url.as_str()).collect();
        let r = router(regular(&urls, policy));
        for _ in 0..60 {
            call(
                &r,
                "POST",
                "/v1/completions",
                Some(json!({"prompt": "p"})),
                &[],
            )
            .await;
        }
        for m in &ms {
            assert!(m.s.hits() >= 5, "{policy:?}: {} hits", m.s.hits());
        }
    }
}

#[tokio::test]
async fn streaming_is_byte_exact_and_incremental() {
    let opts = Opts {
        chunks: 4,
        chunk_delay: Duration::from_millis(150),
        ..Default::default()
    };
    let m = Mock::start("s", opts).await;
    let r = router(regular(&[&m.url], PolicyKind::RoundRobin));
    let base = listen(&r).await;
    let client = reqwest::Client::new();
    let body = json!({"text": "x", "stream": true});
    let direct = client
        .post(format!("{}/generate", m.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let direct = direct.bytes().await.unwrap();
    let t0 = Instant::now();
    let resp = client
        .post(format!("{base}/generate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = t0.elapsed();
    let mut all = first.to_vec();
    while let Some(c) = stream.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    let total = t0.elapsed();
    assert_eq!(all, direct.to_vec(), "byte-exact pass-through");
    assert!(all.starts_with(sse_chunk("s", 0).as_bytes()));
    assert!(
        first_at < Duration::from_millis(300),
        "first chunk after {first_at:?}"
    );
    assert!(total >= Duration::from_millis(600), "stream took {total:?}");
}

#[tokio::test]
async fn request_ids_are_forwarded_or_generated() {
    let m = Mock::ok("a").await;
    let r = router(regular(&[&m.url], PolicyKind::RoundRobin));
    let body = Some(json!({"text": "x"}));
    let (_, h, _) = call(
        &r,
        "POST",
        "/generate",
        body.clone(),
        &[("x-correlation-id", "abc")],
    )
    .await;
    assert_eq!(h["x-request-id"], "abc");
    assert_eq!(m.s.headers.lock().last().unwrap()["x-request-id"], "abc");
    let (_, h, _) = call(&r, "POST", "/generate", body, &[]).await;
    assert!(h["x-request-id"].to_str().unwrap().starts_with("gnt-"));
    let (_, h, _) = call(
        &r,
        "POST",
        "/v1/chat/completions",
        Some(json!({"messages": []})),
        &[],
    )
    .await;
    assert!(h["x-request-id"].to_str().unwrap().starts_with("chatcmpl-"));
}

#[tokio::test]
async fn api_key_is_enforced_and_sent_to_workers() {
    let m = Mock::ok("a").await;
    let mut cfg = regular(&[&m.url], PolicyKind::RoundRobin);
    cfg.api_key = Some("sk-test".into());
    let r = router(cfg);
    let body = Some(json!({"text": "x"}));
    let (st, _, b) = call(&r, "POST", "/generate", body.clone(), &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&b)["error"]["code"], 401);
    let (st, _, _) = call(
        &r,
        "POST",
        "/generate",
        body.clone(),
        &[("authorization", "Bearer no")],
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, _) = call(&r, "GET", "/list_workers", None, &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(m.s.hits(), 0);
    let (st, _, _) = call(
        &r,
        "POST",
        "/generate",
        body,
        &[("authorization", "Bearer sk-test")],
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(m.s.headers.lock()[0]["authorization"], "Bearer sk-test");
    for open in ["/health", "/liveness", "/readiness"] {
        assert_eq!(
            call(&r, "GET", open, None, &[]).await.0,
            StatusCode::OK,
            "{open}"
        );
    }
}

#[tokio::test]
async fn bad_json_is_a_400_and_unknown_path_a_404() {
    let m = Mock::ok("a").await;
    let r = router(regular(&[&m.url], PolicyKind::CacheAware));
    let req = axum::http::Request::post("/generate")
        .body(Body::from("{oops"))
        .unwrap();
    let resp = crate::app::app(r.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (st, _, b) = call(&r, "GET", "/nope", None, &[]).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(json(&b)["error"]["type"], "not_found_error");
    assert_eq!(m.s.hits(), 0);
}

#[tokio::test]
async fn client_disconnect_cancels_the_worker_request() {
    let m = Mock::start(
        "slow",
        Opts {
            latency: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await;
    let r = router(regular(&[&m.url], PolicyKind::RoundRobin));
    let base = listen(&r).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/generate"))
        .json(&json!({"text": "x"}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(res.is_err(), "the client gave up");
    assert!(
        eventually(2.0, || m.s.cancelled() == 1).await,
        "worker request not cancelled"
    );
    assert!(
        eventually(1.0, || r.all_workers()[0].load() == 0).await,
        "load released"
    );
}

#[tokio::test]
async fn oversized_and_malformed_bodies_get_the_json_error_shape() {
    let m = Mock::ok("a").await;
    let mut cfg = regular(&[&m.url], PolicyKind::RoundRobin);
    cfg.max_payload_size = 1000;
    let r = router(cfg);
    let big = json!({"text": "x".repeat(5000)});
    let (st, _, b) = call(&r, "POST", "/generate", Some(big), &[]).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    let v = json(&b);
    assert_eq!(v["error"]["code"], 413, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-payload-size"));
    assert_eq!(m.s.hits(), 0, "never forwarded");
    let (st, _, b) = call(&r, "GET", "/no/such/path", None, &[]).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(json(&b)["error"]["code"], 404);
}

/// `--dp-aware`: a server reporting `dp_size` 2 becomes two workers (`url@0`, `url@1`) whose
/// requests carry `data_parallel_rank`; a server of one replica stays one worker and its bodies
/// pass unchanged; flushes reach each server once.
#[tokio::test]
async fn dp_aware_routes_to_each_replica_by_rank() {
    let ms = [Mock::ok("a").await, Mock::ok("b").await];
    ms[0]
        .s
        .dp_size
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let urls: Vec<&str> = ms.iter().map(|m| m.url.as_str()).collect();
    let mut cfg = regular(&urls, PolicyKind::RoundRobin);
    cfg.dp_aware = true;
    let r = router(cfg);
    r.expand_dp_ranks().await;
    let (_, _, b) = call(&r, "GET", "/list_workers", None, &[]).await;
    let mut names: Vec<String> = json(&b)["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut want = vec![
        format!("{}@0", ms[0].url),
        format!("{}@1", ms[0].url),
        ms[1].url.clone(),
    ];
    want.sort();
    assert_eq!(names, want);
    let body = json!({"text": "hello"});
    for _ in 0..6 {
        let (st, _, _) = call(&r, "POST", "/generate", Some(body.clone()), &[]).await;
        assert_eq!(st, StatusCode::OK);
    }
    let mut ranks: Vec<i64> = ms[0]
        .s
        .bodies
        .lock()
        .iter()
        .map(|b| b["data_parallel_rank"].as_i64().unwrap())
        .collect();
    ranks.sort();
    assert_eq!(ranks, [0, 0, 1, 1]);
    assert!(ms[1].s.bodies.lock().iter().all(|b| *b == body));
    let (st, _, _) = call(&r, "POST", "/flush_cache", Some(json!({})), &[]).await;
    assert_eq!(st, StatusCode::OK);
    let flushes = |m: &Mock| m.s.flushes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((flushes(&ms[0]), flushes(&ms[1])), (1, 1));
    // Removing the server removes both of its replicas.
    let (st, _, _) = call(
        &r,
        "POST",
        &format!("/remove_worker?url={}", ms[0].url),
        None,
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r.all_workers().len(), 1);
}
