//! One reliable-connection queue pair per TCP connection, with its own send and receive completion
//! queues and two registered bounce buffers (`depth` slots of `chunk` bytes each).
//!
//! Data moves by two-sided SEND/RECV: the receiver keeps `depth` receives posted (re-posting each
//! slot as soon as its bytes are copied out), the sender keeps at most `depth` sends in flight.
//! Receives complete in the order they were posted and sends in the order they were issued, so
//! chunk `i` always uses slot `i % depth` on both sides. RNR retry 7 (retry forever) makes a sender
//! that runs ahead of the receiver's re-posting wait instead of failing; a peer that is gone fails
//! the transport retries (about half a second) with an error completion, and every wait for a
//! completion is bounded by the link's timeout, so a stuck peer is an error, never a hang.
//!
//! Every `unsafe` of the verbs path lives in this file.

use std::io;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use ibverbs::{
    ibv_qp_type, ibv_wc, CompletionQueue, Gid, MemoryRegion, PreparedQueuePair, QueuePair,
    QueuePairEndpoint,
};

use super::device::Device;
use super::plan::{self, Chunk};
use super::wire::Endpoint;
use crate::error::{ClusterError, ClusterResult};

/// Retry forever on "receiver not ready" (7 is the protocol's "infinite").
const RNR_RETRY: u8 = 7;
/// Transport retries before a silent peer fails the queue pair.
const RETRY_COUNT: u8 = 7;
/// ACK timeout exponent: 4.096 us x 2^14 = 67 ms per try.
const ACK_TIMEOUT: u8 = 14;
/// Delay the receiver asks for after an RNR NAK (code 12 = 0.64 ms).
const MIN_RNR_TIMER: u8 = 12;

/// A completion queue owned through a raw pointer. The queue pair holds `'static` borrows of its
/// completion queues; owning them through a pointer (not a `Box`, which asserts uniqueness when it
/// moves) keeps those borrows valid while the owning struct moves. Every owner declares its queue
/// pair before its `Cq`s, so the queue pair is destroyed first (fields drop in declaration order).
struct Cq(NonNull<CompletionQueue<'static>>);

// SAFETY: `CompletionQueue` is `Send + Sync`; `Cq` only adds ownership through a pointer.
unsafe impl Send for Cq {}
// SAFETY: as above.
unsafe impl Sync for Cq {}

impl Cq {
    fn new(dev: &'static Device, entries: u32, id: isize) -> io::Result<Self> {
        let cq = dev.ctx.create_cq(entries as i32, id)?;
        Ok(Self(NonNull::from(Box::leak(Box::new(cq)))))
    }

    /// A borrow for the queue pair builder.
    ///
    /// # Safety
    /// The caller keeps `self` alive for as long as the returned borrow is used (see the type).
    unsafe fn forever(&self) -> &'static CompletionQueue<'static> {
        // SAFETY: the pointer came from `Box::leak` and is freed only in `drop`; the caller
        // guarantees the borrow ends before that.
        unsafe { self.0.as_ref() }
    }

    fn get(&self) -> &CompletionQueue<'static> {
        // SAFETY: valid until `drop`, which cannot run while `&self` is live.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: allocated by `Box::leak` in `new`, freed exactly once here.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// A queue pair created (its endpoint can be sent to the peer) but not yet connected.
pub struct Pending {
    qp: PreparedQueuePair<'static>,
    scq: Cq,
    rcq: Cq,
    dev: &'static Device,
    depth: u32,
}

impl Pending {
    /// Creates a queue pair with room for `depth` outstanding sends and receives.
    pub fn new(dev: &'static Device, depth: u32) -> io::Result<Self> {
        let scq = Cq::new(dev, depth + 1, 0)?;
        let rcq = Cq::new(dev, depth + 1, 1)?;
        // SAFETY: `Pending` and `Link` declare the queue pair before the completion queues, so it
        // is destroyed before them.
        let (s, r) = unsafe { (scq.forever(), rcq.forever()) };
        let mut b = dev.pd.create_qp(s, r, ibv_qp_type::IBV_QPT_RC);
        b.set_max_send_wr(depth)
            .set_max_recv_wr(depth)
            .set_rnr_retry(RNR_RETRY)
            .set_retry_count(RETRY_COUNT)
            .set_timeout(ACK_TIMEOUT)
            .set_min_rnr_timer(MIN_RNR_TIMER);
        if let Some(g) = dev.gid_index {
            b.set_gid_index(g);
        }
        let qp = b.build()?;
        Ok(Self {
            qp,
            scq,
            rcq,
            dev,
            depth,
        })
    }

    /// What the peer needs to connect to this queue pair.
    pub fn endpoint(&self) -> Endpoint {
        let e = self.qp.endpoint();
        Endpoint {
            qp_num: e.num,
            lid: e.lid,
            gid: e.gid.map(gid_bytes),
        }
    }

    /// Connects to the peer's queue pair (INIT, ready-to-receive, ready-to-send), registers the
    /// bounce buffers for `depth` chunks of `chunk` bytes and posts every receive.
    pub fn connect(
        self,
        remote: Endpoint,
        chunk: u32,
        depth: u32,
        timeout: Duration,
    ) -> ClusterResult<Link> {
        if depth > self.depth {
            return Err(ClusterError::Protocol(format!(
                "RDMA depth {depth} exceeds the queue pair's {}",
                self.depth
            )));
        }
        let remote = QueuePairEndpoint {
            num: remote.qp_num,
            lid: remote.lid,
            gid: remote.gid.map(gid_from),
        };
        let bytes = chunk as usize * depth as usize;
        let send_mr = self.dev.pd.allocate::<u8>(bytes)?;
        let recv_mr = self.dev.pd.allocate::<u8>(bytes)?;
        let qp = self.qp.handshake(remote)?;
        let mut link = Link {
            qp,
            send_mr,
            recv_mr,
            scq: self.scq,
            rcq: self.rcq,
            chunk: chunk as usize,
            depth: depth as usize,
            timeout,
            received: 0,
        };
        for slot in 0..link.depth {
            link.post_recv(slot)?;
        }
        Ok(link)
    }
}

/// The raw bytes of a GID, as the wire carries them.
fn gid_bytes(g: Gid) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&g.subnet_prefix().to_be_bytes());
    b[8..].copy_from_slice(&g.interface_id().to_be_bytes());
    b
}

fn gid_from(raw: [u8; 16]) -> Gid {
    let mut g = Gid::default();
    AsMut::as_mut(&mut g).raw = raw;
    g
}

/// A connected queue pair with its registered bounce buffers.
pub struct Link {
    // Declaration order is drop order: the queue pair goes before the buffers it may still access
    // and the completion queues it is attached to.
    qp: QueuePair<'static>,
    send_mr: MemoryRegion<u8>,
    recv_mr: MemoryRegion<u8>,
    scq: Cq,
    rcq: Cq,
    chunk: usize,
    depth: usize,
    timeout: Duration,
    /// Receives consumed so far (the next one completes in slot `received % depth`).
    received: u64,
}

impl Link {
    /// The agreed chunk size.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    fn post_recv(&mut self, slot: usize) -> io::Result<()> {
        let at = slot * self.chunk;
        // SAFETY: the slot is not touched by this process until its completion is polled in
        // `recv`, and the queue pair is destroyed before the region (field order).
        unsafe {
            self.qp
                .post_receive(&mut self.recv_mr, at..at + self.chunk, slot as u64)
        }
    }

    /// Sends the planned chunks of `src` (one slice per item), each copied into a free slot of the
    /// send buffer, at most `depth` in flight.
    pub fn send(&mut self, chunks: &[Chunk], src: &[&[u8]]) -> ClusterResult<()> {
        let mut in_flight = 0;
        for (i, c) in chunks.iter().enumerate() {
            if in_flight == self.depth {
                self.wait(false)?;
                in_flight -= 1;
            }
            // Send completions come in issue order, so slot `i % depth` (last used by chunk
            // `i - depth`) is free once one more completion arrived.
            let at = (i % self.depth) * self.chunk;
            plan::gather(c, src, &mut self.send_mr[at..at + c.len]);
            // SAFETY: the slot is not written again until its completion is polled, and the queue
            // pair is destroyed before the region (field order).
            unsafe {
                self.qp
                    .post_send(&mut self.send_mr, at..at + c.len, i as u64)
            }?;
            in_flight += 1;
        }
        for _ in 0..in_flight {
            self.wait(false)?;
        }
        Ok(())
    }

    /// Receives the planned chunks into `dst` (one slice per item), re-posting each slot.
    pub fn recv(&mut self, chunks: &[Chunk], dst: &mut [&mut [u8]]) -> ClusterResult<()> {
        for c in chunks {
            let (slot, len) = self.wait(true)?;
            let want = (self.received % self.depth as u64) as usize;
            if slot != want || len != c.len {
                return Err(ClusterError::Protocol(format!(
                    "RDMA chunk of {len} bytes in slot {slot}, expected {} bytes in slot {want}",
                    c.len
                )));
            }
            let at = slot * self.chunk;
            plan::scatter(c, &self.recv_mr[at..at + len], dst);
            self.received += 1;
            self.post_recv(slot)?;
        }
        Ok(())
    }

    /// Waits for one completion on the receive (`recv`) or send queue; returns its slot (`wr_id`)
    /// and byte count. A failed completion or no progress within the timeout is an error (the
    /// caller drops the connection, which destroys the queue pair).
    fn wait(&mut self, recv: bool) -> ClusterResult<(usize, usize)> {
        let cq = if recv { self.rcq.get() } else { self.scq.get() };
        let mut wc = [ibv_wc::default(); 1];
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(c) = cq.poll(&mut wc)?.first() {
                if let Some((status, vendor)) = c.error() {
                    return Err(ClusterError::Io(io::Error::other(format!(
                        "RDMA {} completion failed: status {status}, vendor error {vendor:#x}",
                        if recv { "receive" } else { "send" }
                    ))));
                }
                return Ok((c.wr_id() as usize, c.len()));
            }
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
                continue;
            }
            if start.elapsed() > self.timeout {
                return Err(ClusterError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no RDMA {} completion within {:?}",
                        if recv { "receive" } else { "send" },
                        self.timeout
                    ),
                )));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}
