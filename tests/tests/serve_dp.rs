//! Data parallelism (`--dp-size`) on a real `strata serve` (CPU): two replicas answer exactly as a
//! one-replica server (alone and 8 at once), requests are placed by `--load-balance-method`
//! (round robin alternates, so a repeated prompt finds its prefix only on the replica that
//! computed it; total_requests (shortest queue) sends work to the idle replica; `routed_dp_rank`
//! pins a request to a replica, the copies of `n > 1` share their prompt's replica, a session's
//! turns share one), and the control routes reach every replica (flush, pause / continue, a
//! weight update that both replicas apply); the L3 is shared (a prefix one replica computed
//! comes back to the other through HiCache); `strata router --dp-aware` routes to each replica
//! as to a worker; `/get_load` reports each replica's work. An unknown balancing method stops
//! the start (PD legs with replicas: `pd_e2e.rs`).

mod serve_common;

use serde_json::{json, Value};
use serve_common::{bin, MadeModel, Router, Server};
use std::process::Command;

fn prefix() -> String {
    "A lighthouse keeper writes down every ship that passes the rocky point at night. ".repeat(5)
}

async fn gen(s: &Server, text: &str, n: usize) -> Value {
    let (st, v) = s
        .post(
            "/generate",
            &json!({"text": text, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": true}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

fn cached(v: &Value) -> u64 {
    v["meta_info"]["cached_tokens"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_answer_as_one_and_share_the_control_routes() {
    let m = MadeModel::new("llama", "tiny");
    let one = Server::start(m.path(), &["--page-size", "16"]);
    let s = Server::start(m.path(), &["--page-size", "16", "--dp-size", "2"]);
    let p = format!("{}Which ship came first?", prefix());
    let want = gen(&one, &p, 6).await;

    // Round robin: replica 0, 1, 0; the prefix is cached where it was computed.
    let runs = [
        gen(&s, &p, 6).await,
        gen(&s, &p, 6).await,
        gen(&s, &p, 6).await,
    ];
    for v in &runs {
        assert_eq!(v["output_ids"], want["output_ids"]);
    }
    assert_eq!((cached(&runs[0]), cached(&runs[1])), (0, 0), "{runs:?}");
    assert!(cached(&runs[2]) >= 64, "{:?}", runs[2]);

    // Eight at once, spread over both replicas: the one-replica server's answers.
    let prompts: Vec<String> = (0..8)
        .map(|i| format!("Ship number {i} passed the point carrying"))
        .collect();
    let mut wants = Vec::new();
    for q in &prompts {
        wants.push(gen(&one, q, 8).await["output_ids"].clone());
    }
    let got = futures::future::join_all(prompts.iter().map(|q| gen(&s, q, 8))).await;
    for (g, w) in got.iter().zip(&wants) {
        assert_eq!(&g["output_ids"], w);
    }
    let info: Value = serde_json::from_str(&s.get("/get_server_info").await.1).unwrap();
    assert_eq!(info["dp_size"], 2, "{info}");
    // Both replicas' pages add up: free + cached == total once idle.
    s.wait_idle().await;

    // Control routes reach both replicas.
    let (st, _) = s.post("/flush_cache", &json!({})).await;
    assert_eq!(st, 200);
    for _ in 0..2 {
        assert_eq!(cached(&gen(&s, &p, 6).await), 0, "a replica kept its cache");
    }
    // `routed_dp_rank` (and SGLang's older `data_parallel_rank`) pins a request to a replica.
    let q = "The harbour master counts the boats that come home before the storm. ".repeat(5);
    let pinned = |key: &str, rank: i64| json!({"text": q, key: rank, "sampling_params": {"temperature": 0, "max_new_tokens": 4}});
    let mut hits = Vec::new();
    for body in [
        pinned("routed_dp_rank", 1),
        pinned("routed_dp_rank", 1),
        pinned("data_parallel_rank", 0),
    ] {
        let (st, v) = s.post("/generate", &body).await;
        assert_eq!(st, 200, "{v}");
        hits.push(cached(&v));
    }
    assert!(hits[0] == 0 && hits[1] >= 64 && hits[2] == 0, "{hits:?}");
    let (st, v) = s.post("/generate", &pinned("routed_dp_rank", 2)).await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("out of range"), "{v}");
    // n > 1: a prompt's warm-up and its copies share one replica, so every copy hits.
    let body = json!({"text": format!("{q} Then the lights went out."),
        "sampling_params": {"n": 3, "temperature": 0, "max_new_tokens": 4}});
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    let copies = v.as_array().unwrap();
    assert!(copies.iter().all(|c| cached(c) >= 64), "{v}");
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "data_parallel_rank": -1});
    let (st, v) = s.post("/v1/chat/completions", &chat).await;
    assert_eq!(st, 400, "{v}");

    let (st, v) = s.post("/pause_generation", &json!({})).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.post("/continue_generation", &json!({})).await;
    assert_eq!(st, 200, "{v}");
    let b = MadeModel::with_seed("llama", "tiny", 1);
    let want_b = gen(&Server::start(b.path(), &["--page-size", "16"]), &p, 6).await;
    assert_ne!(want_b["output_ids"], want["output_ids"]);
    let (st, v) = s
        .post(
            "/update_weights_from_disk",
            &json!({"model_path": b.path().to_str().unwrap()}),
        )
        .await;
    assert_eq!((st, v["success"].clone()), (200, json!(true)), "{v}");
    for _ in 0..2 {
        assert_eq!(gen(&s, &p, 6).await["output_ids"], want_b["output_ids"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn total_requests_sends_work_to_the_idle_replica() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(
        m.path(),
        &[
            "--page-size",
            "16",
            "--dp-size",
            "2",
            "--load-balance-method",
            "total_requests",
        ],
    );
    let p = format!("{}Which ship came last?", prefix());
    // Idle replicas tie: the first takes both, and the second request hits its cache.
    let a = gen(&s, &p, 4).await;
    let b = gen(&s, &p, 4).await;
    assert_eq!((cached(&a) == 0, cached(&b) >= 64), (true, true), "{a} {b}");
    // With replica 0 busy on a long request, the next requests go to replica 1 (no cache there
    // for the first, then its own).
    let long = json!({"text": "Tell the whole story", "sampling_params": {"temperature": 0,
        "max_new_tokens": 3000, "ignore_eos": true}});
    let (busy, (load, c, d)) = tokio::join!(s.post("/generate", &long), async {
        s.wait_metric("num_running_reqs", 1.0).await;
        let load: Value = serde_json::from_str(&s.get("/get_load").await.1).unwrap();
        (load, gen(&s, &p, 4).await, gen(&s, &p, 4).await)
    });
    assert_eq!(busy.0, 200);
    // `/get_load` saw the long request on replica 0 only.
    assert_eq!(load[0]["dp_rank"], 0, "{load}");
    assert_eq!(
        (load[0]["num_reqs"].clone(), load[1]["num_reqs"].clone()),
        (json!(1), json!(0)),
        "{load}"
    );
    assert!(load[0]["num_tokens"].as_u64().unwrap() >= 3000, "{load}");
    let idle: Value = serde_json::from_str(&s.get("/get_load").await.1).unwrap();
    assert!(
        idle.as_array()
            .unwrap()
            .iter()
            .all(|l| l["num_reqs"] == 0 && l["num_tokens"] == 0),
        "{idle}"
    );
    assert_eq!(cached(&c), 0, "went to the busy replica: {c}");
    assert!(cached(&d) >= 64, "{d}");
    assert_eq!(c["output_ids"], a["output_ids"]);
}

/// Replicas keep their own prefix caches but share an L3: what one computed, the other reads
/// back through HiCache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_l3() {
    let m = MadeModel::new("llama", "tiny");
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"{"prefetch_threshold": 16}"#;
    let s = Server::file_l3_with(m.path(), dir.path(), extra, &["--dp-size", "2"]);
    let p = format!("{}Which ship was the largest?", prefix());
    let first = gen(&s, &p, 4).await; // replica 0 computes and backs up
    assert_eq!(cached(&first), 0);
    s.wait_metric("backuped_tokens_total", 64.0).await;
    s.wait_idle().await;
    let second = gen(&s, &p, 4).await; // replica 1: an L3 hit
    assert!(cached(&second) >= 64, "{second}");
    assert_eq!(second["output_ids"], first["output_ids"]);
    assert!(s.metric("prefetched_tokens_total").await >= 64.0);
}

/// `strata router --dp-aware` in front of a two-replica server: each replica is a worker of its
/// own, so the cache-aware policy sends a repeated prompt to the replica that cached it (inside
/// the server, round robin would alternate).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dp_aware_router_keeps_a_prefix_on_its_replica() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--page-size", "16", "--dp-size", "2"]);
    let worker = s.url("");
    let r = Router::start(&[
        "--worker-urls",
        &worker,
        "--policy",
        "cache_aware",
        "--dp-aware",
    ]);
    let client = reqwest::Client::new();
    // The router's JSON reply to a POST of `body`, or to a GET without one.
    let call = |path: &str, body: Option<&Value>| {
        let url = format!("{}{path}", r.base);
        let req = match body {
            Some(b) => client.post(url).json(b),
            None => client.get(url),
        };
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let p = format!("{}Which ship carried the lamps?", prefix());
    let body = json!({"text": p, "sampling_params": {"temperature": 0, "max_new_tokens": 4}});
    let mut hits = Vec::new();
    for _ in 0..4 {
        hits.push(cached(&call("/generate", Some(&body)).await));
    }
    assert!(
        hits[0] == 0 && hits[1..].iter().all(|&h| h >= 64),
        "{hits:?}"
    );
    let listed = call("/list_workers", None).await;
    assert_eq!(listed["urls"].as_array().unwrap().len(), 2, "{listed}");
}

/// A session's requests run on one replica (chosen by its id), so each turn finds the earlier
/// turns in that replica's cache; round robin would alternate them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_stays_on_one_replica() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--dp-size", "2"]);
    let (st, v) = s
        .post("/open_session", &json!({"capacity_of_str_len": 4000}))
        .await;
    assert_eq!(st, 200, "{v}");
    let id = v.as_str().unwrap().to_string();
    let mut last: Option<String> = None;
    for (turn, text) in ["Once upon a time", " and then", " until at last"]
        .into_iter()
        .enumerate()
    {
        let rid = format!("turn{turn}");
        let mut sp = json!({"id": id});
        if let Some(prev) = &last {
            sp["rid"] = json!(prev);
        }
        let body = json!({"text": text, "rid": rid, "session_params": sp,
            "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": true}});
        let (st, v) = s.post("/generate", &body).await;
        assert_eq!(st, 200, "{v}");
        if turn > 0 {
            assert!(
                cached(&v) > 0,
                "turn {turn} missed the session's cache: {v}"
            );
        }
        last = Some(rid);
    }
}

#[test]
fn an_unknown_balancing_method_stops_the_start() {
    let m = MadeModel::new("llama", "tiny");
    let out = Command::new(bin())
        .args(["serve", "--model-path"])
        .arg(m.path())
        .args([
            "--port",
            "1",
            "--dp-size",
            "2",
            "--load-balance-method",
            "random",
        ])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--load-balance-method random"), "{err}");
}
