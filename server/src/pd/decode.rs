//! The decode side: fetches a request's prompt KV from the prefill's bootstrap server on a
//! background thread while the scheduler holds the request, then hands the pages over. The
//! connection comes from the pool of [`super::link`]. Three data paths, chosen per transfer:
//!
//! - CUDA IPC (same host, GPU runners on both sides): the pages stay in the prefill's GPU pool,
//!   which this process opened once per prefill (the handle came in an earlier header); they are
//!   copied device to device straight into the pool pages the scheduler gave the fetch ([`Dest`]).
//!   A fetch without pool pages does not ask for device pages (the prefill stages them).
//! - same-host copy: the pages are copied with `process_vm_readv` straight out of the prefill's
//!   memory (its KV pool on the CPU runner, else its staging pool).
//! - the socket (TCP, or the fallback of the other two).
//!
//! On the CPU runner the scheduler gives a fetch its pool pages up front ([`Dest`]) when the pool
//! has room: pages the prefill sends in the pool's own order (page_first_direct, from its pool)
//! land there directly, by either of the last two paths, and nothing is copied again. Otherwise
//! they land in a staging pool that the scheduler loads into the pool.

use super::link::{Link, Links};
use super::share::{DeviceKv, Fence, HostSpans, Opened};
use super::staging::StagingCache;
use super::wire::{self, DeviceInfo, KvHeader, Want};
use super::{Bootstrap, PdConfig};
use crate::hicache::MemLayout;
use crate::kv::HostKvPool;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use strata_cluster::transport::shm;

/// Where received pages wait for the scheduler.
pub enum Payload {
    /// A host staging pool (pages `0..n_pages`).
    Host(HostKvPool),
    /// Already in the pool pages the scheduler gave the fetch ([`Dest`]), which come back in
    /// [`Fetched::pages`].
    InPool,
}

/// Pool pages the scheduler allocated for a fetch: pages in page_first_direct order go straight
/// there (the CPU runner, whose pool memory `spans` reaches), as do pages copied device to device
/// out of a prefill's GPU pool (the CUDA runner: the copy waits for `fence`); no staging copy.
/// The fetch owns the pages until the scheduler takes the result, so an aborted request's pages
/// cannot be reused while a copy into them runs.
pub struct Dest {
    pub pages: Vec<crate::kv::Page>,
    pub spans: Option<Arc<HostSpans>>,
    pub fence: Option<Fence>,
}

/// Where one transfer's time went, on the decode side.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// From the WANT to the final KV header, less the time parts spent landing: waiting for the
    /// prefill's pages (its compute, its wake-up, the headers).
    pub waited: std::time::Duration,
    /// From each KV header (parts and the final one) to its bytes in place (the copy, or the
    /// socket read), summed: the transfer itself, not the prefill's chunks between parts.
    pub moved: std::time::Duration,
    /// From the bytes in place to the acknowledgement sent.
    pub acked: std::time::Duration,
    pub bytes: u64,
}

/// The prompt's KV, received.
pub struct Fetched {
    pub first_token: u32,
    /// The first token's log-probabilities as the prefill computed them (when asked for).
    pub first_logprobs: Option<crate::logprobs::PosLogprobs>,
    pub payload: Payload,
    pub n_pages: usize,
    /// The pool pages given with the fetch ([`Dest`]), the prompt's KV in them when the payload
    /// is `InPool`.
    pub pages: Option<Vec<crate::kv::Page>>,
    pub timing: Timing,
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
    /// The runner's GPU pool, when it can take pages device to device (CUDA IPC).
    device: Option<Arc<dyn DeviceKv>>,
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
            device: None,
        }
    }

    /// Lets same-host transfers from GPU prefills go device to device (CUDA IPC).
    pub fn with_device(mut self, device: Option<Arc<dyn DeviceKv>>) -> Self {
        self.device = device;
        self
    }

    /// The runner's GPU pool as transfers reach it (CUDA IPC), if any.
    pub fn device(&self) -> Option<Arc<dyn DeviceKv>> {
        self.device.clone()
    }

    /// Gives back the staging pool of a fetch whose pages were loaded.
    pub fn recycle(&self, staging: HostKvPool) {
        self.staging.give(staging);
    }

    /// Called after every finished fetch.
    pub fn set_waker(&self, w: Waker) {
        *self.waker.lock() = Some(w);
    }

    /// Starts fetching the KV of `rid` (a prompt of `prompt_len` tokens) from `b`'s prefill,
    /// into `dest`'s pool pages when given and the prefill sends page_first_direct.
    pub fn start(&self, rid: &str, b: &Bootstrap, prompt_len: usize, dest: Option<Dest>) {
        let (cfg, geo, results) = (self.cfg.clone(), self.geo, self.results.clone());
        let (links, waker, cache) = (self.links.clone(), self.waker.clone(), self.staging.clone());
        let (id, b, device) = (rid.to_string(), b.clone(), self.device.clone());
        self.results.lock().insert(rid.to_string(), None);
        let spawned = std::thread::Builder::new()
            .name("strata-pd-fetch".into())
            .spawn(move || {
                let r = fetch(
                    &cfg,
                    geo,
                    &b,
                    prompt_len,
                    &links,
                    &cache,
                    device.as_deref(),
                    dest,
                );
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

#[allow(clippy::too_many_arguments)] // one transfer's whole context
fn fetch(
    cfg: &PdConfig,
    g: Geometry,
    b: &Bootstrap,
    prompt_len: usize,
    links: &Links,
    cache: &StagingCache,
    device: Option<&dyn DeviceKv>,
    dest: Option<Dest>,
) -> Result<Fetched, String> {
    let port = b.port.unwrap_or(cfg.bootstrap_port);
    let addr = (b.host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("bootstrap address {}:{port}: {e}", b.host))?
        .next()
        .ok_or_else(|| format!("bootstrap address {}:{port} does not resolve", b.host))?;
    let staging_pages = prompt_len.div_ceil(g.page_size);
    let object_bytes = g.page_size * g.layers * g.kv_dim * g.elem;
    let make = || {
        cache.take(staging_pages, object_bytes, |pages| {
            HostKvPool::new(
                pages,
                g.page_size,
                g.layers,
                g.kv_dim,
                g.elem,
                MemLayout::PageFirst,
            )
        })
    };
    let mut staging = Staging {
        pool: None,
        make: Some(&make),
    };
    let dest = dest.filter(|d| d.pages.len() == staging_pages);
    // Parts land in the pool pages given, or (host pages) in the staging pool; device pages are
    // asked for only with pool pages to land in.
    let want = Want {
        room: b.room,
        prompt_len: prompt_len as u32,
        page_size: g.page_size as u32,
        object_bytes: object_bytes as u32,
        flags: wire::TAKES_DIRECT | wire::TAKES_PARTS,
        token: cfg.token.clone(),
        dest: None,
    };
    let mut link = links.take(addr)?;
    let ids: Vec<u32> = dest.as_ref().map_or(Vec::new(), |d| {
        d.pages.iter().map(crate::kv::Page::id).collect()
    });
    let ex = Exchange {
        cfg,
        links,
        addr,
        device,
        dest: dest
            .as_ref()
            .and_then(|d| Some(d.spans.as_ref()?.ranges(&ids))),
        dest_pages: dest.as_ref().map(|_| ids.as_slice()),
        fence: dest.as_ref().and_then(|d| d.fence.as_ref()),
    };
    let mut r = ex.run(&mut link, &want, &mut staging, staging_pages);
    if matches!(&r, Err(f) if f.stale) {
        tracing::debug!(%addr, "PD: a pooled connection was closed by the prefill; dialing again");
        link = links.dial(addr)?;
        r = ex.run(&mut link, &want, &mut staging, staging_pages);
    }
    match r {
        Ok((h, got, timing)) => {
            links.give(addr, link);
            let payload = match got {
                Got::Staging => Payload::Host(
                    staging
                        .pool
                        .take()
                        .ok_or("no staging pool for staged pages")?,
                ),
                Got::InPool => {
                    if let Some(p) = staging.pool.take() {
                        cache.give(p);
                    }
                    Payload::InPool
                }
            };
            Ok(Fetched {
                first_token: h.first_token,
                first_logprobs: h.first_logprobs,
                timing,
                payload,
                n_pages: staging_pages,
                pages: dest.map(|d| d.pages),
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

/// What one transfer needs besides its connection.
struct Exchange<'a> {
    cfg: &'a PdConfig,
    links: &'a Links,
    addr: SocketAddr,
    device: Option<&'a dyn DeviceKv>,
    /// The destination pool pages' memory, in transfer order (page_first_direct), if any.
    dest: Option<Vec<(u64, u64)>>,
    /// The destination pool pages (for a device-to-device copy), if any.
    dest_pages: Option<&'a [u32]>,
    /// Orders a device-to-device copy into `dest_pages` after the compute stream's earlier work.
    fence: Option<&'a Fence>,
}

/// A fetch's staging pool, made only when pages land there: pages that go straight into pool
/// pages need none (taking a prompt-sized pool per transfer, with many transfers in flight more
/// than the cache keeps, cost more than the copy itself).
pub(crate) struct Staging<'a> {
    pool: Option<HostKvPool>,
    make: Option<&'a dyn Fn() -> Result<HostKvPool, String>>,
}

impl Staging<'_> {
    fn get(&mut self) -> Result<&mut HostKvPool, Fail> {
        if self.pool.is_none() {
            let make = self
                .make
                .ok_or_else(|| Fail::broken("no staging pool for this transfer".into()))?;
            self.pool = Some(make().map_err(Fail::broken)?);
        }
        Ok(self.pool.as_mut().expect("set above"))
    }
}

/// How one transfer's pages have landed so far (parts, then the rest).
struct Landing {
    path: &'static str,
    into_pool: bool,
    via_ipc: bool,
    /// The WANT asked the prefill to copy the pages into the pool pages itself (PUSH).
    push_asked: bool,
    /// A same-host copy failed: the decode asks for every page on the socket at the end.
    resend: bool,
}

impl Default for Landing {
    fn default() -> Self {
        Landing {
            path: "the socket",
            into_pool: false,
            via_ipc: false,
            push_asked: false,
            resend: false,
        }
    }
}

/// Where one transfer's pages landed.
enum Got {
    Staging,
    InPool,
}

impl Exchange<'_> {
    /// One transfer on `link`: WANT, heartbeats, the KV headers (parts, then the final one) and
    /// their pages, ACK. Returns the final header and where the pages landed.
    fn run(
        &self,
        link: &mut Link,
        want: &Want,
        staging: &mut Staging<'_>,
        n_pages: usize,
    ) -> Result<(KvHeader, Got, Timing), Fail> {
        let (cfg, links, addr) = (self.cfg, self.links, self.addr);
        let started = std::time::Instant::now();
        let mut want = want.clone();
        if link.is_local() && link.peer_pid.is_some() && links.may_read(addr) {
            want.flags |= wire::CAN_READ;
        }
        let ipc = self
            .device
            .filter(|_| link.is_local() && links.may_ipc(addr));
        if ipc.is_some() {
            want.flags |= wire::CAN_IPC;
            // Device pages only with pool pages to copy them into: without, the prefill stages
            // them (no device buffer of this fetch's own, no allocation on the hot path).
            if link.ipc.is_some() && self.dest_pages.is_some() {
                want.flags |= wire::IPC_READY;
                if let Some(dest) = ipc.and_then(|d| self.push_dest(d)) {
                    want.flags |= wire::PUSH;
                    want.dest = Some(dest);
                }
            }
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
                    format!(
                        "the prefill server closed the transfer before sending the KV cache: {e}"
                    )
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
        let obj = want.object_bytes as usize;
        let broke = |e: std::io::Error| {
            Fail::broken(format!("the prefill server broke off the KV transfer: {e}"))
        };
        let mut l = Landing {
            push_asked: want.flags & wire::PUSH != 0,
            ..Landing::default()
        };
        // Parts (finished prefill chunks' pages) land as they come; the final header has the rest.
        // Each header's pages count as busy from the header to their landing: the prefill's
        // chunks between parts are not transfer time.
        let mut off = 0usize;
        let mut parts_moved = std::time::Duration::ZERO;
        let h = loop {
            let h = KvHeader::read(&mut link.rd).map_err(|e| {
                if off == 0 {
                    silent(e)
                } else {
                    Fail::broken(format!(
                        "the prefill server broke off the KV transfer after {off} of {n_pages} pages: {e}"
                    ))
                }
            })?;
            match h.status {
                wire::WAITING => {
                    if started.elapsed() > cfg.timeout {
                        return Err(Fail::broken("the prefill did not finish in time".into()));
                    }
                }
                wire::PARTIAL => {
                    if h.object_bytes as usize != obj
                        || off + h.n_pages as usize > n_pages
                        || h.flags & wire::DIRECT == 0
                    {
                        return Err(Fail::broken(
                            "the prefill server sent a part of another geometry".into(),
                        ));
                    }
                    let t = std::time::Instant::now();
                    let busy = links.stats.pd_recv_busy.enter();
                    self.land(link, &h, off, n_pages, staging, ipc, &mut l, true)?;
                    drop(busy);
                    parts_moved += t.elapsed();
                    off += h.n_pages as usize;
                    crate::stats::Stats::add(&links.stats.pd_recv_parts, 1);
                }
                _ => break h,
            }
        };
        if h.status != wire::OK {
            return Err(Fail {
                msg: format!("the prefill server refused the transfer: {}", h.msg),
                // A refused token closes the connection on the prefill's side; after parts the
                // connection may be anywhere.
                keep: h.status != wire::ERR_REFUSED && off == 0,
                stale: false,
            });
        }
        if off + h.n_pages as usize != n_pages || h.object_bytes as usize != obj {
            return Err(Fail::broken(
                "the prefill server sent KV of another geometry".into(),
            ));
        }
        if !cfg.test_stall.is_zero() {
            std::thread::sleep(cfg.test_stall);
        }
        let got_header = std::time::Instant::now();
        let _busy = links.stats.pd_recv_busy.enter();
        self.land(link, &h, off, n_pages, staging, ipc, &mut l, false)?;
        if l.resend {
            // A same-host copy failed: every page of the prompt on the socket after all.
            link.wr.write_all(&[wire::ACK_SEND]).map_err(broke)?;
            let local = self.local(staging.pool.as_ref(), &h, 0, n_pages, n_pages);
            read_ranges(&mut link.rd, &local).map_err(broke)?;
            l.path = "the socket";
        }
        let Landing {
            path,
            into_pool,
            via_ipc,
            ..
        } = l;
        // Pages copied out of the prefill's memory (not off the socket) are valid only if the
        // prefill still held them when the copy ended: it shuts the connection down before it
        // frees pages of a transfer it gave up on (no ACK in time).
        let landed = std::time::Instant::now();
        if path != "the socket" && link.gave_up() {
            return Err(Fail::broken(
                "the prefill server closed the connection before the KV transfer was acknowledged (it gave up or went away)".into(),
            ));
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
        let timing = Timing {
            waited: (got_header - started).saturating_sub(parts_moved),
            moved: parts_moved + (landed - got_header),
            acked: landed.elapsed(),
            bytes: (n_pages * 2 * obj) as u64,
        };
        let st = &links.stats;
        crate::stats::Stats::add(&st.pd_received, 1);
        crate::stats::Stats::add(&st.pd_recv_bytes, timing.bytes);
        crate::stats::Stats::add(
            &st.pd_recv_micros,
            (timing.moved + timing.acked).as_micros() as u64,
        );
        if via_ipc {
            crate::stats::Stats::add(&st.pd_recv_ipc, 1);
        }
        if ipc.is_some() && h.flags & wire::PUSHES != 0 {
            links.allow_push(addr);
        }
        if !link.logged {
            link.logged = true;
            tracing::info!(%addr, "PD: KV transfers on this connection take {path}");
        }
        // The prefill's GPU pool, announced for the next transfers: opened once (after the
        // acknowledgement, so this transfer does not wait for it).
        if let (Some(d), Some(info), false) = (ipc, &h.device, via_ipc) {
            if link.ipc.as_ref().is_none_or(|(hd, _)| *hd != info.handle) {
                if let Err(e) = self.open(d, link, info) {
                    links.deny_ipc(addr, &e);
                }
            }
        }
        let got = if into_pool { Got::InPool } else { Got::Staging };
        Ok((h, got, timing))
    }

    /// This pool and the fetch's pool pages for a PUSH WANT, when `addr`'s prefill announced it
    /// pushes: the compute stream's work before the pages were handed out is waited for first
    /// (another process writes them next). None: the decode copies (or the pages are staged).
    fn push_dest(&self, d: &dyn DeviceKv) -> Option<DeviceInfo> {
        let pages = self.dest_pages?;
        if !self.cfg.push || !self.links.may_push(self.addr) {
            return None;
        }
        let settled = self.fence.map_or(Ok(()), |f| d.settle(f));
        match settled.and_then(|()| d.export()) {
            Ok(mine) => Some(DeviceInfo {
                pages: pages.to_vec(),
                ..mine
            }),
            Err(e) => {
                tracing::warn!(addr = %self.addr, "PD: cannot offer this GPU pool to the prefill ({e}); copying the pages here");
                None
            }
        }
    }

    /// The memory the prompt's pages `from..to` land in, in transfer order: the given pool
    /// pages (page_first_direct pages, one range per page and layer), else staging objects.
    fn local(
        &self,
        staging: Option<&HostKvPool>,
        h: &KvHeader,
        from: usize,
        to: usize,
        n_pages: usize,
    ) -> Vec<(*mut u8, usize)> {
        match self.dest.as_ref().filter(|_| h.flags & wire::DIRECT != 0) {
            Some(d) => {
                let per = d.len() / n_pages.max(1);
                d[from * per..to * per]
                    .iter()
                    .map(|&(a, l)| (a as *mut u8, l as usize))
                    .collect()
            }
            None => {
                let Some(staging) = staging else {
                    return Vec::new(); // made by `land` before: unreachable
                };
                let obj = staging.object_bytes();
                (from as u32..to as u32)
                    .flat_map(|p| [false, true].map(|v| (staging.object_ptr(p, v), obj)))
                    .collect()
            }
        }
    }

    /// Lands the pages `h` announces (the prompt's pages `from..from + h.n_pages`, a part or the
    /// rest): device to device, copied out of the prefill's memory, or read off the socket.
    #[allow(clippy::too_many_arguments)] // one landing's whole context
    fn land(
        &self,
        link: &mut Link,
        h: &KvHeader,
        from: usize,
        n_pages: usize,
        staging: &mut Staging<'_>,
        ipc: Option<&dyn DeviceKv>,
        l: &mut Landing,
        part: bool,
    ) -> Result<(), Fail> {
        let (links, addr) = (self.links, self.addr);
        let to = from + h.n_pages as usize;
        if h.flags & wire::PUSHED != 0 {
            // The prefill copied them into our pool pages and waited until they landed.
            if !l.push_asked || self.dest_pages.is_none_or(|d| to > d.len()) {
                return Err(Fail::broken(
                    "the prefill server reported pages copied into this pool that it was not asked for"
                        .into(),
                ));
            }
            crate::stats::Stats::add(&links.stats.pd_recv_pushed, 1);
            l.into_pool = true;
            l.via_ipc = true;
            l.path = "CUDA IPC (copied by the prefill into this pool)";
            return Ok(());
        }
        if h.flags & wire::ON_DEVICE != 0 {
            let info = h.device.as_ref().expect("checked by KvHeader::read");
            let t = std::time::Instant::now();
            let r = match (ipc, self.dest_pages) {
                _ if info.pages.len() != to - from => Err("page count differs".into()),
                // Straight into the pool pages this fetch owns: queued on the runner's PD
                // stream after the fence, then waited for (the copy's event only).
                (Some(d), Some(dst)) => self.open(d, link, info).and_then(|m| {
                    let c = d.copy_into(&m, info, &dst[from..to], self.fence)?;
                    let queued = std::time::Instant::now();
                    Ok((queued, d.wait(c)?))
                }),
                (Some(_), None) => Err("device pages need pool pages to land in".into()),
                (None, _) => Err("this server did not ask for device pages".into()),
            };
            return match r {
                Ok((queued, device)) => {
                    let st = &links.stats;
                    let us = |d: std::time::Duration| d.as_micros() as u64;
                    crate::stats::Stats::add(&st.pd_recv_ipc_copies, 1);
                    crate::stats::Stats::add(
                        &st.pd_recv_ipc_bytes,
                        (to - from) as u64 * 2 * h.object_bytes as u64,
                    );
                    crate::stats::Stats::add(&st.pd_recv_ipc_enqueue_micros, us(queued - t));
                    crate::stats::Stats::add(&st.pd_recv_ipc_wait_micros, us(queued.elapsed()));
                    if let Some(d) = device {
                        crate::stats::Stats::add(&st.pd_recv_ipc_device_micros, us(d));
                    }
                    l.into_pool = true;
                    l.via_ipc = true;
                    l.path = "CUDA IPC (device to device)";
                    Ok(())
                }
                Err(e) => {
                    links.deny_ipc(addr, &e);
                    let _ = link.wr.write_all(&[wire::ACK_REFUSED]);
                    Err(Fail {
                        msg: format!("the CUDA IPC copy from the prefill failed: {e}"),
                        // After a part the prefill may still be sending.
                        keep: !part,
                        stale: false,
                    })
                }
            };
        }
        // page_first_direct is the pool's own order: straight into the given pool pages.
        if self.dest.is_some() && h.flags & wire::DIRECT != 0 {
            l.into_pool = true;
        } else {
            staging.get()?.layout = if h.flags & wire::DIRECT != 0 {
                MemLayout::PageFirstDirect
            } else {
                MemLayout::PageFirst
            };
        }
        let local = self.local(staging.pool.as_ref(), h, from, to, n_pages);
        if h.flags & wire::IN_PLACE != 0 {
            if l.resend {
                return Ok(()); // everything comes on the socket at the end
            }
            match copy_in_place(link.peer_pid, &h.ranges, &local) {
                Ok(()) => l.path = "the same-host copy (process_vm_readv)",
                Err(e) => {
                    // EPERM / EACCES: the kernel's ptrace check said no.
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        links.deny_read(addr, &e.to_string());
                    } else {
                        tracing::warn!(%addr, "PD: same-host copy failed ({e}); asking for the pages on the socket");
                    }
                    l.resend = true;
                }
            }
        } else {
            read_ranges(&mut link.rd, &local).map_err(|e| {
                Fail::broken(format!("the prefill server broke off the KV transfer: {e}"))
            })?;
        }
        Ok(())
    }

    /// The prefill's GPU pool `info`, opened (once per pool: the connection keeps it).
    fn open(&self, d: &dyn DeviceKv, link: &mut Link, info: &DeviceInfo) -> Result<Opened, String> {
        if let Some((hd, m)) = &link.ipc {
            if *hd == info.handle {
                return Ok(m.clone());
            }
        }
        let m = d.open(info)?;
        link.ipc = Some((info.handle, m.clone()));
        self.links.opened(self.addr, info.handle, &m);
        Ok(m)
    }
}

/// Reads exactly the bytes of `local` (memory this fetch owns: the staging pool, or its pool
/// pages, written by nothing else until the scheduler takes the result), in order, with
/// vectored reads of up to 1,024 ranges (one system call for many pages and layers).
fn read_ranges(
    rd: &mut std::io::BufReader<strata_cluster::transport::stream::Stream>,
    local: &[(*mut u8, usize)],
) -> std::io::Result<()> {
    for chunk in local.chunks(1024) {
        let mut bufs: Vec<std::io::IoSliceMut<'_>> = chunk
            .iter()
            // SAFETY: see above; the ranges do not overlap.
            .map(|&(at, len)| {
                std::io::IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(at, len) })
            })
            .collect();
        let mut rest = &mut bufs[..];
        while !rest.is_empty() {
            let n = rd.read_vectored(rest)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            std::io::IoSliceMut::advance_slices(&mut rest, n);
        }
    }
    Ok(())
}

/// Copies the prefill's memory (`ranges`, in transfer order: each page's K object bytes, then its
/// V object bytes) straight into `local` (the same bytes in the same order, staging objects or
/// pool runs) with cross-memory reads.
fn copy_in_place(
    pid: Option<i32>,
    ranges: &[(u64, u64)],
    local: &[(*mut u8, usize)],
) -> std::io::Result<()> {
    let pid = pid.ok_or_else(|| std::io::Error::other("the prefill's pid is unknown"))?;
    let local = cut(local, ranges)
        .ok_or_else(|| std::io::Error::other("the prefill announced ranges of another geometry"))?;
    let remote: Vec<(u64, usize)> = ranges.iter().map(|&(a, l)| (a, l as usize)).collect();
    // The local spans are this fetch's own memory, written by nothing else meanwhile.
    shm::read_into(pid, &remote, &local)
}

/// `local` cut to match `ranges` one to one (a range never straddles two local spans); None when
/// the ranges do not cover the local spans exactly.
fn cut(local: &[(*mut u8, usize)], ranges: &[(u64, u64)]) -> Option<Vec<(*mut u8, usize)>> {
    let mut out = Vec::with_capacity(ranges.len());
    let (mut i, mut off) = (0usize, 0usize);
    for &(_, l) in ranges {
        let l = l as usize;
        let &(base, len) = local.get(i)?;
        if l == 0 || off + l > len {
            return None;
        }
        // SAFETY: `off + l <= len`: inside the span.
        out.push((unsafe { base.add(off) }, l));
        off += l;
        if off == len {
            i += 1;
            off = 0;
        }
    }
    (i == local.len() && off == 0).then_some(out)
}

#[cfg(test)]
mod tests;
