//! The page store: the facade over index, DRAM tier, segments and the I/O engine.
//!
//! Semantics: a put of an existing key succeeds and keeps the stored bytes; a put is readable as soon
//! as it returns and survives `kill -9` from then on; `sync` makes it survive a power cut. A record
//! whose checksum fails is never returned: it becomes a miss, counted and logged.
//!
//! - `open.rs`: format or recover, then hand out a `Store`;
//! - `write.rs`: put, remove (tombstones), batches;
//! - `read.rs`: get, get into caller memory, batches, exists;
//! - `reclaim.rs`: freeing whole segments when the device is full.

mod open;
mod read;
mod reclaim;
mod write;
mod writeback;

pub use open::open_readonly;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::format::superblock::Superblock;
use crate::index::Index;
use crate::io::engine::IoEngine;
use crate::log::segments::{SegState, Segments};
use crate::memtier::MemTier;
use crate::{Error, Result, StoreConfig, MAX_KEY_LEN};

/// Hints attached to a put.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions {
    /// Index of this page within its prefix chain (0 = head). Reclaim prefers to keep heads.
    pub depth: Option<u32>,
}

/// Counters and gauges reported by [`Store::stats`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub io_engine: &'static str,
    pub keys: u64,
    pub live_bytes: u64,
    pub capacity: u64,
    pub segment_size: u64,
    pub segments: u64,
    pub segments_free: u64,
    pub memory_bytes: u64,
    pub write_back_bytes: u64,
    pub puts: u64,
    pub put_bytes: u64,
    pub gets: u64,
    pub hits: u64,
    pub memory_hits: u64,
    pub corrupt_reads: u64,
    pub io_errors: u64,
    pub reclaimed_segments: u64,
    pub relocated_pages: u64,
    pub recovered_keys: u64,
    pub recovery_bad_records: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub hits: AtomicU64,
    pub memory_hits: AtomicU64,
    pub corrupt_reads: AtomicU64,
    pub io_errors: AtomicU64,
    pub reclaimed_segments: AtomicU64,
    pub relocated_pages: AtomicU64,
    pub recovered_keys: AtomicU64,
    pub recovery_bad_records: AtomicU64,
}

/// An open page store. `Send + Sync`: share it through an `Arc`. Its operations are those of
/// [`StoreInner`] (reached through `Deref`); this handle owns the write-back flusher, if any.
pub struct Store {
    inner: Arc<StoreInner>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

/// The store's state and operations, shared with the write-back flusher thread.
pub struct StoreInner {
    pub(crate) path: PathBuf,
    pub(crate) engine: Arc<dyn IoEngine>,
    pub(crate) segments: Segments,
    pub(crate) index: Index,
    pub(crate) mem: MemTier,
    pub(crate) sb: Mutex<Superblock>,
    pub(crate) counters: Counters,
    /// Held shared by every write and exclusively by `clear`.
    pub(crate) ops: RwLock<()>,
    pub(crate) reclaim_lock: Mutex<()>,
    pub(crate) max_value_len: usize,
    pub(crate) wb: Option<writeback::WriteBack>,
    /// Records one caller keeps in flight (the configured queue depth).
    pub(crate) window: usize,
    /// Most bytes of one combined write (`StoreConfig::with_write_combine`).
    pub(crate) combine: u64,
}

impl std::ops::Deref for Store {
    type Target = StoreInner;
    fn deref(&self) -> &StoreInner {
        &self.inner
    }
}

impl Store {
    /// Opens (or creates) the store that `cfg` describes.
    pub fn open(cfg: StoreConfig) -> Result<Self> {
        Ok(Self::start(StoreInner::open(cfg)?))
    }

    /// Opens a store on an explicit engine (the simulated disk in tests).
    pub fn open_with_engine(cfg: StoreConfig, engine: Arc<dyn IoEngine>) -> Result<Self> {
        Ok(Self::start(StoreInner::open_with_engine(cfg, engine)?))
    }

    fn start(inner: StoreInner) -> Self {
        let inner = Arc::new(inner);
        let flusher = inner.wb.is_some().then(|| {
            let i = inner.clone();
            std::thread::Builder::new()
                .name("strata-flusher".into())
                .spawn(move || {
                    lower_priority();
                    i.flush_loop()
                })
                .expect("spawn the write-back flusher")
        });
        Self { inner, flusher }
    }
}

/// Makes the calling thread yield the CPU to request threads: `SCHED_IDLE` (Linux, per thread),
/// else nice +10. The write-back flusher works in the background, and on a small machine its
/// copies and checksums otherwise delay the puts and gets it shares cores with (their tail
/// latency): an idle-class thread runs only on a CPU nothing else wants and is preempted at once
/// by a waking request thread, where a nice +10 thread still holds the CPU for part of a slice.
/// A full buffer makes puts wait, which frees the CPUs for it, so it cannot fall behind without
/// bound.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; failure only leaves the priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) != 0 {
            let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
        }
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::KeyLen(key.len()));
    }
    Ok(())
}

impl StoreInner {
    /// Makes every completed put (and remove) survive a power cut (draining the write-back buffer
    /// first).
    pub fn sync(&self) -> Result<()> {
        if let Some(wb) = &self.wb {
            wb.drain();
            let lost = wb.take_failures();
            if lost > 0 {
                self.engine.sync()?;
                return Err(Error::Io(std::io::Error::other(format!(
                    "{lost} buffered pages could not be written since the last sync"
                ))));
            }
        }
        self.engine.sync()?;
        Ok(())
    }

    /// Removes everything; durable when it returns (a synced superblock write records the cut-off).
    pub fn clear(&self) -> Result<()> {
        if let Some(wb) = &self.wb {
            wb.drain();
        }
        let _ops = self.ops.write();
        let mut a = self.segments.alloc.lock();
        for s in &self.segments.segs {
            s.epoch.store(0, Ordering::SeqCst);
            while s.readers.load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
            let mut m = s.meta.lock();
            m.state = SegState::Free;
            m.entries.clear();
        }
        a.open = None;
        a.fifo.clear();
        a.free = (0..self.segments.segs.len() as u32).collect();
        let mut sb = self.sb.lock();
        let mut next = *sb;
        next.generation += 1;
        next.clear_seq = a.next_seq - 1;
        self.write_superblock(&next)?;
        self.engine.sync()?;
        *sb = next;
        self.index.clear();
        self.mem.clear();
        Ok(())
    }

    pub(crate) fn write_superblock(&self, sb: &Superblock) -> Result<()> {
        let mut buf = self.engine.alloc(crate::format::BLOCK);
        buf[..crate::format::BLOCK].copy_from_slice(&sb.encode());
        let (_, r) = crate::io::engine::run_one(
            self.engine.as_ref(),
            crate::io::engine::Op::Write,
            sb.offset(),
            buf,
        );
        Ok(r?)
    }

    /// Registers caller memory (for example a server's pinned host KV pool) so that reads landing in
    /// it use io_uring fixed buffers. Returns false when the I/O engine has no use for it.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid until the store is dropped.
    pub unsafe fn register_buffer(&self, ptr: *mut u8, len: usize) -> Result<bool> {
        // SAFETY: forwarded contract.
        Ok(unsafe { self.engine.register(ptr, len) }?)
    }

    /// Largest value this store accepts (bounded by its segment size).
    pub fn max_value_len(&self) -> usize {
        self.max_value_len
    }

    /// The path the store was opened from.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sb = *self.sb.lock();
        let free = self.segments.alloc.lock().free.len() as u64;
        Stats {
            io_engine: self.engine.name(),
            keys: self.index.len() as u64,
            live_bytes: self.index.live_bytes(),
            capacity: sb.capacity,
            segment_size: sb.segment_size,
            segments: sb.segment_count as u64,
            segments_free: free,
            memory_bytes: self.mem.bytes(),
            write_back_bytes: self.wb.as_ref().map_or(0, |w| w.bytes()),
            puts: l(&c.puts),
            put_bytes: l(&c.put_bytes),
            gets: l(&c.gets),
            hits: l(&c.hits),
            memory_hits: l(&c.memory_hits),
            corrupt_reads: l(&c.corrupt_reads),
            io_errors: l(&c.io_errors),
            reclaimed_segments: l(&c.reclaimed_segments),
            relocated_pages: l(&c.relocated_pages),
            recovered_keys: l(&c.recovered_keys),
            recovery_bad_records: l(&c.recovery_bad_records),
        }
    }
}

impl Drop for Store {
    /// A clean stop writes what is buffered, then seals the open segment, so the next open reads
    /// summaries only (no scan).
    fn drop(&mut self) {
        if let Some(wb) = &self.inner.wb {
            wb.stop();
        }
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        let open = self.segments.alloc.lock().open.take();
        if let Some(seg) = open {
            {
                let mut m = self.segments.segs[seg as usize].meta.lock();
                if m.in_flight != 0 {
                    return;
                }
                m.state = SegState::Sealing;
            }
            if let Err(e) = self.segments.seal(seg) {
                tracing::warn!(error = %e, "sealing the open segment at close failed");
            }
        }
    }
}
