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
    /// A same-host copy failed: the decode asks for every page on the socket at the end.
    resend: bool,
}

impl Default for Landing {
    fn default() -> Self {
        Landing {
            path: "the socket",
            into_pool: false,
            via_ipc: false,
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
        let mut l = Landing::default();
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
mod tests {
    use super::*;
    use crate::pd::prefill::{Handoff, Hold, Pages, Registry};
    use crate::pd::share::{Copying, HostSpans};
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

    /// A TCP port nothing listens on (for a test's bootstrap server).
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
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
                pages: Pages::Staged(staging),
                n_pages: pages,
                page_size: G.page_size,
                hold: None,
                deliver: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            },
        );
        rx
    }

    fn host(f: &Fetched) -> &HostKvPool {
        match &f.payload {
            Payload::Host(p) => p,
            _ => panic!("not staged on the host"),
        }
    }

    fn check(f: &Fetched, room: u64) {
        assert_eq!(f.first_token, 42);
        for p in 0..f.n_pages as u32 {
            for v in [false, true] {
                // SAFETY: the fetched pool is this test's alone.
                let o = unsafe { host(f).object(p, v) };
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
        let port = free_port();
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
                let f = fetch(&dcfg, G, &b(room), n, &links, &cache, None, None).unwrap();
                check(&f, room);
                let Payload::Host(st) = f.payload else {
                    panic!("not staged on the host")
                };
                cache.give(st); // the next fetch reuses it: stale bytes must not matter
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
            assert!(fetch(&dcfg, G, &b(room), 6, &links, &cache, None, None).is_err());
            assert!(rx.recv().unwrap().is_err());
            room += 1;
            let rx = ready(&reg, room, 6);
            check(
                &fetch(&dcfg, G, &b(room), 6, &links, &cache, None, None).unwrap(),
                room,
            );
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
        let ex = Exchange {
            cfg: &dcfg,
            links: &links,
            addr,
            device: None,
            dest: None,
            dest_pages: None,
            fence: None,
        };
        let mut sg = Staging {
            pool: Some(staging),
            make: None,
        };
        let (h, _, _) = ex
            .run(&mut link, &want, &mut sg, 3)
            .unwrap_or_else(|f| panic!("{}", f.msg));
        let staging = sg.pool.unwrap();
        check(
            &Fetched {
                first_token: h.first_token,
                first_logprobs: None,
                payload: Payload::Host(staging),
                n_pages: 3,
                pages: None,
                timing: Timing::default(),
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

    /// A made KV pool in this process's memory (the CPU runner's layout: per layer one K and one
    /// V buffer of `[page][token][kv_dim]` f32), its bytes a function of (room, kv, layer, byte).
    struct FakePool {
        k: Vec<Vec<u8>>,
        v: Vec<Vec<u8>>,
        run: usize,
    }

    impl FakePool {
        fn new(room: u64, pages: usize) -> Self {
            let run = G.page_size * G.kv_dim * G.elem;
            let fill = |kv: usize, l: usize| -> Vec<u8> {
                (0..pages * run)
                    .map(|i| (room as usize * 13 + kv * 101 + l * 37 + i * 7 + i / 251) as u8)
                    .collect()
            };
            FakePool {
                k: (0..G.layers).map(|l| fill(0, l)).collect(),
                v: (0..G.layers).map(|l| fill(1, l)).collect(),
                run,
            }
        }

        fn spans(&self) -> Arc<HostSpans> {
            let base = |b: &Vec<Vec<u8>>| b.iter().map(|x| x.as_ptr() as usize).collect();
            Arc::new(HostSpans {
                k: base(&self.k),
                v: base(&self.v),
                run: self.run,
                pages: self.k[0].len() / self.run,
            })
        }

        /// This pool's pages `mine[i]` equal `src`'s pages `theirs[i]`, every layer, K and V.
        fn check_pool(&self, src: &FakePool, mine: &[u32], theirs: &[u32]) {
            for (&m, &t) in mine.iter().zip(theirs) {
                for (a, b) in [(&self.k, &src.k), (&self.v, &src.v)] {
                    for (l, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                        let (mr, tr) = (m as usize * self.run, t as usize * self.run);
                        assert_eq!(
                            &x[mr..mr + self.run],
                            &y[tr..tr + self.run],
                            "pool page {m} <- {t}, layer {l}"
                        );
                    }
                }
            }
        }

        /// The received staging holds, for each listed page, every token's row of every layer
        /// (read through the staging's own layout).
        fn check(&self, st: &HostKvPool, pages: &[u32]) {
            let row = G.kv_dim * G.elem;
            for (i, &p) in pages.iter().enumerate() {
                for (v, bufs) in [(false, &self.k), (true, &self.v)] {
                    // SAFETY: the fetched pool is this test's alone.
                    let o = unsafe { st.object(i as u32, v) };
                    for (l, buf) in bufs.iter().enumerate() {
                        for t in 0..G.page_size {
                            let at = st.offset(t, l);
                            let src = (p as usize * G.page_size + t) * row;
                            assert_eq!(
                                &o[at..at + row],
                                &buf[src..src + row],
                                "page {i} (pool {p}) v {v} layer {l} token {t} ({:?})",
                                st.layout
                            );
                        }
                    }
                }
            }
        }
    }

    /// Pages left in the prefill's pool (the CPU runner's zero-staging path) arrive intact over
    /// the same-host copy, over TCP, and to a decode that only takes page_first objects (an
    /// older peer: gathered on the prefill); the pool pages are released (the hold dropped)
    /// once the transfer ended, after a success and after a refusal alike.
    #[test]
    fn pool_pages_arrive_on_every_path_and_are_released_after_the_transfer() {
        let port = free_port();
        let pstats = Arc::new(Stats::default());
        let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let pool = FakePool::new(7, 16);
        let pages: Vec<u32> = vec![5, 2, 9, 15];
        let n = 3 * G.page_size + 1;
        let released = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut room = 100;
        let offer = |room: u64| {
            let (tx, rx) = mpsc::channel();
            let r = released.clone();
            assert!(reg.claim(room));
            reg.ready(
                room,
                Handoff {
                    n_tokens: n as u32,
                    first_token: 42,
                    first_logprobs: None,
                    pages: Pages::Pool {
                        spans: pool.spans(),
                        pages: pages.clone(),
                    },
                    n_pages: pages.len(),
                    page_size: G.page_size,
                    hold: Some(Hold::new(move || {
                        r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    })),
                    deliver: Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                },
            );
            rx
        };
        let released_now = || released.load(std::sync::atomic::Ordering::SeqCst);
        // The decode's own pool, which a direct transfer fills in place (pages 1, 3, 0, 6).
        let mine = FakePool::new(0, 8);
        let my_pages: Vec<u32> = vec![1, 3, 0, 6];
        for (same_host, direct, into) in [
            (true, true, false),
            (false, true, false),
            (true, false, false),
            (false, false, false),
            (true, true, true),
            (false, true, true),
        ] {
            room += 1;
            let rx = offer(room);
            let dcfg = cfg(Mode::Decode, port, same_host);
            let links = Links::new(same_host, dcfg.silence_limit(), Arc::new(Stats::default()));
            let mut link = links.dial(addr).unwrap();
            let st = HostKvPool::new(
                pages.len(),
                G.page_size,
                G.layers,
                G.kv_dim,
                G.elem,
                MemLayout::PageFirst,
            )
            .unwrap();
            let want = Want {
                room,
                prompt_len: n as u32,
                page_size: G.page_size as u32,
                object_bytes: st.object_bytes() as u32,
                flags: if direct { wire::TAKES_DIRECT } else { 0 },
                token: String::new(),
            };
            let before = (released_now(), Stats::get(&pstats.pd_local));
            let ex = Exchange {
                cfg: &dcfg,
                links: &links,
                addr,
                device: None,
                dest: into.then(|| mine.spans().ranges(&my_pages)),
                dest_pages: None,
                fence: None,
            };
            let mut sg = Staging {
                pool: Some(st),
                make: None,
            };
            let (h, got, _) = ex
                .run(&mut link, &want, &mut sg, pages.len())
                .unwrap_or_else(|f| panic!("{}", f.msg));
            let st = sg.pool.unwrap();
            assert_eq!(matches!(got, Got::InPool), into);
            if into {
                mine.check_pool(&pool, &my_pages, &pages);
            }
            assert_eq!(h.flags & wire::DIRECT != 0, direct, "layout announced");
            let want_layout = if direct {
                MemLayout::PageFirstDirect
            } else {
                MemLayout::PageFirst
            };
            assert_eq!(rx.recv().unwrap(), Ok(()));
            if !into {
                assert_eq!(st.layout, want_layout);
                pool.check(&st, &pages);
            }
            assert_eq!(released_now(), before.0 + 1, "pages released after the ACK");
            let local = Stats::get(&pstats.pd_local) - before.1;
            assert_eq!(
                local,
                (same_host && direct) as u64,
                "same-host copy only when direct"
            );
        }
        // A decode that refuses the pages: the prefill leg fails, the pages are released.
        room += 1;
        let rx = offer(room);
        let before = released_now();
        let links = Links::new(
            false,
            std::time::Duration::from_secs(5),
            Arc::new(Stats::default()),
        );
        let mut link = links.dial(addr).unwrap();
        Want {
            room,
            prompt_len: n as u32 + 1, // a geometry mismatch: refused by the prefill
            page_size: G.page_size as u32,
            object_bytes: (pool.run * G.layers) as u32,
            flags: wire::TAKES_DIRECT,
            token: String::new(),
        }
        .write(&mut link.wr)
        .unwrap();
        let h = KvHeader::read(&mut link.rd).unwrap();
        assert_eq!(h.status, wire::ERR_MISMATCH);
        assert!(rx.recv().unwrap().is_err());
        assert_eq!(released_now(), before + 1, "pages released after a failure");
        // A room nobody fetches: released at expiry (the handoff dropped by the expiry thread).
        drop(reg);
    }

    /// One device-to-device copy: source pages, destination pages, whether it had a fence.
    type Copied = (Vec<u32>, Vec<u32>, bool);

    /// A GPU pool as the transfer threads see it, without a GPU: records every device-to-device
    /// copy queued (each takes `copy_ms` to land, seen by `wait`), how many landed, and whether
    /// an opened pool was closed while a copy was queued or running.
    #[derive(Default)]
    struct FakeDevice {
        copies: Mutex<Vec<Copied>>,
        copy_ms: u64,
        landed: std::sync::atomic::AtomicUsize,
        busy: Arc<std::sync::atomic::AtomicUsize>,
        closed_busy: Arc<std::sync::atomic::AtomicBool>,
        closed: Arc<std::sync::atomic::AtomicUsize>,
    }

    struct FakeMapping {
        busy: Arc<std::sync::atomic::AtomicUsize>,
        closed_busy: Arc<std::sync::atomic::AtomicBool>,
        closed: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Drop for FakeMapping {
        fn drop(&mut self) {
            use std::sync::atomic::Ordering::SeqCst;
            if self.busy.load(SeqCst) > 0 {
                self.closed_busy.store(true, SeqCst);
            }
            self.closed.fetch_add(1, SeqCst);
        }
    }

    impl DeviceKv for FakeDevice {
        fn export(&self) -> Result<DeviceInfo, String> {
            Err("not exported in this test".into())
        }
        fn open(&self, _info: &DeviceInfo) -> Result<Opened, String> {
            Ok(Arc::new(FakeMapping {
                busy: self.busy.clone(),
                closed_busy: self.closed_busy.clone(),
                closed: self.closed.clone(),
            }))
        }
        fn fence(&self) -> Result<Fence, String> {
            Ok(Box::new(()))
        }
        fn copy_into(
            &self,
            _o: &Opened,
            info: &DeviceInfo,
            dst: &[u32],
            after: Option<&Fence>,
        ) -> Result<Copying, String> {
            use std::sync::atomic::Ordering::SeqCst;
            self.busy.fetch_add(1, SeqCst);
            self.copies
                .lock()
                .push((info.pages.clone(), dst.to_vec(), after.is_some()));
            Ok(Box::new(std::time::Instant::now()))
        }
        fn wait(&self, c: Copying) -> Result<Option<std::time::Duration>, String> {
            use std::sync::atomic::Ordering::SeqCst;
            let queued = *c.downcast::<std::time::Instant>().unwrap();
            let ms = std::time::Duration::from_millis(self.copy_ms);
            std::thread::sleep(ms.saturating_sub(queued.elapsed()));
            self.landed.fetch_add(1, SeqCst);
            self.busy.fetch_sub(1, SeqCst);
            Ok(Some(ms))
        }
    }

    fn device_info(pages: Vec<u32>) -> DeviceInfo {
        DeviceInfo {
            handle: [7; 64],
            pool_pages: 32,
            layers: G.layers as u32,
            chunk_bytes: (G.page_size * G.kv_dim * G.elem) as u64,
            pages,
        }
    }

    /// A decode with a fake GPU pool of 8 pages, fetching over the same-host socket from the
    /// prefill whose bootstrap port is `port`.
    struct DeviceRig {
        port: u16,
        dev: Arc<FakeDevice>,
        cfg: PdConfig,
        stats: Arc<Stats>,
        links: Links,
        cache: StagingCache,
        free: Arc<crate::kv::FreeList>,
    }

    impl DeviceRig {
        fn new(port: u16, dev: FakeDevice) -> Self {
            let cfg = cfg(Mode::Decode, port, true);
            let stats = Arc::new(Stats::default());
            DeviceRig {
                port,
                dev: Arc::new(dev),
                links: Links::new(true, cfg.silence_limit(), stats.clone()),
                cfg,
                stats,
                cache: StagingCache::default(),
                free: crate::kv::FreeList::new(8),
            }
        }

        /// Fetches `room`'s prompt of `n` tokens; with `pooled`, into pool pages handed out after
        /// a fence (as the scheduler does when its pool has room), whose ids come back too.
        fn fetch(&self, room: u64, n: usize, pooled: bool) -> (Result<Fetched, String>, Vec<u32>) {
            let dest = pooled.then(|| Dest {
                pages: self.free.alloc(n.div_ceil(G.page_size)).unwrap(),
                spans: None,
                fence: Some(self.dev.fence().unwrap()),
            });
            let mine = dest.as_ref().map_or(Vec::new(), |d| {
                d.pages.iter().map(crate::kv::Page::id).collect()
            });
            let b = Bootstrap {
                host: "127.0.0.1".into(),
                port: Some(self.port),
                room,
            };
            let dev: &dyn DeviceKv = &*self.dev;
            let (cfg, links, cache) = (&self.cfg, &self.links, &self.cache);
            (fetch(cfg, G, &b, n, links, cache, Some(dev), dest), mine)
        }
    }

    /// A prefill leg of `n` tokens whose pages stay in its GPU pool (`src`), readied on `reg`
    /// under `room`; the receiver gets the leg's outcome.
    fn device_handoff(n: usize, src: &[u32]) -> (Handoff, mpsc::Receiver<Result<(), String>>) {
        let (tx, rx) = mpsc::channel();
        let h = Handoff {
            n_tokens: n as u32,
            first_token: 42,
            first_logprobs: None,
            pages: Pages::Device(device_info(src.to_vec())),
            n_pages: src.len(),
            page_size: G.page_size,
            hold: None,
            deliver: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        (h, rx)
    }

    /// Pages left in the prefill's GPU pool (ON_DEVICE) are copied device to device straight
    /// into the pool pages the scheduler gave the fetch, after its fence, listed page for page;
    /// the fetch hands those pages back with the payload in place and the prefill leg succeeds.
    /// The copy's time is counted (queued, waited for, its device time).
    #[test]
    fn device_pages_are_copied_straight_into_the_fetch_pool_pages() {
        let port = free_port();
        let reg =
            Registry::start(cfg(Mode::Prefill, port, true), Arc::new(Stats::default())).unwrap();
        let rig = DeviceRig::new(
            port,
            FakeDevice {
                copy_ms: 20,
                ..Default::default()
            },
        );
        let n = 3 * G.page_size - 1;
        let src = vec![30, 4, 17];
        let (h, rx) = device_handoff(n, &src);
        assert!(reg.claim(1));
        reg.ready(1, h);
        let (f, mine) = rig.fetch(1, n, true);
        let f = f.unwrap();
        assert!(
            matches!(f.payload, Payload::InPool),
            "not copied into the pool"
        );
        let back: Vec<u32> = f
            .pages
            .as_ref()
            .unwrap()
            .iter()
            .map(crate::kv::Page::id)
            .collect();
        assert_eq!(back, mine);
        assert_eq!(*rig.dev.copies.lock(), vec![(src, mine, true)]);
        assert_eq!(rx.recv().unwrap(), Ok(()));
        let st = &rig.stats;
        assert_eq!(Stats::get(&st.pd_recv_ipc), 1);
        assert_eq!(Stats::get(&st.pd_recv_ipc_copies), 1);
        let bytes = 3 * 2 * (G.page_size * G.layers * G.kv_dim * G.elem) as u64;
        assert_eq!(Stats::get(&st.pd_recv_ipc_bytes), bytes);
        assert_eq!(Stats::get(&st.pd_recv_ipc_device_micros), 20_000);
        assert!(Stats::get(&st.pd_recv_ipc_wait_micros) >= 20_000);
        assert!(Stats::get(&st.pd_recv_micros) >= 20_000);
        drop(f);
        assert_eq!(rig.free.free_count(), 8);
    }

    /// Device pages in several parts are copied as they come, each straight into its slice of
    /// the fetch's pool pages, then the rest; each part counts as transfer time from its header
    /// to its landing only (the 200 ms the prefill computes between parts do not count).
    #[test]
    fn device_parts_are_copied_into_their_slices_of_the_pool_pages() {
        use crate::pd::prefill::Part;
        let port = free_port();
        let reg =
            Registry::start(cfg(Mode::Prefill, port, true), Arc::new(Stats::default())).unwrap();
        let rig = DeviceRig::new(port, FakeDevice::default());
        let n = 4 * G.page_size;
        let src = vec![11, 3, 25, 8];
        assert!(reg.claim(5));
        let part = |from: usize, to: usize| Part {
            n_tokens: n as u32,
            page_size: G.page_size,
            pages: Pages::Device(device_info(src[from..to].to_vec())),
            n_pages: to - from,
        };
        reg.part(5, part(0, 2));
        reg.part(5, part(2, 3));
        let (handoff, rx) = device_handoff(n, &src);
        // The prefill finishes while the decode takes the parts (a room readied before the
        // decode asks sends everything with the final header).
        let later = {
            let reg = reg.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                reg.ready(5, handoff);
            })
        };
        let (f, mine) = rig.fetch(5, n, true);
        let f = f.unwrap();
        later.join().unwrap();
        assert!(matches!(f.payload, Payload::InPool));
        assert_eq!(
            *rig.dev.copies.lock(),
            vec![
                (src[..2].to_vec(), mine[..2].to_vec(), true),
                (src[2..3].to_vec(), mine[2..3].to_vec(), true),
                (src[3..].to_vec(), mine[3..].to_vec(), true),
            ]
        );
        assert_eq!(rx.recv().unwrap(), Ok(()));
        assert_eq!(Stats::get(&rig.stats.pd_recv_ipc_copies), 3);
        let moved = f.timing.moved;
        assert!(moved < std::time::Duration::from_millis(150), "{moved:?}");
        assert!(
            Stats::get(&rig.stats.pd_recv_micros) < 150_000,
            "the prefill's compute between parts counted as transfer"
        );
        assert!(rig.stats.pd_recv_busy.micros() < 150_000);
    }

    /// A bootstrap server on this host's same-host socket for `port` that takes one WANT (it
    /// must offer CUDA IPC), answers with `headers`, then goes away (closes the connection, as a
    /// killed process does). The thread gives the WANT.
    fn raw_prefill(port: u16, headers: Vec<KvHeader>) -> std::thread::JoinHandle<Want> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = crate::pd::link::bind_local(addr).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut rd = std::io::BufReader::new(conn.try_clone().unwrap());
            let want = Want::read(&mut rd).unwrap();
            assert_ne!(
                want.flags & wire::CAN_IPC,
                0,
                "the decode did not offer CUDA IPC"
            );
            let mut w = conn;
            for h in headers {
                h.write(&mut w).unwrap();
            }
            w.flush().unwrap();
            want
        })
    }

    /// A KV header announcing `pages` of the prefill's GPU pool (ON_DEVICE) for a prompt of
    /// `n_tokens`, with `status` and `flags` besides.
    fn device_header(status: i32, n_tokens: usize, pages: Vec<u32>, flags: u32) -> KvHeader {
        KvHeader {
            status,
            n_tokens: n_tokens as u32,
            first_token: 42,
            n_pages: pages.len() as u32,
            object_bytes: (G.page_size * G.layers * G.kv_dim * G.elem) as u32,
            flags: wire::ON_DEVICE | flags,
            msg: String::new(),
            first_logprobs: None,
            ranges: Vec::new(),
            device: Some(device_info(pages)),
        }
    }

    /// A prefill that goes away while the decode copies its GPU pages (here: it closes the
    /// connection right after the ON_DEVICE header, as a killed process does) fails the fetch
    /// with a clear error, frees the fetch's pool pages, and the prefill's opened pool is closed
    /// only after the copy finished, never under it.
    #[test]
    fn a_prefill_lost_mid_device_copy_fails_the_fetch_and_frees_its_pages() {
        use std::sync::atomic::Ordering::SeqCst;
        let port = free_port();
        let n = 2 * G.page_size;
        let prefill = raw_prefill(
            port,
            vec![device_header(wire::OK, n, vec![5, 6], wire::DEVICE_INFO)],
        );
        let rig = DeviceRig::new(
            port,
            FakeDevice {
                copy_ms: 300,
                ..Default::default()
            },
        );
        let t = std::time::Instant::now();
        let e = match rig.fetch(9, n, true).0 {
            Err(e) => e,
            Ok(_) => panic!("a fetch from a lost prefill succeeded"),
        };
        prefill.join().unwrap();
        assert!(e.contains("closed the connection"), "unclear error: {e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        let dev = &rig.dev;
        assert_eq!(dev.landed.load(SeqCst), 1, "the copy ran to its end");
        assert_eq!(rig.free.free_count(), 8, "the fetch's pages were not freed");
        assert_eq!(dev.closed.load(SeqCst), 1, "the opened pool was not closed");
        assert!(!dev.closed_busy.load(SeqCst), "closed while the copy ran");
    }

    /// A part must say its pages are in page_first_direct order (DIRECT), also a part left in the
    /// GPU pool: one without is refused as of another geometry, and nothing is copied.
    #[test]
    fn a_device_part_without_the_direct_flag_is_refused() {
        let port = free_port();
        let n = 2 * G.page_size;
        let prefill = raw_prefill(port, vec![device_header(wire::PARTIAL, n, vec![5], 0)]);
        let rig = DeviceRig::new(port, FakeDevice::default());
        let e = match rig.fetch(3, n, true).0 {
            Err(e) => e,
            Ok(_) => panic!("a part without DIRECT was taken"),
        };
        prefill.join().unwrap();
        assert!(
            e.contains("a part of another geometry"),
            "unclear error: {e}"
        );
        assert!(rig.dev.copies.lock().is_empty());
        assert_eq!(rig.free.free_count(), 8);
    }

    /// A decode that has the prefill's GPU pool open asks for device pages (IPC_READY) only when
    /// the fetch has pool pages to copy them into; without (its pool short of pages), the prefill
    /// stages them through host memory: no device buffer of the fetch's own is ever allocated.
    #[test]
    fn device_pages_are_asked_for_only_with_pool_pages_to_land_in() {
        for pooled in [true, false] {
            let port = free_port();
            let prefill = raw_prefill(port, vec![KvHeader::error(wire::ERR_FAILED, "stop")]);
            let rig = DeviceRig::new(port, FakeDevice::default());
            // Another connection to this prefill opened its pool (the handle of an earlier
            // header): a new connection shares the mapping.
            let m = rig.dev.open(&device_info(Vec::new())).unwrap();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            rig.links.opened(addr, [7; 64], &m);
            let (r, _) = rig.fetch(4, 2 * G.page_size, pooled);
            assert!(r.is_err());
            let want = prefill.join().unwrap();
            assert_eq!(
                want.flags & wire::IPC_READY != 0,
                pooled,
                "IPC_READY with pool pages: {pooled}"
            );
            assert_ne!(want.flags & wire::TAKES_PARTS, 0);
            assert_eq!(rig.free.free_count(), 8);
        }
    }

    /// Parts (finished chunks' pages, handed over while the prefill still runs) reach a decode
    /// that takes them ahead of the final header, over the same-host copy and over TCP, straight
    /// into its pool pages, and the final header carries the rest; a decode that does not take
    /// parts gets every page with the final header. The bytes are exact either way.
    #[test]
    fn parts_go_ahead_of_the_rest_and_land_in_the_pool_pages() {
        use crate::pd::prefill::Part;
        let port = free_port();
        let pstats = Arc::new(Stats::default());
        let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let pool = FakePool::new(3, 16);
        let pages: Vec<u32> = vec![9, 1, 14, 6, 2];
        let n = 4 * G.page_size + 3;
        let mine = FakePool::new(0, 8);
        let my_pages: Vec<u32> = vec![7, 0, 3, 5, 1];
        for (room, same_host, takes_parts) in [(1, true, true), (2, false, true), (3, true, false)]
        {
            let (tx, rx) = mpsc::channel();
            assert!(reg.claim(room));
            let part = |from: usize, to: usize| Part {
                n_tokens: n as u32,
                page_size: G.page_size,
                pages: Pages::Pool {
                    spans: pool.spans(),
                    pages: pages[from..to].to_vec(),
                },
                n_pages: to - from,
            };
            reg.part(room, part(0, 2));
            let handoff = Handoff {
                n_tokens: n as u32,
                first_token: 42,
                first_logprobs: None,
                pages: Pages::Pool {
                    spans: pool.spans(),
                    pages: pages.clone(),
                },
                n_pages: pages.len(),
                page_size: G.page_size,
                hold: None,
                deliver: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            };
            // The second part and the rest come while the decode waits.
            let later = {
                let reg = reg.clone();
                let p2 = part(2, 3);
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    reg.part(room, p2);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    reg.ready(room, handoff);
                })
            };
            let dcfg = cfg(Mode::Decode, port, same_host);
            let dstats = Arc::new(Stats::default());
            let links = Links::new(same_host, dcfg.silence_limit(), dstats.clone());
            let mut link = links.dial(addr).unwrap();
            let st = HostKvPool::new(
                pages.len(),
                G.page_size,
                G.layers,
                G.kv_dim,
                G.elem,
                MemLayout::PageFirst,
            )
            .unwrap();
            let flags = wire::TAKES_DIRECT
                | if takes_parts { wire::TAKES_PARTS } else { 0 }
                | if same_host { wire::CAN_READ } else { 0 };
            let want = Want {
                room,
                prompt_len: n as u32,
                page_size: G.page_size as u32,
                object_bytes: st.object_bytes() as u32,
                flags,
                token: String::new(),
            };
            let parts_before = Stats::get(&pstats.pd_parts);
            let ex = Exchange {
                cfg: &dcfg,
                links: &links,
                addr,
                device: None,
                dest: Some(mine.spans().ranges(&my_pages)),
                dest_pages: None,
                fence: None,
            };
            let mut sg = Staging {
                pool: Some(st),
                make: None,
            };
            let (h, got, _) = ex
                .run(&mut link, &want, &mut sg, pages.len())
                .unwrap_or_else(|f| panic!("{}", f.msg));
            drop(sg);
            later.join().unwrap();
            assert!(matches!(got, Got::InPool));
            assert_eq!(h.first_token, 42);
            mine.check_pool(&pool, &my_pages, &pages);
            let parts = if takes_parts { 2 } else { 0 };
            assert_eq!(
                h.n_pages as usize,
                pages.len() - if takes_parts { 3 } else { 0 }
            );
            assert_eq!(Stats::get(&dstats.pd_recv_parts), parts);
            assert_eq!(Stats::get(&pstats.pd_parts) - parts_before, parts);
            assert_eq!(rx.recv().unwrap(), Ok(()));
        }
    }

    /// Same-host ranges of any granularity map one to one onto the local spans (staging objects
    /// or pool runs); ranges that straddle spans or do not cover them exactly are refused.
    #[test]
    fn local_spans_are_cut_at_the_ranges() {
        let mut mem = vec![0u8; 4096];
        let base = mem.as_mut_ptr();
        // SAFETY: inside `mem`.
        let at = |o: usize| unsafe { base.add(o) };
        let local: Vec<(*mut u8, usize)> = (0..4).map(|i| (at(i * 1024), 1024)).collect();
        let halves: Vec<(u64, u64)> = (0..8).map(|i| (i, 512)).collect();
        let l = cut(&local, &halves).unwrap();
        assert_eq!(l.len(), 8);
        assert_eq!(l[1].0 as usize - l[0].0 as usize, 512);
        assert_eq!(l[2].0, local[1].0);
        assert_eq!(l[7], (at(3584), 512));
        let whole: Vec<(u64, u64)> = (0..4).map(|i| (i, 1024)).collect();
        assert_eq!(cut(&local, &whole).unwrap(), local);
        assert!(cut(&local, &whole[..3]).is_none(), "short");
        assert!(cut(&local[..3], &whole).is_none(), "too long");
        let straddle = vec![(0, 512), (0, 1024), (0, 512), (0, 1024), (0, 1024)];
        assert!(cut(&local, &straddle).is_none());
    }
}
