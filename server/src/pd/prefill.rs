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
//! them itself, device to device, and answers PUSHED once they landed. A decode on another host
//! may first offer an RDMA queue pair for its connection ([`super::rdma`]): with the `rdma` build
//! and a device open this server accepts, and the pages of that connection's transfers go over it.
//! What one decode connection is served (the WANTs, parts, final headers and ACKs) is in
//! [`send`].

use super::link::bind_local;
use super::share::{DeviceKv, HostSpans};
use super::staging::StagingCache;
use super::wire::{self, DeviceInfo, KvHeader};
use super::PdConfig;
use crate::kv::HostKvPool;
use crate::stats::Stats;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use strata_cluster::transport::shm;
use strata_cluster::transport::stream::Stream;

mod send;

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

/// This server's GPU KV pool as the transfer threads reach it (a CPU pool's pages travel in
/// each handoff's [`Pages::Pool`]).
#[derive(Default)]
pub struct Share {
    /// The GPU pool's export (CUDA runner, IPC on and the export worked).
    pub device: Option<DeviceInfo>,
    /// The GPU pool, for copies into a decode's pool (PUSH); set with `device`. A prefill offers
    /// pushes whenever it has one; the decode decides (`PdConfig::push`).
    pub kv: Option<Arc<dyn DeviceKv>>,
}

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
    /// The RDMA device decode connections' queue pairs are made on, if any.
    nic: strata_cluster::transport::rdma::Nic,
    /// Test only: the queue pair the next RDMA offer is accepted with (an in-memory pair).
    #[cfg(test)]
    test_qp: Mutex<Option<super::rdma::Qp>>,
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
            stats,
            staging: StagingCache::default(),
            share: OnceLock::new(),
            asked: Mutex::new(HashMap::new()),
            nic: super::rdma::open(&cfg.ib_devices),
            cfg,
            #[cfg(test)]
            test_qp: Mutex::new(None),
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

    /// Test only: accepts the next RDMA offer with `qp` (one end of [`super::rdma::fake_pair`]),
    /// whatever this server's device.
    #[cfg(test)]
    pub fn accept_next_rdma_with(&self, qp: super::rdma::Qp) {
        *self.test_qp.lock() = Some(qp);
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
    /// The beat keeps its own clock: other rooms' events wake this wait too, and must not put the
    /// next beat off (with many rooms finishing one after another, a beat timed from the last
    /// wake-up never came, and a waiting decode gave the prefill up as silent).
    fn take(&self, room: u64, wr: &mut Writer, parts: bool) -> Result<Next, (i32, String)> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut beat = Instant::now() + self.cfg.heartbeat;
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
            let now = Instant::now();
            if now >= beat {
                let sent = KvHeader::error(wire::WAITING, "")
                    .write(wr)
                    .and_then(|_| wr.flush());
                if sent.is_err() {
                    self.abandon(&mut g, room);
                    return Err((wire::ERR_FAILED, "the decode side went away".into()));
                }
                beat = now + self.cfg.heartbeat;
            }
            self.cv.wait_until(&mut g, beat.min(deadline));
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
}
