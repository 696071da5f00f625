//! The deployment a chaos run attacks, on loopback: a master, three store nodes (each dialling the
//! master through a fault proxy of its own, and advertising a proxy in front of its data port; one
//! on the run's size-limited file system when it can be mounted), two inference servers with
//! HiCache on the store cluster (server0's client over TCP through the stores' proxies, server1's
//! over the same-host path), a router in front of them (through one fault proxy per server), and
//! with `--pd` a prefill/decode pair behind a router of its own (its links to both sides, and the
//! decode's KV fetch from the prefill's bootstrap port, through proxies too). Every role is a child
//! process started by [`crate::cmd::stack`] as `strata up` starts it, with shorter heartbeats so
//! that faults are noticed within the run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::disk::SmallFs;
use super::proxy::Proxy;
use crate::cmd::stack::{http, roles, Stack};

pub const STORES: usize = 3;
/// The master declares a store dead after this much silence; pauses last longer.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Page size of the servers (small, so prompts span many L3 pages).
pub const PAGE: usize = 16;
/// A device pool of 512 tokens and a host pool of 1.5 times that, together smaller than the
/// prompts' working set (about 1,500 tokens): prefixes are evicted to the host and out of it, and
/// come back from the L3 store.
const SERVE_FLAGS: [&str; 4] = ["--max-total-tokens", "512", "--hicache-ratio", "1.5"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Master,
    Store,
    Server,
    Router,
}

/// Where a role shows it is up: an HTTP URL answering 2xx, or a TCP address accepting
/// connections (a store node's data port).
pub enum Health {
    Http(String),
    Tcp(String),
}

impl Health {
    fn ok(&self) -> bool {
        match self {
            Health::Http(u) => http::get(u, Duration::from_secs(2)).is_ok_and(|x| x.is_success()),
            Health::Tcp(a) => a.parse().is_ok_and(|a| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok()
            }),
        }
    }
}

/// A role of the deployment: which process of the stack it is, and where it shows it is up.
pub struct Role {
    pub kind: Kind,
    pub proc: usize,
    pub health: Health,
}

pub struct Deployment {
    pub stack: Stack,
    pub roles: Vec<Role>,
    pub proxies: Vec<Proxy>,
    /// Router base URLs the load goes through.
    pub routers: Vec<String>,
    /// Direct base URLs of the servers (their state is read there).
    pub servers: Vec<String>,
    /// Device path of each store, by store number.
    pub devices: Vec<PathBuf>,
    pub master_rpc: String,
    master_metrics: String,
    /// The run's folder (logs are `<role>.log` there).
    dir: PathBuf,
    /// Environment of the next role [`Deployment::add`] starts.
    env: Vec<(String, String)>,
    /// The run's seed.
    seed: u64,
    /// The size-limited file system holding store 0's device, or why there is none.
    pub small_fs: Result<SmallFs, String>,
}

/// A free port for a role, below the kernel's ephemeral range: outgoing connections (of which a
/// run makes many) take their local ports from that range, and one could take a role's port
/// between this probe and the role's bind, or while a killed role is down before its restart.
/// Candidates start at a per-process offset (concurrent runs pick apart) and are probed.
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, ephemeral.max(12_000));
    let base = std::process::id().wrapping_mul(2_654_435_761) % (hi - lo);
    for _ in 0..(hi - lo) {
        let port = (lo + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % (hi - lo)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free port in {lo}..{hi}")
}

fn s(v: &str) -> String {
    v.to_string()
}

impl Deployment {
    /// Starts every role and waits until all are healthy. Proxies run on `rt`.
    pub fn start(
        dir: &Path,
        pd: bool,
        want_small_fs: bool,
        seed: u64,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Deployment> {
        let model = roles::ensure_model(dir)?;
        let mut d = Deployment {
            dir: dir.to_path_buf(),
            env: Vec::new(),
            seed,
            stack: Stack::default(),
            roles: Vec::new(),
            proxies: Vec::new(),
            routers: Vec::new(),
            servers: Vec::new(),
            devices: Vec::new(),
            master_rpc: String::new(),
            master_metrics: String::new(),
            small_fs: Err("not requested (disk-full is not among --faults)".into()),
        };
        let (rpc, meta, metrics) = (free_port()?, free_port()?, free_port()?);
        d.master_rpc = format!("127.0.0.1:{rpc}");
        d.master_metrics = format!("http://127.0.0.1:{metrics}");
        let mut args = roles::master(rpc, meta, metrics, &dir.join("master-state.json"));
        args.extend([
            s("--heartbeat-timeout-ms"),
            HEARTBEAT_TIMEOUT.as_millis().to_string(),
        ]);
        let h = Health::Http(format!("{}/health", d.master_metrics));
        d.add(Kind::Master, "master", args, h)?;
        d.stack.wait_http(
            &format!("{}/health", d.master_metrics),
            Duration::from_secs(30),
        )?;
        if want_small_fs {
            d.small_fs =
                SmallFs::mount(&dir.join("small-fs"), 160 << 20).map_err(|e| format!("{e:#}"));
        }
        for j in 0..STORES {
            let dev = match (&d.small_fs, j) {
                (Ok(fs), 0) => fs.dir.join("store0.strata"),
                _ => dir.join(format!("store{j}.strata")),
            };
            let p = d.proxy(rt, &format!("store{j}->master"), rpc)?;
            let mut args = roles::store(&format!("127.0.0.1:{p}"), &dev, "128MiB", "16MiB");
            let port = free_port()?;
            let data = d.proxy(rt, &format!("clients->store{j}"), port)?;
            args.extend([
                s("--advertise-port"),
                data.to_string(),
                s("--segment-size"),
                s("4MiB"),
                s("--heartbeat-ms"),
                s("300"),
                s("--port"),
                port.to_string(),
                s("--node-id"),
                format!("store{j}"),
            ]);
            if j == 0 {
                // store0 acknowledges puts from a DRAM write-back buffer (Mooncake's way), so
                // kills lose acknowledged puts (misses, allowed) and the flusher meets the full disk.
                args.extend([s("--write-back"), s("8MiB")]);
            }
            let h = Health::Tcp(format!("127.0.0.1:{port}"));
            d.add(Kind::Store, &format!("store{j}"), args, h)?;
            d.devices.push(dev);
        }
        if !d.wait_members(Duration::from_secs(30)) {
            bail!("the {STORES} store nodes did not all join the master within 30 s");
        }
        let extra = r#", "prefetch_threshold": 32"#;
        let mut workers = Vec::new();
        for i in 0..2 {
            let port = free_port()?;
            let mut args = roles::serve(&model, port, PAGE, Some(&d.master_rpc), extra);
            args.extend(SERVE_FLAGS.iter().map(|x| s(x)));
            if i == 0 {
                // server0's cluster client dials the stores over TCP, through their proxies;
                // server1's uses the same-host path (Unix socket and cross-memory copies).
                d.env = vec![(s("STRATA_SAME_HOST"), s("0"))];
            }
            let base = d.add_http(Kind::Server, &format!("server{i}"), args, port)?;
            d.env.clear();
            d.servers.push(base);
            let p = d.proxy(rt, &format!("router->server{i}"), port)?;
            workers.push(format!("http://127.0.0.1:{p}"));
        }
        let mut pd_urls = None;
        if pd {
            let (pport, boot, dport) = (free_port()?, free_port()?, free_port()?);
            let mut args = roles::serve(&model, pport, PAGE, Some(&d.master_rpc), extra);
            args.extend(SERVE_FLAGS.iter().map(|x| s(x)));
            args.extend(roles::pd_side("prefill", boot));
            let pbase = d.add_http(Kind::Server, "prefill", args, pport)?;
            let mut args = roles::serve(&model, dport, PAGE, None, "");
            args.extend(roles::pd_side("decode", boot));
            // Decode writes prompt + answer to the L3, where the next turn's prefill finds them.
            args.extend(roles::l3_backend(&d.master_rpc, extra));
            args.push(s("--disaggregation-decode-enable-offload-kvcache"));
            let dbase = d.add_http(Kind::Server, "decode", args, dport)?;
            d.servers.extend([pbase, dbase]);
            // The PD router reaches both sides, and decode fetches the KV from the prefill's
            // bootstrap port, through proxies.
            let pp = d.proxy(rt, "pd-router->prefill", pport)?;
            let bp = d.proxy(rt, "decode->prefill-kv", boot)?;
            let dp = d.proxy(rt, "pd-router->decode", dport)?;
            pd_urls = Some((
                format!("http://127.0.0.1:{pp}"),
                bp,
                format!("http://127.0.0.1:{dp}"),
            ));
        }
        for r in &d.roles {
            if let Health::Http(h) = &r.health {
                d.stack.wait_http(h, Duration::from_secs(120))?;
            }
        }
        let router_flags = [
            s("--policy"),
            s("round_robin"),
            s("--health-check-interval-secs"),
            s("1"),
            s("--cb-timeout-duration-secs"),
            s("3"),
            s("--request-timeout-secs"),
            s("60"),
        ];
        let (port, mport) = (free_port()?, free_port()?);
        let mut args = roles::router(&workers, port, mport);
        args.extend(router_flags.iter().cloned());
        let base = d.add_http(Kind::Router, "router", args, port)?;
        d.routers.push(base);
        if let Some((pbase, boot, dbase)) = pd_urls {
            let (port, mport) = (free_port()?, free_port()?);
            let mut args = roles::pd_router(&pbase, boot, &dbase, port, mport);
            args.extend(router_flags.iter().cloned());
            let base = d.add_http(Kind::Router, "pd-router", args, port)?;
            d.routers.push(base);
        }
        for r in &d.roles {
            if let (Kind::Router, Health::Http(h)) = (r.kind, &r.health) {
                d.stack.wait_http(h, Duration::from_secs(60))?;
            }
        }
        if let Some(why) = d.unhealthy() {
            bail!("the deployment is not healthy after start: {why}");
        }
        Ok(d)
    }

    fn add(
        &mut self,
        kind: Kind,
        name: &str,
        args: Vec<String>,
        health: Health,
    ) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let proc = self.stack.spawn_env(name, args, self.env.clone(), &log)?;
        self.roles.push(Role { kind, proc, health });
        Ok(())
    }

    /// Starts a fault proxy `name` in front of loopback `port`; returns the proxy's port. Its
    /// random stream (drop decisions) comes from the run's seed and its name.
    fn proxy(
        &mut self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        port: u16,
    ) -> anyhow::Result<u16> {
        // FNV-1a of the name: a stable, distinct stream per link.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let p = rt.block_on(Proxy::start(
            name,
            format!("127.0.0.1:{port}"),
            self.seed ^ h,
        ))?;
        let port = p.port;
        self.proxies.push(p);
        Ok(port)
    }

    /// [`Deployment::add`] for a role serving HTTP on `port` (healthy when `/health` answers);
    /// returns its base URL.
    fn add_http(
        &mut self,
        kind: Kind,
        name: &str,
        args: Vec<String>,
        port: u16,
    ) -> anyhow::Result<String> {
        let base = format!("http://127.0.0.1:{port}");
        self.add(kind, name, args, Health::Http(format!("{base}/health")))?;
        Ok(base)
    }

    pub fn name(&self, role: usize) -> &str {
        &self.stack.procs[self.roles[role].proc].name
    }

    /// (alive, dead) store nodes as the master counts them; None when it does not answer.
    pub fn members(&self) -> Option<(u64, u64)> {
        let r = http::get(
            &format!("{}/metrics", self.master_metrics),
            Duration::from_secs(2),
        )
        .ok()?;
        let v = |name: &str| {
            r.body
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|x| x.parse().ok())
        };
        Some((
            v("strata_master_members_alive")?,
            v("strata_master_members_dead")?,
        ))
    }

    /// Waits until the master counts every store alive and none dead.
    pub fn wait_members(&self, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.members() == Some((STORES as u64, 0)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Everything healthy now: every role running, every server and router answering `/health`
    /// directly, the master counting every store alive and none dead. Returns what is not.
    pub fn unhealthy(&self) -> Option<String> {
        for r in &self.roles {
            let p = &self.stack.procs[r.proc];
            if p.pid().is_none() {
                return Some(format!("{} is not running", p.name));
            }
            if !r.health.ok() {
                return Some(format!("{} is not healthy", p.name));
            }
        }
        match self.members() {
            Some((a, 0)) if a == STORES as u64 => None,
            m => Some(format!("master membership (alive, dead) = {m:?}")),
        }
    }
}
