//! A lazily (re)connecting RPC link to the master, used by store nodes (register, heartbeat) and
//! clients (membership refresh). A failed call drops the connection; the next call dials again.

use std::time::Duration;

use crate::error::ClusterResult;
use crate::proto::Op;
use crate::transport::{connect, Conn};

pub struct MasterLink {
    addr: String,
    token: String,
    name: String,
    conn: Option<Conn>,
}

impl MasterLink {
    pub fn new(addr: &str, token: &str, name: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            token: token.to_owned(),
            name: name.to_owned(),
            conn: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One request/response round trip, dialing first when needed.
    pub fn call(&mut self, op: Op, meta: &[u8]) -> ClusterResult<Vec<u8>> {
        if self.conn.is_none() {
            let c = connect(&self.addr, &self.token, &self.name, Duration::from_secs(2))?;
            c.set_timeouts(Some(Duration::from_secs(5)))?;
            self.conn = Some(c);
        }
        let r = self.conn.as_mut().expect("just dialed").call(op, meta);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}
