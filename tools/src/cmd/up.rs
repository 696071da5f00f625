//! `strata up`: the whole stack on one machine from a built-in default — a generated tiny model, a
//! master, one store node (its page store under the data folder), an inference server with HiCache on
//! that store (or, with `--pd`, a prefill and a decode server) and a router in front — then one
//! request through the router. It keeps serving until Ctrl-C (or exits after the
//! request with `--smoke`).
//!
//! Every role runs as a child process of this same binary, exactly as an operator would start them.
//! Ports are checked before anything starts (a taken one is refused by name); every address is
//! printed once the stack is up; stopping sends SIGTERM to the children one at a time, newest
//! first, and SIGKILL only to one still running after a grace period, so the store seals its open
//! segment and leaves the membership, and the servers and router finish in-flight requests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the model, the page store and the master's state (created if missing).
    #[arg(long, default_value = "strata-data")]
    data_dir: PathBuf,
    /// Router port (the ports above it are taken too: +1 server, +2 master RPC, +3 metadata HTTP,
    /// +4 master metrics, +5 and +6 the PD bootstrap and decode ports with --pd, +7 router
    /// metrics).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Page store capacity.
    #[arg(long, default_value = "1GiB")]
    capacity: String,
    /// Send one request through the router, print the answer, stop everything and exit.
    #[arg(long)]
    smoke: bool,
    /// The PD deployment: a prefill server (HiCache + L3, bootstrap port +5) and a decode server
    /// (+6) behind the router in PD mode, instead of one colocated server.
    #[arg(long)]
    pd: bool,
}

/// How long a child gets to stop after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Children are stopped when this guard drops, whatever the exit path, one at a time and newest
/// first (router, servers, store, master: the store leaves the membership while the master still
/// runs): SIGTERM, then SIGKILL if it is still running after [`GRACE`].
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (name, c) in self.0.iter_mut().rev() {
            if let Ok(None) = c.try_wait() {
                // SAFETY: kill(2) on the pid of a child we have not reaped yet.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + GRACE;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        eprintln!("{name} did not stop within {GRACE:?} of SIGTERM; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// Fails, naming the port and its role, when any port `up` needs is taken.
fn check_ports(ports: &[(u16, &str)]) -> anyhow::Result<()> {
    for &(port, role) in ports {
        if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", port)) {
            bail!(
                "port {port} ({role}) is not available: {e}; choose another --port \
                 (strata up uses --port to --port+7)"
            );
        }
    }
    Ok(())
}

fn spawn(kids: &mut Children, name: &str, args: &[String], log: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(exe)
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    eprintln!(
        "started {name:<7} (pid {}, log {})",
        child.id(),
        log.display()
    );
    kids.0.push((name.to_string(), child));
    Ok(())
}

fn wait_http(kids: &mut Children, url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let client = http::blocking_client()?;
    loop {
        if client
            .get(url)
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        for (name, c) in &mut kids.0 {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited early ({status}); see its log in the data folder");
            }
        }
        if Instant::now() > deadline {
            bail!("{url} did not become healthy within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

mod http {
    //! A tiny blocking HTTP/1.1 client over std (enough for health checks and one request).
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub struct Client;
    pub struct Resp {
        status: u16,
        pub body: String,
    }
    impl Resp {
        pub fn status(&self) -> Status {
            Status(self.status)
        }
    }
    pub struct Status(u16);
    impl Status {
        pub fn is_success(&self) -> bool {
            (200..300).contains(&self.0)
        }
    }
    pub struct Req {
        url: String,
        body: Option<String>,
    }
    pub fn blocking_client() -> std::io::Result<Client> {
        Ok(Client)
    }
    impl Client {
        pub fn get(&self, url: &str) -> Req {
            Req {
                url: url.into(),
                body: None,
            }
        }
        pub fn post(&self, url: &str, body: String) -> Req {
            Req {
                url: url.into(),
                body: Some(body),
            }
        }
    }
    impl Req {
        pub fn send(self) -> std::io::Result<Resp> {
            let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let mut s = TcpStream::connect(host)?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
            let req = match &self.body {
                None => format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
                Some(b) => format!(
                    "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                ),
            };
            s.write_all(req.as_bytes())?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)?;
            let status = raw
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = raw
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Ok(Resp { status, body })
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let p = a.port;
    if p > u16::MAX - 7 {
        bail!("--port {p}: strata up needs --port to --port+7");
    }
    let (serve, rpc, meta, metrics) = (p + 1, p + 2, p + 3, p + 4);
    let (boot, decode, router_metrics) = (p + 5, p + 6, p + 7);
    let mut ports = vec![
        (p, "router"),
        (serve, if a.pd { "prefill server" } else { "server" }),
        (rpc, "master RPC"),
        (meta, "master metadata HTTP"),
        (metrics, "master metrics"),
        (router_metrics, "router metrics"),
    ];
    if a.pd {
        ports.extend([(boot, "PD bootstrap"), (decode, "decode server")]);
    }
    check_ports(&ports)?;
    std::fs::create_dir_all(&a.data_dir)?;
    let dir = a.data_dir.canonicalize()?;
    let model = dir.join("model-tiny");
    let exe = std::env::current_exe()?;
    if !model.join("config.json").exists() {
        let st = Command::new(&exe)
            .args(["make-model", "--out"])
            .arg(&model)
            .args(["--arch", "llama", "--size", "tiny"])
            .status()?;
        if !st.success() {
            bail!("make-model failed");
        }
        eprintln!("made a tiny llama model in {}", model.display());
    }
    let s = |v: &str| v.to_string();
    let d = |f: &str| dir.join(f).display().to_string();
    let mut kids = Children(Vec::new());
    spawn(
        &mut kids,
        "master",
        &[
            s("master"),
            s("--rpc-port"),
            rpc.to_string(),
            s("--enable-http-metadata-server=true"),
            s("--http-metadata-server-port"),
            meta.to_string(),
            s("--metrics-port"),
            metrics.to_string(),
            s("--state-file"),
            d("master-state.json"),
        ],
        &dir.join("master.log"),
    )?;
    wait_http(
        &mut kids,
        &format!("http://127.0.0.1:{metrics}/metrics"),
        Duration::from_secs(30),
    )?;
    spawn(
        &mut kids,
        "store",
        &[
            s("store"),
            s("--master"),
            format!("127.0.0.1:{rpc}"),
            s("--device"),
            d("store.strata"),
            s("--capacity"),
            a.capacity.clone(),
            s("--memory"),
            s("256MiB"),
        ],
        &dir.join("store.log"),
    )?;
    let mut serve_args = vec![
        s("serve"),
        s("--model-path"),
        model.display().to_string(),
        s("--port"),
        serve.to_string(),
        s("--page-size"),
        s("64"),
        // The seed's quick start: HiCache with the store above as its L3.
        s("--enable-hierarchical-cache"),
        s("--hicache-storage-prefetch-policy"),
        s("timeout"),
        s("--hicache-storage-backend"),
        s("strata"),
        s("--hicache-storage-backend-extra-config"),
        format!(r#"{{"master_server_address": "127.0.0.1:{rpc}"}}"#),
    ];
    if a.pd {
        serve_args.extend([
            s("--disaggregation-mode"),
            s("prefill"),
            s("--disaggregation-bootstrap-port"),
            boot.to_string(),
        ]);
    }
    let name = if a.pd { "prefill" } else { "serve" };
    spawn(
        &mut kids,
        name,
        &serve_args,
        &dir.join(format!("{name}.log")),
    )?;
    if a.pd {
        spawn(
            &mut kids,
            "decode",
            &[
                s("serve"),
                s("--model-path"),
                model.display().to_string(),
                s("--port"),
                decode.to_string(),
                s("--page-size"),
                s("64"),
                s("--disaggregation-mode"),
                s("decode"),
                s("--disaggregation-bootstrap-port"),
                boot.to_string(),
            ],
            &dir.join("decode.log"),
        )?;
    }
    for port in if a.pd {
        vec![serve, decode]
    } else {
        vec![serve]
    } {
        wait_http(
            &mut kids,
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(120),
        )?;
    }
    let router_args = if a.pd {
        vec![
            s("router"),
            s("--pd-disaggregation"),
            s("--prefill"),
            format!("http://127.0.0.1:{serve}"),
            boot.to_string(),
            s("--decode"),
            format!("http://127.0.0.1:{decode}"),
            s("--port"),
            p.to_string(),
            s("--prometheus-port"),
            router_metrics.to_string(),
        ]
    } else {
        vec![
            s("router"),
            s("--worker-urls"),
            format!("http://127.0.0.1:{serve}"),
            s("--port"),
            p.to_string(),
            s("--prometheus-port"),
            router_metrics.to_string(),
        ]
    };
    spawn(&mut kids, "router", &router_args, &dir.join("router.log"))?;
    wait_http(
        &mut kids,
        &format!("http://127.0.0.1:{p}/health"),
        Duration::from_secs(30),
    )?;
    let body = r#"{"text": "Let me tell you a long story ", "sampling_params": {"temperature": 0, "max_new_tokens": 32}}"#;
    let client = http::blocking_client()?;
    let r = client
        .post(&format!("http://127.0.0.1:{p}/generate"), body.to_string())
        .send()?;
    if !r.status().is_success() {
        bail!("the smoke request failed: {}", r.body);
    }
    println!("POST /generate via the router -> {}", r.body.trim());
    let h = "http://127.0.0.1";
    let servers = if a.pd {
        format!(
            "  prefill server  {h}:{serve}   (metrics {h}:{serve}/metrics, PD bootstrap :{boot})\n\
             \x20 decode server   {h}:{decode}   (metrics {h}:{decode}/metrics)"
        )
    } else {
        format!("  server          {h}:{serve}   (metrics {h}:{serve}/metrics)")
    };
    println!(
        "\nstrata is up:\n\
         \x20 router          {h}:{p}   (metrics {h}:{router_metrics}/metrics)\n\
         {servers}\n\
         \x20 master RPC      127.0.0.1:{rpc}\n\
         \x20 master metadata {h}:{meta}/metadata\n\
         \x20 master metrics  {h}:{metrics}/metrics\n\
         \x20 store           {} (registered with the master; log {})\n\
         \x20 logs            {}/*.log",
        d("store.strata"),
        d("store.log"),
        dir.display()
    );
    if a.smoke {
        return Ok(());
    }
    println!(
        "try: curl -s {h}:{p}/generate -d '{{\"text\": \"Hello\", \"sampling_params\": {{\"temperature\": 0}}}}'\n\
         Ctrl-C stops everything."
    );
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc_channel(tx);
    loop {
        if rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            eprintln!("stopping");
            return Ok(());
        }
        for (name, c) in &mut kids.0 {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "{name} exited ({status}); see {}",
                    dir.join(format!("{name}.log")).display()
                );
            }
        }
    }
}

/// Sends once on SIGINT/SIGTERM (a tokio runtime on a helper thread waits for the signals).
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        let _ = tx.send(());
    });
}
