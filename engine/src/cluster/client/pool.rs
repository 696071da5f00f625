//! Pooled, authenticated connections to store nodes, keyed by address. A connection goes back to the
//! pool only after a request completed cleanly on it; any error drops it.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use crate::cluster::error::ClusterResult;
use crate::cluster::transport::{connect, Conn};

pub struct Pool {
    token: String,
    name: String,
    timeout: Duration,
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

impl Pool {
    pub fn new(token: &str, name: &str, timeout: Duration) -> Self {
        Self {
            token: token.to_owned(),
            name: name.to_owned(),
            timeout,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// An idle connection to `addr`, or a new one.
    pub fn take(&self, addr: &str) -> ClusterResult<Conn> {
        if let Some(c) = self.idle.lock().get_mut(addr).and_then(Vec::pop) {
            return Ok(c);
        }
        let c = connect(
            addr,
            &self.token,
            &self.name,
            self.timeout.min(Duration::from_secs(2)),
        )?;
        c.stream().set_read_timeout(Some(self.timeout))?;
        c.stream().set_write_timeout(Some(self.timeout))?;
        Ok(c)
    }

    /// Returns a healthy connection.
    pub fn give(&self, addr: &str, c: Conn) {
        let mut idle = self.idle.lock();
        let v = idle.entry(addr.to_owned()).or_default();
        if v.len() < 16 {
            v.push(c);
        }
    }

    /// Drops every idle connection to `addr` (after that node failed).
    pub fn forget(&self, addr: &str) {
        self.idle.lock().remove(addr);
    }
}
