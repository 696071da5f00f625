//! The real sglang-router (pip `sglang-router==0.3.2`, the Rust router behind
//! `python -m sglang_router.launch_router`) in front of two `strata serve` workers: `/generate`
//! (plain, streaming, with log-probabilities), `/v1/completions` and `/v1/chat/completions` must
//! all work through it, and the router's `x-request-id` must come back as `meta_info.id`.
//!
//! The router re-serialises request bodies and adds fields of SGLang's `GenerateReqInput`
//! (`model: null`, `return_hidden_states`, `no_logs`, ...); this test is what catches a worker
//! that rejects them. The router lives in a virtualenv at `.ci-cache/sglang-router` (made by
//! `.ci/run`; made here on first use when missing). Set `STRATA_SGLANG_ROUTER_VENV` to use
//! another one. When the venv cannot be made the test fails: it never passes without the router.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_tests::free_port;

const ROUTER_PKG: &str = "sglang-router==0.3.2";

fn venv_dir() -> PathBuf {
    std::env::var_os("STRATA_SGLANG_ROUTER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci-cache/sglang-router")
        })
}

fn has_router(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import sglang_router"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The venv's python with sglang-router importable; installs it when missing, panics if it
/// cannot.
fn router_python() -> PathBuf {
    let venv = venv_dir();
    let python = venv.join("bin/python");
    if has_router(&python) {
        return python;
    }
    eprintln!("installing {ROUTER_PKG} into {}", venv.display());
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", ROUTER_PKG])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok && has_router(&python),
        "could not install {ROUTER_PKG} into {} (needs python3 with venv and PyPI access); \
         .ci/run prepares it",
        venv.display()
    );
    python
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_router_fronts_two_strata_workers() {
    let python = router_python();
    let m = MadeModel::new("llama", "tiny");
    let w1 = Server::start(m.path(), &[]);
    let w2 = Server::start(m.path(), &[]);
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let router = KillOnDrop(
        Command::new(&python)
            .args(["-m", "sglang_router.launch_router", "--worker-urls"])
            .args([&w1.base, &w2.base])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--prometheus-port", &free_port().to_string()])
            .args(["--policy", "round_robin"])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start sglang-router"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value, rid: Option<&str>| {
        let mut r = client.post(format!("{base}{path}")).json(&body);
        if let Some(rid) = rid {
            r = r.header("x-request-id", rid);
        }
        r.send()
    };
    // Wait until the router has both workers and answers a generate.
    let deadline = Instant::now() + Duration::from_secs(60);
    let body =
        json!({"text": "Hello there", "sampling_params": {"temperature": 0, "max_new_tokens": 4}});
    loop {
        if let Ok(r) = post("/generate", body.clone(), None).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sglang-router never served /generate; its log:\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let direct = w1.greedy("Hello there", 4).await;
    // Round robin: consecutive requests reach both workers; every one must succeed.
    for i in 0..4 {
        let rid = format!("req-{i}");
        let r = post(
            "/generate",
            json!({"text": "Hello there", "return_logprob": true, "top_logprobs_num": 2,
                "sampling_params": {"temperature": 0, "max_new_tokens": 4}}),
            Some(&rid),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["output_ids"], direct["output_ids"], "{v}");
        assert_eq!(
            v["meta_info"]["id"],
            rid.as_str(),
            "x-request-id -> meta_info.id"
        );
        assert_eq!(
            v["meta_info"]["output_token_logprobs"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            v["meta_info"]["output_top_logprobs"][0][0][1],
            v["output_ids"][0]
        );
    }
    let served = |s: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with("sglang:num_requests_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let (_, m1) = w1.get("/metrics").await;
    let (_, m2) = w2.get("/metrics").await;
    assert!(
        served(&m1) >= 2 && served(&m2) >= 2,
        "both workers served requests: {} and {}",
        served(&m1),
        served(&m2)
    );
    // Streaming /generate through the router.
    let r = post(
        "/generate",
        json!({"text": "Hello there", "stream": true, "sampling_params": {"temperature": 0, "max_new_tokens": 4}}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // OpenAI endpoints through the router.
    let r = post(
        "/v1/completions",
        json!({"model": "m", "prompt": "Hello there", "max_tokens": 3, "temperature": 0, "logprobs": 1}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{v}"
    );
    let r = post(
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "logprobs": true, "top_logprobs": 1, "ignore_eos": true}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{v}"
    );
    drop(router);
}

/// `strata router` in front of a real worker: the id the router answers with in `x-request-id`
/// is the worker's `meta_info.id`, and errors have one shape whether the router or the worker
/// made them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_router_ids_and_error_shapes_match_the_worker() {
    let m = MadeModel::new("llama", "tiny");
    let w = Server::start(m.path(), &[]);
    let port = free_port();
    let bin = strata_tests::build_strata().unwrap();
    let _router = KillOnDrop(
        Command::new(bin)
            .args(["router", "--worker-urls", &w.base, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--prometheus-port", "0"])
            .args(["--policy", "round_robin", "--max-payload-size", "100000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{base}/health"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(Instant::now() < deadline, "strata router did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client
        .post(format!("{base}/generate"))
        .json(&json!({"text": "hi", "sampling_params": {"max_new_tokens": 2}}))
        .send()
        .await
        .unwrap();
    let hdr = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["meta_info"]["id"],
        hdr.as_str(),
        "router id -> meta_info.id"
    );
    // The worker's error, through the router; the router's own 413 and 404; the worker direct.
    let bad = client
        .post(format!("{base}/generate"))
        .json(&json!({"text": "hi", "sampling_params": {"top_p": 0}}))
        .send()
        .await
        .unwrap();
    let big = client
        .post(format!("{base}/generate"))
        .json(&json!({"text": "x".repeat(200_000)}))
        .send()
        .await
        .unwrap();
    // The unread body ends the connection; the 413 must say so, or the pooled connection is
    // reused for the next request and that request fails (seen in CI).
    assert_eq!(big.headers()["connection"], "close");
    let missing = client.get(format!("{base}/nope")).send().await.unwrap();
    let direct = client
        .post(format!("{}/generate", w.base))
        .json(&json!({"text": "hi", "sampling_params": {"top_p": 0}}))
        .send()
        .await
        .unwrap();
    for (r, code) in [(bad, 400), (big, 413), (missing, 404), (direct, 400)] {
        assert_eq!(r.status().as_u16(), code);
        let v: Value = r.json().await.unwrap();
        let mut keys: Vec<&String> = v["error"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["code", "message", "type"], "{v}");
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
}

/// The seed's PD setup with the real sglang-router 0.3.2 in front: a Strata prefill and a Strata
/// decode server; greedy output must equal a colocated server's; an `n = 2` request answers
/// both samples in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_router_pd_mode_over_strata_prefill_and_decode() {
    let python = router_python();
    let m = MadeModel::new("llama", "tiny");
    let colo = Server::start(m.path(), &["--page-size", "16"]);
    let boot = free_port().to_string();
    let prefill = Server::start(
        m.path(),
        &[
            "--page-size",
            "16",
            "--disaggregation-mode",
            "prefill",
            "--disaggregation-bootstrap-port",
            &boot,
        ],
    );
    let decode = Server::start(
        m.path(),
        &[
            "--page-size",
            "16",
            "--disaggregation-mode",
            "decode",
            "--disaggregation-bootstrap-port",
            &boot,
        ],
    );
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let _router = KillOnDrop(
        Command::new(&python)
            .args(["-m", "sglang_router.launch_router", "--pd-disaggregation"])
            .args(["--prefill", &prefill.base, &boot])
            .args(["--decode", &decode.base])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--prometheus-port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start sglang-router"),
    );
    let url = format!("http://127.0.0.1:{port}/generate");
    let client = reqwest::Client::new();
    let texts = [
        "Hello there",
        "The quick brown fox jumps over the lazy dog and keeps running",
    ];
    let body =
        |t: &str| json!({"text": t, "sampling_params": {"temperature": 0, "max_new_tokens": 8}});
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.post(&url).json(&body(texts[0])).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sglang-router (PD) never served /generate; its log:\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in texts {
        let want = colo.greedy(t, 8).await;
        let r = client.post(&url).json(&body(t)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["output_ids"], want["output_ids"],
            "PD via sglang-router: {v}"
        );
        assert_eq!(v["text"], want["text"]);
    }
    // n > 1 through sglang-router: the workers run each sample as a PD request of its own, so
    // the answer holds both samples in full. (Seeded samples through this router differ from the
    // colocated server's for n = 1 too: the router does not forward the request unchanged, so
    // only the shape is compared here; pd_e2e.rs compares seeded samples through strata router.)
    let b = json!({"text": texts[1], "sampling_params": {"n": 2, "temperature": 0.8, "seed": 3,
        "max_new_tokens": 8, "ignore_eos": true}});
    let r = client.post(&url).json(&b).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    let all = got
        .as_array()
        .unwrap_or_else(|| panic!("n = 2: not a list: {got}"));
    assert_eq!(all.len(), 2, "{got}");
    for s in all {
        assert_eq!(s["output_ids"].as_array().map(Vec::len), Some(8), "{got}");
        assert_eq!(s["meta_info"]["finish_reason"]["type"], "length", "{got}");
    }
    decode.wait_idle().await;
    prefill.wait_idle().await;
}
