//! `strata router` as a real process: flag errors, regular and PD forwarding through the binary's
//! own flag parsing, the metrics listener, and graceful shutdown on SIGTERM.
//!
//! The worker is a tiny blocking HTTP/1.1 server on a thread that records every request body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_tests::free_port;

type Bodies = Arc<Mutex<Vec<serde_json::Value>>>;

/// Starts a worker that answers every request with a fixed JSON reply; returns its URL.
fn mock_worker() -> (String, Bodies) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let bodies: Bodies = Arc::default();
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve_conn(s, seen));
        }
    });
    (url, bodies)
}

fn serve_conn(s: TcpStream, seen: Bodies) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        if let Ok(v) = serde_json::from_slice(&body) {
            seen.lock().unwrap().push(v);
        }
        let reply = br#"{"text":"e2e","meta_info":{}}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(reply))
            .is_err()
        {
            return;
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

struct Router {
    child: Child,
    port: u16,
    prom: u16,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_router(args: &[&str]) -> Router {
    let bin = strata_tests::build_strata().unwrap();
    let (port, prom) = (free_port(), free_port());
    let child = Command::new(bin)
        .arg("router")
        .args(args)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            &prom.to_string(),
        ])
        .args(["--log-level", "warn"])
        // More serving threads than CI's cores, so that connections are spread over several.
        .env("STRATA_ROUTER_THREADS", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Owned by `Router` at once, so that a failed start still kills and reaps it.
    let router = Router { child, port, prom };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if matches!(http(port, "GET", "/health", ""), Ok((200, _))) {
            return router;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("router did not come up on port {port}");
}

#[test]
fn unknown_flags_are_errors_that_name_the_flag() {
    let bin = strata_tests::build_strata().unwrap();
    let out = Command::new(bin)
        .args(["router", "--no-such-flag", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn regular_mode_forwards_serves_metrics_and_stops_on_sigterm() {
    let (url, bodies) = mock_worker();
    let mut r = start_router(&["--worker-urls", &url, "--policy", "round_robin"]);
    let (status, body) = http(r.port, "POST", "/generate", r#"{"text":"hi"}"#).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"text":"e2e","meta_info":{}}"#)
    );
    assert_eq!(bodies.lock().unwrap()[0]["text"], "hi");
    let (status, metrics) = http(r.prom, "GET", "/metrics", "").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sgl_router_requests_total{route=\"/generate\"} 1"),
        "{metrics}"
    );
    // SIGTERM: graceful shutdown, exit status 0.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = r.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "router did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pd_mode_parses_repeated_prefill_flags() {
    let (p1, pb1) = mock_worker();
    let (p2, pb2) = mock_worker();
    let (d, db) = mock_worker();
    let r = start_router(&[
        "--pd-disaggregation",
        "--prefill",
        &p1,
        "8998",
        "--prefill",
        &p2,
        "--decode",
        &d,
        "--policy",
        "round_robin",
    ]);
    for _ in 0..2 {
        let (status, _) = http(r.port, "POST", "/generate", r#"{"text":"hi"}"#).unwrap();
        assert_eq!(status, 200);
    }
    // The mock prefills record a body when they have read it, which can trail the router's answer.
    let t = std::time::Instant::now();
    while (pb1.lock().unwrap().is_empty() || pb2.lock().unwrap().is_empty())
        && t.elapsed() < std::time::Duration::from_secs(5)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (b1, b2) = (
        pb1.lock().unwrap()[0].clone(),
        pb2.lock().unwrap()[0].clone(),
    );
    assert_eq!(b1["bootstrap_port"], 8998);
    assert_eq!(b2["bootstrap_port"], serde_json::Value::Null);
    assert_eq!(b1["bootstrap_host"], "127.0.0.1");
    assert_eq!(db.lock().unwrap().len(), 2);
    let (status, _) = http(r.port, "GET", "/readiness", "").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn several_serving_threads_share_the_port_and_a_second_router_is_refused() {
    let (url, bodies) = mock_worker();
    let r = start_router(&["--worker-urls", &url, "--policy", "round_robin"]);
    // Many connections at once: the kernel spreads them over the per-core listeners, and every
    // one is answered.
    let port = r.port;
    let clients: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"text":"c{i}"}}"#);
                http(port, "POST", "/generate", &body).unwrap()
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap().0, 200);
    }
    assert_eq!(bodies.lock().unwrap().len(), 16);
    // A second router asking for the same port gets a bind error, not a share of the port.
    let bin = strata_tests::build_strata().unwrap();
    let out = Command::new(bin)
        .args(["router", "--worker-urls", &url, "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--prometheus-port", "0"])
        .args(["--worker-startup-timeout-secs", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("in use"), "{err}");
    // The first one keeps serving.
    assert_eq!(
        http(port, "POST", "/generate", r#"{"text":"x"}"#)
            .unwrap()
            .0,
        200
    );
}
