//! The write-back buffer: with `StoreConfig::with_write_back(bytes)`, a put returns once its page is
//! in this bounded DRAM buffer (readable at once), and a flusher thread appends buffered pages to the
//! log in batches. `sync` (and `remove`, `clear`, a clean close) first drains the buffer, so the
//! durability contract becomes: a returned put survives `kill -9` and power cuts after the next `sync`.
//!
//! Invariant: a buffered key holds its put claim in the index until the flusher publishes its location
//! (or fails), so a concurrent put of the same key is answered "exists" and writes nothing; readers
//! look here before the index, and the entry leaves this buffer only after the index has it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// A buffered page.
pub(crate) struct Buffered {
    pub key: Box<[u8]>,
    pub value: Arc<[u8]>,
    pub depth: u8,
}

#[derive(Default)]
struct State {
    map: HashMap<Box<[u8]>, Arc<[u8]>>,
    queue: VecDeque<Buffered>,
    bytes: u64,
    /// Pages taken by the flusher and not yet published.
    flushing: usize,
    /// Buffered pages whose write failed since the last `take_failures`.
    failed: u64,
    stop: bool,
}

/// Bounded buffer of pages waiting to be written.
pub(crate) struct WriteBack {
    state: Mutex<State>,
    work: Condvar,
    space: Condvar,
    limit: u64,
}

impl WriteBack {
    pub fn new(limit: u64) -> Self {
        Self {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            space: Condvar::new(),
            limit,
        }
    }

    /// Buffers a claimed page, waiting while the buffer is full (back-pressure to device speed).
    pub fn push(&self, key: &[u8], value: &[u8], depth: u8) {
        // The copy is made before taking the lock, so that other pushers and the flusher do not
        // wait on it.
        self.push_shared(key, value.into(), depth);
    }

    /// [`WriteBack::push`] of a value the caller already holds as a shared buffer (no copy).
    pub fn push_shared(&self, key: &[u8], value: Arc<[u8]>, depth: u8) {
        let mut st = self.state.lock();
        while st.bytes > 0 && st.bytes + value.len() as u64 > self.limit {
            self.space.wait(&mut st);
        }
        st.bytes += value.len() as u64;
        st.map.insert(key.into(), value.clone());
        st.queue.push_back(Buffered {
            key: key.into(),
            value,
            depth,
        });
        self.work.notify_one();
    }

    pub fn get(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        self.state.lock().map.get(key).cloned()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.state.lock().map.contains_key(key)
    }

    /// The next batch for the flusher (up to `max_items` / `max_bytes`); empty once stopped and drained.
    pub fn take(&self, max_items: usize, max_bytes: u64) -> Vec<Buffered> {
        let mut st = self.state.lock();
        while st.queue.is_empty() && !st.stop {
            self.work.wait(&mut st);
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while let Some(b) = st.queue.front() {
            if !out.is_empty()
                && (out.len() >= max_items || bytes + b.value.len() as u64 > max_bytes)
            {
                break;
            }
            bytes += b.value.len() as u64;
            out.push(st.queue.pop_front().expect("front exists"));
        }
        st.flushing += out.len();
        out
    }

    /// The flusher is done with `batch` (published to the index, or `failed` of them were lost).
    pub fn done(&self, batch: &[Buffered], failed: u64) {
        let mut st = self.state.lock();
        st.failed += failed;
        for b in batch {
            st.map.remove(&b.key);
            st.bytes -= b.value.len() as u64;
        }
        st.flushing -= batch.len();
        self.space.notify_all();
    }

    /// Waits until every buffered page is written (or failed).
    pub fn drain(&self) {
        let mut st = self.state.lock();
        while !st.queue.is_empty() || st.flushing > 0 {
            self.space.wait(&mut st);
        }
    }

    /// Pages lost since the last call (their background write failed).
    pub fn take_failures(&self) -> u64 {
        std::mem::take(&mut self.state.lock().failed)
    }

    /// Lets the flusher exit once the buffer is empty.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.work.notify_all();
    }

    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }
}
