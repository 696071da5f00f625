//! PD mode: bootstrap field injection and pairing, streaming decode without waiting for prefill,
//! cancellation of the other leg, retry with a fresh pair, logprob merge, readiness.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::mock::{Mock, Opts};
use super::*;

fn slow(ms: u64) -> Opts {
    Opts {
        latency: Duration::from_millis(ms),
        ..Default::default()
    }
}

#[tokio::test]
async fn injects_bootstrap_fields_and_sends_the_same_body_to_both() {
    let (p1, p2) = (Mock::ok("p1").await, Mock::ok("p2").await);
    let (d1, d2) = (Mock::ok("d1").await, Mock::ok("d2").await);
    let cfg = pd(
        &[(&p1.url, Some(8998)), (&p2.url, None)],
        &[&d1.url, &d2.url],
        PolicyKind::RoundRobin,
    );
    let r = router(cfg);
    let mut rooms = std::collections::HashSet::new();
    for _ in 0..4 {
        let (st, _, b) = call(
            &r,
            "POST",
            "/generate",
            Some(json!({"text": "hi", "x": 1})),
            &[],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            json(&b)["worker"].as_str().unwrap().starts_with('d'),
            "the client gets decode's reply"
        );
    }
    for (p, port) in [(&p1, json!(8998)), (&p2, json!(null))] {
        assert_eq!(p.s.hits(), 2);
        for body in p.s.bodies.lock().iter() {
            assert_eq!(body["bootstrap_host"], "127.0.0.1");
            assert_eq!(body["bootstrap_port"], port);
            assert_eq!(
                (body["text"].clone(), body["x"].clone()),
                (json!("hi"), json!(1))
            );
            let room = body["bootstrap_room"].as_u64().unwrap();
            assert!(room < 1 << 63);
            rooms.insert(room);
        }
    }
    assert_eq!(rooms.len(), 4, "a fresh room per request");
    let decode_rooms: std::collections::HashSet<u64> = [&d1, &d2]
        .iter()
        .flat_map(|d| {
            d.s.bodies
                .lock()
                .iter()
                .map(|b| b["bootstrap_room"].as_u64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        rooms, decode_rooms,
        "prefill and decode of a pair see the same room"
    );
    // A batch gets arrays, one distinct room per item.
    call(
        &r,
        "POST",
        "/generate",
        Some(json!({"text": ["a", "b", "c"]})),
        &[],
    )
    .await;
    let body = p1.s.last_body();
    let body = if body["text"].is_array() {
        body
    } else {
        p2.s.last_body()
    };
    assert_eq!(
        body["bootstrap_host"],
        json!(["127.0.0.1", "127.0.0.1", "127.0.0.1"])
    );
    let rooms: std::collections::HashSet<u64> = body["bootstrap_room"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(rooms.len(), 3);
}

#[tokio::test]
async fn decode_streams_before_prefill_answers() {
    let p = Mock::start("p", slow(1500)).await;
    let d = Mock::start(
        "d",
        Opts {
            chunks: 2,
            chunk_delay: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await;
    let r = router(pd(&[(&p.url, None)], &[&d.url], PolicyKind::RoundRobin));
    let base = listen(&r).await;
    let t0 = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{base}/generate"))
        .json(&json!({"text": "x", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "first byte after {:?}",
        t0.elapsed()
    );
    assert!(first.starts_with(b"data: "));
    let mut rest = Vec::new();
    while let Some(c) = s.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    // Decode finished normally: the prefill leg is left to finish, not cancelled.
    assert!(
        eventually(3.0, || p
            .s
            .completed
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    assert_eq!(p.s.cancelled(), 0);
}

#[tokio::test]
async fn decode_failure_cancels_prefill() {
    let p = Mock::start("p", slow(3000)).await;
    let d = Mock::ok("d").await;
    d.s.set_fail(1.0, 500);
    let mut cfg = pd(&[(&p.url, None)], &[&d.url], PolicyKind::RoundRobin);
    cfg.disable_retries = true;
    let r = router(cfg);
    let t0 = Instant::now();
    let (st, _, _) = call(&r, "POST", "/generate", Some(json!({"text": "x"})), &[]).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "did not wait for prefill"
    );
    assert!(
        eventually(2.0, || p.s.cancelled() == 1).await,
        "prefill request was cancelled"
    );
}

#[tokio::test]
async fn prefill_failure_cancels_decode_and_retries_with_a_fresh_pair() {
    let (bad, good) = (Mock::ok("pbad").await, Mock::start("pgood", slow(50)).await);
    bad.s.set_fail(1.0, 503);
    let d = Mock::start("d", slow(2000)).await;
    let cfg = pd(
        &[(&bad.url, None), (&good.url, None)],
        &[&d.url],
        PolicyKind::RoundRobin,
    );
    let r = router(cfg);
    let (st, _, b) = call(&r, "POST", "/generate", Some(json!({"text": "x"})), &[]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(json(&b)["worker"], "d");
    assert_eq!((bad.s.hits(), good.s.hits()), (1, 1));
    assert_eq!(d.s.hits(), 2, "decode was asked once per pair");
    assert!(
        eventually(2.0, || d.s.cancelled() == 1).await,
        "the first decode leg was cancelled"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_both_legs() {
    let p = Mock::start("p", slow(3000)).await;
    let d = Mock::start("d", slow(3000)).await;
    let r = router(pd(&[(&p.url, None)], &[&d.url], PolicyKind::RoundRobin));
    let base = listen(&r).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/generate"))
        .json(&json!({"text": "x"}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(res.is_err(), "the client gave up");
    assert!(
        eventually(2.0, || p.s.cancelled() == 1 && d.s.cancelled() == 1).await,
        "prefill cancelled {}, decode cancelled {}",
        p.s.cancelled(),
        d.s.cancelled()
    );
    assert!(eventually(1.0, || r.all_workers().iter().all(|w| w.load() == 0)).await);
}

#[tokio::test]
async fn input_logprobs_are_merged_prefill_first() {
    let (p, d) = (Mock::ok("p").await, Mock::ok("d").await);
    // Make the counters differ so the order is visible: p has served 4 requests, d none.
    for _ in 0..4 {
        reqwest::Client::new()
            .post(format!("{}/generate", p.url))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
    }
    let r = router(pd(&[(&p.url, None)], &[&d.url], PolicyKind::RoundRobin));
    let body = json!({"text": "x", "return_logprob": true});
    let (st, _, b) = call(&r, "POST", "/generate", Some(body), &[]).await;
    assert_eq!(st, StatusCode::OK);
    let v = json(&b);
    assert_eq!(v["worker"], "d");
    assert_eq!(v["meta_info"]["input_token_logprobs"], json!([[5], [1]]));
}

#[tokio::test]
async fn readiness_needs_a_prefill_and_a_decode() {
    let (p, d) = (Mock::ok("p").await, Mock::ok("d").await);
    let r = router(pd(&[(&p.url, None)], &[&d.url], PolicyKind::CacheAware));
    assert_eq!(
        call(&r, "GET", "/readiness", None, &[]).await.0,
        StatusCode::OK
    );
    r.decode.snapshot()[0].set_healthy(false);
    assert_eq!(
        call(&r, "GET", "/readiness", None, &[]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (st, _, b) = call(&r, "POST", "/generate", Some(json!({"text": "x"})), &[]).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        json(&b)["error"]["message"],
        "no healthy decode worker available"
    );
    assert_eq!(p.s.hits(), 0);
}
