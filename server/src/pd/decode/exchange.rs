//! One transfer on one connection, the decode side: the WANT, heartbeats, the KV headers (parts,
//! then the final one) and their pages landed by whichever path the prefill announced (CUDA IPC
//! copy or push, same-host copy, the socket), then the acknowledgement. [`super::fetch`] picks the
//! connection and retries a stale one.

use super::{Fail, Timing};
use crate::hicache::MemLayout;
use crate::kv::HostKvPool;
use crate::pd::link::{Link, Links};
use crate::pd::share::{DeviceKv, Fence, Opened};
use crate::pd::wire::{self, DeviceInfo, KvHeader, Want};
use crate::pd::PdConfig;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use strata_cluster::transport::shm;

/// What one transfer needs besides its connection.
pub(super) struct Exchange<'a> {
    pub(super) cfg: &'a PdConfig,
    pub(super) links: &'a Links,
    pub(super) addr: SocketAddr,
    pub(super) device: Option<&'a dyn DeviceKv>,
    /// The destination pool pages' memory, in transfer order (page_first_direct), if any.
    pub(super) dest: Option<Vec<(u64, u64)>>,
    /// The destination pool pages (for a device-to-device copy), if any.
    pub(super) dest_pages: Option<&'a [u32]>,
    /// Orders a device-to-device copy into `dest_pages` after the compute stream's earlier work.
    pub(super) fence: Option<&'a Fence>,
}

/// A fetch's staging pool, made only when pages land there: pages that go straight into pool
/// pages need none (taking a prompt-sized pool per transfer, with many transfers in flight more
/// than the cache keeps, cost more than the copy itself).
pub(crate) struct Staging<'a> {
    pub(super) pool: Option<HostKvPool>,
    pub(super) make: Option<&'a dyn Fn() -> Result<HostKvPool, String>>,
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
    /// Page bytes came over the connection's queue pair (RDMA).
    via_rdma: bool,
}

impl Default for Landing {
    fn default() -> Self {
        Landing {
            path: "the socket",
            into_pool: false,
            via_ipc: false,
            push_asked: false,
            resend: false,
            via_rdma: false,
        }
    }
}

/// Where one transfer's pages landed.
pub(super) enum Got {
    Staging,
    InPool,
}

impl Exchange<'_> {
    /// One transfer on `link`: WANT, heartbeats, the KV headers (parts, then the final one) and
    /// their pages, ACK. Returns the final header and where the pages landed.
    pub(super) fn run(
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
        if link.qp.is_some() {
            want.flags |= wire::RDMA;
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
            read_pages(link, 0, &local).map_err(broke)?;
            l.path = "the socket";
        }
        let Landing {
            path,
            into_pool,
            via_ipc,
            via_rdma,
            ..
        } = l;
        // Pages copied out of the prefill's memory (not off the socket) are valid only if the
        // prefill still held them when the copy ended: it shuts the connection down before it
        // frees pages of a transfer it gave up on (no ACK in time).
        let landed = std::time::Instant::now();
        if path != "the socket" && !via_rdma && link.gave_up() {
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
            began: Default::default(),
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
        if via_rdma {
            crate::stats::Stats::add(&st.pd_recv_rdma, 1);
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
            read_pages(link, h.flags, &local).map_err(|e| {
                Fail::broken(format!("the prefill server broke off the KV transfer: {e}"))
            })?;
            if h.flags & wire::VIA_RDMA != 0 {
                l.via_rdma = true;
                l.path = "RDMA (the connection's queue pair)";
            }
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

/// Reads the page bytes a KV header with `flags` announces into `local` (see [`read_ranges`]):
/// over the connection's queue pair when the header says so (VIA_RDMA), else off the socket. The
/// one place that picks where page bytes come from.
fn read_pages(link: &mut Link, flags: u32, local: &[(*mut u8, usize)]) -> std::io::Result<()> {
    if flags & wire::VIA_RDMA == 0 {
        return read_ranges(&mut link.rd, local);
    }
    let qp = link.qp.as_mut().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the prefill sent page bytes over a queue pair this connection does not have",
        )
    })?;
    let dst = local
        .iter()
        // SAFETY: as in `read_ranges`.
        .map(|&(at, len)| unsafe { std::slice::from_raw_parts_mut(at, len) })
        .collect();
    qp.recv(dst)
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
pub(super) fn cut(
    local: &[(*mut u8, usize)],
    ranges: &[(u64, u64)],
) -> Option<Vec<(*mut u8, usize)>> {
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
