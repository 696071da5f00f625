//! The decode side: fetches a request's prompt KV from the prefill's bootstrap server on a
//! background thread while the scheduler holds the request, then hands the pages over. The
//! connection comes from the pool of [`super::link`]; on the same-host socket the pages are copied
//! straight out of the prefill's staging memory, otherwise they come on the socket.

use super::link::{Link, Links};
use super::staging::StagingCache;
use super::wire::{self, KvHeader, Want};
use super::{Bootstrap, PdConfig};
use crate::hicache::MemLayout;
use crate::kv::HostKvPool;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use strata_cluster::transport::shm;

/// The prompt's KV, received.
pub struct Fetched {
    pub first_token: u32,
    /// The first token's log-probabilities as the prefill computed them (when asked for).
    pub first_logprobs: Option<crate::logprobs::PosLogprobs>,
    pub staging: HostKvPool,
    pub n_pages: usize,
}

/// Page geometry both sides must agree on.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub page_size: usize,
    pub layers: usize,
    pub kv_dim: usize,
    pub elem: usize,
}

/// Per request id: `None` while its fetch runs, then the result. A forgotten (aborted) request
/// has no entry, so a fetch that finishes after the abort drops its pages at once.
type Results = Arc<Mutex<HashMap<String, Option<Result<Fetched, String>>>>>;

/// Fetches in flight and finished, by request id.
pub struct Fetcher {
    cfg: PdConfig,
    geo: Geometry,
    results: Results,
    links: Arc<Links>,
    /// Tells the scheduler a fetch finished (so it need not poll for it).
    waker: Arc<Mutex<Option<Waker>>>,
    /// Staging pools whose pages were loaded, for the next fetches.
    staging: Arc<StagingCache>,
}

type Waker = Box<dyn Fn() + Send + Sync>;

impl Fetcher {
    pub fn new(cfg: PdConfig, geo: Geometry, stats: Arc<crate::stats::Stats>) -> Self {
        let links = Arc::new(Links::new(cfg.same_host, cfg.silence_limit(), stats));
        Fetcher {
            cfg,
            geo,
            results: Arc::new(Mutex::new(HashMap::new())),
            links,
            waker: Arc::new(Mutex::new(None)),
            staging: Arc::new(StagingCache::default()),
        }
    }

    /// Gives back the staging pool of a fetch whose pages were loaded.
    pub fn recycle(&self, staging: HostKvPool) {
        self.staging.give(staging);
    }

    /// Called after every finished fetch.
    pub fn set_waker(&self, w: Waker) {
        *self.waker.lock() = Some(w);
    }

    /// Starts fetching the KV of `rid` (a prompt of `prompt_len` tokens) from `b`'s prefill.
    pub fn start(&self, rid: &str, b: &Bootstrap, prompt_len: usize) {
        let (cfg, geo, results) = (self.cfg.clone(), self.geo, self.results.clone());
        let (links, waker, cache) = (self.links.clone(), self.waker.clone(), self.staging.clone());
        let (id, b) = (rid.to_string(), b.clone());
        self.results.lock().insert(rid.to_string(), None);
        let spawned = std::thread::Builder::new()
            .name("strata-pd-fetch".into())
            .spawn(move || {
                let r = fetch(&cfg, geo, &b, prompt_len, &links, &cache);
                if let Err(e) = &r {
                    tracing::warn!(rid = id, room = b.room, "PD: {e}");
                }
                if let Some(slot) = results.lock().get_mut(&id) {
                    *slot = Some(r);
                }
                if let Some(w) = waker.lock().as_ref() {
                    w();
                }
            });
        if let Err(e) = spawned {
            self.results.lock().insert(
                rid.to_string(),
                Some(Err(format!("cannot start a PD fetch: {e}"))),
            );
        }
    }

    /// The finished fetch of `rid`, if any (removed).
    pub fn take(&self, rid: &str) -> Option<Result<Fetched, String>> {
        let mut g = self.results.lock();
        g.get(rid)?.as_ref()?;
        g.remove(rid).flatten()
    }

    /// Returns a fetched result that could not be used yet.
    pub fn put_back(&self, rid: &str, f: Fetched) {
        self.results.lock().insert(rid.to_string(), Some(Ok(f)));
    }

    /// Forgets `rid` (aborted); a fetch still running drops its result when it finishes.
    pub fn forget(&self, rid: &str) {
        self.results.lock().remove(rid);
    }
}

/// Why an exchange on a connection failed.
struct Fail {
    msg: String,
    /// The connection ended at a frame boundary and may serve the next transfer.
    keep: bool,
    /// Nothing came back on a reused connection: the prefill had closed it (restarted); the
    /// transfer may be retried on a new one.
    stale: bool,
}

impl Fail {
    fn broken(msg: String) -> Self {
        Fail {
            msg,
            keep: false,
            stale: false,
        }
    }
}

fn fetch(
    cfg: &PdConfig,
    g: Geometry,
    b: &Bootstrap,
    prompt_len: usize,
    links: &Links,
    cache: &StagingCache,
) -> Result<Fetched, String> {
    let port = b.port.unwrap_or(cfg.bootstrap_port);
    let addr = (b.host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("bootstrap address {}:{port}: {e}", b.host))?
        .next()
        .ok_or_else(|| format!("bootstrap address {}:{port} does not resolve", b.host))?;
    let staging_pages = prompt_len.div_ceil(g.page_size);
    let object_bytes = g.page_size * g.layers * g.kv_dim * g.elem;
    let staging = cache.take(staging_pages, object_bytes, |pages| {
        HostKvPool::new(
            pages,
            g.page_size,
            g.layers,
            g.kv_dim,
            g.elem,
            MemLayout::PageFirst,
        )
    })?;
    let want = Want {
        room: b.room,
        prompt_len: prompt_len as u32,
        page_size: g.page_size as u32,
        object_bytes: staging.object_bytes() as u32,
        flags: 0,
        token: cfg.token.clone(),
    };
    let mut link = links.take(addr)?;
    let mut r = exchange(cfg, links, addr, &mut link, &want, &staging, staging_pages);
    if matches!(&r, Err(f) if f.stale) {
        tracing::debug!(%addr, "PD: a pooled connection was closed by the prefill; dialing again");
        link = links.dial(addr)?;
        r = exchange(cfg, links, addr, &mut link, &want, &staging, staging_pages);
    }
    match r {
        Ok(h) => {
            links.give(addr, link);
            Ok(Fetched {
                first_token: h.first_token,
                first_logprobs: h.first_logprobs,
                staging,
                n_pages: staging_pages,
            })
        }
        Err(f) => {
            if f.keep {
                links.give(addr, link);
            }
            Err(f.msg)
        }
    }
}

/// One transfer on `link`: WANT, heartbeats, the KV header and its pages, ACK.
fn exchange(
    cfg: &PdConfig,
    links: &Links,
    addr: SocketAddr,
    link: &mut Link,
    want: &Want,
    staging: &HostKvPool,
    n_pages: usize,
) -> Result<KvHeader, Fail> {
    let started = std::time::Instant::now();
    let mut want = want.clone();
    if link.is_local() && link.peer_pid.is_some() && links.may_read(addr) {
        want.flags |= wire::CAN_READ;
    }
    let reused = link.reused;
    let stale_or = |msg: String| Fail {
        msg,
        keep: false,
        stale: reused,
    };
    want.write(&mut link.wr)
        .map_err(|e| stale_or(format!("bootstrap request: {e}")))?;
    let silent = |e: std::io::Error| {
        Fail::broken(
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                format!(
                    "the prefill server stopped answering (no heartbeat for {:?})",
                    cfg.silence_limit()
                )
            } else {
                format!("the prefill server closed the transfer before sending the KV cache: {e}")
            },
        )
    };
    // The first answer byte tells a connection the prefill closed while it was pooled.
    match link.rd.fill_buf() {
        Ok([]) => {
            return Err(stale_or(
                "the prefill server closed the transfer before sending the KV cache".into(),
            ))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            return Err(stale_or(format!(
                "the prefill server closed the transfer before sending the KV cache: {e}"
            )))
        }
        Err(e) => return Err(silent(e)),
        Ok(_) => {}
    }
    let h = loop {
        let h = KvHeader::read(&mut link.rd).map_err(silent)?;
        if h.status != wire::WAITING {
            break h;
        }
        if started.elapsed() > cfg.timeout {
            return Err(Fail::broken("the prefill did not finish in time".into()));
        }
    };
    if h.status != wire::OK {
        return Err(Fail {
            msg: format!("the prefill server refused the transfer: {}", h.msg),
            // A refused token closes the connection on the prefill's side.
            keep: h.status != wire::ERR_REFUSED,
            stale: false,
        });
    }
    let obj = staging.object_bytes();
    if h.n_pages as usize != n_pages || h.object_bytes as usize != obj {
        return Err(Fail::broken(
            "the prefill server sent KV of another geometry".into(),
        ));
    }
    if !cfg.test_stall.is_zero() {
        std::thread::sleep(cfg.test_stall);
    }
    let got_header = std::time::Instant::now();
    let broke = |e: std::io::Error| {
        Fail::broken(format!("the prefill server broke off the KV transfer: {e}"))
    };
    let on_socket = if h.flags & wire::IN_PLACE != 0 {
        match copy_in_place(link.peer_pid, &h.ranges, staging, n_pages) {
            Ok(()) => false,
            Err(e) => {
                // EPERM / EACCES: the kernel's ptrace check said no.
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    links.deny_read(addr, &e.to_string());
                } else {
                    tracing::warn!(%addr, room = want.room, "PD: same-host copy failed ({e}); asking for the pages on the socket");
                }
                link.wr.write_all(&[wire::ACK_SEND]).map_err(broke)?;
                true
            }
        }
    } else {
        true
    };
    if on_socket {
        for p in 0..n_pages as u32 {
            for v in [false, true] {
                // SAFETY: the staging pool was created by this fetch and is not shared yet.
                link.rd
                    .read_exact(unsafe { staging.object_mut(p, v) })
                    .map_err(broke)?;
            }
        }
    }
    if cfg.inject_fault(want.room) {
        let _ = link.wr.write_all(&[wire::ACK_REFUSED]);
        return Err(Fail {
            msg: "injected test fault: the decode side refused the pages".into(),
            keep: true,
            stale: false,
        });
    }
    link.wr
        .write_all(&[wire::ACK_OK])
        .map_err(|e| Fail::broken(e.to_string()))?;
    crate::stats::Stats::add(&links.stats.pd_received, 1);
    crate::stats::Stats::add(
        &links.stats.pd_recv_micros,
        got_header.elapsed().as_micros() as u64,
    );
    Ok(h)
}

/// Copies the prefill's staging objects (`ranges`, in page order: K, V, K, V, ...) straight into
/// `staging` with one cross-memory read.
fn copy_in_place(
    pid: Option<i32>,
    ranges: &[(u64, u64)],
    staging: &HostKvPool,
    n: usize,
) -> std::io::Result<()> {
    let pid = pid.ok_or_else(|| std::io::Error::other("the prefill's pid is unknown"))?;
    let obj = staging.object_bytes();
    if ranges.len() != 2 * n || ranges.iter().any(|&(_, l)| l != obj as u64) {
        return Err(std::io::Error::other(
            "the prefill announced ranges of another geometry",
        ));
    }
    let local: Vec<(*mut u8, usize)> = (0..n as u32)
        .flat_map(|p| [false, true].map(|v| (staging.object_ptr(p, v), obj)))
        .collect();
    let remote: Vec<(u64, usize)> = ranges.iter().map(|&(a, l)| (a, l as usize)).collect();
    // The local spans are this fetch's own staging objects, written by nothing else meanwhile.
    shm::read_into(pid, &remote, &local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pd::prefill::{Handoff, Registry};
    use crate::pd::Mode;
    use crate::stats::Stats;
    use std::sync::mpsc;

    const G: Geometry = Geometry {
        page_size: 4,
        layers: 2,
        kv_dim: 8,
        elem: 4,
    };

    fn cfg(mode: Mode, port: u16, same_host: bool) -> PdConfig {
        let mut c = PdConfig::new(mode, port, "127.0.0.1", "");
        c.same_host = same_host;
        c
    }

    /// Readies `room` on `reg` with a prompt of `n` tokens whose bytes are a function of `room`;
    /// the receiver gets the prefill leg's outcome.
    fn ready(reg: &Registry, room: u64, n: usize) -> mpsc::Receiver<Result<(), String>> {
        let pages = n.div_ceil(G.page_size);
        let staging = HostKvPool::new(
            pages,
            G.page_size,
            G.layers,
            G.kv_dim,
            G.elem,
            MemLayout::PageFirst,
        )
        .unwrap();
        for p in 0..pages as u32 {
            for v in [false, true] {
                // SAFETY: the pool is this test's alone.
                let o = unsafe { staging.object_mut(p, v) };
                for (i, b) in o.iter_mut().enumerate() {
                    *b = (room as usize * 31 + p as usize * 7 + v as usize * 3 + i) as u8;
                }
            }
        }
        let (tx, rx) = mpsc::channel();
        assert!(reg.claim(room));
        reg.ready(
            room,
            Handoff {
                n_tokens: n as u32,
                first_token: 42,
                first_logprobs: None,
                staging,
                n_pages: pages,
                page_size: G.page_size,
                deliver: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            },
        );
        rx
    }

    fn check(f: &Fetched, room: u64) {
        assert_eq!(f.first_token, 42);
        for p in 0..f.n_pages as u32 {
            for v in [false, true] {
                // SAFETY: the fetched pool is this test's alone.
                let o = unsafe { f.staging.object(p, v) };
                for (i, b) in o.iter().enumerate() {
                    let want = (room as usize * 31 + p as usize * 7 + v as usize * 3 + i) as u8;
                    assert_eq!(*b, want, "room {room} page {p} v {v} byte {i}");
                }
            }
        }
    }

    /// The same-host path (in-place copy), forced TCP, and the fallback of a same-host connection
    /// whose copy fails (the bytes come on the socket): each delivers the exact bytes, each reuses
    /// one connection across transfers.
    #[test]
    fn same_host_tcp_and_fallback_deliver_the_pages_on_reused_connections() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pstats = Arc::new(Stats::default());
        let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
        let b = |room| Bootstrap {
            host: "127.0.0.1".into(),
            port: Some(port),
            room,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut room = 0;
        for same_host in [true, false] {
            let dstats = Arc::new(Stats::default());
            let dcfg = cfg(Mode::Decode, port, same_host);
            let links = Links::new(same_host, dcfg.silence_limit(), dstats.clone());
            let cache = StagingCache::default();
            let local_before = Stats::get(&pstats.pd_local);
            for n in [1, 4, 13] {
                room += 1;
                let rx = ready(&reg, room, n);
                let f = fetch(&dcfg, G, &b(room), n, &links, &cache).unwrap();
                check(&f, room);
                cache.give(f.staging); // the next fetch reuses it: stale bytes must not matter
                assert_eq!(rx.recv().unwrap(), Ok(()));
            }
            assert_eq!(
                Stats::get(&dstats.pd_connections),
                1,
                "one connection, reused"
            );
            let local = Stats::get(&pstats.pd_local) - local_before;
            assert_eq!(local, if same_host { 3 } else { 0 });
            // A geometry mismatch is an error header: the connection stays usable.
            room += 1;
            let rx = ready(&reg, room, 5);
            assert!(fetch(&dcfg, G, &b(room), 6, &links, &cache).is_err());
            assert!(rx.recv().unwrap().is_err());
            room += 1;
            let rx = ready(&reg, room, 6);
            check(&fetch(&dcfg, G, &b(room), 6, &links, &cache).unwrap(), room);
            assert_eq!(rx.recv().unwrap(), Ok(()));
            assert_eq!(Stats::get(&dstats.pd_connections), 1);
        }
        // A same-host connection whose in-place copy fails (here: a pid that cannot exist) asks
        // for the bytes on the socket and still gets them.
        let dstats = Arc::new(Stats::default());
        let dcfg = cfg(Mode::Decode, port, true);
        let links = Links::new(true, dcfg.silence_limit(), dstats);
        let mut link = links.dial(addr).unwrap();
        assert!(link.is_local());
        link.peer_pid = Some(i32::MAX);
        room += 1;
        let rx = ready(&reg, room, 9);
        let staging = HostKvPool::new(
            3,
            G.page_size,
            G.layers,
            G.kv_dim,
            G.elem,
            MemLayout::PageFirst,
        )
        .unwrap();
        let want = Want {
            room,
            prompt_len: 9,
            page_size: G.page_size as u32,
            object_bytes: staging.object_bytes() as u32,
            flags: 0,
            token: String::new(),
        };
        let local_before = Stats::get(&pstats.pd_local);
        let h = exchange(&dcfg, &links, addr, &mut link, &want, &staging, 3)
            .unwrap_or_else(|f| panic!("{}", f.msg));
        check(
            &Fetched {
                first_token: h.first_token,
                first_logprobs: None,
                staging,
                n_pages: 3,
            },
            room,
        );
        assert_eq!(rx.recv().unwrap(), Ok(()));
        assert_eq!(
            Stats::get(&pstats.pd_local),
            local_before,
            "counted as in place"
        );
    }
}
