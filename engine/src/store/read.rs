//! The read path: DRAM tier first, then the device, straight into the caller's memory when it is
//! 4 KiB-aligned (the zero-copy path), through a bounce buffer otherwise. Every device read is checked
//! against the key-bound crc; a mismatch is a miss, never bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{check_key, Core, Stats};
use crate::format::{segment_offset, value_crc, BLOCK};
use crate::index::Location;
use crate::io::buf::{is_aligned, round_up};
use crate::io::engine::{Completion, IoReq, Op};
use crate::io::iobuf::IoBuf;
use crate::{Error, Result};

enum Plan {
    Done(Result<Option<usize>>),
    Read { loc: Location, bounce: bool },
}

/// The read path: owns the read window and the read counters.
pub(super) struct Reader {
    /// Device reads one caller keeps in flight (the configured queue depth).
    window: usize,
    gets: AtomicU64,
    hits: AtomicU64,
    memory_hits: AtomicU64,
    corrupt_reads: AtomicU64,
    io_errors: AtomicU64,
}

impl Reader {
    pub(super) fn new(window: usize) -> Self {
        Self {
            window,
            gets: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            corrupt_reads: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
        }
    }

    pub(super) fn report(&self, s: &mut Stats) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.gets = l(&self.gets);
        s.hits = l(&self.hits);
        s.memory_hits = l(&self.memory_hits);
        s.corrupt_reads = l(&self.corrupt_reads);
        s.io_errors += l(&self.io_errors);
    }

    /// Whole values (see [`super::Store::batch_get`]).
    pub(super) fn batch_get(&self, c: &Core, keys: &[&[u8]]) -> Vec<Result<Option<Vec<u8>>>> {
        let mut bufs: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| vec![0; value_len(c, k).unwrap_or(0)])
            .collect();
        let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let rs = self.batch_get_into(c, keys, &mut refs);
        rs.into_iter()
            .zip(bufs)
            .map(|(r, mut b)| {
                r.map(|o| {
                    o.map(|n| {
                        b.truncate(n);
                        b
                    })
                })
            })
            .collect()
    }

    /// Batched [`super::Store::get_into`]. Device reads slide through a window of the store's queue depth
    /// in key order: when the window is full the oldest read is waited for and checked while the
    /// rest stay in flight, then the next read goes in — so the checksum work overlaps the device
    /// instead of leaving the queue empty at the end of the batch.
    pub(super) fn batch_get_into(
        &self,
        c: &Core,
        keys: &[&[u8]],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<Option<usize>>> {
        assert_eq!(keys.len(), bufs.len(), "one buffer per key");
        let mut out: Vec<Option<Result<Option<usize>>>> = Vec::with_capacity(keys.len());
        let mut pending: VecDeque<(usize, Location, bool, Completion)> =
            VecDeque::with_capacity(self.window);
        for i in 0..keys.len() {
            self.gets.fetch_add(1, Ordering::Relaxed);
            match self.plan(c, keys[i], bufs[i]) {
                Plan::Done(r) => out.push(Some(r)),
                Plan::Read { loc, bounce } => {
                    out.push(None);
                    if pending.len() >= self.window {
                        let (j, loc, bounce, done) = pending.pop_front().expect("full window");
                        out[j] = Some(self.complete(c, keys[j], bufs[j], &loc, bounce, done));
                    }
                    let req = read_req(c, &loc, bounce, bufs[i]);
                    let done = c.engine.submit(vec![req]).pop().expect("one completion");
                    pending.push_back((i, loc, bounce, done));
                }
            }
        }
        for (j, loc, bounce, done) in pending {
            out[j] = Some(self.complete(c, keys[j], bufs[j], &loc, bounce, done));
        }
        out.into_iter()
            .map(|r| r.expect("every key answered"))
            .collect()
    }

    fn plan(&self, c: &Core, key: &[u8], buf: &mut [u8]) -> Plan {
        if let Err(e) = check_key(key) {
            return Plan::Done(Err(e));
        }
        if let Some(v) = dram(c, key) {
            if buf.len() < v.len() {
                return Plan::Done(Err(Error::BufferTooSmall {
                    have: buf.len(),
                    need: v.len(),
                }));
            }
            buf[..v.len()].copy_from_slice(&v);
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Plan::Done(Ok(Some(v.len())));
        }
        let Some(loc) = c.index.get(key, true) else {
            return Plan::Done(Ok(None));
        };
        let need = loc.value_len as usize;
        if buf.len() < need {
            return Plan::Done(Err(Error::BufferTooSmall {
                have: buf.len(),
                need,
            }));
        }
        let seg = &c.segments.segs[loc.segment as usize];
        seg.readers.fetch_add(1, Ordering::SeqCst);
        if seg.epoch.load(Ordering::SeqCst) != loc.epoch {
            seg.readers.fetch_sub(1, Ordering::SeqCst);
            return Plan::Done(Ok(None));
        }
        let bounce = !(is_aligned(buf.as_ptr(), 0) && buf.len() >= round_up(need));
        Plan::Read { loc, bounce }
    }

    /// Waits for one read, releases its segment and checks the bytes.
    fn complete(
        &self,
        c: &Core,
        key: &[u8],
        buf: &mut [u8],
        loc: &Location,
        bounce: bool,
        done: Completion,
    ) -> Result<Option<usize>> {
        let (io, r) = done.wait();
        c.segments.segs[loc.segment as usize]
            .readers
            .fetch_sub(1, Ordering::SeqCst);
        let n = loc.value_len as usize;
        if let Err(e) = r {
            self.io_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "page read failed");
            return Err(Error::Io(e));
        }
        let data: &[u8] = if bounce { &io[..n] } else { &buf[..n] };
        if value_crc(key, data) != loc.crc {
            self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                segment = loc.segment,
                offset = loc.offset,
                "page failed its checksum; dropping it"
            );
            if c.index.remove(key, Some(loc.seq)).is_some() {
                c.writer.tombstone_corrupt(c, key);
            }
            if !bounce {
                buf[..n].fill(0);
            }
            return Ok(None);
        }
        if bounce {
            buf[..n].copy_from_slice(&io[..n]);
        }
        c.mem.insert(key, &buf[..n]);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(n))
    }

    /// The value when it is in DRAM (the write-back buffer or the DRAM tier) and at most
    /// `max_len` bytes, shared without a copy (counted as a get and a memory hit); `Err(len)` when
    /// it is in DRAM but longer than `max_len`; `Ok(None)` when it is only on the device or absent.
    pub(super) fn get_shared(
        &self,
        c: &Core,
        key: &[u8],
        max_len: usize,
    ) -> std::result::Result<Option<Arc<[u8]>>, usize> {
        if check_key(key).is_err() {
            return Ok(None);
        }
        let Some(v) = dram(c, key) else {
            return Ok(None);
        };
        if v.len() > max_len {
            return Err(v.len());
        }
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.memory_hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(v))
    }
}

/// The device read for a planned key: straight into `buf` or into a bounce buffer.
fn read_req(c: &Core, loc: &Location, bounce: bool, buf: &mut [u8]) -> IoReq {
    let len = round_up(loc.value_len as usize);
    let io = if bounce {
        c.engine.alloc(len)
    } else {
        // SAFETY: `buf` is aligned, at least `len` long, exclusively borrowed by
        // `batch_get_into`, and every read is waited for there before the borrow ends.
        unsafe {
            IoBuf::raw(
                buf.as_mut_ptr(),
                len,
                c.engine.registered(buf.as_ptr(), len),
            )
        }
    };
    IoReq {
        op: Op::Read,
        offset: segment_offset(loc.segment, c.segments.segment_size)
            + loc.offset as u64
            + BLOCK as u64,
        buf: io,
    }
}

/// The DRAM copy of `key`: the write-back buffer first, then the DRAM tier.
fn dram(c: &Core, key: &[u8]) -> Option<Arc<[u8]>> {
    c.wb.as_ref()
        .and_then(|w| w.get(key))
        .or_else(|| c.mem.get(key))
}

/// Length of the value stored under `key`.
pub(super) fn value_len(c: &Core, key: &[u8]) -> Option<usize> {
    if let Some(v) = c.wb.as_ref().and_then(|w| w.get(key)) {
        return Some(v.len());
    }
    c.index.get(key, false).map(|l| l.value_len as usize)
}
