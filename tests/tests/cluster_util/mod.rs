//! Helpers for the cluster end-to-end tests: start `strata master` / `strata store` as real child
//! processes on loopback (killed on drop), parse their ready lines, and speak minimal HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    /// `key=value` pairs of the ready line.
    pub ready: Vec<(String, String)>,
}

impl Proc {
    pub fn get(&self, k: &str) -> String {
        self.ready
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("ready line has no {k}: {:?}", self.ready))
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `strata ARGS` and waits (at most 60 s) for its "ready" stdout line.
pub fn spawn(args: &[String]) -> Proc {
    let bin = strata_tests::build_strata().expect("build strata");
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("STRATA_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn strata");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("strata {args:?} printed no ready line"));
    assert!(line.contains("ready"), "unexpected first line {line:?}");
    let ready = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    Proc { child, ready }
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Master on free ports with HTTP metadata on, state in `dir`.
pub fn master(dir: &Path, rpc_port: u16, extra: &[&str]) -> Proc {
    let state = dir.join("master.json");
    let mut a = s(&[
        "master",
        "--rpc_port",
        &rpc_port.to_string(),
        "--enable_http_metadata_server=true",
        "--http_metadata_server_port=0",
        "--metrics-port",
        "0",
        "--heartbeat-timeout-ms",
        "1500",
        "--state-file",
        state.to_str().unwrap(),
    ]);
    a.extend(s(extra));
    spawn(&a)
}

/// A store node on a free port with its device at `dev`.
pub fn store(master: &str, dev: &Path, extra: &[&str]) -> Proc {
    let mut a = s(&[
        "store",
        "--master",
        master,
        "--device",
        dev.to_str().unwrap(),
        "--capacity",
        "512MiB",
        "--memory",
        "64MiB",
        "--segment-size",
        "16MiB",
        "--heartbeat-ms",
        "300",
    ]);
    a.extend(s(extra));
    spawn(&a)
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("http connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // axum may answer chunked; the tests only look for substrings.
    (status, body.to_owned())
}

#[allow(unused_imports)]
pub use strata_tests::free_port;

/// The test's seed: `STRATA_TEST_SEED` or the clock, printed so a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed = {seed} (replay with STRATA_TEST_SEED={seed})");
    seed
}
