//! Worker connections and the idle pool: one stack of keep-alive connections per `host:port`.
//!
//! Invariant: a pooled connection has no unread bytes and its last reply was read to the end.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const MAX_IDLE_PER_HOST: usize = 1024;

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) io: TcpStream,
    pub(super) buf: BytesMut,
    /// The pool key (`host:port`), allocated once per connection.
    pub(super) host: Arc<str>,
}

impl Conn {
    /// Reads more bytes into the buffer; Ok(false) on EOF.
    pub(super) async fn fill(&mut self) -> io::Result<bool> {
        // Reserving only when short keeps reusing one allocation while the buffer is unshared.
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        Ok(self.io.read_buf(&mut self.buf).await? > 0)
    }

    /// An idle pooled connection the peer has closed (or sent junk on) is not reusable.
    fn is_reusable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

#[derive(Debug, Default)]
pub(super) struct Idle {
    hosts: Mutex<HashMap<Arc<str>, Vec<Conn>>>,
}

impl Idle {
    pub(super) fn take(&self, host: &str) -> Option<Conn> {
        let mut hosts = self.hosts.lock();
        let stack = hosts.get_mut(host)?;
        while let Some(c) = stack.pop() {
            if c.is_reusable() {
                return Some(c);
            }
        }
        None
    }

    pub(super) fn put(&self, conn: Conn) {
        let mut hosts = self.hosts.lock();
        let stack = hosts.entry(conn.host.clone()).or_default();
        if stack.len() < MAX_IDLE_PER_HOST {
            stack.push(conn);
        }
    }
}
