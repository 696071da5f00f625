//! `strata bench pd-transfer`: PD KV transfer throughput, prefill -> decode, against the raw copy
//! rate of the same transport, measured in the same run (issue 15: transfer >= 0.7x raw).
//!
//! The transfer is the servers' own code without the model: a child process runs the prefill's
//! bootstrap server ([`Registry`]) over a KV pool in its memory (the CPU runner's layout, filled
//! with a known pattern), every room readied with a prompt's pages from that pool (a shuffled,
//! pool-wide page order, so the bytes come from memory rather than the caches); this process is
//! the decode ([`Fetcher`]), landing each transfer in pool pages of its own, as the decode server
//! does (same-host path: `process_vm_readv` of one range per page and layer; TCP: the prefill's
//! vectored writes from its pool into reads straight into the pool pages). With N transfers in
//! flight (N fetches started together on N kept connections, `--concurrency`), the aggregate rate
//! is the bytes of all N over the wall time until the last one was acknowledged; median over
//! rounds, after a warm-up round that also opens the connections and checks the bytes.
//!
//! The raw copy of the same transport moves the same bytes with the same concurrency, one raw
//! round after each transfer round (the ratio is the median of the per-round ratios): same-host,
//! N threads each `process_vm_readv`-ing one transfer's bytes out of the prefill child's pool in
//! contiguous per-layer ranges into this process's pool; TCP, N loopback connections each sending
//! one transfer's bytes in 1 MiB writes. Per transfer the decode's breakdown is printed: starting
//! (the fetch's start to its connection ready), waiting (WANT to KV header: the prefill's wake-up
//! and header), moving (header to bytes in place), ACK (bytes in place to the acknowledgement
//! written).

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod cuda;

use clap::Args as ClapArgs;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use strata_engine::AlignedBuf;
use strata_server::kv::{FreeList, Page};
use strata_server::pd::decode::{Dest, Fetched, Fetcher, Geometry, Payload, Timing};
use strata_server::pd::prefill::{Handoff, Pages, Registry, Share};
use strata_server::pd::share::HostSpans;
use strata_server::pd::{Bootstrap, Mode, PdConfig};
use strata_server::stats::Stats;

#[derive(ClapArgs)]
pub struct Args {
    /// Transfers in flight together (one table row each).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Prompt tokens per transfer.
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Tokens per KV page.
    #[arg(long, default_value_t = 64)]
    page_size: usize,
    /// Model layers (default: the `small` made model).
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// KV values per token and layer (KV heads x head dim).
    #[arg(long, default_value_t = 128)]
    kv_dim: usize,
    /// Bytes per KV value (4: the CPU runner's f32).
    #[arg(long, default_value_t = 4)]
    elem: usize,
    /// Measured rounds per row (after one warm-up round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Pool size of each side in MiB (the prompts' pages are spread over it).
    #[arg(long, default_value_t = 256)]
    pool_mib: usize,
    /// Transports: same-host, tcp; or (GPU, with every other transport left out) cuda-ipc (the
    /// decode copies out of the prefill's GPU pool) and cuda-push (the prefill copies into the
    /// decode's).
    #[arg(long, value_delimiter = ',', default_value = "same-host,tcp")]
    transports: Vec<String>,
    /// Internal: run as the prefill child on this bootstrap port.
    #[arg(long, hide = true)]
    prefill_child: Option<u16>,
}

/// One side's KV pool in this process's memory, as the CPU runner lays it out: per layer a K and
/// a V buffer of `pages` runs of `run` bytes.
struct Pool {
    k: Vec<AlignedBuf>,
    v: Vec<AlignedBuf>,
    run: usize,
    pages: usize,
}

impl Pool {
    fn new(a: &Args, fill: bool) -> Self {
        let run = a.page_size * a.kv_dim * a.elem;
        let pages = ((a.pool_mib << 20) / (2 * a.layers * run)).max(1);
        let make = |kv: usize, l: usize| {
            let mut b = AlignedBuf::new(pages * run);
            if fill {
                for (i, x) in b[..].iter_mut().enumerate() {
                    *x = pattern(kv, l, i);
                }
            } else {
                b[..].fill(0);
            }
            b
        };
        Pool {
            k: (0..a.layers).map(|l| make(0, l)).collect(),
            v: (0..a.layers).map(|l| make(1, l)).collect(),
            run,
            pages,
        }
    }

    fn spans(&self) -> HostSpans {
        let base = |b: &Vec<AlignedBuf>| b.iter().map(|x| x.as_ptr() as usize).collect();
        HostSpans {
            k: base(&self.k),
            v: base(&self.v),
            run: self.run,
            pages: self.pages,
        }
    }
}

/// The prefill pool's byte `i` of layer `l`'s K (`kv` 0) or V buffer.
fn pattern(kv: usize, l: usize, i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9) ^ (l * 7 + kv * 101)) as u8
}

/// Pool pages of room `room` (1-based): `n` pages of a fixed shuffled order of the whole pool.
fn room_pages(order: &[u32], room: u64, n: usize) -> Vec<u32> {
    let per = (order.len() / n).max(1);
    let at = ((room as usize - 1) % per) * n;
    order[at..at + n].to_vec()
}

fn shuffled(pages: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..pages as u32).collect();
    v.shuffle(&mut StdRng::seed_from_u64(15));
    v
}

fn n_pages(a: &Args) -> usize {
    a.tokens.div_ceil(a.page_size)
}

fn rooms_needed(a: &Args) -> u64 {
    let per: usize = a.concurrency.iter().sum();
    (per * (a.rounds + 1) * a.transports.len()) as u64
}

/// The prefill child's bootstrap server on `port` over `share`, every room the run needs ready
/// with its pages of a `pool_pages` pool (`pages` makes a room's `Pages` from its page ids).
fn serve_rooms(
    a: &Args,
    port: u16,
    share: Share,
    pool_pages: usize,
    pages: &dyn Fn(Vec<u32>) -> Pages,
) -> anyhow::Result<Arc<Registry>> {
    let cfg = PdConfig::new(Mode::Prefill, port, "127.0.0.1", "");
    let reg = Registry::start(cfg, Arc::new(Stats::default()))?;
    reg.set_share(share);
    let n = n_pages(a);
    let order = shuffled(pool_pages);
    for room in 1..=rooms_needed(a) {
        anyhow::ensure!(reg.claim(room), "room {room} taken");
        reg.ready(
            room,
            Handoff {
                n_tokens: a.tokens as u32,
                first_token: 1,
                first_logprobs: None,
                pages: pages(room_pages(&order, room, n)),
                n_pages: n,
                page_size: a.page_size,
                hold: None,
                deliver: Box::new(|_| {}),
            },
        );
    }
    Ok(reg)
}

/// The prefill child: the bootstrap server over its pool, every room ready; prints the pool's
/// addresses, then serves until its stdin closes.
fn prefill_child(a: &Args, port: u16) -> anyhow::Result<()> {
    let pool = Pool::new(a, true);
    let spans = Arc::new(pool.spans());
    let share = Share::default();
    let _reg = serve_rooms(a, port, share, pool.pages, &|pages| Pages::Pool {
        spans: spans.clone(),
        pages,
    })?;
    let info = json!({"pid": std::process::id(), "k": spans.k, "v": spans.v});
    println!("{info}");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(pool);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: Args) -> anyhow::Result<()> {
    super::super::logging::init("warn");
    let gpu = cuda::wanted(&a.transports)?;
    if let Some(port) = a.prefill_child {
        return if gpu {
            cuda::prefill_child(&a, port)
        } else {
            prefill_child(&a, port)
        };
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["bench", "pd-transfer", "--prefill-child", &port.to_string()])
        .args(["--tokens", &a.tokens.to_string()])
        .args(["--page-size", &a.page_size.to_string()])
        .args(["--layers", &a.layers.to_string()])
        .args(["--kv-dim", &a.kv_dim.to_string()])
        .args(["--elem", &a.elem.to_string()])
        .args(["--rounds", &a.rounds.to_string()])
        .args(["--pool-mib", &a.pool_mib.to_string()])
        .arg("--concurrency")
        .arg(
            a.concurrency
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("--transports")
        .arg(a.transports.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let info: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| anyhow::anyhow!("the prefill child did not start ({e}): {line:?}"))?;
    let r = if gpu {
        cuda::measure(&a, port, &info)
    } else {
        measure(&a, port, &info)
    };
    drop(child.stdin.take());
    let _ = child.wait();
    r
}

fn measure(a: &Args, port: u16, info: &serde_json::Value) -> anyhow::Result<()> {
    let pid = info["pid"].as_i64().unwrap_or(0) as i32;
    let addrs = |k: &str| -> Vec<u64> {
        info[k]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default()
    };
    let (pk, pv) = (addrs("k"), addrs("v"));
    let mine = Pool::new(a, false);
    let spans = Arc::new(mine.spans());
    let free = FreeList::new(mine.pages);
    let n = n_pages(a);
    let bytes = n * 2 * a.layers * mine.run;
    let max_c = a.concurrency.iter().copied().max().unwrap_or(1);
    anyhow::ensure!(
        n * max_c <= mine.pages,
        "--pool-mib too small for {max_c} transfers of {n} pages"
    );
    let order = shuffled(mine.pages);
    let geo = Geometry {
        page_size: a.page_size,
        layers: a.layers,
        kv_dim: a.kv_dim,
        elem: a.elem,
    };
    println!(
        "# pd-transfer: {} tokens per transfer = {n} pages of {} KiB = {:.2} MiB ({} layers x {} values x {} B, page {}); pools of {} MiB each side; {} CPUs, load {}",
        a.tokens,
        (2 * a.layers * mine.run) >> 10,
        bytes as f64 / (1 << 20) as f64,
        a.layers,
        a.kv_dim,
        a.elem,
        a.page_size,
        a.pool_mib,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| transport | in flight | transfer, aggregate | raw copy, same concurrency | transfer / raw (median of rounds) | per transfer (median ms): starting / waiting / moving / ACK |");
    println!("|---|---|---|---|---|---|");
    let mut room = 0u64;
    for t in &a.transports {
        let same_host = match t.as_str() {
            "same-host" => true,
            "tcp" => false,
            o => anyhow::bail!("--transports {o}: expected same-host or tcp"),
        };
        let mut cfg = PdConfig::new(Mode::Decode, port, "127.0.0.1", "");
        cfg.same_host = same_host;
        let stats = Arc::new(Stats::default());
        let decode = Decode::new(Fetcher::new(cfg, geo, stats), free.clone(), a, port);
        for &c in &a.concurrency {
            let mut raw = if same_host {
                Raw::Cma {
                    pid,
                    pk: &pk,
                    pv: &pv,
                    mine: &mine,
                    n,
                    c,
                }
            } else {
                Raw::tcp(bytes, c)?
            };
            let mut row = Row::default();
            for round in 0..=a.rounds {
                let (wall, done) = decode.round(c, &mut room, &|pages| {
                    Ok(Dest {
                        pages,
                        spans: Some(spans.clone()),
                        fence: None,
                    })
                })?;
                for (room, f) in &done {
                    if round == 0 {
                        let got = f.pages.as_ref().expect("dest pages");
                        check(&mine, &order, *room, got, n)?;
                    }
                }
                let timings: Vec<Timing> = done.iter().map(|(_, f)| f.timing).collect();
                drop(done); // pages back to the free list
                let r = raw.round(round)?;
                if round > 0 {
                    row.add(wall, (c * bytes) as f64, (c * bytes) as f64 / r, timings);
                }
            }
            raw.finish()?;
            row.print(t, c);
        }
    }
    Ok(())
}

/// The decode side of one transport's rows: the servers' fetcher (woken when a fetch finishes),
/// the pool pages fetches land in, and what every fetch asks for.
struct Decode {
    fetcher: Fetcher,
    rx: mpsc::Receiver<()>,
    free: Arc<FreeList>,
    /// Pages and tokens per transfer.
    n: usize,
    tokens: usize,
    port: u16,
}

impl Decode {
    fn new(fetcher: Fetcher, free: Arc<FreeList>, a: &Args, port: u16) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let tx = std::sync::Mutex::new(tx);
        fetcher.set_waker(Box::new(move || {
            let _ = tx.lock().map(|t| t.send(()));
        }));
        Decode {
            fetcher,
            rx,
            free,
            n: n_pages(a),
            tokens: a.tokens,
            port,
        }
    }

    /// Starts `c` fetches together (the next rooms after `*room`, each into fresh pool pages
    /// through `dest`) and waits for all of them; the wall time and each room's result, landed
    /// in the pool.
    fn round(
        &self,
        c: usize,
        room: &mut u64,
        dest: &dyn Fn(Vec<Page>) -> anyhow::Result<Dest>,
    ) -> anyhow::Result<(f64, Vec<(u64, Fetched)>)> {
        let (fetcher, rx, n, port) = (&self.fetcher, &self.rx, self.n, self.port);
        let t0 = Instant::now();
        let mut rids = Vec::new();
        for _ in 0..c {
            *room += 1;
            let rid = format!("r{room}");
            let pages = self
                .free
                .alloc(n)
                .ok_or_else(|| anyhow::anyhow!("decode pool exhausted"))?;
            let b = Bootstrap {
                host: "127.0.0.1".into(),
                port: Some(port),
                room: *room,
            };
            fetcher.start(&rid, &b, self.tokens, Some(dest(pages)?));
            rids.push((rid, *room));
        }
        let mut done: Vec<(String, (u64, Fetched))> = Vec::new();
        while done.len() < c {
            for (rid, room) in &rids {
                if done.iter().any(|(r, _)| r == rid) {
                    continue;
                }
                if let Some(r) = fetcher.take(rid) {
                    let f = r.map_err(|e| anyhow::anyhow!("transfer {rid}: {e}"))?;
                    done.push((rid.clone(), (*room, f)));
                }
            }
            if done.len() < c {
                let _ = rx.recv_timeout(Duration::from_millis(50));
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        let done: Vec<(u64, Fetched)> = done.into_iter().map(|(_, x)| x).collect();
        anyhow::ensure!(
            done.iter()
                .all(|(_, f)| matches!(f.payload, Payload::InPool)),
            "not landed in the pool"
        );
        Ok((wall, done))
    }
}

/// One table row's measured rounds.
#[derive(Default)]
struct Row {
    rates: Vec<f64>,
    raws: Vec<f64>,
    ratios: Vec<f64>,
    timings: Vec<Timing>,
    /// With one transfer in flight: the round's wall time not in the transfer's own timing (the
    /// result's way back to the waiting thread).
    rest: Vec<f64>,
}

impl Row {
    /// A round: its wall time and bytes, the raw copy's seconds for the same bytes, and each
    /// transfer's timing.
    fn add(&mut self, wall: f64, bytes: f64, raw_secs: f64, timings: Vec<Timing>) {
        let (rate, raw) = (bytes / wall, bytes / raw_secs);
        self.rates.push(rate);
        self.raws.push(raw);
        self.ratios.push(rate / raw);
        if let [t] = timings.as_slice() {
            let parts = t.began + t.waited + t.moved + t.acked;
            self.rest.push(wall - parts.as_secs_f64());
        }
        self.timings.extend(timings);
    }

    fn print(self, transport: &str, c: usize) {
        self.print_with(transport, c, "");
    }

    /// The row, with `extra` as one more column when not empty.
    fn print_with(self, transport: &str, c: usize, extra: &str) {
        let ms = |f: fn(&Timing) -> Duration| {
            median(
                self.timings
                    .iter()
                    .map(|t| f(t).as_secs_f64() * 1e3)
                    .collect(),
            )
        };
        println!(
            "| {transport} | {c} | {:.2} GB/s | {:.2} GB/s | **{:.2}x** | {:.3} / {:.3} / {:.3} / {:.3}{} |{}",
            median(self.rates.clone()) / 1e9,
            median(self.raws.clone()) / 1e9,
            median(self.ratios.clone()),
            ms(|t| t.began),
            ms(|t| t.waited),
            ms(|t| t.moved),
            ms(|t| t.acked),
            if self.rest.is_empty() {
                String::new()
            } else {
                format!(" (+ {:.3} back)", median(self.rest.clone()) * 1e3)
            },
            if extra.is_empty() {
                String::new()
            } else {
                format!(" {extra} |")
            }
        );
    }
}

/// The decode's pool pages `got` hold the prefill's pages of `room`, byte for byte.
fn check(
    mine: &Pool,
    order: &[u32],
    room: u64,
    got: &[strata_server::kv::Page],
    n: usize,
) -> anyhow::Result<()> {
    let theirs = room_pages(order, room, n);
    for (p, t) in got.iter().zip(&theirs) {
        for (kv, bufs) in [(0, &mine.k), (1, &mine.v)] {
            for (l, b) in bufs.iter().enumerate() {
                let at = p.id() as usize * mine.run;
                let from = *t as usize * mine.run;
                let bad = (0..mine.run).find(|&i| b[at + i] != pattern(kv, l, from + i));
                anyhow::ensure!(
                    bad.is_none(),
                    "room {room}: page {} layer {l} differs",
                    p.id()
                );
            }
        }
    }
    Ok(())
}

/// The raw copy of one transport at one concurrency, a round at a time (interleaved with the
/// transfer rounds, so that both see the same machine).
enum Raw<'a> {
    /// `c` threads, each `process_vm_readv` of one transfer's bytes (contiguous per-layer ranges
    /// of the prefill child's pool, a different slot each round) into this process's pool.
    Cma {
        pid: i32,
        pk: &'a [u64],
        pv: &'a [u64],
        mine: &'a Pool,
        n: usize,
        c: usize,
    },
    /// `c` loopback connections, each moving one transfer's bytes in 1 MiB writes into a reader
    /// thread, acknowledged.
    Tcp {
        senders: Vec<TcpStream>,
        srcs: Vec<AlignedBuf>,
        readers: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
        bytes: usize,
    },
}

/// Raw pointers handed to a copy thread (each thread writes its own disjoint ranges).
struct Sendable(Vec<(*mut u8, usize)>);
// SAFETY: the ranges are disjoint per thread and outlive the scoped threads.
unsafe impl Send for Sendable {}

const CHUNK: usize = 1 << 20;

impl Raw<'_> {
    fn tcp(bytes: usize, c: usize) -> anyhow::Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let (mut senders, mut readers) = (Vec::new(), Vec::new());
        for _ in 0..c {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            let (mut r, _) = l.accept()?;
            senders.push(s);
            readers.push(std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = AlignedBuf::new(bytes);
                buf[..].fill(0);
                loop {
                    let mut got = 0;
                    while got < bytes {
                        let k = r.read(&mut buf[got..(got + CHUNK).min(bytes)])?;
                        if k == 0 && got == 0 {
                            return Ok(()); // closed between rounds
                        }
                        if k == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        got += k;
                    }
                    r.write_all(b"k")?;
                }
            }));
        }
        let srcs = (0..c)
            .map(|i| {
                let mut b = AlignedBuf::new(bytes);
                b[..].fill(i as u8 ^ 0x5a);
                b
            })
            .collect();
        Ok(Raw::Tcp {
            senders,
            srcs,
            readers,
            bytes,
        })
    }

    /// One round; its aggregate rate in bytes/s.
    fn round(&mut self, round: usize) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let moved = match self {
            Raw::Cma {
                pid,
                pk,
                pv,
                mine,
                n,
                c,
            } => {
                let (pid, n, c) = (*pid, *n, *c);
                let span = n * mine.run;
                let slots = (mine.pages / n).max(1);
                std::thread::scope(|s| -> anyhow::Result<()> {
                    let mut hs = Vec::new();
                    for i in 0..c {
                        let off = ((round * c + i) % slots) * span;
                        let remote: Vec<(u64, usize)> = pk
                            .iter()
                            .chain(pv.iter())
                            .map(|&b| (b + off as u64, span))
                            .collect();
                        let local = Sendable(
                            mine.k
                                .iter()
                                .chain(&mine.v)
                                // SAFETY: inside the buffer (slot * span + span <= pages * run).
                                .map(|b| (unsafe { (b.as_ptr() as *mut u8).add(off) }, span))
                                .collect(),
                        );
                        hs.push(s.spawn(move || {
                            let local = local;
                            strata_cluster::transport::shm::read_into(pid, &remote, &local.0)
                        }));
                    }
                    for h in hs {
                        h.join()
                            .map_err(|_| anyhow::anyhow!("copy thread panicked"))??;
                    }
                    Ok(())
                })?;
                c * 2 * pk.len() * span
            }
            Raw::Tcp {
                senders,
                srcs,
                bytes,
                ..
            } => {
                let bytes = *bytes;
                std::thread::scope(|s| -> anyhow::Result<()> {
                    let hs: Vec<_> = senders
                        .iter_mut()
                        .zip(srcs.iter())
                        .map(|(w, src)| {
                            s.spawn(move || -> std::io::Result<()> {
                                for chunk in src[..bytes].chunks(CHUNK) {
                                    w.write_all(chunk)?;
                                }
                                let mut ack = [0u8; 1];
                                w.read_exact(&mut ack)
                            })
                        })
                        .collect();
                    for h in hs {
                        h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
                    }
                    Ok(())
                })?;
                senders.len() * bytes
            }
        };
        Ok(moved as f64 / t0.elapsed().as_secs_f64())
    }

    /// Closes the connections and collects the reader threads.
    fn finish(self) -> anyhow::Result<()> {
        if let Raw::Tcp {
            senders, readers, ..
        } = self
        {
            drop(senders);
            for t in readers {
                t.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
            }
        }
        Ok(())
    }
}
