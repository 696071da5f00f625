//! Worker connections and the idle pool: one stack of keep-alive connections per `host:port`
//! and serving thread.
//!
//! Invariants: a pooled connection has no unread bytes and its last reply was read to the end; a
//! connection is only handed out on the runtime that opened it (the router serves on one
//! single-threaded runtime per core, see `app::serve`, and a socket's readiness events come from
//! the reactor of the runtime it was registered with, so a connection used on another runtime
//! would take a cross-thread wake-up per reply).

use std::cell::Cell;
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

thread_local! {
    /// Which pool this thread uses: 0 for threads of a shared (multi-threaded) runtime, or the
    /// serving thread's own number, set by [`set_pool_slot`].
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread (the only thread of a single-threaded runtime) use pool `slot`.
pub fn set_pool_slot(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

fn slot() -> usize {
    SLOT.with(Cell::get)
}

/// Pools kept apart; serving threads beyond this share (slot modulo the count).
const SLOTS: usize = 64;

type Stacks = HashMap<Arc<str>, Vec<Conn>>;

#[derive(Debug)]
pub(super) struct Idle {
    slots: Box<[Mutex<Stacks>]>,
}

impl Default for Idle {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Idle {
    fn mine(&self) -> &Mutex<Stacks> {
        &self.slots[slot() % SLOTS]
    }

    pub(super) fn take(&self, host: &str) -> Option<Conn> {
        let mut hosts = self.mine().lock();
        let stack = hosts.get_mut(host)?;
        while let Some(c) = stack.pop() {
            if c.is_reusable() {
                return Some(c);
            }
        }
        None
    }

    pub(super) fn put(&self, conn: Conn) {
        let mut hosts = self.mine().lock();
        let stack = hosts.entry(conn.host.clone()).or_default();
        if stack.len() < MAX_IDLE_PER_HOST {
            stack.push(conn);
        }
    }
}
