//! Pooled data paths to store nodes (each one authenticated connection), keyed by address. A path
//! goes back to the pool only after a request completed cleanly on it; any error drops it.
//!
//! A new connection is the same-host path when the node is on this host, else TCP; a TCP connection
//! becomes the RDMA path (RDMA_HELLO) when the client opened a device and the node has not declined.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::ClusterResult;
use crate::path::same_host::SameHost;
use crate::path::tcp::Tcp;
use crate::path::DataPath;
use crate::transport::rdma::Nic;
use crate::transport::{connect, connect_local, Conn};

pub struct Pool {
    token: String,
    name: String,
    timeout: Duration,
    idle: Mutex<HashMap<String, Vec<Box<dyn DataPath>>>>,
    /// Try the same-host path first.
    same_host: bool,
    /// Nodes known not to be reachable (or usable) through the same-host path.
    remote_only: Mutex<HashSet<String>>,
    /// The device new TCP connections offer RDMA on.
    rdma: Nic,
    /// Nodes that declined RDMA (or whose queue pair could not be set up): TCP only.
    tcp_only: Mutex<HashSet<String>>,
}

impl Pool {
    pub fn new(token: &str, name: &str, timeout: Duration, same_host: bool, rdma: Nic) -> Self {
        Self {
            token: token.to_owned(),
            name: name.to_owned(),
            timeout,
            idle: Mutex::new(HashMap::new()),
            same_host,
            remote_only: Mutex::new(HashSet::new()),
            rdma,
            tcp_only: Mutex::new(HashSet::new()),
        }
    }

    /// An idle path to `addr`, or a new one.
    pub fn take(&self, addr: &str) -> ClusterResult<Box<dyn DataPath>> {
        if let Some(p) = self.idle.lock().get_mut(addr).and_then(Vec::pop) {
            return Ok(p);
        }
        if self.same_host && !self.remote_only.lock().contains(addr) {
            match connect_local(addr, &self.token, &self.name, self.timeout) {
                Ok(c) => {
                    c.set_timeouts(Some(self.timeout))?;
                    return Ok(Box::new(SameHost(c)));
                }
                Err(e) => {
                    tracing::debug!(%addr, "client: no same-host path, using TCP: {e}");
                    self.remote_only.lock().insert(addr.to_owned());
                }
            }
        }
        match self.offer_rdma(addr, self.dial(addr)?) {
            Ok(p) => Ok(p),
            Err(e) => {
                // A node that predates RDMA_HELLO closes the connection on the unknown opcode: talk
                // plain TCP to it (if it is really gone, dialing again fails).
                tracing::warn!(%addr, "client: RDMA_HELLO broke the connection, using TCP with this node: {e}");
                self.tcp_only.lock().insert(addr.to_owned());
                Ok(Box::new(Tcp(self.dial(addr)?)))
            }
        }
    }

    /// A new TCP connection after HELLO, with the request timeout set.
    fn dial(&self, addr: &str) -> ClusterResult<Conn> {
        let c = connect(
            addr,
            &self.token,
            &self.name,
            self.timeout.min(Duration::from_secs(2)),
        )?;
        c.set_timeouts(Some(self.timeout))?;
        Ok(c)
    }

    /// The path of a new TCP connection: RDMA when this client has a device, the node has not
    /// declined before and the queue pair comes up; TCP otherwise. A node that declines is logged
    /// once and gets TCP from then on.
    fn offer_rdma(&self, addr: &str, c: Conn) -> ClusterResult<Box<dyn DataPath>> {
        #[cfg(feature = "rdma")]
        if let Nic::Open(dev) = self.rdma {
            if !self.tcp_only.lock().contains(addr) {
                let mut c = c;
                match crate::transport::rdma::setup::offer(&mut c, dev, self.timeout)? {
                    Ok(link) => return Ok(Box::new(crate::path::rdma::Rdma { conn: c, link })),
                    Err(why) => {
                        tracing::warn!(%addr, "client: RDMA not used with this node, page traffic uses TCP: {why}");
                        self.tcp_only.lock().insert(addr.to_owned());
                    }
                }
                return Ok(Box::new(Tcp(c)));
            }
        }
        let _ = (addr, &self.rdma, &self.tcp_only);
        Ok(Box::new(Tcp(c)))
    }

    /// Returns a healthy path.
    pub fn give(&self, addr: &str, p: Box<dyn DataPath>) {
        let mut idle = self.idle.lock();
        let v = idle.entry(addr.to_owned()).or_default();
        if v.len() < 16 {
            v.push(p);
        }
    }

    /// The node refused to touch this process's memory: use TCP with it from now on.
    pub fn deny_local(&self, addr: &str) {
        tracing::warn!(%addr, "client: same-host path refused by the node, falling back to TCP");
        self.remote_only.lock().insert(addr.to_owned());
        self.forget(addr);
    }

    /// Drops every idle connection to `addr` (after that node failed). A node that comes back may
    /// have gained RDMA, so it is asked again.
    pub fn forget(&self, addr: &str) {
        self.idle.lock().remove(addr);
        self.tcp_only.lock().remove(addr);
    }
}
