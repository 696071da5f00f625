//! Connections between a decode server and the prefill bootstrap servers it fetches from.
//!
//! The decode side keeps its connections and reuses them across transfers: a pool per resolved
//! bootstrap address ([`Links`]). A new connection is the same-host one when the prefill runs on
//! this host — the abstract Unix socket `strata/<ip:port>` of the store cluster's same-host path
//! (`strata_cluster::transport::shm`), over which the pages can move with one cross-memory copy —
//! and TCP otherwise. Both are a [`Stream`]; the PD frames on them are the same (docs/protocol.md,
//! "PD KV transfer"). With an RDMA device open, a new TCP connection first offers the prefill a
//! queue pair ([`super::rdma`]); a prefill that declines (or closes the connection on the offer,
//! an older one) is not asked again and its pages come on the socket.
//!
//! A connection goes back to the pool only at a frame boundary; before reuse it is checked for a
//! close by the prefill, and one idle for [`MAX_IDLE`] is dropped (the prefill closes idle ones
//! after [`PREFILL_IDLE`], much later, so a connection the decode picks is not closed under it).

use parking_lot::Mutex;
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use strata_cluster::transport::rdma::Nic;
use strata_cluster::transport::shm;
use strata_cluster::transport::stream::Stream;

use super::rdma::{self, Offered, Qp};
use super::share::Opened;
use crate::stats::Stats;

/// A prefill's GPU pool as the decode's connections share it (open while one holds it).
type WeakOpened = Weak<dyn Any + Send + Sync>;

/// The decode side drops a pooled connection idle this long.
pub const MAX_IDLE: Duration = Duration::from_secs(60);
/// The prefill side closes a connection that sends no request for this long.
pub const PREFILL_IDLE: Duration = Duration::from_secs(600);
/// Most idle connections kept per prefill.
const MAX_POOLED: usize = 64;

/// One connection to a prefill's bootstrap server.
pub struct Link {
    /// Headers are read through a small buffer; page objects (larger) go around it.
    pub rd: BufReader<Stream>,
    pub wr: Stream,
    /// The prefill's pid on the same-host socket, as the kernel recorded it (`SO_PEERCRED`).
    pub peer_pid: Option<i32>,
    /// Whether this connection served a transfer before (its peer may have closed it since).
    pub reused: bool,
    /// The prefill's GPU pool, opened (CUDA IPC): its handle and the mapping this connection
    /// keeps open.
    pub ipc: Option<([u8; 64], Opened)>,
    /// Whether the path of this connection's transfers was logged.
    pub logged: bool,
    /// The queue pair the prefill accepted for this connection (TCP only): page bytes go over it.
    pub qp: Option<Qp>,
    idle_since: Instant,
}

impl Link {
    fn new(s: Stream, peer_pid: Option<i32>, timeout: Duration) -> std::io::Result<Self> {
        // Reads time out after the heartbeat window: a prefill that stops answering (hung,
        // paused, cut off) fails the request then, not after the whole bootstrap timeout.
        s.set_timeouts(Some(timeout))?;
        let wr = s.try_clone()?;
        Ok(Link {
            rd: BufReader::with_capacity(4096, s),
            wr,
            peer_pid,
            reused: false,
            ipc: None,
            logged: false,
            qp: None,
            idle_since: Instant::now(),
        })
    }

    pub fn is_local(&self) -> bool {
        self.wr.is_local()
    }

    /// Whether the prefill closed (or wrote to) this connection while a transfer waits for the
    /// decode's ACK: then it gave up on the transfer and may have reused the pages just copied
    /// out of its memory.
    pub fn gave_up(&mut self) -> bool {
        !self.alive()
    }

    /// Whether the idle connection is still open: nothing may be waiting on it (it sits at a frame
    /// boundary), so a non-blocking read must find no data yet.
    fn alive(&mut self) -> bool {
        if !self.rd.buffer().is_empty() || self.rd.get_ref().set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let r = self.rd.get_mut().read(&mut b);
        let ok = matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        ok && self.rd.get_ref().set_nonblocking(false).is_ok()
    }
}

/// The decode side's pool of connections, by prefill bootstrap address.
pub struct Links {
    same_host: bool,
    /// Read and write timeout of every connection (the heartbeat window).
    timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, Vec<Link>>>,
    /// Prefills whose memory this process may not read: their pages come on the socket.
    no_read: Mutex<HashSet<SocketAddr>>,
    /// Prefills whose GPU pool this process cannot open or copy from: staged transfers only.
    no_ipc: Mutex<HashSet<SocketAddr>>,
    /// Per prefill, its GPU pool's handle and the mapping while some connection holds it.
    ipc: Mutex<HashMap<SocketAddr, ([u8; 64], WeakOpened)>>,
    /// Prefills that announced they copy pages into this pool themselves (PUSHES).
    push: Mutex<HashSet<SocketAddr>>,
    /// The RDMA device new TCP connections offer a queue pair on, if any.
    nic: Nic,
    /// Prefills that declined RDMA (or closed the connection on the offer): not asked again.
    no_rdma: Mutex<HashSet<SocketAddr>>,
    /// `pd_connections` counts the connections opened; the fetches count what they receive.
    pub stats: Arc<Stats>,
}

impl Links {
    pub fn new(same_host: bool, timeout: Duration, stats: Arc<Stats>) -> Self {
        Links {
            same_host,
            timeout,
            idle: Mutex::new(HashMap::new()),
            no_read: Mutex::new(HashSet::new()),
            no_ipc: Mutex::new(HashSet::new()),
            ipc: Mutex::new(HashMap::new()),
            push: Mutex::new(HashSet::new()),
            nic: Nic::None,
            no_rdma: Mutex::new(HashSet::new()),
            stats,
        }
    }

    /// Offers a queue pair on `nic` on every new TCP connection (see [`super::rdma`]).
    pub fn with_nic(mut self, nic: Nic) -> Self {
        self.nic = nic;
        self
    }

    /// `addr`'s prefill takes no RDMA: its pages come on the socket from now on.
    fn deny_rdma(&self, addr: SocketAddr, why: &str) {
        if self.no_rdma.lock().insert(addr) {
            tracing::warn!(%addr, "PD: no RDMA with this prefill ({why}); its pages come over TCP");
        }
    }

    /// An open idle connection to `addr`, or a new one.
    pub fn take(&self, addr: SocketAddr) -> Result<Link, String> {
        loop {
            let l = self.idle.lock().get_mut(&addr).and_then(Vec::pop);
            let Some(mut l) = l else { break };
            if l.idle_since.elapsed() < MAX_IDLE && l.alive() {
                l.reused = true;
                return Ok(l);
            }
        }
        let mut l = self.dial(addr)?;
        if l.is_local() {
            // Another connection to this prefill has its GPU pool open: share the mapping.
            l.ipc = self
                .ipc
                .lock()
                .get(&addr)
                .and_then(|(h, w)| Some((*h, w.upgrade()?)));
        }
        Ok(l)
    }

    /// Records the prefill's opened GPU pool for later connections to it.
    pub fn opened(&self, addr: SocketAddr, handle: [u8; 64], m: &Opened) {
        self.ipc.lock().insert(addr, (handle, Arc::downgrade(m)));
    }

    /// Whether the decode may ask `addr`'s prefill for its GPU pool (CUDA IPC).
    pub fn may_ipc(&self, addr: SocketAddr) -> bool {
        !self.no_ipc.lock().contains(&addr)
    }

    /// Whether `addr`'s prefill may be asked to copy the pages into this pool itself (PUSH).
    pub fn may_push(&self, addr: SocketAddr) -> bool {
        self.push.lock().contains(&addr) && self.may_ipc(addr)
    }

    /// `addr`'s prefill announced that it copies pages into a decode's pool (PUSHES).
    pub fn allow_push(&self, addr: SocketAddr) {
        self.push.lock().insert(addr);
    }

    /// The GPU pool of `addr`'s prefill could not be opened or copied from: staged from now on.
    pub fn deny_ipc(&self, addr: SocketAddr, why: &str) {
        self.ipc.lock().remove(&addr);
        self.push.lock().remove(&addr);
        if self.no_ipc.lock().insert(addr) {
            tracing::warn!(%addr, "PD: no CUDA IPC with this prefill ({why}); its pages come staged through host memory");
        }
    }

    /// Returns a connection that ended a transfer at a frame boundary.
    pub fn give(&self, addr: SocketAddr, mut l: Link) {
        l.idle_since = Instant::now();
        let mut g = self.idle.lock();
        let v = g.entry(addr).or_default();
        if v.len() < MAX_POOLED {
            v.push(l);
        }
    }

    /// A new connection: the prefill's same-host socket when it is on this host, else TCP.
    pub fn dial(&self, addr: SocketAddr) -> Result<Link, String> {
        if self.same_host {
            if let Some(s) = connect_local(addr) {
                let pid = shm::peer_pid(&s).ok().filter(|&p| p > 0);
                let l = Link::new(Stream::Unix(s), pid, self.timeout)
                    .map_err(|e| format!("the prefill's same-host socket {addr}: {e}"))?;
                Stats::add(&self.stats.pd_connections, 1);
                return Ok(l);
            }
        }
        let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("cannot reach the prefill's bootstrap server {addr}: {e}"))?;
        let _ = conn.set_nodelay(true);
        let mut l = Link::new(Stream::Tcp(conn), None, self.timeout).map_err(|e| e.to_string())?;
        Stats::add(&self.stats.pd_connections, 1);
        if matches!(self.nic, Nic::None) || self.no_rdma.lock().contains(&addr) {
            return Ok(l);
        }
        match rdma::offer(self.nic, &mut l.rd, &mut l.wr, self.timeout) {
            Ok(Offered::Connected(qp)) => {
                tracing::info!(%addr, "PD: RDMA queue pair connected with this prefill");
                l.qp = Some(qp);
                Ok(l)
            }
            Ok(Offered::Declined(why)) => {
                self.deny_rdma(addr, &why);
                Ok(l)
            }
            Err(e) => {
                // The connection is gone (an older prefill closes it on the unknown frame): a
                // new one, without the offer.
                self.deny_rdma(addr, &format!("the offer broke the connection: {e}"));
                self.dial(addr)
            }
        }
    }

    /// Whether the decode may ask `addr`'s prefill for an in-place copy.
    pub fn may_read(&self, addr: SocketAddr) -> bool {
        !self.no_read.lock().contains(&addr)
    }

    /// The kernel refused this process access to `addr`'s prefill: pages on the socket from now on.
    pub fn deny_read(&self, addr: SocketAddr, why: &str) {
        if self.no_read.lock().insert(addr) {
            tracing::warn!(%addr, "PD: cannot read the prefill's memory ({why}); its pages come over the socket");
        }
    }
}

/// Connects to the same-host socket of the prefill listening at `addr`, when `addr` is an address
/// of this host: the socket named after it, else the one of a prefill listening on every address.
fn connect_local(addr: SocketAddr) -> Option<std::os::unix::net::UnixStream> {
    if !is_local(addr.ip()) {
        return None;
    }
    let any = |ip: IpAddr| SocketAddr::new(ip, addr.port()).to_string();
    [
        addr.to_string(),
        any(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        any(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ]
    .iter()
    .find_map(|n| shm::connect(n).ok())
}

/// Whether `ip` is one of this host's addresses (in this network namespace): it can be bound.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Binds the same-host socket of a prefill whose bootstrap listener is at `addr`.
pub fn bind_local(addr: SocketAddr) -> std::io::Result<std::os::unix::net::UnixListener> {
    shm::bind(&addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_are_recognised() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("::1".parse().unwrap()));
        // TEST-NET-3, never assigned to a host.
        assert!(!is_local("203.0.113.7".parse().unwrap()));
    }

    /// A pooled connection whose peer closed it is not handed out again; an open one is.
    #[test]
    fn pool_reuses_open_connections_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let links = Links::new(false, Duration::from_secs(5), stats.clone());
        let opened = || Stats::get(&stats.pd_connections);
        let a = links.dial(addr).unwrap();
        let (peer_a, _) = l.accept().unwrap();
        links.give(addr, a);
        let a = links.take(addr).unwrap();
        assert!(a.reused, "an open pooled connection was not reused");
        assert_eq!(opened(), 1);
        links.give(addr, a);
        drop(peer_a); // the prefill closes it
        std::thread::sleep(Duration::from_millis(50));
        let b = links.take(addr).unwrap();
        assert!(!b.reused, "a closed connection was handed out");
        assert_eq!(opened(), 2);
    }
}
