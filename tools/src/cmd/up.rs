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

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use super::stack::{self, check_ports, http, roles, Stack};

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
    check_ports(
        &ports,
        "choose another --port (strata up uses --port to --port+7)",
    )?;
    std::fs::create_dir_all(&a.data_dir)?;
    let dir = a.data_dir.canonicalize()?;
    let model = roles::ensure_model(&dir)?;
    let d = |f: &str| dir.join(f).display().to_string();
    let log = |name: &str| dir.join(format!("{name}.log"));
    let mut kids = Stack::default();
    kids.spawn(
        "master",
        roles::master(rpc, meta, metrics, &dir.join("master-state.json")),
        &log("master"),
    )?;
    kids.wait_http(
        &format!("http://127.0.0.1:{metrics}/metrics"),
        Duration::from_secs(30),
    )?;
    let master = format!("127.0.0.1:{rpc}");
    kids.spawn(
        "store",
        roles::store(&master, &dir.join("store.strata"), &a.capacity, "256MiB"),
        &log("store"),
    )?;
    let mut serve_args = roles::serve(&model, serve, 64, Some(&master), "");
    if a.pd {
        serve_args.extend(roles::pd_side("prefill", boot));
    }
    let name = if a.pd { "prefill" } else { "serve" };
    kids.spawn(name, serve_args, &log(name))?;
    if a.pd {
        let mut dec = roles::serve(&model, decode, 64, None, "");
        dec.extend(roles::pd_side("decode", boot));
        // The decode side writes each finished turn (prompt + answer) to the store too, so the
        // next turn's prefill finds the answer's pages there.
        dec.push("--disaggregation-decode-enable-offload-kvcache".into());
        dec.extend(roles::l3_backend(&master, ""));
        kids.spawn("decode", dec, &log("decode"))?;
    }
    for port in if a.pd {
        vec![serve, decode]
    } else {
        vec![serve]
    } {
        kids.wait_http(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(120),
        )?;
    }
    let router_args = if a.pd {
        roles::pd_router(
            &format!("http://127.0.0.1:{serve}"),
            boot,
            &format!("http://127.0.0.1:{decode}"),
            p,
            router_metrics,
        )
    } else {
        roles::router(&[format!("http://127.0.0.1:{serve}")], p, router_metrics)
    };
    kids.spawn("router", router_args, &log("router"))?;
    kids.wait_http(
        &format!("http://127.0.0.1:{p}/health"),
        Duration::from_secs(30),
    )?;
    let body = r#"{"text": "Let me tell you a long story ", "sampling_params": {"temperature": 0, "max_new_tokens": 32}}"#;
    let r = http::post(
        &format!("http://127.0.0.1:{p}/generate"),
        body,
        Duration::from_secs(60),
    )?;
    if !r.is_success() {
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
    let rx = stack::stop_signal();
    loop {
        if rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            eprintln!("stopping");
            return Ok(());
        }
        if let Some((i, status)) = kids.exited().into_iter().next() {
            let p = &kids.procs[i];
            bail!("{} exited ({status}); see {}", p.name, p.log().display());
        }
    }
}
