//! Foreign launch flags through the real binary: `strata serve`, `strata router` and `strata
//! master` start with command lines written for `sglang.launch_server`, `sglang_router.
//! launch_router` and `mooncake_master` (flags Strata does not implement are ignored with one
//! WARN line each, their values consumed), and still serve; a misspelled flag stays an error that
//! names it, and a refused security flag (TLS) is a clear error.

mod serve_common;

use serve_common::{bin, MadeModel, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strata_tests::free_port;

/// Runs `strata ARGS` expecting a start-up failure; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "strata {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ignores_sglang_flags_and_serves() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(
        m.path(),
        &[
            "--grammar-backend",
            "xgrammar",
            "--enable-torch-compile",
            "--attention-backend=triton",
            "--cuda-graph-bs-prefill",
            "1",
            "2",
            "4",
            "--cuda-graph-bs-decode",
            "1",
            "2",
            "--dist-timeout",
            "42",
            "--max-queued-requests",
            "42",
            "--allow-auto-truncate",
            "--log-requests-level",
            "1",
            "--enable-metrics",
            "--schedule-conservativeness",
            "0.3",
            "--random-seed",
            "42",
            "--schedule-policy",
            "lpm",
            "--stream-interval",
            "2",
            "--max-prefill-tokens",
            "8192",
            "--no-enable-tf32-matmul",
            "--custom-weight-loader",
            "--tensor-parallel-size",
            "1",
            "--trust-remote-code",
        ],
    );
    let v = s.greedy("Hello", 3).await;
    assert_eq!(v["meta_info"]["completion_tokens"], 3, "{v}");
    for line in [
        "no effect: --enable-torch-compile",
        "no effect: --attention-backend triton",
        "no effect: --cuda-graph-bs-prefill 1 2 4",
        "no effect: --dist-timeout 42",
        "no effect: --enable-metrics (/metrics is always served)",
        "no effect: --schedule-conservativeness 0.3",
        "no effect: --no-enable-tf32-matmul",
        "no effect: --custom-weight-loader",
    ] {
        assert_eq!(s.log_count(line), 1, "log lacks {line:?}");
    }
    // Implemented flags (and SGLang's alias of one) are never reported as ignored.
    assert_eq!(s.log_count("no effect: --tensor-parallel-size"), 0);
    assert_eq!(s.log_count("no effect: --trust-remote-code"), 0);
    assert_eq!(s.log_count("no effect: --cuda-graph-bs-decode"), 0);
    assert_eq!(s.log_count("no effect: --grammar-backend"), 0);
    for f in [
        "--random-seed",
        "--schedule-policy",
        "--stream-interval",
        "--max-prefill-tokens",
        "--max-queued-requests",
        "--allow-auto-truncate",
        "--log-requests-level",
    ] {
        assert_eq!(
            s.log_count(&format!("no effect: {f}")),
            0,
            "{f} is implemented"
        );
    }
    assert_eq!(s.log_count("no effect:"), 8, "{:?}", s.log.lock().unwrap());
    // --grammar-backend xgrammar names Strata's own engine: constrained requests are served.
    let (st, v) = s
        .post(
            "/generate",
            &serde_json::json!({"text": "Hello", "sampling_params": {"regex": "[0-9]{3}",
            "max_new_tokens": 8, "temperature": 0}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["text"].as_str().unwrap().len(), 3, "{v}");
    drop(s);

    // --grammar-backend none: constrained requests are refused with SGLang's message, others
    // are served.
    let s = Server::start(m.path(), &["--grammar-backend", "none"]);
    let (st, v) = s
        .post(
            "/generate",
            &serde_json::json!({"text": "Hello", "sampling_params": {"regex": "[0-9]{3}"}}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--grammar-backend none")),
        "{v}"
    );
    let v = s.greedy("Hello", 3).await;
    assert_eq!(v["meta_info"]["completion_tokens"], 3, "{v}");
    drop(s);

    let p = m.path().to_str().unwrap();
    let err = fails(&["serve", "--model-path", p, "--grammar-backnd", "xgrammar"]);
    assert!(err.contains("--grammar-backnd"), "{err}");
    let err = fails(&["serve", "--model-path", p, "--attention-backend"]);
    assert!(
        err.contains("--attention-backend") && err.contains("expects a value"),
        "{err}"
    );
    let err = fails(&["serve", "--model-path", p, "--grammar-backend", "bogus"]);
    assert!(
        err.contains("--grammar-backend") && err.contains("xgrammar"),
        "{err}"
    );
    let err = fails(&["serve", "--model-path", p, "--ssl-certfile", "c.pem"]);
    assert!(
        err.contains("--ssl-certfile") && err.contains("plain HTTP"),
        "{err}"
    );
}

/// A worker answering every request with 200 and a small JSON body (one request per connection).
fn mock_worker() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 {
                        return;
                    }
                    if h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let reply = br#"{"text":"ok","meta_info":{}}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                    reply.len()
                );
                let mut w = s;
                let _ = w
                    .write_all(head.as_bytes())
                    .and_then(|_| w.write_all(reply));
            });
        }
    });
    url
}

/// `POST /generate` on a fresh connection; the status code.
fn generate(port: u16) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = r#"{"text":"hi"}"#;
    write!(
        s,
        "POST /generate HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

#[test]
fn router_ignores_sglang_router_flags_and_routes() {
    let worker = mock_worker();
    // Ports picked free can be taken before the router binds them (the other tests start
    // servers on ephemeral ports): a router that exits is started again on fresh ones.
    let (mut child, status, log) = (1..=3)
        .find_map(|attempt| {
            let (port, prom) = (free_port(), free_port());
            let log = tempfile::NamedTempFile::new().unwrap();
            let mut child = Command::new(bin())
                .args(["router", "--worker-urls", &worker, "--host", "127.0.0.1"])
                .args([
                    "--port",
                    &port.to_string(),
                    "--prometheus-port",
                    &prom.to_string(),
                ])
                .args(["--prometheus-host", "127.0.0.1", "--log-level", "info"])
                .args([
                    "--mini-lb",
                    "--log-dir=/tmp/nowhere",
                    "--selector",
                    "app=a",
                    "tier=b",
                ])
                .args([
                    "--cors-allowed-origins",
                    "--max-idle-secs",
                    "10",
                    "--enable-trace",
                ])
                .env_remove("RUST_LOG")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log.reopen().unwrap())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match generate(port) {
                    Ok(st) => return Some((child, st, log)),
                    Err(_) if child.try_wait().unwrap().is_some() && attempt < 3 => return None,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => {
                        let _ = child.kill();
                        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                        panic!("router did not come up: {e}\n{text}");
                    }
                }
            }
        })
        .expect("a router came up");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    let text = std::fs::read_to_string(log.path()).unwrap();
    for line in [
        "no effect: --mini-lb",
        "no effect: --log-dir /tmp/nowhere",
        "no effect: --selector app=a tier=b",
        "no effect: --cors-allowed-origins",
        "no effect: --max-idle-secs 10",
        "no effect: --enable-trace",
    ] {
        assert_eq!(text.matches(line).count(), 1, "log lacks {line:?}:\n{text}");
    }
    let err = fails(&["router", "--worker-urls", &worker, "--dp-awar"]);
    assert!(err.contains("--dp-awar"), "{err}");
    let err = fails(&[
        "router",
        "--worker-urls",
        &worker,
        "--tls-cert-path",
        "c.pem",
    ]);
    assert!(
        err.contains("--tls-cert-path") && err.contains("plain HTTP"),
        "{err}"
    );
}

#[test]
fn master_ignores_mooncake_flags_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("master.json");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(bin())
        .args([
            "master",
            "-rpc_port=0",
            "--enable_http_metadata_server=true",
        ])
        .args(["--http_metadata_server_port=0", "--metrics_port", "0"])
        .args(["--state-file", state.to_str().unwrap()])
        .args([
            "--enable_ha=false",
            "--noenable_offload",
            "--eviction_ratio",
            "0.1",
        ])
        .args(["-v=1", "--default_kv_lease_ttl", "5000", "--logtostderr"])
        .env_remove("RUST_LOG")
        .env_remove("STRATA_AUTH_TOKEN")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.contains("ready"), "{ready:?}");
    // The metadata server answers: the master runs with the ignored flags.
    let http = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http_metadata="))
        .unwrap()
        .to_string();
    let mut s = TcpStream::connect(&http).unwrap();
    s.write_all(b"GET /metadata?key=nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 "), "{reply}");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(log.path()).unwrap();
    for line in [
        "no effect: --enable-ha false",
        "no effect: --noenable-offload",
        "no effect: --eviction-ratio 0.1",
        "no effect: --v 1",
        "no effect: --default-kv-lease-ttl 5000",
        "no effect: --logtostderr",
    ] {
        assert_eq!(text.matches(line).count(), 1, "log lacks {line:?}:\n{text}");
    }
    let err = fails(&["master", "--rpc_prt", "1"]);
    assert!(err.contains("--rpc-prt"), "{err}");
}
