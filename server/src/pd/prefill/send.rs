//! The prefill side's half of a transfer on one decode connection: WANTs answered one after
//! another, each room's parts and final header sent the way the decode asked (the pages on the
//! socket, announced for a same-host copy, left in the GPU pool for the decode's CUDA IPC copy,
//! or copied into the decode's pool by this server when it asked for a push), then the
//! acknowledgement awaited. An RDMA offer (before a WANT) is answered here too; a connection with
//! a queue pair sends the page bytes of the WANTs that ask for it over the queue pair instead of
//! the socket ([`send_range`] picks). The wire format is in docs/protocol.md ("PD KV transfer").

use super::{Handoff, Next, Pages, Part, Reader, Registry, Writer};
use crate::pd::link::PREFILL_IDLE;
use crate::pd::rdma::{self, Qp};
use crate::pd::share::{DeviceKv, Opened};
use crate::pd::wire::{self, DeviceInfo, KvHeader, Request, Want};
use crate::stats::Stats;
use std::io::{BufReader, BufWriter, IoSlice, Read, Write};
use std::time::{Duration, Instant};
use strata_cluster::transport::stream::Stream;

/// How a transfer's pages went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Socket,
    SameHost,
    Ipc,
    /// This server copied the pages into the decode's GPU pool (PUSH).
    Push,
    /// The page bytes went over the connection's RDMA queue pair.
    Rdma,
}

/// A decode's GPU pool this connection copies pages into (PUSH): the WANT's pool and pages,
/// opened once per connection.
struct PushTarget<'a> {
    kv: &'a dyn DeviceKv,
    opened: Opened,
    dest: &'a DeviceInfo,
}

/// The decode pool a connection has open for pushes: its handle and the mapping.
type PeerPool = Option<([u8; 64], Opened)>;

impl Registry {
    /// Serves one decode connection: one room's request after another until the decode closes it
    /// (or it idles for [`PREFILL_IDLE`], or a transfer leaves it mid-frame).
    pub(super) fn serve(&self, conn: Stream) {
        let Ok(w) = conn.try_clone() else { return };
        let mut rd = BufReader::new(conn);
        // A small buffer: headers are gathered in it, page objects (larger than it) are written
        // from the staging pool straight to the socket instead of through one more copy.
        let mut wr = BufWriter::with_capacity(4096, w);
        // The decode's pool, once a PUSH WANT opened it (closed when the connection ends).
        let mut peer: PeerPool = None;
        // The queue pair an RDMA offer connected (destroyed when the connection ends).
        let mut qp: Option<Qp> = None;
        loop {
            if rd.get_ref().set_timeouts(Some(PREFILL_IDLE)).is_err() {
                return;
            }
            let want = match Request::read(&mut rd) {
                Ok(Request::Want(w)) => w,
                Ok(Request::Rdma(offer)) => {
                    let local = wr.get_ref().is_local();
                    let (answer, made) = self.accept_rdma(&offer, local, qp.is_some());
                    if answer.write(&mut wr).and_then(|_| wr.flush()).is_err() {
                        return;
                    }
                    qp = made.or(qp);
                    continue;
                }
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        tracing::debug!("PD bootstrap: bad or no request: {e}");
                    }
                    return;
                }
            };
            // Page bytes over the queue pair only when this WANT asks (and there is one).
            let qp = qp.as_mut().filter(|_| want.flags & wire::RDMA != 0);
            if rd.get_ref().set_timeouts(Some(self.cfg.timeout)).is_err()
                || !self.answer(&want, &mut rd, &mut wr, &mut peer, qp)
            {
                return;
            }
        }
    }

    /// The answer to an RDMA offer and the queue pair it connected ([`rdma::accept`]).
    fn accept_rdma(
        &self,
        offer: &wire::RdmaFrame,
        local: bool,
        connected: bool,
    ) -> (wire::RdmaFrame, Option<Qp>) {
        #[cfg(test)]
        if let Some(qp) = self.test_qp.lock().take() {
            let accept = wire::RdmaFrame {
                kind: wire::RDMA_ACCEPT,
                body: Vec::new(),
            };
            return (accept, Some(qp));
        }
        rdma::accept(self.nic, offer, local, connected, self.cfg.timeout)
    }

    /// The decode pool to copy `want`'s pages into, when it asked for a push and this server
    /// can (a GPU pool, the same-host socket, the pool opened); else the decode copies.
    fn push_target<'a>(
        &'a self,
        want: &'a Want,
        local: bool,
        peer: &mut PeerPool,
    ) -> Option<PushTarget<'a>> {
        let dest = want
            .dest
            .as_ref()
            .filter(|_| local && want.flags & wire::PUSH != 0)?;
        let kv = self.kv()?;
        if dest.pages.len() != want.prompt_len.div_ceil(want.page_size.max(1)) as usize {
            tracing::warn!(
                room = want.room,
                "PD: the decode listed {} pool pages for a {}-token prompt; it copies the pages itself",
                dest.pages.len(),
                want.prompt_len
            );
            return None;
        }
        let opened = match peer {
            Some((h, m)) if *h == dest.handle => m.clone(),
            _ => match kv.open(dest) {
                Ok(m) => {
                    *peer = Some((dest.handle, m.clone()));
                    m
                }
                Err(e) => {
                    tracing::warn!(
                        room = want.room,
                        "PD: cannot open the decode's GPU pool ({e}); it copies the pages itself"
                    );
                    return None;
                }
            },
        };
        Some(PushTarget { kv, opened, dest })
    }

    /// Copies this pool's pages `src` into the decode's pages `from..` of its list and waits
    /// until they landed. The returned guard keeps the push clock running until the header
    /// saying so is sent. None (logged) when the copy failed: the decode copies them instead.
    fn push(
        &self,
        t: &PushTarget<'_>,
        src: &[u32],
        from: usize,
        obj: usize,
        room: u64,
    ) -> Option<crate::stats::Busy<'_>> {
        self.push_copy(t, src, from, obj)
            .map_err(|e| {
                tracing::warn!(
                    room,
                    "PD: the copy into the decode's pool failed ({e}); it copies the pages itself"
                )
            })
            .ok()
    }

    fn push_copy(
        &self,
        t: &PushTarget<'_>,
        src: &[u32],
        from: usize,
        obj: usize,
    ) -> Result<crate::stats::Busy<'_>, String> {
        let dst = t
            .dest
            .pages
            .get(from..from + src.len())
            .ok_or("more pages than the decode listed")?;
        let st = &self.stats;
        let busy = st.pd_push_busy.enter();
        let t0 = Instant::now();
        let c = t.kv.copy_out(&t.opened, t.dest, src, dst)?;
        let queued = Instant::now();
        Stats::add(&st.pd_push_queued, 1);
        if !self.cfg.test_stall.is_zero() {
            // Test only: a window to kill this server while its copy is queued.
            std::thread::sleep(self.cfg.test_stall);
        }
        let device = t.kv.wait(c)?;
        let us = |d: Duration| d.as_micros() as u64;
        Stats::add(&st.pd_push_copies, 1);
        Stats::add(&st.pd_push_bytes, (src.len() * 2 * obj) as u64);
        Stats::add(&st.pd_push_enqueue_micros, us(queued - t0));
        Stats::add(&st.pd_push_wait_micros, us(queued.elapsed()));
        if let Some(d) = device {
            Stats::add(&st.pd_push_device_micros, us(d));
        }
        Ok(busy)
    }

    /// Answers one WANT, the page bytes over `qp` when given; false when the connection cannot
    /// carry another one.
    fn answer(
        &self,
        want: &Want,
        rd: &mut Reader,
        wr: &mut Writer,
        peer: &mut PeerPool,
        mut qp: Option<&mut Qp>,
    ) -> bool {
        let reply = |wr: &mut Writer, status: i32, msg: String| {
            KvHeader::error(status, msg)
                .write(wr)
                .and_then(|_| wr.flush())
                .is_ok()
        };
        if want.token != self.cfg.token {
            let _ = reply(wr, wire::ERR_REFUSED, "unauthorized".into());
            return false;
        }
        let local = wr.get_ref().is_local();
        if local {
            self.asked.lock().insert(want.room, want.flags);
        }
        let push = self.push_target(want, local, peer);
        // Finished chunks' pages go ahead as parts (to a decode that takes them in the pool's
        // order); the final header then carries the rest.
        let parts = want.flags & wire::TAKES_PARTS != 0 && want.flags & wire::TAKES_DIRECT != 0;
        let mut sent = 0usize;
        let taken = loop {
            match self.take(want.room, wr, parts) {
                Ok(Next::Done(h)) => break Ok(h),
                Ok(Next::Part(p)) => {
                    match self.send_part(&p, sent, want, (wr, qp.as_deref_mut()), push.as_ref()) {
                        Ok(()) => sent += p.n_pages,
                        Err((open, msg)) => {
                            tracing::warn!(room = want.room, "PD transfer failed: {msg}");
                            if local {
                                self.asked.lock().remove(&want.room);
                            }
                            self.give_up(want.room);
                            return open && reply(wr, wire::ERR_MISMATCH, msg);
                        }
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if local {
            self.asked.lock().remove(&want.room);
        }
        let h = match taken {
            Ok(h) => *h,
            Err((status, msg)) => return reply(wr, status, msg),
        };
        let obj = h.pages.object_bytes();
        let (result, open) = if want.prompt_len != h.n_tokens
            || want.page_size as usize != h.page_size
            || want.object_bytes as usize != obj
            || sent > h.n_pages
        {
            let msg = format!(
                "PD transfer refused: decode expects {} tokens in pages of {} ({} B objects), prefill has {} tokens in pages of {} ({} B)",
                want.prompt_len, want.page_size, want.object_bytes, h.n_tokens, h.page_size, obj
            );
            let open = reply(wr, wire::ERR_MISMATCH, msg.clone());
            (Err(msg), open)
        } else {
            // Timed from the final header (the last part's): the chunks computed between parts
            // are prefill, not transfer.
            let t0 = Instant::now();
            let r = if self.cfg.inject_fault(want.room) {
                (send_half(&h, sent, wr, qp), false)
            } else {
                self.send_pages(&h, sent, want, (wr, qp), rd, push.as_ref())
            };
            if let (Ok(path), _) = &r {
                let st = &self.stats;
                Stats::add(&st.pd_bytes, (h.n_pages * 2 * obj) as u64);
                Stats::add(&st.pd_micros, t0.elapsed().as_micros() as u64);
                match path {
                    Path::SameHost => Stats::add(&st.pd_local, 1),
                    Path::Rdma => Stats::add(&st.pd_rdma, 1),
                    Path::Ipc | Path::Push => {
                        Stats::add(&st.pd_ipc, 1);
                        Stats::add(&st.pd_ipc_bytes, (h.n_pages * 2 * obj) as u64);
                        Stats::add(&st.pd_ipc_micros, t0.elapsed().as_micros() as u64);
                    }
                    Path::Socket => {}
                }
                if matches!(h.pages, Pages::Staged(_)) {
                    Stats::add(&st.pd_staged, 1);
                }
            }
            (r.0.map(|_| ()), r.1)
        };
        match &result {
            Ok(()) => Stats::add(&self.stats.pd_ok, 1),
            Err(e) => {
                Stats::add(&self.stats.pd_failed, 1);
                tracing::warn!(room = want.room, "PD transfer failed: {e}");
            }
        }
        let Handoff {
            pages,
            hold,
            deliver,
            ..
        } = h;
        if !open {
            // A decode still copying out of the pool must see that this side gave up before the
            // pages can be reused (it checks the connection after its copy).
            let _ = wr.get_ref().shutdown();
        }
        // Pages left in the pool go back to the scheduler first, so that a request the client
        // sends once it has this answer finds them in the prefix cache.
        drop(hold);
        if let (Ok(()), Pages::Staged(p)) = (&result, pages) {
            // The decode acknowledged: it no longer reads these pages.
            self.staging.give(p);
        }
        deliver(result.map_err(|e| format!("PD transfer failed: {e}")));
        open
    }

    /// Sends part `p` (the prompt's pages `sent..sent + p.n_pages`) the way the decode asked:
    /// a PARTIAL header, and the pages on the socket unless the decode copies them (IN_PLACE
    /// ranges, or ON_DEVICE ids) or this server copied them into its pool (PUSHED). No
    /// acknowledgement. Err((the connection is at a frame boundary, why)) on a geometry mismatch
    /// or a broken connection.
    fn send_part(
        &self,
        p: &Part,
        sent: usize,
        want: &Want,
        (wr, qp): Out<'_>,
        push: Option<&PushTarget<'_>>,
    ) -> Result<(), (bool, String)> {
        let obj = p.pages.object_bytes();
        if want.prompt_len != p.n_tokens
            || want.page_size as usize != p.page_size
            || want.object_bytes as usize != obj
            || sent + p.n_pages > want.prompt_len.div_ceil(want.page_size.max(1)) as usize
        {
            return Err((
                true,
                format!(
                    "PD transfer refused: decode expects {} tokens in pages of {} ({} B objects), prefill has {} tokens in pages of {} ({} B)",
                    want.prompt_len, want.page_size, want.object_bytes, p.n_tokens, p.page_size, obj
                ),
            ));
        }
        let mut hd = KvHeader {
            status: wire::PARTIAL,
            n_tokens: p.n_tokens,
            first_token: 0,
            n_pages: p.n_pages as u32,
            object_bytes: obj as u32,
            flags: wire::DIRECT,
            msg: String::new(),
            first_logprobs: None,
            ranges: Vec::new(),
            device: None,
        };
        let io = |e: std::io::Error| (false, format!("sending a part of the KV cache: {e}"));
        match &p.pages {
            Pages::Device(info) => {
                match push.and_then(|t| self.push(t, &info.pages, sent, obj, want.room)) {
                    Some(busy) => {
                        hd.flags |= wire::PUSHED;
                        hd.write(wr).and_then(|_| wr.flush()).map_err(io)?;
                        drop(busy);
                    }
                    None => {
                        hd.flags |= wire::ON_DEVICE;
                        hd.device = Some(info.clone());
                        hd.write(wr).and_then(|_| wr.flush()).map_err(io)?;
                    }
                }
            }
            Pages::Pool { .. } => {
                if want.flags & wire::CAN_READ != 0 && wr.get_ref().is_local() {
                    hd.flags |= wire::IN_PLACE;
                    hd.ranges = page_ranges(&p.pages, 0, p.n_pages);
                    hd.write(wr).and_then(|_| wr.flush()).map_err(io)?;
                } else {
                    let pages = (&p.pages, p.page_size, true, 0, p.n_pages);
                    send_with_pages(&mut hd, pages, (wr, qp)).map_err(io)?;
                }
            }
            Pages::Staged(_) => return Err((false, "a staged part".into())),
        }
        Stats::add(&self.stats.pd_parts, 1);
        Ok(())
    }

    /// Sends `h`'s pages from `sent` on (the earlier ones went as parts) the way the decode asked
    /// (`want`) and this connection allows, and waits for the acknowledgement. Ok(the path the
    /// pages took); the flag says whether the connection is still at a frame boundary.
    fn send_pages(
        &self,
        h: &Handoff,
        sent: usize,
        want: &Want,
        (wr, qp): Out<'_>,
        rd: &mut Reader,
        push: Option<&PushTarget<'_>>,
    ) -> (Result<Path, String>, bool) {
        let io = |e: std::io::Error| (Err(e.to_string()), false);
        let local = wr.get_ref().is_local();
        let direct = want.flags & wire::TAKES_DIRECT != 0;
        let n = h.n_pages;
        let mut hd = header(h, sent);
        if local && want.flags & wire::CAN_IPC != 0 {
            if let Some(d) = self.device() {
                // The decode opens it for the next transfers.
                hd.flags |= wire::DEVICE_INFO;
                hd.device = Some(d.clone());
                if self.kv().is_some() {
                    hd.flags |= wire::PUSHES;
                }
            }
        }
        let mut path = if qp.is_some() {
            Path::Rdma
        } else {
            Path::Socket
        };
        let rest = |info: &DeviceInfo| info.pages[sent.min(info.pages.len())..].to_vec();
        let pushed = match (&h.pages, push) {
            (Pages::Device(info), Some(t)) => {
                self.push(t, &rest(info), sent, h.pages.object_bytes(), want.room)
            }
            _ => None,
        };
        match &h.pages {
            Pages::Device(_) if pushed.is_some() => {
                hd.flags |= wire::PUSHED;
                if let Err(e) = hd.write(wr).and_then(|_| wr.flush()) {
                    return io(e);
                }
                drop(pushed);
                path = Path::Push;
            }
            Pages::Device(info) => {
                hd.flags |= wire::ON_DEVICE | wire::DEVICE_INFO;
                hd.device = Some(DeviceInfo {
                    pages: rest(info),
                    ..info.clone()
                });
                if let Err(e) = hd.write(wr).and_then(|_| wr.flush()) {
                    return io(e);
                }
                path = Path::Ipc;
            }
            Pages::Pool { .. } if !direct => {
                // A decode that only takes page_first objects: gathered page by page below.
                let pages = (&h.pages, h.page_size, false, sent, n);
                if let Err(e) = send_with_pages(&mut hd, pages, (wr, qp)) {
                    return io(e);
                }
            }
            _ => {
                let pool = matches!(h.pages, Pages::Pool { .. });
                if pool {
                    hd.flags |= wire::DIRECT;
                }
                if want.flags & wire::CAN_READ != 0 && local {
                    hd.flags |= wire::IN_PLACE;
                    hd.ranges = page_ranges(&h.pages, sent, n);
                    if let Err(e) = hd.write(wr).and_then(|_| wr.flush()) {
                        return io(e);
                    }
                    path = Path::SameHost;
                } else if let Err(e) =
                    send_with_pages(&mut hd, (&h.pages, h.page_size, pool, sent, n), (wr, qp))
                {
                    return io(e);
                }
            }
        }
        let mut ack = [0u8; 1];
        let no_ack = |e: std::io::Error| (Err(format!("no acknowledgement: {e}")), false);
        if let Err(e) = rd.read_exact(&mut ack) {
            return no_ack(e);
        }
        if path == Path::SameHost && ack[0] == wire::ACK_SEND {
            // The decode could not copy them: the bytes on the socket after all, every page of
            // the prompt (also those of parts it could not copy).
            path = Path::Socket;
            let direct = hd.flags & wire::DIRECT != 0;
            if let Err(e) = send_range((&h.pages, h.page_size, direct, 0, n), (wr, None)) {
                return io(e);
            }
            if let Err(e) = rd.read_exact(&mut ack) {
                return no_ack(e);
            }
        }
        match ack[0] {
            wire::ACK_OK => (Ok(path), true),
            wire::ACK_REFUSED => (Err("the decode side refused the pages".into()), true),
            _ => (
                Err("the decode side sent an unknown acknowledgement".into()),
                false,
            ),
        }
    }
}

/// The final header: `h`'s pages from `sent` on (the earlier ones went as parts).
fn header(h: &Handoff, sent: usize) -> KvHeader {
    KvHeader {
        status: wire::OK,
        n_tokens: h.n_tokens,
        first_token: h.first_token,
        n_pages: (h.n_pages - sent) as u32,
        object_bytes: h.pages.object_bytes() as u32,
        flags: 0,
        msg: String::new(),
        first_logprobs: h.first_logprobs.clone(),
        ranges: Vec::new(),
        device: None,
    }
}

/// Test-only fault: the header and half the remaining pages, then the connection drops (a
/// prefill that dies mid-transfer, as the decode side sees it).
fn send_half(
    h: &Handoff,
    sent: usize,
    wr: &mut Writer,
    qp: Option<&mut Qp>,
) -> Result<Path, String> {
    let half = sent + (h.n_pages - sent) / 2;
    let pages = (&h.pages, h.page_size, false, sent, half);
    let _ = send_with_pages(&mut header(h, sent), pages, (wr, qp));
    let _ = wr.flush();
    let _ = wr.get_ref().shutdown();
    Err("injected test fault: the transfer was cut halfway".into())
}

/// The memory of the prompt's pages `from..to` a same-host decode copies, in transfer order: the
/// staging objects (page_first), or the pool's per-layer runs (page_first_direct).
fn page_ranges(pages: &Pages, from: usize, to: usize) -> Vec<(u64, u64)> {
    match pages {
        Pages::Staged(s) => (from as u32..to as u32)
            .flat_map(|p| {
                [false, true].map(|v| (s.object_ptr(p, v) as u64, s.object_bytes() as u64))
            })
            .collect(),
        Pages::Pool { spans, pages } => spans.ranges(&pages[from..to]),
        Pages::Device(_) => Vec::new(),
    }
}

/// Where a header's page bytes go: the connection, and its queue pair when the WANT asked for
/// the pages over it.
type Out<'a> = (&'a mut Writer, Option<&'a mut Qp>);

/// The prompt's pages `from..to` of `pages` (pages of `page_size` tokens), page_first_direct
/// from the pool when `direct` (else page_first).
type Range<'a> = (&'a Pages, usize, bool, usize, usize);

/// Writes `hd`, marked VIA_RDMA when its pages go over the queue pair, then the pages.
fn send_with_pages(hd: &mut KvHeader, pages: Range<'_>, (wr, qp): Out<'_>) -> std::io::Result<()> {
    if qp.is_some() {
        hd.flags |= wire::VIA_RDMA;
    }
    hd.write(wr)?;
    send_range(pages, (wr, qp))
}

/// Sends the prompt's pages `from..to`, page after page, K object then V object: over the queue
/// pair when there is one in `out`, else on the socket (the one place that picks). The header
/// before them is flushed first.
fn send_range(
    (pages, page_size, direct, from, to): Range<'_>,
    (wr, qp): Out<'_>,
) -> std::io::Result<()> {
    wr.flush()?;
    match pages {
        Pages::Pool { spans, pages } if !direct => {
            // page_first: token-major rows, gathered one object at a time (the whole range at
            // once for the queue pair, whose SENDs are cut from one stream).
            let layers = spans.k.len();
            let row = spans.run / page_size.max(1);
            let obj_bytes = spans.object_bytes();
            // The queue pair sends the whole range at once: objects are gathered straight into
            // it; the socket takes one object at a time from a reused buffer.
            let whole = if qp.is_some() { to - from } else { 1 };
            let mut buf = vec![0u8; whole * 2 * obj_bytes];
            let mut next = 0;
            for &p in &pages[from..to] {
                for bases in [&spans.k, &spans.v] {
                    let obj = &mut buf[next..next + obj_bytes];
                    for (l, &b) in bases.iter().enumerate() {
                        let run = b + p as usize * spans.run;
                        for t in 0..page_size {
                            // SAFETY: the page is held for this transfer; nothing writes it.
                            let src = unsafe {
                                std::slice::from_raw_parts((run + t * row) as *const u8, row)
                            };
                            let at = (t * layers + l) * row;
                            obj[at..at + row].copy_from_slice(src);
                        }
                    }
                    if qp.is_some() {
                        next += obj_bytes;
                    } else {
                        wr.write_all(obj)?;
                    }
                }
            }
            match qp {
                Some(qp) => qp.send(&[&buf]),
                None => wr.flush(),
            }
        }
        Pages::Device(_) => Err(std::io::Error::other(
            "the pages are in the GPU pool; they cannot go on the socket",
        )),
        // The staging objects (page_first) or the pool's per-layer runs (page_first_direct).
        _ => {
            let ranges = page_ranges(pages, from, to);
            match qp {
                Some(qp) => {
                    let src: Vec<&[u8]> = ranges
                        .iter()
                        // SAFETY: each range is held memory of this handoff; nothing writes it.
                        .map(|&(a, l)| unsafe {
                            std::slice::from_raw_parts(a as *const u8, l as usize)
                        })
                        .collect();
                    qp.send(&src)
                }
                None => write_ranges(wr.get_mut(), &ranges),
            }
        }
    }
}

/// Writes the bytes of `ranges` (memory of this process that nothing writes meanwhile) with
/// vectored writes, up to 512 ranges per system call.
fn write_ranges(w: &mut impl Write, ranges: &[(u64, u64)]) -> std::io::Result<()> {
    for chunk in ranges.chunks(512) {
        // SAFETY: each range is held memory of this process (pages of a held handoff).
        let mut bufs: Vec<IoSlice<'_>> = chunk
            .iter()
            .map(|&(a, l)| {
                IoSlice::new(unsafe { std::slice::from_raw_parts(a as *const u8, l as usize) })
            })
            .collect();
        let mut rest = &mut bufs[..];
        while !rest.is_empty() {
            let n = w.write_vectored(rest)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
    }
    Ok(())
}
