//! Worker management at run time, fan-out and passthrough endpoints, metrics exposition.

use serde_json::json;

use super::mock::Mock;
use super::*;

#[tokio::test]
async fn workers_are_added_and_removed_at_run_time() {
    let (a, b) = (Mock::ok("a").await, Mock::ok("b").await);
    let r = router(regular(&[&a.url], PolicyKind::RoundRobin));
    let (st, _, _) = call(&r, "POST", "/workers", Some(json!({"url": b.url})), &[]).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = call(&r, "POST", "/workers", Some(json!({"url": b.url})), &[]).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (_, _, list) = call(&r, "GET", "/workers", None, &[]).await;
    assert_eq!(json(&list)["total"], 2);
    for _ in 0..4 {
        call(&r, "POST", "/generate", Some(json!({"text": "x"})), &[]).await;
    }
    assert_eq!((a.s.hits(), b.s.hits()), (2, 2));
    let enc = b.url.replace(':', "%3A").replace('/', "%2F");
    let (st, _, _) = call(&r, "DELETE", &format!("/workers/{enc}"), None, &[]).await;
    assert_eq!(st, StatusCode::OK);
    for _ in 0..2 {
        call(&r, "POST", "/generate", Some(json!({"text": "x"})), &[]).await;
    }
    assert_eq!((a.s.hits(), b.s.hits()), (4, 2));
    // The query-string forms.
    let (st, _, _) = call(&r, "POST", &format!("/add_worker?url={}", b.url), None, &[]).await;
    assert_eq!(st, StatusCode::OK);
    let (_, _, l) = call(&r, "GET", "/list_workers", None, &[]).await;
    assert_eq!(json(&l)["urls"], json!([a.url, b.url]));
    let (st, _, _) = call(
        &r,
        "POST",
        &format!("/remove_worker?url={}", a.url),
        None,
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = call(
        &r,
        "POST",
        &format!("/remove_worker?url={}", a.url),
        None,
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, _, l) = call(&r, "GET", "/list_workers", None, &[]).await;
    assert_eq!(json(&l)["urls"], json!([b.url]));
}

#[tokio::test]
async fn pd_workers_need_a_type() {
    let (p, d, extra) = (
        Mock::ok("p").await,
        Mock::ok("d").await,
        Mock::ok("p2").await,
    );
    let r = router(pd(&[(&p.url, None)], &[&d.url], PolicyKind::RoundRobin));
    let (st, _, _) = call(&r, "POST", "/workers", Some(json!({"url": extra.url})), &[]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let add = json!({"url": extra.url, "worker_type": "prefill", "bootstrap_port": 9001});
    assert_eq!(
        call(&r, "POST", "/workers", Some(add), &[]).await.0,
        StatusCode::OK
    );
    assert_eq!(r.prefill.snapshot().len(), 2);
}

#[tokio::test]
async fn unhealthy_worker_cannot_be_added() {
    let (a, b) = (Mock::ok("a").await, Mock::ok("b").await);
    b.s.healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut cfg = regular(&[&a.url], PolicyKind::RoundRobin);
    cfg.worker_startup_timeout_secs = 0;
    let r = router(cfg);
    let (st, _, _) = call(&r, "POST", "/workers", Some(json!({"url": b.url})), &[]).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.regular.snapshot().len(), 1);
}

#[tokio::test]
async fn fan_out_passthrough_loads_and_metrics() {
    let (a, b) = (Mock::ok("a").await, Mock::ok("b").await);
    let r = router(regular(&[&a.url, &b.url], PolicyKind::RoundRobin));
    let (st, _, body) = call(&r, "POST", "/flush_cache", None, &[]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(json(&body)["success"], true);
    assert_eq!(
        (
            a.s.flushes.load(std::sync::atomic::Ordering::SeqCst),
            b.s.flushes.load(std::sync::atomic::Ordering::SeqCst)
        ),
        (1, 1)
    );
    for path in ["/v1/models", "/get_model_info", "/get_server_info"] {
        let (st, _, body) = call(&r, "GET", path, None, &[]).await;
        assert_eq!(
            (st, json(&body)["model_path"].clone()),
            (StatusCode::OK, json!("mock")),
            "{path}"
        );
    }
    assert_eq!(
        call(&r, "GET", "/health_generate", None, &[]).await.0,
        StatusCode::OK
    );
    let (_, _, loads) = call(&r, "GET", "/get_loads", None, &[]).await;
    assert_eq!(json(&loads)["workers"].as_array().unwrap().len(), 2);
    call(&r, "POST", "/generate", Some(json!({"text": "x"})), &[]).await;
    let text = crate::metrics::render(&r);
    assert!(
        text.contains("sgl_router_requests_total{route=\"/generate\"} 1"),
        "{text}"
    );
    assert!(text.contains("sgl_router_generate_duration_seconds_count 1"));
    assert!(text.contains(&format!(
        "sgl_router_worker_healthy{{worker=\"{}\",type=\"regular\"}} 1",
        a.url
    )));
}
