//! End-to-end PD disaggregation with real processes: a prefill server, a decode server and the
//! Strata router in PD mode, against a colocated reference server on the same made model. Greedy
//! output through the pair must equal the colocated output token for token; transfer failures
//! must end the request with a clear error on both legs, never a hang.

mod cluster_util;
mod serve_common;

use cluster_util::{free_port, seed};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use serve_common::{MadeModel, Server};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Router {
    child: Child,
    base: String,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn router(prefill: &str, boot: u16, decode: &str) -> Router {
    let port = free_port();
    let child = Command::new(serve_common::bin())
        .args(["router", "--pd-disaggregation", "--prefill", prefill])
        .arg(boot.to_string())
        .args(["--decode", decode, "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--prometheus-port", &free_port().to_string()])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn router");
    let r = Router {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("router did not come up");
}

fn pd_pair(model: &MadeModel, boot: u16, extra: &[&str]) -> (Server, Server) {
    let b = boot.to_string();
    let mut pf = vec!["--page-size", "16", "--disaggregation-mode", "prefill"];
    pf.extend(["--disaggregation-bootstrap-port", &b]);
    pf.extend(extra);
    let prefill = Server::start(model.path(), &pf);
    let mut df = vec!["--page-size", "16", "--disaggregation-mode", "decode"];
    df.extend(["--disaggregation-bootstrap-port", &b]);
    df.extend(extra);
    let decode = Server::start(model.path(), &df);
    (prefill, decode)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_greedy_output_equals_colocated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let colo = Server::start(model.path(), &["--page-size", "16"]);
    let c = reqwest::Client::new();
    let boot = free_port();
    let (prefill, decode) = pd_pair(&model, boot, &[]);
    let r = router(&prefill.base, boot, &decode.base);
    let prompts: Vec<Vec<u32>> = (0..12)
        .map(|i| {
            (0..[5, 16, 37, 100][i % 4])
                .map(|_| rng.random_range(3..500u32))
                .collect()
        })
        .collect();
    let mut want = Vec::new();
    for p in &prompts {
        want.push(ids_of(
            &post(&c, &colo.url("/generate"), &body(p, 12)).await.1,
        ));
    }
    // One at a time, then all at once.
    for (p, w) in prompts.iter().zip(&want).take(4) {
        let (s, v) = post(&c, &format!("{}/generate", r.base), &body(p, 12)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(&ids_of(&v), w, "PD output differs from colocated");
    }
    let all = futures::future::join_all(prompts.iter().map(|p| {
        let (c, url, b) = (c.clone(), format!("{}/generate", r.base), body(p, 12));
        async move { post(&c, &url, &b).await }
    }))
    .await;
    for ((s, v), w) in all.iter().zip(&want) {
        assert_eq!(*s, 200, "{v}");
        assert_eq!(&ids_of(v), w, "concurrent PD output differs from colocated");
    }
    // Streamed through the router.
    let mut sb = body(&prompts[3], 12);
    sb["stream"] = json!(true);
    let events = decode_stream(&c, &format!("{}/generate", r.base), &sb).await;
    let last: Value = serde_json::from_str(events.last().expect("events")).unwrap();
    assert_eq!(ids_of(&last), want[3]);
    // Log-probabilities through the pair: the router puts the prefill's input list in front of
    // the decode's (empty: the decode leg never runs the prompt), as sglang-router merges them,
    // so it equals the colocated one; output values equal colocated after the first token (that
    // one is sampled on the prefill leg and crosses without its values: null, kept aligned).
    let mut lb = body(&prompts[1], 6);
    lb["return_logprob"] = json!(true);
    lb["logprob_start_len"] = json!(0);
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
    assert_eq!(po[0][0], Value::Null);
    for j in 1..6 {
        assert_eq!(co[j][1], po[j][1]);
        close(&co[j][0], &po[j][0], &format!("output {j}"));
    }
    // A client that bypasses the router and reuses a room gets a 400 from the prefill.
    let mut dup = body(&prompts[0], 4);
    dup["bootstrap_host"] = json!("127.0.0.1");
    dup["bootstrap_port"] = json!(boot);
    dup["bootstrap_room"] = json!(77);
    let first = tokio::spawn({
        let (c, url, d) = (c.clone(), prefill.url("/generate"), dup.clone());
        async move { post(&c, &url, &d).await }
    });
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
    let short = [("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "3")];
    let model = MadeModel::new("llama", "tiny");
    let boot = free_port();
    let c = reqwest::Client::new();
    let ids: Vec<u32> = (3..60).collect();
    // A decode leg whose prefill never answers: a clear error once the wait times out.
    let b2 = boot.to_string();
    let decode = Server::start_env(
        model.path(),
        &[
            "--page-size",
            "16",
            "--disaggregation-mode",
            "decode",
            "--disaggregation-bootstrap-port",
            &b2,
        ],
        &short,
    );
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
    let prefill = Server::start_env(
        model.path(),
        &[
            "--page-size",
            "16",
            "--disaggregation-mode",
            "prefill",
            "--disaggregation-bootstrap-port",
            &b2,
        ],
        &short,
    );
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
    // The prefill killed while the decode waits for it: the decode leg fails, never hangs.
    b["bootstrap_room"] = json!(7);
    let waiting = tokio::spawn({
        let (c, url, d) = (c.clone(), decode.url("/generate"), b.clone());
        async move { post(&c, &url, &d).await }
    });
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
