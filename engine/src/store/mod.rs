//! The page store: a narrow public [`Store`] over components that each own their state.
//!
//! Semantics: a put of an existing key succeeds and keeps the stored bytes; a put is readable as soon
//! as it returns and survives `kill -9` from then on; `sync` makes it survive a power cut. A record
//! whose checksum fails is never returned: it becomes a miss, counted and logged.
//!
//! Components (foyer's shape), each in its own file with its own state and counters:
//! - [`crate::index::Index`]: key -> location, in-flight put claims;
//! - [`crate::memtier::MemTier`]: the DRAM tier;
//! - [`crate::log::segments::Segments`]: segment states, the append allocator, sealing;
//! - `write.rs`, [`Writer`]: puts and tombstones appended as records (write combining, window);
//! - `read.rs`, [`Reader`]: reads from DRAM or the device, checked against the key-bound crc;
//! - `reclaim.rs`, [`Reclaimer`]: frees the oldest sealed segment when none is free;
//! - `writeback.rs` + `flush.rs`, [`Flusher`]: the DRAM write-back buffer and its thread;
//! - `recover.rs`: format or recover, then assemble the components.
//!
//! They meet in [`Core`], which only holds them; every operation is a method of the component that
//! owns its state, taking the `Core` for the others it needs.

mod flush;
mod read;
mod reclaim;
mod recover;
mod write;
mod writeback;

pub use recover::open_readonly;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::format::superblock::Superblock;
use crate::index::Index;
use crate::io::engine::IoEngine;
use crate::log::segments::{SegState, Segments};
use crate::memtier::MemTier;
use crate::{Error, Result, StoreConfig, MAX_KEY_LEN};
use flush::Flusher;
use read::Reader;
use reclaim::Reclaimer;
use write::Writer;
use writeback::WriteBack;

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

/// An open page store. `Send + Sync`: share it through an `Arc`.
pub struct Store {
    core: Arc<Core>,
    /// The write-back flusher thread, when there is a write-back buffer.
    flusher: Option<Flusher>,
}

/// Where the components meet: each field is a component (or the device state they share), and
/// holds its own state.
struct Core {
    path: PathBuf,
    engine: Arc<dyn IoEngine>,
    segments: Segments,
    index: Index,
    mem: MemTier,
    /// The write-back buffer, when puts are acknowledged from DRAM.
    wb: Option<WriteBack>,
    writer: Writer,
    reader: Reader,
    reclaimer: Reclaimer,
    /// The superblock as last written (`clear` rewrites it).
    sb: Mutex<Superblock>,
    /// Held shared by every write and exclusively by `clear`.
    ops: RwLock<()>,
    /// What recovery found at open: keys indexed, damaged records skipped.
    recovered: (u64, u64),
}

impl Store {
    /// Opens (or creates) the store that `cfg` describes.
    pub fn open(cfg: StoreConfig) -> Result<Self> {
        Ok(Self::start(recover::open(cfg)?))
    }

    /// Opens a store on an explicit engine (the simulated disk in tests).
    pub fn open_with_engine(cfg: StoreConfig, engine: Arc<dyn IoEngine>) -> Result<Self> {
        Ok(Self::start(recover::open_with_engine(cfg, engine)?))
    }

    fn start(core: Core) -> Self {
        let core = Arc::new(core);
        let flusher = core.wb.is_some().then(|| Flusher::start(core.clone()));
        Self { core, flusher }
    }

    /// Stores `value` under `key`. `Ok(true)` when stored, `Ok(false)` when the key already existed
    /// (its bytes are kept) or another put of it is in flight.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        self.put_with(key, value, PutOptions::default())
    }

    pub fn put_with(&self, key: &[u8], value: &[u8], opts: PutOptions) -> Result<bool> {
        self.batch_put_with(&[(key, value)], opts)
            .pop()
            .expect("one result")
    }

    /// Stores many pages with their writes in flight together. One result per item.
    pub fn batch_put(&self, items: &[(&[u8], &[u8])]) -> Vec<Result<bool>> {
        self.batch_put_with(items, PutOptions::default())
    }

    /// [`Store::batch_put`] where `opts.depth` is the depth of the first item and each next item is
    /// one deeper (a run of consecutive pages of one prefix).
    pub fn batch_put_with(&self, items: &[(&[u8], &[u8])], opts: PutOptions) -> Vec<Result<bool>> {
        self.core.writer.batch_put(&self.core, items, opts)
    }

    /// [`Store::batch_put_with`] of values held as shared buffers: with a write-back buffer the
    /// buffer keeps them as they are (no copy); otherwise they are written like any other value.
    pub fn batch_put_shared(
        &self,
        items: &[(&[u8], Arc<[u8]>)],
        opts: PutOptions,
    ) -> Vec<Result<bool>> {
        self.core.writer.batch_put_shared(&self.core, items, opts)
    }

    /// Whether puts are acknowledged from a DRAM write-back buffer.
    pub fn has_write_back(&self) -> bool {
        self.core.wb.is_some()
    }

    /// Removes `key`. `Ok(true)` when it was present. A tombstone record makes the removal durable.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        self.core.writer.remove(&self.core, key)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.batch_get(&[key]).pop().expect("one result")
    }

    pub fn batch_get(&self, keys: &[&[u8]]) -> Vec<Result<Option<Vec<u8>>>> {
        self.core.reader.batch_get(&self.core, keys)
    }

    /// Reads the value into `buf`. Returns its length, or `None` on a miss. A 4 KiB-aligned `buf` at
    /// least `roundup4k(len)` long is filled by the device directly.
    pub fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<usize>> {
        self.batch_get_into(&[key], &mut [buf])
            .pop()
            .expect("one result")
    }

    /// Batched [`Store::get_into`]; device reads of a batch are in flight together.
    pub fn batch_get_into(
        &self,
        keys: &[&[u8]],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<Option<usize>>> {
        self.core.reader.batch_get_into(&self.core, keys, bufs)
    }

    /// The value when it is in DRAM (the write-back buffer or the DRAM tier) and at most
    /// `max_len` bytes, shared without a copy (counted as a get and a memory hit); `Err(len)` when
    /// it is in DRAM but longer than `max_len`; `Ok(None)` when it is only on the device or absent.
    pub fn get_shared(
        &self,
        key: &[u8],
        max_len: usize,
    ) -> std::result::Result<Option<Arc<[u8]>>, usize> {
        self.core.reader.get_shared(&self.core, key, max_len)
    }

    /// True when `key` is stored.
    pub fn exists(&self, key: &[u8]) -> bool {
        self.core.exists(key)
    }

    /// How many keys hit consecutively from the start (the prefix-cache query).
    pub fn batch_exists(&self, keys: &[&[u8]]) -> usize {
        keys.iter().take_while(|k| self.core.exists(k)).count()
    }

    /// Length of the value stored under `key`.
    pub fn value_len(&self, key: &[u8]) -> Option<usize> {
        read::value_len(&self.core, key)
    }

    /// Makes every completed put (and remove) survive a power cut (draining the write-back buffer
    /// first).
    pub fn sync(&self) -> Result<()> {
        let c = &self.core;
        if let Some(wb) = &c.wb {
            wb.drain();
            let lost = wb.take_failures();
            if lost > 0 {
                c.engine.sync()?;
                return Err(Error::Io(std::io::Error::other(format!(
                    "{lost} buffered pages could not be written since the last sync"
                ))));
            }
        }
        c.engine.sync()?;
        Ok(())
    }

    /// Seals the open segment (after draining the write-back buffer) and syncs, so that a clean
    /// stop of a process that cannot drop the store (it is shared with serving threads) leaves
    /// every segment with an intact summary. A later put opens a fresh segment.
    pub fn seal_open(&self) -> Result<()> {
        let c = &self.core;
        if let Some(wb) = &c.wb {
            wb.drain();
        }
        {
            // No put is between its allocation and its completion while this is held.
            let _ops = c.ops.write();
            let mut a = c.segments.alloc.lock();
            if let Some(seg) = a.open {
                let mut m = c.segments.segs[seg as usize].meta.lock();
                if m.in_flight == 0 {
                    m.state = SegState::Sealing;
                    a.open = None;
                    drop(m);
                    drop(a);
                    c.segments.seal(seg)?;
                }
            }
        }
        self.sync()
    }

    /// Removes everything; durable when it returns (a synced superblock write records the cut-off).
    /// Returns how many keys it removed.
    pub fn clear(&self) -> Result<u64> {
        self.core.clear()
    }

    /// Registers caller memory (for example a server's pinned host KV pool) so that reads landing in
    /// it use io_uring fixed buffers. Returns false when the I/O engine has no use for it.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid until the store is dropped.
    pub unsafe fn register_buffer(&self, ptr: *mut u8, len: usize) -> Result<bool> {
        // SAFETY: forwarded contract.
        Ok(unsafe { self.core.engine.register(ptr, len) }?)
    }

    /// Largest value this store accepts (bounded by its segment size).
    pub fn max_value_len(&self) -> usize {
        self.core.writer.max_value_len()
    }

    /// The path the store was opened from.
    pub fn path(&self) -> &Path {
        &self.core.path
    }

    pub fn stats(&self) -> Stats {
        let c = &self.core;
        let sb = *c.sb.lock();
        let free = c.segments.alloc.lock().free.len() as u64;
        let mut s = Stats {
            io_engine: c.engine.name(),
            keys: c.index.len() as u64,
            live_bytes: c.index.live_bytes(),
            capacity: sb.capacity,
            segment_size: sb.segment_size,
            segments: sb.segment_count as u64,
            segments_free: free,
            memory_bytes: c.mem.bytes(),
            write_back_bytes: c.wb.as_ref().map_or(0, |w| w.bytes()),
            recovered_keys: c.recovered.0,
            recovery_bad_records: c.recovered.1,
            ..Stats::default()
        };
        c.writer.report(&mut s);
        c.reader.report(&mut s);
        c.reclaimer.report(&mut s);
        s
    }
}

impl Core {
    fn exists(&self, key: &[u8]) -> bool {
        self.index.contains(key) || self.wb.as_ref().is_some_and(|w| w.contains(key))
    }

    fn clear(&self) -> Result<u64> {
        if let Some(wb) = &self.wb {
            wb.drain();
        }
        let _ops = self.ops.write();
        let removed = self.index.len() as u64;
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
        write_superblock(self.engine.as_ref(), &next)?;
        self.engine.sync()?;
        *sb = next;
        self.index.clear();
        self.mem.clear();
        Ok(removed)
    }
}

impl Drop for Store {
    /// A clean stop writes what is buffered, then seals the open segment, so the next open reads
    /// summaries only (no scan).
    fn drop(&mut self) {
        if let Some(f) = self.flusher.take() {
            f.stop(&self.core);
        }
        let segments = &self.core.segments;
        let open = segments.alloc.lock().open.take();
        if let Some(seg) = open {
            {
                let mut m = segments.segs[seg as usize].meta.lock();
                if m.in_flight != 0 {
                    return;
                }
                m.state = SegState::Sealing;
            }
            if let Err(e) = segments.seal(seg) {
                tracing::warn!(error = %e, "sealing the open segment at close failed");
            }
        }
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::KeyLen(key.len()));
    }
    Ok(())
}

/// Writes `sb` to its place (not synced).
fn write_superblock(engine: &dyn IoEngine, sb: &Superblock) -> Result<()> {
    let mut buf = engine.alloc(crate::format::BLOCK);
    buf[..crate::format::BLOCK].copy_from_slice(&sb.encode());
    let (_, r) = crate::io::engine::run_one(engine, crate::io::engine::Op::Write, sb.offset(), buf);
    Ok(r?)
}
