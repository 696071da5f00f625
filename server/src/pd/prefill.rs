//! The prefill side: the bootstrap server and the registry of rooms.
//!
//! A request with bootstrap fields claims its room when it is accepted (a second request with the
//! same room is refused with a 400, never a crash). When its prefill finishes, the scheduler copies
//! the prompt's KV pages into a staging host pool and hands them over ([`Registry::ready`]); the
//! request's HTTP answer is held until the decode side fetched and acknowledged the pages, then
//! completes (or fails with the reason). The bootstrap server listens on TCP and, for decode
//! servers on this host, on the same-host Unix socket ([`super::link::bind_local`]); a decode keeps
//! its connections and sends one room's request after another on each. Per request it waits for
//! the room's pages (up to the timeout), checks the geometry, sends them — on the same-host socket
//! it announces where they are in this process instead, and the decode copies them — and waits
//! for the acknowledgement. A room nobody fetches within the timeout fails, and its pages are
//! freed. A GPU prefill whose decode sent its own pool and pages (PUSH) copies the pages into
//! them itself, device to device, and answers PUSHED once they landed.

use super::link::{bind_local, PREFILL_IDLE};
use super::share::{DeviceKv, HostSpans, Opened};
use super::staging::StagingCache;
use super::wire::{self, DeviceInfo, KvHeader, Want};
use super::PdConfig;
use crate::kv::HostKvPool;
use crate::stats::Stats;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, IoSlice, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use strata_cluster::transport::shm;
use strata_cluster::transport::stream::Stream;

type Reader = BufReader<Stream>;
type Writer = BufWriter<Stream>;

/// Where a finished prompt's pages are.
pub enum Pages {
    /// Copied into a staging pool, page_first (the GPU runner without the IPC path).
    Staged(HostKvPool),
    /// Left in this process's KV pool (the CPU runner): `pages`, reached through `spans`.
    Pool {
        spans: Arc<HostSpans>,
        pages: Vec<u32>,
    },
    /// Left in the GPU pool, which the decode has open (CUDA IPC); `info.pages` lists them.
    Device(DeviceInfo),
}

impl Pages {
    /// Bytes of one page's K (or V) object.
    fn object_bytes(&self) -> usize {
        match self {
            Pages::Staged(p) => p.object_bytes(),
            Pages::Pool { spans, .. } => spans.object_bytes(),
            Pages::Device(d) => (d.chunk_bytes * d.layers as u64) as usize,
        }
    }
}

/// Gives pages left in the pool back to the scheduler when dropped (after the decode's
/// acknowledgement, a failure, or the room's expiry: every path drops the handoff).
pub struct Hold(Option<Box<dyn FnOnce() + Send>>);

impl Hold {
    pub fn new(release: impl FnOnce() + Send + 'static) -> Self {
        Hold(Some(Box::new(release)))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// What a finished prefill hands to the decode side.
pub struct Handoff {
    pub n_tokens: u32,
    pub first_token: u32,
    /// The first token's log-probabilities, when the request asked for them.
    pub first_logprobs: Option<crate::logprobs::PosLogprobs>,
    /// Pages `0..n_pages` of the prompt.
    pub pages: Pages,
    pub n_pages: usize,
    pub page_size: usize,
    /// Pages left in the pool stay the request's until this drops.
    pub hold: Option<Hold>,
    /// Completes the prefill request's HTTP answer: Ok after the decode side acknowledged.
    pub deliver: Box<dyn FnOnce(Result<(), String>) + Send>,
}

/// One finished prefill chunk's pages, sent ahead of the rest (a PARTIAL header) to a decode that
/// takes parts, while the next chunk computes. Only pages that stay where they are: the CPU
/// runner's pool, or the GPU pool a same-host decode has open; never staged. They are the
/// running request's own pages, which nothing rewrites before the transfer ends.
pub struct Part {
    /// The whole prompt's tokens (for the geometry check).
    pub n_tokens: u32,
    pub page_size: usize,
    /// `Pages::Pool` or `Pages::Device`: the next `n_pages` pages of the prompt.
    pub pages: Pages,
    pub n_pages: usize,
}

/// What the bootstrap thread serving a room sends next.
enum Next {
    Part(Part),
    Done(Box<Handoff>),
}

/// This server's KV pool as the transfer threads reach it.
#[derive(Default)]
pub struct Share {
    /// The pool's pages in this process's memory (CPU runner).
    pub host: Option<Arc<HostSpans>>,
    /// The GPU pool's export (CUDA runner, IPC on and the export worked).
    pub device: Option<DeviceInfo>,
    /// The GPU pool, for copies into a decode's pool (PUSH); set with `device`.
    pub kv: Option<Arc<dyn DeviceKv>>,
}

/// How a transfer's pages went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Socket,
    SameHost,
    Ipc,
    /// This server copied the pages into the decode's GPU pool (PUSH).
    Push,
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

enum Room {
    /// Accepted; its prefill is running (finished chunks' pages not yet sent wait here).
    Claimed(Instant, Vec<Part>),
    Ready(Box<Handoff>, Instant),
    /// The prefill failed; the decode side gets the reason.
    Failed(String, Instant),
    /// The decode side went away while the prefill ran.
    Abandoned(Instant),
}

/// Rooms of one prefill server.
pub struct Registry {
    rooms: Mutex<HashMap<u64, Room>>,
    /// Rooms whose decode side went away before their prefill request arrived (until expiry).
    gone: Mutex<HashMap<u64, Instant>>,
    cv: Condvar,
    cfg: PdConfig,
    stats: Arc<Stats>,
    /// Staging pools of finished transfers, for the next prefills.
    staging: StagingCache,
    share: OnceLock<Share>,
    /// Rooms a decode on this host is waiting for, with its WANT flags.
    asked: Mutex<HashMap<u64, u8>>,
}

impl Registry {
    /// Starts the bootstrap server on `cfg.bind_host:cfg.bootstrap_port` and the expiry thread.
    pub fn start(cfg: PdConfig, stats: Arc<Stats>) -> std::io::Result<Arc<Self>> {
        let addr = format!("{}:{}", cfg.bind_host, cfg.bootstrap_port);
        let listener = TcpListener::bind(&addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind the PD bootstrap port {addr}: {e}"),
            )
        })?;
        let local_addr = listener.local_addr()?;
        tracing::info!(addr = %local_addr, "PD bootstrap server listening");
        let local = if cfg.same_host {
            bind_local(local_addr)
                .map_err(|e| tracing::warn!(addr = %local_addr, "PD: no same-host socket, decode servers on this host use TCP: {e}"))
                .ok()
        } else {
            None
        };
        let reg = Arc::new(Registry {
            rooms: Mutex::new(HashMap::new()),
            gone: Mutex::new(HashMap::new()),
            cv: Condvar::new(),
            cfg,
            stats,
            staging: StagingCache::default(),
            share: OnceLock::new(),
            asked: Mutex::new(HashMap::new()),
        });
        let r = reg.clone();
        std::thread::Builder::new()
            .name("strata-pd-bootstrap".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let _ = conn.set_nodelay(true);
                    let r = r.clone();
                    let _ = std::thread::Builder::new()
                        .name("strata-pd-send".into())
                        .spawn(move || r.serve(Stream::Tcp(conn)));
                }
            })?;
        if let Some(local) = local {
            let r = reg.clone();
            std::thread::Builder::new()
                .name("strata-pd-local".into())
                .spawn(move || {
                    for conn in local.incoming().flatten() {
                        // Under Yama's restricted ptrace the decode may read this process's
                        // staging pages only once it is named (one process at a time).
                        if let Ok(pid) = shm::peer_pid(&conn) {
                            shm::allow_tracer(pid);
                        }
                        let r = r.clone();
                        let _ = std::thread::Builder::new()
                            .name("strata-pd-send".into())
                            .spawn(move || r.serve(Stream::Unix(conn)));
                    }
                })?;
        }
        let weak = Arc::downgrade(&reg);
        std::thread::Builder::new()
            .name("strata-pd-expiry".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(200));
                let Some(r) = weak.upgrade() else { return };
                r.expire();
            })?;
        Ok(reg)
    }

    /// Tells the transfer threads how to reach this server's pool (once, at start).
    pub fn set_share(&self, share: Share) {
        if let Some(d) = &share.device {
            tracing::info!(
                pool_pages = d.pool_pages,
                "PD: the GPU KV pool is exported for same-host decode servers (CUDA IPC)"
            );
        }
        let _ = self.share.set(share);
    }

    /// The pool's pages in this process's memory, when the transfer threads can send them from
    /// there (no staging copy).
    pub fn host_spans(&self) -> Option<Arc<HostSpans>> {
        self.share.get().and_then(|s| s.host.clone())
    }

    fn device(&self) -> Option<&DeviceInfo> {
        self.share.get().and_then(|s| s.device.as_ref())
    }

    fn kv(&self) -> Option<&dyn DeviceKv> {
        self.share.get().and_then(|s| s.kv.as_deref())
    }

    /// The GPU pool's export with `pages` listed, when the decode waiting for `room` has the
    /// pool open: the prompt's pages may then stay in the pool (CUDA IPC).
    pub fn device_for(&self, room: u64, pages: Vec<u32>) -> Option<DeviceInfo> {
        let d = self.device()?;
        let ready = self
            .asked
            .lock()
            .get(&room)
            .is_some_and(|f| f & wire::IPC_READY != 0);
        ready.then(|| DeviceInfo { pages, ..d.clone() })
    }

    /// Test only: how long the scheduler pauses after handing over a part (so a test can kill
    /// the prefill between chunks).
    pub fn test_stall(&self) -> Duration {
        self.cfg.test_stall
    }

    /// Where the scheduler gets the pools it copies finished prompts' KV into.
    pub fn staging(&self) -> &StagingCache {
        &self.staging
    }

    /// Claims `room` for a new request; false when it is in use.
    pub fn claim(&self, room: u64) -> bool {
        let mut g = self.rooms.lock();
        if g.contains_key(&room) {
            return false;
        }
        g.insert(
            room,
            Room::Claimed(Instant::now() + self.cfg.timeout, Vec::new()),
        );
        true
    }

    /// The room's prefill finished: its pages wait for the decode side (or are freed at once
    /// when that side went away).
    pub fn ready(&self, room: u64, h: Handoff) {
        let mut g = self.rooms.lock();
        let gone = self.gone.lock().remove(&room).is_some();
        if gone || matches!(g.get(&room), Some(Room::Abandoned(_))) {
            g.remove(&room);
            drop(g);
            Stats::add(&self.stats.pd_failed, 1);
            (h.deliver)(Err(
                "PD transfer failed: the decode server went away before the KV cache was ready"
                    .into(),
            ));
            return;
        }
        g.insert(
            room,
            Room::Ready(Box::new(h), Instant::now() + self.cfg.timeout),
        );
        drop(g);
        self.cv.notify_all();
    }

    /// A prefill chunk of the room finished: its pages go to the decode now if it takes parts
    /// (else the final handoff covers them).
    pub fn part(&self, room: u64, p: Part) {
        let mut g = self.rooms.lock();
        if let Some(Room::Claimed(_, parts)) = g.get_mut(&room) {
            parts.push(p);
            drop(g);
            self.cv.notify_all();
        }
    }

    /// The decode side of `room` can no longer get its pages (a part could not be sent): the
    /// room's prefill leg fails when it finishes.
    fn give_up(&self, room: u64) {
        let mut g = self.rooms.lock();
        self.abandon(&mut g, room);
    }

    /// The room's prefill failed or was aborted.
    pub fn fail(&self, room: u64, why: &str) {
        self.rooms.lock().insert(
            room,
            Room::Failed(why.to_string(), Instant::now() + self.cfg.timeout),
        );
        self.cv.notify_all();
    }

    fn expire(&self) {
        let now = Instant::now();
        self.gone.lock().retain(|_, d| *d > now);
        let mut late = Vec::new();
        {
            let mut g = self.rooms.lock();
            let keys: Vec<u64> = g
                .iter()
                .filter(|(_, r)| match r {
                    Room::Claimed(d, _)
                    | Room::Ready(_, d)
                    | Room::Failed(_, d)
                    | Room::Abandoned(d) => *d <= now,
                })
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                if let Some(Room::Ready(h, _)) = g.remove(&k) {
                    late.push((k, h));
                }
            }
        }
        for (room, h) in late {
            tracing::warn!(room, "PD: the decode side never fetched the KV; freeing it");
            Stats::add(&self.stats.pd_failed, 1);
            (h.deliver)(Err(
                "PD transfer failed: the decode server did not fetch the KV cache in time".into(),
            ));
        }
    }

    /// Waits for `room` to be ready (or failed) until the deadline, sending the decode side a
    /// heartbeat every `cfg.heartbeat` meanwhile. A heartbeat that cannot be sent means the decode
    /// side is gone: the room is then given up (its prefill's answer fails when it finishes).
    fn take(&self, room: u64, wr: &mut Writer, parts: bool) -> Result<Next, (i32, String)> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut g = self.rooms.lock();
        loop {
            if Instant::now() >= deadline {
                return Err((
                    wire::ERR_TIMEOUT,
                    format!("room {room}: the prefill did not finish in time"),
                ));
            }
            match g.remove(&room) {
                Some(Room::Ready(h, _)) => return Ok(Next::Done(h)),
                Some(Room::Failed(why, _)) => return Err((wire::ERR_FAILED, why)),
                Some(Room::Claimed(d, mut ps)) if parts && !ps.is_empty() => {
                    let p = ps.remove(0);
                    g.insert(room, Room::Claimed(d, ps));
                    return Ok(Next::Part(p));
                }
                Some(other) => {
                    g.insert(room, other);
                }
                None => {}
            }
            let beat = (Instant::now() + self.cfg.heartbeat).min(deadline);
            if self.cv.wait_until(&mut g, beat).timed_out() && Instant::now() < deadline {
                let sent = KvHeader::error(wire::WAITING, "")
                    .write(wr)
                    .and_then(|_| wr.flush());
                if sent.is_err() {
                    self.abandon(&mut g, room);
                    return Err((wire::ERR_FAILED, "the decode side went away".into()));
                }
            }
        }
    }

    /// The decode side of `room` went away while its prefill runs: the prefill's answer fails as
    /// soon as it finishes, instead of waiting out the timeout.
    fn abandon(&self, g: &mut HashMap<u64, Room>, room: u64) {
        tracing::warn!(
            room,
            "PD: the decode side went away before the KV was ready"
        );
        match g.remove(&room) {
            Some(Room::Claimed(d, _)) => {
                g.insert(room, Room::Abandoned(d));
            }
            Some(other) => {
                g.insert(room, other);
            }
            None => {
                self.gone
                    .lock()
                    .insert(room, Instant::now() + self.cfg.timeout);
            }
        }
    }

    /// Serves one decode connection: one room's request after another until the decode closes it
    /// (or it idles for [`PREFILL_IDLE`], or a transfer leaves it mid-frame).
    fn serve(&self, conn: Stream) {
        let Ok(w) = conn.try_clone() else { return };
        let mut rd = BufReader::new(conn);
        // A small buffer: headers are gathered in it, page objects (larger than it) are written
        // from the staging pool straight to the socket instead of through one more copy.
        let mut wr = BufWriter::with_capacity(4096, w);
        // The decode's pool, once a PUSH WANT opened it (closed when the connection ends).
        let mut peer: PeerPool = None;
        loop {
            if rd.get_ref().set_timeouts(Some(PREFILL_IDLE)).is_err() {
                return;
            }
            let want = match Want::read(&mut rd) {
                Ok(w) => w,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        tracing::debug!("PD bootstrap: bad or no request: {e}");
                    }
                    return;
                }
            };
            if rd.get_ref().set_timeouts(Some(self.cfg.timeout)).is_err()
                || !self.answer(&want, &mut rd, &mut wr, &mut peer)
            {
                return;
            }
        }
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
    /// saying so is sent.
    fn push(
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

    /// Answers one WANT; false when the connection cannot carry another one.
    fn answer(&self, want: &Want, rd: &mut Reader, wr: &mut Writer, peer: &mut PeerPool) -> bool {
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
                Ok(Next::Part(p)) => match self.send_part(&p, sent, want, wr, push.as_ref()) {
                    Ok(()) => sent += p.n_pages,
                    Err((open, msg)) => {
                        tracing::warn!(room = want.room, "PD transfer failed: {msg}");
                        if local {
                            self.asked.lock().remove(&want.room);
                        }
                        self.give_up(want.room);
                        return open && reply(wr, wire::ERR_MISMATCH, msg);
                    }
                },
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
                (send_half(&h, sent, wr), false)
            } else {
                self.send_pages(&h, sent, want, wr, rd, push.as_ref())
            };
            if let (Ok(path), _) = &r {
                let st = &self.stats;
                Stats::add(&st.pd_bytes, (h.n_pages * 2 * obj) as u64);
                Stats::add(&st.pd_micros, t0.elapsed().as_micros() as u64);
                match path {
                    Path::SameHost => Stats::add(&st.pd_local, 1),
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
        wr: &mut Writer,
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
            Pages::Device(info) => match push.map(|t| self.push(t, &info.pages, sent, obj)) {
                Some(Ok(busy)) => {
                    hd.flags |= wire::PUSHED;
                    hd.write(wr).and_then(|_| wr.flush()).map_err(io)?;
                    drop(busy);
                }
                pushed => {
                    if let Some(Err(e)) = pushed {
                        tracing::warn!(room = want.room, "PD: the copy into the decode's pool failed ({e}); it copies the pages itself");
                    }
                    hd.flags |= wire::ON_DEVICE;
                    hd.device = Some(info.clone());
                    hd.write(wr).and_then(|_| wr.flush()).map_err(io)?;
                }
            },
            Pages::Pool { .. } => {
                if want.flags & wire::CAN_READ != 0 && wr.get_ref().is_local() {
                    hd.flags |= wire::IN_PLACE;
                    hd.ranges = page_ranges(&p.pages, 0, p.n_pages);
                    hd.write(wr).and_then(|_| wr.flush()).map_err(io)?;
                } else {
                    hd.write(wr)
                        .and_then(|_| send_range(&p.pages, p.page_size, wr, true, 0, p.n_pages))
                        .map_err(io)?;
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
        wr: &mut Writer,
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
        let mut path = Path::Socket;
        let rest = |info: &DeviceInfo| info.pages[sent.min(info.pages.len())..].to_vec();
        let pushed = match (&h.pages, push) {
            (Pages::Device(info), Some(t)) => {
                match self.push(t, &rest(info), sent, h.pages.object_bytes()) {
                    Ok(busy) => Some(busy),
                    Err(e) => {
                        tracing::warn!(room = want.room, "PD: the copy into the decode's pool failed ({e}); it copies the pages itself");
                        None
                    }
                }
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
                if let Err(e) = hd
                    .write(wr)
                    .and_then(|_| send_range(&h.pages, h.page_size, wr, false, sent, n))
                {
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
                } else if let Err(e) = hd
                    .write(wr)
                    .and_then(|_| send_range(&h.pages, h.page_size, wr, pool, sent, n))
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
            if let Err(e) = send_range(&h.pages, h.page_size, wr, direct, 0, n) {
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
fn send_half(h: &Handoff, sent: usize, wr: &mut Writer) -> Result<Path, String> {
    header(h, sent).write(wr).map_err(|e| e.to_string())?;
    let half = sent + (h.n_pages - sent) / 2;
    let _ = send_range(&h.pages, h.page_size, wr, false, sent, half);
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

/// Writes the prompt's pages `from..to` on the socket: page after page, K object then V object,
/// page_first_direct from the pool when `direct` (else page_first).
fn send_range(
    pages: &Pages,
    page_size: usize,
    wr: &mut Writer,
    direct: bool,
    from: usize,
    to: usize,
) -> std::io::Result<()> {
    match pages {
        Pages::Staged(s) => {
            for p in from as u32..to as u32 {
                for v in [false, true] {
                    // SAFETY: the staging pool is owned by this handoff alone; nothing writes it.
                    wr.write_all(unsafe { s.object(p, v) })?;
                }
            }
        }
        Pages::Pool { spans, pages } if direct => {
            wr.flush()?;
            write_ranges(wr.get_mut(), &spans.ranges(&pages[from..to]))?;
        }
        Pages::Pool { spans, pages } => {
            // page_first: token-major rows, gathered one object at a time.
            let layers = spans.k.len();
            let row = spans.run / page_size.max(1);
            let mut obj = vec![0u8; spans.object_bytes()];
            for &p in &pages[from..to] {
                for bases in [&spans.k, &spans.v] {
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
                    wr.write_all(&obj)?;
                }
            }
        }
        Pages::Device(_) => {
            return Err(std::io::Error::other(
                "the pages are in the GPU pool; they cannot go on the socket",
            ))
        }
    }
    wr.flush()
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
