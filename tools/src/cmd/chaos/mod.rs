//! `strata chaos`: the whole deployment on loopback under load while faults are injected at
//! seeded random times, every answer checked (TigerBeetle's simulator and Jepsen in spirit, with
//! real processes and sockets). See docs/chaos.md.
//!
//! A run: start the deployment ([`deploy`]); compute every prompt's reference answer before any
//! fault; record each process's resources; drive generate and store load ([`load`]) while the
//! fault loop ([`faults`]) injects and ends faults; then, with every fault ended, check that the
//! deployment is healthy, that every prompt is answered correctly again, that every stored key
//! reads back exactly or as a miss, and that pages, memory and the master's membership are back to
//! their baseline. A violation stops the run at once; the report names the seed that replays it
//! and the event log around it. The exit status is 0 only for a run without violations.

mod deploy;
mod disk;
mod faults;
mod load;
mod proxy;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::stack;
use deploy::Deployment;
use report::Report;

#[derive(clap::Args)]
pub struct Args {
    /// How long to drive load and inject faults (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the schedule of faults, the prompts and the stored values (default: from the
    /// clock; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault kinds to inject, comma-separated: kill, pause, disk-full, net, corrupt.
    #[arg(
        long,
        default_value = "kill,pause,disk-full,net,corrupt",
        value_delimiter = ','
    )]
    faults: Vec<String>,
    /// Add a prefill/decode pair behind a PD router of its own.
    #[arg(long)]
    pd: bool,
    /// Concurrent generate workers.
    #[arg(long, default_value_t = 3)]
    clients: u64,
    /// A request (or a store batch) without an answer after this long is a hung request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Folder for the model, devices, logs and the event log (default: a new folder under the
    /// system's temporary folder, removed after a passing run).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// `90`, `90s`, `500ms`, `5m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}`: expected e.g. 60s, 500ms, 5m"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    for f in &a.faults {
        if !faults::KINDS.contains(&f.as_str()) {
            bail!("--faults: unknown fault `{f}` (kill, pause, disk-full, net, corrupt)");
        }
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let replay = format!(
        "strata chaos --seed {seed} --duration {}s --faults {}{}",
        a.duration.as_secs(),
        a.faults.join(","),
        if a.pd { " --pd" } else { "" }
    );
    eprintln!("chaos: seed {seed} (replay: {replay})");
    let temp = a.data_dir.is_none();
    let dir = a.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("strata-chaos-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let rep = Arc::new(Report::new(seed, replay, &dir.join("events.log"))?);
    // Ctrl-C or SIGTERM ends the run early (the children have process groups of their own, so
    // they see no signal): faults end, the deployment stops, the mount goes, a report is printed.
    let stop = stack::stop_signal();
    let r = rep.clone();
    std::thread::spawn(move || {
        if stop.recv().is_ok() {
            r.interrupt();
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let disk = a.faults.iter().any(|f| f == "disk-full");
    let mut d =
        Deployment::start(&dir, a.pd, disk, seed, &rt).context("starting the deployment")?;
    if let Err(why) = &d.small_fs {
        if disk {
            rep.not_injected
                .lock()
                .insert("disk-full".into(), why.clone());
        }
    }
    rep.event(format!("deployment up in {}", dir.display()));
    let mut ps = load::prompts(seed, 6, 4);
    let http = reqwest::Client::new();
    rt.block_on(async {
        load::references(&http, &d.servers[0], &mut ps).await?;
        let mut next = load::next_turns(seed, &ps, 4);
        load::references(&http, &d.servers[0], &mut next).await?;
        ps.extend(next);
        // Every server (and router) must give the reference before any fault.
        for base in d.servers.iter().skip(1).chain(&d.routers) {
            for (i, p) in ps.iter().enumerate() {
                let stream = i % 2 == 0;
                let o = load::generate(
                    &http,
                    base,
                    p,
                    stream,
                    Some(&p.reference),
                    a.request_timeout,
                )
                .await;
                load::record(
                    &rep,
                    &o,
                    stream,
                    &format!("fault-free check of prompt {i} on {base}"),
                    p,
                );
            }
        }
        anyhow::Ok(())
    })?;
    rep.event("reference answers computed and checked on every server and router");
    let base = baseline(&d);
    let until = Instant::now() + a.duration;
    let client = store_client(&d.master_rpc)?;
    let store = {
        let (rep, c, t) = (rep.clone(), client.clone(), a.request_timeout);
        std::thread::spawn(move || load::store_worker(&c, &rep, until, t))
    };
    let ps = Arc::new(ps);
    let routers = Arc::new(d.routers.clone());
    let workers: Vec<_> = (0..a.clients)
        .map(|w| {
            let (ps, routers, rep, t) =
                (ps.clone(), routers.clone(), rep.clone(), a.request_timeout);
            rt.spawn(async move { load::generate_worker(w, &ps, &routers, &rep, until, t).await })
        })
        .collect();
    faults::run(&mut d, &rep, &a.faults, until);
    rep.event("fault loop ended");
    // Load runs to `until` (or stops at a violation).
    faults::watch(
        &mut d,
        &rep,
        until.saturating_duration_since(Instant::now()),
    );
    rt.block_on(async {
        for w in workers {
            let _ = tokio::time::timeout(a.request_timeout + Duration::from_secs(5), w).await;
        }
    });
    let keys = join_store(store, &rep, a.request_timeout);
    if !rep.stopped() && !rep.interrupted() {
        after_run(
            &mut d,
            &rep,
            &rt,
            &ps,
            &client,
            keys,
            &base,
            a.request_timeout,
        );
    }
    // Stop the deployment before the report: a role that SIGTERM does not stop in time is named.
    let killed = d.stack.stop_all();
    rep.ops.add("stop_needed_sigkill", killed.len() as u64);
    if !killed.is_empty() {
        rep.event(format!(
            "did not stop within {:?} of SIGTERM (killed): {}",
            stack::GRACE,
            killed.join(", ")
        ));
        rep.not_stopped.lock().extend(killed);
    }
    let text = rep.text(a.duration, &a.faults);
    print!("{text}");
    if let Some(p) = &a.report {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&rep.json(a.duration, &a.faults))?,
        )?;
    }
    drop(client);
    drop(d);
    if rep.interrupted() {
        bail!("interrupted; logs and events.log are in {}", dir.display());
    }
    if !rep.passed() {
        bail!(
            "chaos found violations; logs and events.log are in {}",
            dir.display()
        );
    }
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn store_client(master: &str) -> anyhow::Result<strata_cluster::Client> {
    let mut c = strata_cluster::ClientConfig::new(master);
    c.timeout = Duration::from_secs(5);
    c.refresh = Duration::from_millis(200);
    c.name = "chaos".into();
    // Over TCP, through the stores' fault proxies.
    c.same_host = false;
    Ok(strata_cluster::Client::connect(c)?)
}

fn join_store(h: std::thread::JoinHandle<u64>, rep: &Report, timeout: Duration) -> u64 {
    let t = Instant::now();
    while !h.is_finished() {
        if t.elapsed() > timeout + Duration::from_secs(10) {
            rep.violation("hung_requests", "the store worker did not return");
            return 0;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    h.join().unwrap_or(0)
}

/// File descriptors and resident bytes of every role's process, by pid.
type Baseline = Vec<(String, i32, usize, u64)>;

fn proc_usage(pid: i32) -> Option<(usize, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some((fds, pages * page))
}

fn baseline(d: &Deployment) -> Baseline {
    d.stack
        .procs
        .iter()
        .filter_map(|p| {
            let pid = p.pid()?;
            let (fds, rss) = proc_usage(pid)?;
            Some((p.name.clone(), pid, fds, rss))
        })
        .collect()
}

/// The checks after the last fault ended: healthy, correct answers again, every stored key exact
/// or a miss, resources and membership back to their baseline.
#[allow(clippy::too_many_arguments)]
fn after_run(
    d: &mut Deployment,
    rep: &Report,
    rt: &tokio::runtime::Runtime,
    ps: &[load::Prompt],
    client: &strata_cluster::Client,
    keys: u64,
    base: &Baseline,
    timeout: Duration,
) {
    if let Err(why) = faults::wait_healthy(d, rep) {
        rep.violation("not_recovered", format!("not healthy after the run: {why}"));
        return;
    }
    // Every prompt through every router: correct again (a few tries each, while circuit breakers
    // close).
    let http = reqwest::Client::new();
    rt.block_on(async {
        for router in &d.routers {
            for (i, p) in ps.iter().enumerate() {
                let mut last = String::new();
                let mut ok = false;
                for _ in 0..10 {
                    let stream = i % 2 == 1;
                    match load::generate(&http, router, p, stream, Some(&p.reference), timeout)
                        .await
                    {
                        load::Outcome::Failed(w) => last = w,
                        o => {
                            ok = load::record(
                                rep,
                                &o,
                                stream,
                                &format!("after-run prompt {i} via {router}"),
                                p,
                            );
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                if !ok && !rep.stopped() {
                    rep.violation(
                        "not_recovered",
                        format!("prompt {i} via {router} still fails after the run: {last}"),
                    );
                }
            }
        }
    });
    // The stores take writes again (the disk has room, every node is back): 48 new keys, spread
    // over the nodes by placement, all stored.
    let ok = load::puts(client, rep, keys, 48, timeout);
    if ok < 48 {
        rep.violation(
            "not_recovered",
            format!("{} of 48 puts after the run failed", 48 - ok),
        );
    }
    let keys = keys + 48;
    // Every key ever put: exact bytes or a miss.
    let all: Vec<u64> = (0..keys).collect();
    for chunk in all.chunks(64) {
        load::check_gets(client, rep, chunk, timeout);
    }
    rep.event(format!("after the run: {keys} keys read back"));
    check_baseline(d, rep, rt, base);
    hicache_totals(d, rep);
}

/// Adds the servers' HiCache counters (of the processes running now: a restart resets them) to
/// the report, showing which tiers the run exercised.
fn hicache_totals(d: &Deployment, rep: &Report) {
    for s in &d.servers {
        let Ok(r) = stack::http::get(&format!("{s}/metrics"), Duration::from_secs(5)) else {
            continue;
        };
        for name in [
            "backuped_tokens",
            "prefetched_tokens",
            "load_back_tokens",
            "evicted_tokens",
            "pd_decode_offloaded_tokens",
        ] {
            let v: f64 = r
                .body
                .lines()
                .find(|l| l.starts_with(&format!("sglang:{name}_total ")))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|x| x.parse().ok())
                .unwrap_or(0.0);
            rep.ops.add(&format!("hicache_{name}"), v as u64);
        }
    }
}

fn check_baseline(d: &Deployment, rep: &Report, rt: &tokio::runtime::Runtime, base: &Baseline) {
    // Servers: no request left, no page held by one (free + cached == total).
    let http = reqwest::Client::new();
    for s in &d.servers {
        let idle = rt.block_on(async {
            let t = Instant::now();
            let mut last = serde_json::Value::Null;
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(r) = http.get(format!("{s}/get_server_info")).send().await {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        let st = &v["internal_states"][0];
                        let n = |k: &str| st[k].as_u64().unwrap_or(u64::MAX);
                        if n("num_running_reqs") == 0
                            && n("num_waiting_reqs") == 0
                            && n("free_pages") + n("cached_pages") == n("total_pages")
                        {
                            return Ok(());
                        }
                        last = st.clone();
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(last)
        });
        if let Err(st) = idle {
            rep.violation(
                "baseline",
                format!("{s} holds requests or pages after the run: {st}"),
            );
        }
    }
    if !d.wait_members(Duration::from_secs(30)) {
        rep.violation(
            "baseline",
            format!(
                "the master's membership did not converge: (alive, dead) = {:?}",
                d.members()
            ),
        );
    }
    for (name, pid, fds0, rss0) in base {
        let now = d
            .stack
            .procs
            .iter()
            .find(|p| &p.name == name)
            .and_then(|p| p.pid());
        if now != Some(*pid) {
            rep.event(format!(
                "{name}: restarted during the run, no baseline to compare"
            ));
            continue;
        }
        let Some((fds, rss)) = proc_usage(*pid) else {
            continue;
        };
        rep.event(format!(
            "{name}: fds {fds0} -> {fds}, rss {} -> {} MiB",
            rss0 >> 20,
            rss >> 20
        ));
        if fds > fds0 + 64 || rss > 2 * rss0 + (256 << 20) {
            rep.violation(
                "baseline",
                format!(
                    "{name} grew: fds {fds0} -> {fds}, rss {} -> {} MiB",
                    rss0 >> 20,
                    rss >> 20
                ),
            );
        }
    }
}
