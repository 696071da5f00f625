//! End-to-end PD disaggregation with real processes: a prefill server, a decode server and the
//! Strata router in PD mode, against a colocated reference server on the same made model. Greedy
//! output through the pair must equal the colocated output token for token; transfer failures
//! must end the request with a clear error on both legs, never a hang.

mod cluster_util;
mod serve_common;

use cluster_util::{free_port, seed};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use serve_common::{MadeModel, Router, Server};
use std::process::Command;
use std::time::{Duration, Instant};

fn router(prefill: &str, boot: u16, decode: &str) -> Router {
    let boot = boot.to_string();
    Router::start(&[
        "--pd-disaggregation",
        "--prefill",
        prefill,
        &boot,
        "--decode",
        decode,
    ])
}

/// A `strata serve` in PD `mode` ("prefill" or "decode") on bootstrap port `boot`, pages of 16,
/// with `extra` flags and `env`: every PD server of these tests starts here.
fn pd_server(
    model: &MadeModel,
    mode: &str,
    boot: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Server {
    let b = boot.to_string();
    let mut f = vec!["--page-size", "16", "--disaggregation-mode", mode];
    f.extend(["--disaggregation-bootstrap-port", &b]);
    f.extend(extra);
    Server::start_env(model.path(), &f, env)
}

fn pd_pair(model: &MadeModel, boot: u16, extra: &[&str]) -> (Server, Server) {
    let prefill = pd_server(model, "prefill", boot, extra, &[]);
    let decode = pd_server(model, "decode", boot, extra, &[]);
    (prefill, decode)
}

/// What most PD tests start from: a made tiny model, its colocated server (pages of 16), a PD
/// pair with `extra` flags on a free bootstrap port and the router in front of the pair.
struct PdSetup {
    colo: Server,
    c: reqwest::Client,
    boot: u16,
    prefill: Server,
    decode: Server,
    r: Router,
    model: MadeModel,
}

fn pd_setup(extra: &[&str]) -> PdSetup {
    let model = MadeModel::new("llama", "tiny");
    let colo = Server::start(model.path(), &["--page-size", "16"]);
    let boot = free_port();
    let (prefill, decode) = pd_pair(&model, boot, extra);
    let r = router(&prefill.base, boot, &decode.base);
    PdSetup {
        colo,
        c: reqwest::Client::new(),
        boot,
        prefill,
        decode,
        r,
        model,
    }
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.expect("send");
    let s = r.status().as_u16();
    let t = r.text().await.unwrap_or_default();
    (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
}

fn ids_of(v: &Value) -> Vec<u64> {
    v["output_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no output_ids in {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn body(ids: &[u32], n: usize) -> Value {
    json!({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": true}})
}

/// `b` with the bootstrap fields a PD router adds (the prefill on this host, port `boot`).
fn with_room(b: &Value, boot: u16, room: u64) -> Value {
    let mut b = b.clone();
    b["bootstrap_host"] = json!("127.0.0.1");
    b["bootstrap_port"] = json!(boot);
    b["bootstrap_room"] = json!(room);
    b
}

/// [`post`] in the background.
fn spawn_post(
    c: &reqwest::Client,
    url: String,
    b: &Value,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let (c, b) = (c.clone(), b.clone());
    tokio::spawn(async move { post(&c, &url, &b).await })
}

/// A request in the background to a server the test kills under it: true when it got no answer.
fn spawn_doomed(c: &reqwest::Client, url: String, b: &Value) -> tokio::task::JoinHandle<bool> {
    let (c, b) = (c.clone(), b.clone());
    tokio::spawn(async move { c.post(url).json(&b).send().await.is_err() })
}

/// `n` seeded random prompts of 5 to 100 tokens.
fn random_prompts(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            (0..[5, 16, 37, 100][i % 4])
                .map(|_| rng.random_range(3..500u32))
                .collect()
        })
        .collect()
}

/// Sends `prompts` through the PD router at `router` (`max_new` greedy tokens), the first four
/// one at a time, then all at once, and checks every answer against the colocated server's;
/// returns those answers.
async fn same_as_colocated(
    c: &reqwest::Client,
    colo: &Server,
    router: &str,
    prompts: &[Vec<u32>],
    max_new: usize,
) -> Vec<Vec<u64>> {
    let mut want = Vec::new();
    for p in prompts {
        want.push(ids_of(
            &post(c, &colo.url("/generate"), &body(p, max_new)).await.1,
        ));
    }
    let url = format!("{router}/generate");
    for (p, w) in prompts.iter().zip(&want).take(4) {
        let (s, v) = post(c, &url, &body(p, max_new)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(&ids_of(&v), w, "PD output differs from colocated");
    }
    let all = futures::future::join_all(prompts.iter().map(|p| {
        let (c, url, b) = (c.clone(), url.clone(), body(p, max_new));
        async move { post(&c, &url, &b).await }
    }))
    .await;
    for ((s, v), w) in all.iter().zip(&want) {
        assert_eq!(*s, 200, "{v}");
        assert_eq!(&ids_of(v), w, "concurrent PD output differs from colocated");
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_greedy_output_equals_colocated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let PdSetup {
        model: _model,
        colo,
        c,
        boot,
        prefill,
        decode,
        r,
    } = pd_setup(&[]);
    let prompts = random_prompts(&mut rng, 12);
    let want = same_as_colocated(&c, &colo, &r.base, &prompts, 12).await;
    // Streamed through the router.
    let mut sb = body(&prompts[3], 12);
    sb["stream"] = json!(true);
    let events = decode_stream(&c, &format!("{}/generate", r.base), &sb).await;
    let last: Value = serde_json::from_str(events.last().expect("events")).unwrap();
    assert_eq!(ids_of(&last), want[3]);
    // Constrained decoding across the legs: the prefill samples the first token under the
    // grammar, the decode leg walks it and goes on; the answer is the colocated one.
    let person = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"}}, "required": ["name", "age"]}"#;
    for (key, constraint) in [("regex", "[0-9]{3}-[a-z]{2}"), ("json_schema", person)] {
        let b = json!({"text": "Describe someone:", "sampling_params": {key: constraint,
            "max_new_tokens": 100, "temperature": 0}});
        let (cs, cv) = post(&c, &colo.url("/generate"), &b).await;
        let (ps, pv) = post(&c, &format!("{}/generate", r.base), &b).await;
        assert_eq!((cs, ps), (200, 200), "{cv} / {pv}");
        assert_eq!(cv["meta_info"]["finish_reason"]["type"], "stop", "{cv}");
        assert_eq!(ids_of(&pv), ids_of(&cv), "{key}: PD differs from colocated");
        assert_eq!(pv["text"], cv["text"]);
    }
    // The OpenAI endpoints as PD legs: the router adds the bootstrap fields to their bodies too,
    // and each prompt's KV crosses from prefill to decode (counted by the prefill).
    let before = prefill.metric("pd_transfers_total").await;
    for (path, b) in [
        (
            "/v1/completions",
            json!({"prompt": prompts[2], "max_tokens": 10, "temperature": 0}),
        ),
        (
            "/v1/completions",
            json!({"prompt": ["tell me", "a story"], "max_tokens": 6, "temperature": 0}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 10, "temperature": 0}),
        ),
    ] {
        let (cs, cv) = post(&c, &colo.url(path), &b).await;
        let (ps, pv) = post(&c, &format!("{}{path}", r.base), &b).await;
        assert_eq!((cs, ps), (200, 200), "{path}: {cv} / {pv}");
        let texts = |v: &Value| -> Vec<Value> {
            v["choices"]
                .as_array()
                .unwrap_or_else(|| panic!("{path}: no choices in {v}"))
                .iter()
                .map(|ch| {
                    if ch["message"].is_null() {
                        ch["text"].clone()
                    } else {
                        ch["message"]["content"].clone()
                    }
                })
                .collect()
        };
        assert_eq!(texts(&pv), texts(&cv), "{path}: PD differs from colocated");
        assert_eq!(
            pv["usage"]["completion_tokens"],
            cv["usage"]["completion_tokens"]
        );
    }
    let after = prefill.metric("pd_transfers_total").await;
    assert_eq!(after - before, 4.0, "one transfer per /v1 prompt");
    // Prefill and decode share this host: every page crossed by the same-host copy, on
    // connections the decode kept (at most one per concurrent transfer, not one per transfer).
    assert_eq!(
        prefill.metric("pd_transfers_same_host_total").await,
        after,
        "transfers that did not take the same-host path"
    );
    let conns = decode.metric("pd_bootstrap_connections_total").await;
    assert!(
        (1.0..=13.0).contains(&conns),
        "{conns} connections for {after} transfers"
    );
    // Log-probabilities through the pair: the router puts the prefill's input list in front of
    // the decode's (empty: the decode leg never runs the prompt), as sglang-router merges them,
    // so it equals the colocated one; the first output token's values cross with the KV (it is
    // sampled on the prefill leg), so every output position equals colocated too.
    let mut lb = body(&prompts[1], 6);
    lb["return_logprob"] = json!(true);
    lb["logprob_start_len"] = json!(0);
    lb["top_logprobs_num"] = json!(3);
    let (_, cv) = post(&c, &colo.url("/generate"), &lb).await;
    let (s, pv) = post(&c, &format!("{}/generate", r.base), &lb).await;
    assert_eq!(s, 200, "{pv}");
    let close = |a: &Value, b: &Value, what: &str| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-4, "{what}: {x} vs {y}"),
        _ => assert_eq!(a, b, "{what}"),
    };
    let (ci, pi) = (
        cv["meta_info"]["input_token_logprobs"].as_array().unwrap(),
        pv["meta_info"]["input_token_logprobs"].as_array().unwrap(),
    );
    assert_eq!(pi.len(), prompts[1].len(), "{pv}");
    for (k, (x, y)) in ci.iter().zip(pi).enumerate() {
        assert_eq!(x[1], y[1]);
        close(&x[0], &y[0], &format!("input {k}"));
    }
    let (co, po) = (
        cv["meta_info"]["output_token_logprobs"].as_array().unwrap(),
        pv["meta_info"]["output_token_logprobs"].as_array().unwrap(),
    );
    assert_eq!(po.len(), 6, "{pv}");
    let (ct, pt) = (
        cv["meta_info"]["output_top_logprobs"].as_array().unwrap(),
        pv["meta_info"]["output_top_logprobs"].as_array().unwrap(),
    );
    for j in 0..6 {
        assert_eq!(co[j][1], po[j][1]);
        close(&co[j][0], &po[j][0], &format!("output {j}"));
        let (a, b) = (ct[j].as_array().unwrap(), pt[j].as_array().unwrap());
        assert_eq!(a.len(), 3, "{cv}");
        assert_eq!(b.len(), 3, "output {j}: {pv}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x[1], y[1], "top id at output {j}");
            close(&x[0], &y[0], &format!("top at output {j}"));
        }
    }
    // A client that bypasses the router and reuses a room gets a 400 from the prefill.
    let dup = with_room(&body(&prompts[0], 4), boot, 77);
    let first = spawn_post(&c, prefill.url("/generate"), &dup);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, v) = post(&c, &prefill.url("/generate"), &dup).await;
    assert_eq!(s, 400, "duplicate room: {v}");
    // The first one completes once a decode leg fetches its room.
    let (s, v) = post(&c, &decode.url("/generate"), &dup).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(first.await.unwrap().0, 200);
    // Both sides freed every page.
    prefill.wait_idle().await;
    decode.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_failures_end_requests_cleanly() {
    let short = [
        ("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "3"),
        ("SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", "0.3"),
    ];
    let model = MadeModel::new("llama", "tiny");
    let boot = free_port();
    let c = reqwest::Client::new();
    let ids: Vec<u32> = (3..60).collect();
    // A decode leg whose prefill never answers: a clear error once the wait times out.
    // A server of PD `mode` on the test's bootstrap port, with short timeouts and heartbeats.
    let role = |mode: &str| pd_server(&model, mode, boot, &[], &short);
    let decode = role("decode");
    let mut b = body(&ids, 4);
    b["bootstrap_host"] = json!("127.0.0.1");
    b["bootstrap_room"] = json!(5);
    // Nothing listens on the bootstrap port: refused at once.
    let t = Instant::now();
    let (s, v) = post(&c, &decode.url("/generate"), &b).await;
    assert!(failed(s, &v), "{v}");
    assert!(v.to_string().contains("bootstrap"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // A prefill that is up but never gets the room's request: the decode leg times out.
    let prefill = role("prefill");
    let t = Instant::now();
    let (s, v) = post(&c, &decode.url("/generate"), &b).await;
    assert!(failed(s, &v), "{v}");
    assert!(v.to_string().contains("in time"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(20));
    // A prefill leg whose decode never comes: its answer fails after the timeout, pages freed.
    b["bootstrap_room"] = json!(6);
    b["bootstrap_port"] = json!(boot);
    let (s, v) = post(&c, &prefill.url("/generate"), &b).await;
    assert!(failed(s, &v), "{v}");
    assert!(v.to_string().contains("decode"), "{v}");
    prefill.wait_idle().await;
    // A prefill that stops answering (SIGSTOP) while a decode waits: no heartbeat for two
    // intervals and the decode leg fails with that reason, long before the bootstrap timeout.
    b["bootstrap_room"] = json!(8);
    let waiting = spawn_post(&c, decode.url("/generate"), &b);
    tokio::time::sleep(Duration::from_millis(700)).await; // heartbeats flow meanwhile
    let sig = |s: &str| {
        let pid = prefill.pid().to_string();
        assert!(Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success());
    };
    sig("-STOP");
    let t = Instant::now();
    let (s, v) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("decode leg hung on a stopped prefill")
        .unwrap();
    sig("-CONT");
    assert!(failed(s, &v), "{v}");
    assert!(v.to_string().contains("stopped answering"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A decode leg that goes away before its prefill leg arrives: the prefill leg fails as soon as
    // its prefill finishes (its missing heartbeat told the prefill), not after the timeout.
    let gone = role("decode");
    b["bootstrap_room"] = json!(9);
    let orphan = spawn_doomed(&c, gone.url("/generate"), &b);
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(gone); // killed with its fetch waiting on the prefill
    assert!(orphan.await.unwrap(), "the killed decode server answered");
    tokio::time::sleep(Duration::from_millis(1500)).await; // a heartbeat or two fail
    let t = Instant::now();
    let (s, v) = post(&c, &prefill.url("/generate"), &b).await;
    assert!(failed(s, &v), "{v}");
    assert!(v.to_string().contains("went away"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    prefill.wait_idle().await;
    // The prefill killed while the decode waits for it: the decode leg fails, never hangs.
    b["bootstrap_room"] = json!(7);
    let waiting = spawn_post(&c, decode.url("/generate"), &b);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(prefill);
    let (s, v) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("decode leg hung")
        .unwrap();
    assert!(failed(s, &v), "{v}");
    decode.wait_idle().await;
    // Requests without bootstrap fields (health checks, warm-up) run colocated on either role.
    let (s, _) = decode.get("/health_generate").await;
    assert_eq!(s, 200);
}

/// The two legs of one PD request sent straight to the servers (no router), as a router would.
async fn legs(
    c: &reqwest::Client,
    prefill: &Server,
    decode: &Server,
    boot: u16,
    room: u64,
    b: &Value,
) -> ((u16, Value), (u16, Value)) {
    let b = with_room(b, boot, room);
    futures::future::join(
        post(c, &prefill.url("/generate"), &b),
        post(c, &decode.url("/generate"), &b),
    )
    .await
}

/// The KV over forced TCP (`STRATA_SAME_HOST=0`, the store cluster client's switch) gives the
/// colocated output on one reused connection; and a prefill killed mid-transfer on the same-host
/// path (after its KV header announced the pages, before the decode copied them) ends the decode
/// leg with a clear error, frees its pages, and a prefill restarted on the same port serves the
/// same decode server again (its pooled connections to the dead one are dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_tcp_path_and_a_prefill_killed_mid_transfer() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let c = reqwest::Client::new();
    let colo = Server::start(model.path(), &["--page-size", "16"]);
    let role = |mode: &str, boot: u16, extra: &[&str], env: &[(&str, &str)]| {
        pd_server(&model, mode, boot, extra, env)
    };
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|i| {
            (0..[9, 40, 77][i % 3])
                .map(|_| rng.random_range(3..500u32))
                .collect()
        })
        .collect();
    let mut want = Vec::new();
    for p in &prompts {
        want.push(ids_of(
            &post(&c, &colo.url("/generate"), &body(p, 8)).await.1,
        ));
    }
    // Forced TCP on both sides.
    let tcp = [("STRATA_SAME_HOST", "0")];
    let boot = free_port();
    let prefill = role("prefill", boot, &[], &tcp);
    let decode = role("decode", boot, &[], &tcp);
    for (i, (p, w)) in prompts.iter().zip(&want).enumerate() {
        let ((ps, pv), (ds, dv)) =
            legs(&c, &prefill, &decode, boot, 100 + i as u64, &body(p, 8)).await;
        assert_eq!((ps, ds), (200, 200), "{pv} / {dv}");
        assert_eq!(&ids_of(&dv), w, "PD over TCP differs from colocated");
    }
    assert_eq!(prefill.metric("pd_transfers_total").await, 6.0);
    assert_eq!(prefill.metric("pd_transfers_same_host_total").await, 0.0);
    assert_eq!(
        decode.metric("pd_bootstrap_connections_total").await,
        1.0,
        "one connection for six transfers in a row"
    );
    prefill.wait_idle().await;
    decode.wait_idle().await;
    drop((prefill, decode));
    // Same host: the decode stalls 2 s after each KV header, before copying the pages.
    let boot = free_port();
    let prefill = role("prefill", boot, &[], &[]);
    let decode = role(
        "decode",
        boot,
        &["--disaggregation-test-stall-ms", "2000"],
        &[],
    );
    let ((ps, pv), (ds, dv)) = legs(&c, &prefill, &decode, boot, 200, &body(&prompts[1], 8)).await;
    assert_eq!((ps, ds), (200, 200), "{pv} / {dv}");
    assert_eq!(
        ids_of(&dv),
        want[1],
        "PD over the same-host path differs from colocated"
    );
    assert_eq!(prefill.metric("pd_transfers_same_host_total").await, 1.0);
    let b = with_room(&body(&prompts[2], 8), boot, 201);
    let dleg = spawn_post(&c, decode.url("/generate"), &b);
    let pleg = spawn_doomed(&c, prefill.url("/generate"), &b);
    // The room's prefill finished (its pages are announced right after), then the kill.
    assert!(prefill.wait_metric("num_requests_total", 2.0).await >= 2.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(prefill);
    let t = Instant::now();
    let (s, v) = tokio::time::timeout(Duration::from_secs(10), dleg)
        .await
        .expect("decode leg hung on a killed prefill")
        .unwrap();
    assert!(failed(s, &v), "{v}");
    assert!(
        v.to_string().contains("broke off"),
        "not a mid-transfer failure: {v}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(pleg.await.unwrap(), "the killed prefill answered");
    decode.wait_idle().await;
    // A new prefill on the same bootstrap port: the decode drops its dead connections and
    // fetches from the new one.
    let prefill = role("prefill", boot, &[], &[]);
    let ((ps, pv), (ds, dv)) = legs(&c, &prefill, &decode, boot, 202, &body(&prompts[4], 8)).await;
    assert_eq!((ps, ds), (200, 200), "{pv} / {dv}");
    assert_eq!(ids_of(&dv), want[4]);
    assert_eq!(prefill.metric("pd_transfers_same_host_total").await, 1.0);
    prefill.wait_idle().await;
    decode.wait_idle().await;
}

/// Per-chunk push: a prompt spanning four prefill chunks (`--chunked-prefill-size 32`, pages of
/// 16) goes to the decode in parts as each chunk finishes (three parts, then the rest with the
/// first token), over the same-host path and over TCP, and the greedy output equals the colocated
/// server's (same chunking); a prefill killed between chunks (it pauses after each part) ends the
/// decode leg with a clear error within seconds, and the decode's pool is idle again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_pushes_each_chunk_and_survives_a_prefill_killed_between_chunks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let c = reqwest::Client::new();
    let chunk = ["--page-size", "16", "--chunked-prefill-size", "32"];
    let colo = Server::start(model.path(), &chunk);
    let role = |mode: &str, boot: u16, extra: &[&str], env: &[(&str, &str)]| {
        pd_server(&model, mode, boot, &[&chunk[2..], extra].concat(), env)
    };
    let prompt: Vec<u32> = (0..100).map(|_| rng.random_range(3..500u32)).collect();
    let want = ids_of(&post(&c, &colo.url("/generate"), &body(&prompt, 8)).await.1);
    for (room, env) in [(300, vec![]), (301, vec![("STRATA_SAME_HOST", "0")])] {
        let boot = free_port();
        // The prefill pauses 200 ms after handing over each part: parts not yet sent when the
        // prompt's last chunk finishes go with the final header instead, and on a loaded
        // machine the tiny model's chunks outran the bootstrap thread (1 part seen).
        let prefill = role(
            "prefill",
            boot,
            &["--disaggregation-test-stall-ms", "200"],
            &env,
        );
        let decode = role("decode", boot, &[], &env);
        // The decode leg first, the prefill's once the decode is connected to its bootstrap
        // server: parts are only sent to a decode that asked for the room before the prompt's
        // last chunk (a decode that asks later gets every page with the final header; under a
        // loaded CI machine that happened and the test saw 0 parts).
        let b = with_room(&body(&prompt, 8), boot, room);
        let dleg = spawn_post(&c, decode.url("/generate"), &b);
        assert!(
            decode
                .wait_metric("pd_bootstrap_connections_total", 1.0)
                .await
                >= 1.0
        );
        let (ps, pv) = post(&c, &prefill.url("/generate"), &b).await;
        let (ds, dv) = dleg.await.unwrap();
        assert_eq!((ps, ds), (200, 200), "{pv} / {dv}");
        assert_eq!(
            ids_of(&dv),
            want,
            "PD in parts differs from colocated ({env:?})"
        );
        let parts = prefill.metric("pd_transfer_parts_total").await;
        assert!(parts >= 2.0, "{parts} parts sent for a prompt of 4 chunks");
        assert_eq!(decode.metric("pd_received_parts_total").await, parts);
        prefill.wait_idle().await;
        decode.wait_idle().await;
    }
    // The prefill pauses 3 s after each part; it is killed once the decode has one.
    let boot = free_port();
    let prefill = role(
        "prefill",
        boot,
        &["--disaggregation-test-stall-ms", "3000"],
        &[],
    );
    let decode = role("decode", boot, &[], &[]);
    let b = with_room(&body(&prompt, 8), boot, 302);
    let dleg = spawn_post(&c, decode.url("/generate"), &b);
    let pleg = spawn_doomed(&c, prefill.url("/generate"), &b);
    assert!(decode.wait_metric("pd_received_parts_total", 1.0).await >= 1.0);
    drop(prefill);
    let t = Instant::now();
    let (s, v) = tokio::time::timeout(Duration::from_secs(10), dleg)
        .await
        .expect("decode leg hung on a prefill killed between chunks")
        .unwrap();
    assert!(failed(s, &v), "{v}");
    assert!(
        v.to_string().contains("broke off the KV transfer after"),
        "not a failure between parts: {v}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(pleg.await.unwrap(), "the killed prefill answered");
    decode.wait_idle().await;
}

/// An error status, or a 200 whose finish reason is an abort (SGLang's shape for a request that
/// ended in an error after it was accepted).
fn failed(status: u16, v: &Value) -> bool {
    status != 200 || v["meta_info"]["finish_reason"]["type"] == "abort"
}

async fn decode_stream(c: &reqwest::Client, url: &str, b: &Value) -> Vec<String> {
    let t = c
        .post(url)
        .json(b)
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    t.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string))
        .filter(|d| d != "[DONE]")
        .collect()
}

/// Decode offload: the decode server writes prompt + answer to the L3, so the next turn's
/// prefill (and any other server on the cluster) finds the answer's pages there, and every
/// answer stays equal to a server that recomputes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_decode_offload_lets_the_next_turn_hit_l3() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let dir = tempfile::tempdir().unwrap();
    let rpc = free_port();
    let addr = format!("127.0.0.1:{rpc}");
    let _m = cluster_util::master(dir.path(), rpc, &[]);
    let _st = cluster_util::store(&addr, &dir.path().join("dev.strata"), &[]);
    let model = MadeModel::new("llama", "tiny");
    let c = reqwest::Client::new();
    let refs = Server::start(
        model.path(),
        &["--page-size", "16", "--disable-radix-cache"],
    );
    let extra = json!({"master_server_address": addr, "prefetch_threshold": 32}).to_string();
    let l3 = [
        "--hicache-storage-backend",
        "mooncake",
        "--hicache-storage-backend-extra-config",
        &extra,
    ];
    let boot = free_port();
    let mut pf = vec!["--enable-hierarchical-cache"];
    pf.extend(["--hicache-storage-prefetch-policy", "wait_complete"]);
    pf.extend(l3);
    let prefill = pd_server(&model, "prefill", boot, &pf, &[]);
    let mut df = vec!["--disaggregation-decode-enable-offload-kvcache"];
    df.extend(l3);
    let decode = pd_server(&model, "decode", boot, &df, &[]);
    let r = router(&prefill.base, boot, &decode.base);
    // Turn 1: a 100-token prompt, 40 answer tokens.
    let p1: Vec<u32> = (0..100).map(|_| rng.random_range(3..500u32)).collect();
    let want1 = ids_of(&post(&c, &refs.url("/generate"), &body(&p1, 40)).await.1);
    let (s, v) = post(&c, &format!("{}/generate", r.base), &body(&p1, 40)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids_of(&v), want1, "PD output differs from the reference");
    // The decode side holds KV for prompt + answer minus the last token: 139 -> 8 whole pages.
    let off = decode
        .wait_metric("pd_decode_offloaded_tokens_total", 128.0)
        .await;
    assert_eq!(off, 128.0, "decode offload queued {off} tokens");
    let written = decode.wait_metric("backuped_tokens_total", 32.0).await;
    assert!(
        written >= 32.0,
        "decode wrote {written} tokens: the answer's pages must reach the L3"
    );
    // Turn 2 through the pair: prompt + answer + a new question. The prefill has the prompt's
    // pages itself; the answer's pages come from the L3, written by the decode side.
    let mut p2: Vec<u32> = p1.clone();
    p2.extend(want1.iter().map(|&t| t as u32));
    p2.extend((0..20).map(|_| rng.random_range(3..500u32)));
    let want2 = ids_of(&post(&c, &refs.url("/generate"), &body(&p2, 8)).await.1);
    let (s, v) = post(&c, &format!("{}/generate", r.base), &body(&p2, 8)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids_of(&v), want2, "second turn differs from the reference");
    let fetched = prefill.metric("prefetched_tokens_total").await;
    assert!(
        fetched >= 32.0,
        "the prefill fetched {fetched} tokens from the L3 (the answer's pages)"
    );
    // A fresh colocated server on the same cluster reuses prompt + answer from the L3 too.
    let mut fresh = vec!["--page-size", "16", "--enable-hierarchical-cache"];
    fresh.extend(["--hicache-storage-prefetch-policy", "wait_complete"]);
    fresh.extend(l3);
    let f = Server::start(model.path(), &fresh);
    let (s, v) = post(&c, &f.url("/generate"), &body(&p2, 8)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids_of(&v), want2, "L3 reuse changed the answer");
    let cached = v["meta_info"]["cached_tokens"].as_u64().unwrap_or(0);
    assert!(
        cached >= 128,
        "fresh server reused {cached} tokens, want >= 128"
    );
    decode.wait_idle().await;
}

/// 64 concurrent PD requests while both sides break transfers on purpose (the test-only fault
/// rate): every request gives the colocated greedy output or a clean error, none hangs, and both
/// servers end with every page free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_random_faults_end_every_request_cleanly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let c = reqwest::Client::new();
    let colo = Server::start(model.path(), &["--page-size", "16"]);
    let boot = free_port();
    let (prefill, decode) = pd_pair(
        &model,
        boot,
        &["--disaggregation-test-failure-prob", "0.15"],
    );
    let r = router(&prefill.base, boot, &decode.base);
    let prompts: Vec<Vec<u32>> = (0..64)
        .map(|_| {
            let n = rng.random_range(5..120);
            (0..n).map(|_| rng.random_range(3..500u32)).collect()
        })
        .collect();
    let mut want = Vec::new();
    for p in &prompts {
        want.push(ids_of(
            &post(&c, &colo.url("/generate"), &body(p, 8)).await.1,
        ));
    }
    let all = futures::future::join_all(prompts.iter().map(|p| {
        let (c, url, b) = (c.clone(), format!("{}/generate", r.base), body(p, 8));
        async move { tokio::time::timeout(Duration::from_secs(60), post(&c, &url, &b)).await }
    }))
    .await;
    let (mut ok, mut failed_n) = (0, 0);
    for (res, w) in all.iter().zip(&want) {
        let (s, v) = res.as_ref().expect("a PD request hung");
        if failed(*s, v) {
            failed_n += 1;
            assert!(!v.to_string().is_empty(), "an error without a message");
        } else {
            assert_eq!(*s, 200, "{v}");
            assert_eq!(&ids_of(v), w, "a PD answer differs from colocated");
            ok += 1;
        }
    }
    println!("64 PD requests under injected faults: {ok} ok, {failed_n} failed cleanly");
    assert!(
        ok > 0 && failed_n > 0,
        "faults: {failed_n}, successes: {ok}"
    );
    assert!(prefill.metric("pd_transfer_failures_total").await > 0.0);
    // Nothing leaked on either side, and both keep serving.
    prefill.wait_idle().await;
    decode.wait_idle().await;
    let p = &prompts[0];
    let (s, v) = post(&c, &colo.url("/generate"), &body(p, 8)).await;
    assert_eq!((s, ids_of(&v)), (200, want[0].clone()));
    let (s, _) = decode.get("/health_generate").await;
    assert_eq!(s, 200);
    let (s, _) = prefill.get("/health_generate").await;
    assert_eq!(s, 200);
}

/// Pages left in the prefill's pool for a transfer whose acknowledgement never comes (the decode
/// stalls past the prefill's timeout before copying them) are freed when the prefill gives up; the
/// decode, which copies them afterwards, sees that the prefill gave up and fails the request with
/// a clear error instead of using pages that may have been reused. Both sides end idle with every
/// page free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_unacknowledged_transfer_times_out_and_frees_the_pool_pages() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let c = reqwest::Client::new();
    let boot = free_port();
    let timeout = [("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "2")];
    let prefill = pd_server(&model, "prefill", boot, &[], &timeout);
    let stall = ["--disaggregation-test-stall-ms", "3500"];
    let decode = pd_server(&model, "decode", boot, &stall, &[]);
    let p: Vec<u32> = (0..70).map(|_| rng.random_range(3..500u32)).collect();
    let t = Instant::now();
    let ((ps, pv), (ds, dv)) = legs(&c, &prefill, &decode, boot, 7, &body(&p, 4)).await;
    assert!(
        failed(ps, &pv),
        "the prefill leg succeeded without an ACK: {pv}"
    );
    assert!(pv.to_string().contains("acknowledgement"), "{pv}");
    assert!(
        failed(ds, &dv),
        "the decode used pages the prefill had freed: {dv}"
    );
    assert!(dv.to_string().contains("gave up"), "{dv}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert_eq!(prefill.metric("pd_transfer_failures_total").await, 1.0);
    prefill.wait_idle().await;
    decode.wait_idle().await;
}

/// A LoRA adapter through a PD pair: both legs load it, the prefill leg computes the prompt
/// with it and the decode leg decodes with it, so the answer equals the colocated server's with
/// the adapter (and differs from the base model's); base requests through the same pair are
/// unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_with_a_lora_adapter_equals_colocated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let ad = tempfile::tempdir().unwrap();
    let st = Command::new(serve_common::bin())
        .args(["make-model", "--out"])
        .arg(ad.path())
        .arg("--lora-for")
        .arg(model.path())
        .args(["--lora-rank", "4", "--seed", "3"])
        .status()
        .expect("make-model");
    assert!(st.success());
    let lora = format!("a1={}", ad.path().display());
    let flags = ["--lora-paths", lora.as_str()];
    let colo = Server::start(model.path(), &["--page-size", "16", flags[0], flags[1]]);
    let c = reqwest::Client::new();
    let boot = free_port();
    let (prefill, decode) = pd_pair(&model, boot, &flags);
    let r = router(&prefill.base, boot, &decode.base);
    // A made model's greedy answer can ignore a small adapter on some prompt (it repeats one
    // token either way): the adapter must change at least one of the six.
    let mut changed = 0;
    for i in 0..6 {
        let p: Vec<u32> = (0..[7, 40, 100][i % 3])
            .map(|_| rng.random_range(3..500u32))
            .collect();
        let base = body(&p, 10);
        let mut with = base.clone();
        with["lora_path"] = json!("a1");
        let want = ids_of(&post(&c, &colo.url("/generate"), &with).await.1);
        let plain = ids_of(&post(&c, &colo.url("/generate"), &base).await.1);
        changed += usize::from(want != plain);
        let (s, v) = post(&c, &format!("{}/generate", r.base), &with).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            ids_of(&v),
            want,
            "PD with the adapter differs from colocated"
        );
        let (s, v) = post(&c, &format!("{}/generate", r.base), &base).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(ids_of(&v), plain, "PD base request differs from colocated");
    }
    assert!(changed > 0, "the adapter changed none of the six answers");
}

/// PD legs with data-parallel replicas (`--dp-size 2` on both): the prefill replicas share one
/// bootstrap server (their transfers staged), each decode replica fetches into its own pool;
/// answers equal the colocated server's, one at a time and all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_with_data_parallel_legs_equals_colocated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let pd = pd_setup(&["--dp-size", "2"]);
    let prompts = random_prompts(&mut rng, 8);
    same_as_colocated(&pd.c, &pd.colo, &pd.r.base, &prompts, 10).await;
    assert!(pd.prefill.metric("pd_transfers_total").await >= 12.0);
}

/// Parallel sampling through a PD pair (`n > 1`, which SGLang's PD path does not serve): each
/// sample is a PD request of its own (both legs derive one room per sample from the request's),
/// so seeded samples of one prompt and of a batch of prompts equal the colocated server's, on
/// `/generate` and `/v1/completions`; greedy copies equal each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_parallel_sampling_equals_colocated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let pd = pd_setup(&[]);
    let (colo, c, r) = (&pd.colo, &pd.c, &pd.r);
    let prompts = random_prompts(&mut rng, 4);
    let all_ids = |v: &Value| -> Vec<Vec<u64>> {
        v.as_array()
            .unwrap_or_else(|| panic!("not a list: {v}"))
            .iter()
            .map(ids_of)
            .collect()
    };
    for (i, p) in prompts.iter().enumerate() {
        let seed = rng.random_range(0..1000u64);
        let b = json!({"input_ids": p, "sampling_params": {"n": 3, "temperature": 0.9,
            "seed": seed, "max_new_tokens": 12, "ignore_eos": true}});
        let want = all_ids(&post(c, &colo.url("/generate"), &b).await.1);
        assert_eq!(want.len(), 3);
        let (s, v) = post(c, &format!("{}/generate", r.base), &b).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            all_ids(&v),
            want,
            "prompt {i}: PD samples differ from colocated"
        );
    }
    // A batch of two prompts, two samples each (prompt-major), and greedy copies.
    let b = json!({"input_ids": [prompts[0], prompts[1]], "sampling_params": {"n": 2,
        "temperature": 0.7, "seed": 5, "max_new_tokens": 10, "ignore_eos": true}});
    let want = all_ids(&post(c, &colo.url("/generate"), &b).await.1);
    let (s, v) = post(c, &format!("{}/generate", r.base), &b).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(all_ids(&v), want, "PD batch samples differ from colocated");
    let b = json!({"input_ids": prompts[2], "sampling_params": {"n": 2, "temperature": 0,
        "max_new_tokens": 10, "ignore_eos": true}});
    let (s, v) = post(c, &format!("{}/generate", r.base), &b).await;
    assert_eq!(s, 200, "{v}");
    let got = all_ids(&v);
    assert_eq!(got[0], got[1], "greedy copies differ");
    assert_eq!(
        got[0],
        ids_of(
            &post(c, &colo.url("/generate"), &body(&prompts[2], 10))
                .await
                .1
        )
    );
    // The OpenAI route: n choices.
    let b = json!({"model": "m", "prompt": prompts[3], "n": 2, "temperature": 0.8, "seed": 9,
        "max_tokens": 8});
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap_or_else(|| panic!("no choices: {v}"))
            .iter()
            .map(|ch| ch["text"].as_str().unwrap().to_string())
            .collect()
    };
    let want = texts(&post(c, &colo.url("/v1/completions"), &b).await.1);
    let (s, v) = post(c, &format!("{}/v1/completions", r.base), &b).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(texts(&v), want, "PD completions differ from colocated");
    assert_eq!(want.len(), 2);
}

/// The decode server with overlap scheduling forced (`STRATA_OVERLAP_SCHEDULE=1`: rounds run
/// ahead of the forward in flight, the CPU runner's forwards held as if queued; the prefill
/// server runs without, as PD prefill servers do) and fewer running slots than requests (fetched
/// requests wait their turn while rounds run ahead): greedy answers one at a time and
/// concurrently, and concurrent seeded samples, equal the colocated server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_decode_with_overlap_equals_colocated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let colo = Server::start(model.path(), &["--page-size", "16"]);
    let boot = free_port();
    let prefill = pd_server(&model, "prefill", boot, &[], &[]);
    let decode = pd_server(
        &model,
        "decode",
        boot,
        &["--max-running-requests", "5"],
        &[("STRATA_OVERLAP_SCHEDULE", "1")],
    );
    let r = router(&prefill.base, boot, &decode.base);
    let c = reqwest::Client::new();
    let prompts = random_prompts(&mut rng, 12);
    same_as_colocated(&c, &colo, &r.base, &prompts, 20).await;
    let bodies: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({"input_ids": p, "sampling_params": {"temperature": 0.8, "top_p": 0.9,
                "seed": 100 + i, "max_new_tokens": 16, "ignore_eos": true}})
        })
        .collect();
    let answers = |url: String| {
        let c = c.clone();
        let bodies = bodies.clone();
        async move {
            futures::future::join_all(bodies.iter().map(|b| post(&c, &url, b)))
                .await
                .into_iter()
                .map(|(s, v)| {
                    assert_eq!(s, 200, "{v}");
                    ids_of(&v)
                })
                .collect::<Vec<_>>()
        }
    };
    let want = answers(colo.url("/generate")).await;
    let got = answers(format!("{}/generate", r.base)).await;
    assert_eq!(
        got, want,
        "seeded PD samples with overlap differ from colocated"
    );
}
