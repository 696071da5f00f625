//! Helpers for the `strata serve` end-to-end tests: make a model with the real binary, start a
//! server on an ephemeral port (read back from its log), and talk to it over HTTP.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The numbers of a JSON list.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The token ids (non-negative integers) of a JSON list.
pub fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// The JSON lines of a stream's events ([`Server::stream`]), which must end with `[DONE]`.
pub fn json_lines(events: &[String]) -> Vec<Value> {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect()
}

/// Runs `strata serve --model-path MODEL FLAGS --port 0` expecting a start-up failure; returns
/// its stderr.
pub fn serve_fails(model: &Path, flags: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["serve", "--model-path"])
        .arg(model)
        .args(flags)
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve {flags:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A made model directory (removed on drop).
pub struct MadeModel {
    pub dir: tempfile::TempDir,
}

impl MadeModel {
    pub fn new(arch: &str, size: &str) -> MadeModel {
        Self::with_seed(arch, size, 0)
    }
    /// A made model of weights drawn from `seed`.
    pub fn with_seed(arch: &str, size: &str, seed: u64) -> MadeModel {
        let bin = strata_tests::build_strata().expect("build strata");
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = seed.to_string();
        let st = Command::new(bin)
            .args(["make-model", "--out"])
            .arg(dir.path())
            .args(["--arch", arch, "--size", size, "--seed", &seed])
            .status()
            .expect("run make-model");
        assert!(st.success(), "make-model failed");
        MadeModel { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// `(vocab_size, hidden_size)` from its config.json.
    pub fn dims(&self) -> (usize, usize) {
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(self.path().join("config.json")).unwrap(),
        )
        .unwrap();
        let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
        (n("vocab_size"), n("hidden_size"))
    }
}

/// A running `strata serve` (killed on drop).
pub struct Server {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    /// Every line the server wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts a server on `model` with extra flags; waits until it listens.
    pub fn start(model: &Path, flags: &[&str]) -> Server {
        Self::start_env(model, flags, &[])
    }

    /// A HiCache server (page size 16, `wait_complete` prefetches) whose L3 is the directory
    /// `dir`, given as SGLang takes it (by environment), with extra config `extra`.
    pub fn file_l3(model: &Path, dir: &Path, extra: &str) -> Server {
        Self::file_l3_with(model, dir, extra, &[])
    }

    /// [`Server::file_l3`] with more flags.
    pub fn file_l3_with(model: &Path, dir: &Path, extra: &str, more: &[&str]) -> Server {
        let mut flags = vec![
            "--page-size",
            "16",
            "--enable-hierarchical-cache",
            "--hicache-storage-backend",
            "file",
            "--hicache-storage-prefetch-policy",
            "wait_complete",
            "--hicache-storage-backend-extra-config",
            extra,
        ];
        flags.extend_from_slice(more);
        Self::start_env(
            model,
            &flags,
            &[(
                "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR",
                dir.to_str().unwrap(),
            )],
        )
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_env(model: &Path, flags: &[&str], env: &[(&str, &str)]) -> Server {
        let bin = strata_tests::build_strata().expect("build strata");
        let mut child = Command::new(bin)
            .envs(env.iter().copied())
            .args(["serve", "--model-path"])
            .arg(model)
            .args(["--port", "0", "--log-level", "info"])
            .args(flags)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(strip_ansi(&line));
                if !sent {
                    if let Some(i) = line.find("listening on http://") {
                        let addr = line[i + "listening on ".len()..].trim().to_string();
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
                if std::env::var_os("STRATA_TEST_LOG").is_some() {
                    eprintln!("[serve] {line}");
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not start listening within 60 s");
        let base = strip_ansi(&base);
        Server {
            child,
            base,
            client: reqwest::Client::new(),
            log,
        }
    }

    /// How many lines of the server's log so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits (up to 10 s) until at least `n` lines contain `needle`, and returns how many do.
    /// The log reaches the test through a reader thread, so a line written before a response
    /// was sent may still be in flight when the response arrives.
    pub fn wait_log_count(&self, needle: &str, n: usize) -> usize {
        let t0 = std::time::Instant::now();
        loop {
            let c = self.log_count(needle);
            if c >= n || t0.elapsed() > Duration::from_secs(10) {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs JSON; returns (status, body as JSON).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs a raw body.
    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.expect("send");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    pub async fn delete(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// The served model's LM head (`[vocab][hidden]`, from `/get_weights_by_name`).
    pub async fn lm_head(&self, vocab: usize) -> Vec<Vec<f64>> {
        let (st, w) = self
            .post(
                "/get_weights_by_name",
                &serde_json::json!({"name": "lm_head.weight", "truncate_size": vocab}),
            )
            .await;
        assert_eq!(st, 200, "{w}");
        w.as_array().unwrap().iter().map(floats).collect()
    }

    /// Greedy `/generate` of `text`; returns the response JSON.
    pub async fn greedy(&self, text: &str, max_new_tokens: usize) -> Value {
        let (s, v) = self
            .post(
                "/generate",
                &serde_json::json!({"text": text, "sampling_params": {"temperature": 0, "max_new_tokens": max_new_tokens}}),
            )
            .await;
        assert_eq!(s, 200, "generate failed: {v}");
        v
    }

    /// The SSE `data:` payloads of a streaming POST.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        use futures::StreamExt;
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 200);
        let mut s = r.bytes_stream();
        // The bytes first, decoded once: a character split across two network chunks (such as
        // a U+FFFD in a token's text) must not become two replacement characters.
        let mut bytes = Vec::new();
        while let Some(chunk) = s.next().await {
            bytes.extend_from_slice(&chunk.expect("chunk"));
        }
        let buf = String::from_utf8(bytes).expect("a stream of UTF-8 text");
        // Each event's data line (an `event:` line may come first).
        buf.split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(str::to_string)
            .collect()
    }

    /// The server process's id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit on its own; its status, None if it runs on.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// `sglang:<name>` from `/metrics`; 0 when the series is absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(&format!("sglang:{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls [`metric`](Self::metric) until it reaches `min` or 20 s pass (L3 writes and other
    /// counters move asynchronously); returns the last value.
    pub async fn wait_metric(&self, name: &str, min: f64) -> f64 {
        let t = Instant::now();
        loop {
            let v = self.metric(name).await;
            if v >= min || t.elapsed() > Duration::from_secs(20) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/get_server_info` internal state.
    pub async fn state(&self) -> Value {
        let (_, t) = self.get("/get_server_info").await;
        let v: Value = serde_json::from_str(&t).expect("server info json");
        v["internal_states"][0].clone()
    }

    /// Waits until no request runs or waits and `free + cached == total` pages; returns the state.
    pub async fn wait_idle(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.state().await;
            let n = |k: &str| st[k].as_u64().unwrap_or(u64::MAX);
            if n("num_running_reqs") == 0
                && n("num_waiting_reqs") == 0
                && n("free_pages") + n("cached_pages") == n("total_pages")
            {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "server did not become idle: {st}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        if c == '\u{1b}' {
            esc = true;
        } else if esc {
            if c == 'm' {
                esc = false;
            }
        } else {
            out.push(c);
        }
    }
    out.trim().to_string()
}

pub fn bin() -> PathBuf {
    strata_tests::build_strata().expect("build strata")
}

#[allow(unused_imports)]
pub use strata_tests::free_port;

/// A running `strata router` (killed on drop).
pub struct Router {
    child: Child,
    pub base: String,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Router {
    /// Starts `strata router ARGS` on free ports (logging warnings only); waits until it
    /// accepts connections.
    pub fn start(args: &[&str]) -> Router {
        let port = free_port();
        let child = Command::new(bin())
            .arg("router")
            .args(args)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
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
}
