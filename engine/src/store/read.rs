//! The read path: DRAM tier first, then the device, straight into the caller's memory when it is
//! 4 KiB-aligned (the zero-copy path), through a bounce buffer otherwise. Every device read is checked
//! against the key-bound crc; a mismatch is a miss, never bytes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::{check_key, StoreInner};
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

impl StoreInner {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.batch_get(&[key]).pop().expect("one result")
    }

    pub fn batch_get(&self, keys: &[&[u8]]) -> Vec<Result<Option<Vec<u8>>>> {
        let mut bufs: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| vec![0; self.value_len(k).unwrap_or(0)])
            .collect();
        let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let rs = self.batch_get_into(keys, &mut refs);
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

    /// Reads the value into `buf`. Returns its length, or `None` on a miss. A 4 KiB-aligned `buf` at
    /// least `roundup4k(len)` long is filled by the device directly.
    pub fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<usize>> {
        self.batch_get_into(&[key], &mut [buf])
            .pop()
            .expect("one result")
    }

    /// Batched [`Store::get_into`]. Device reads slide through a window of the store's queue depth
    /// in key order: when the window is full the oldest read is waited for and checked while the
    /// rest stay in flight, then the next read goes in — so the checksum work overlaps the device
    /// instead of leaving the queue empty at the end of the batch.
    pub fn batch_get_into(
        &self,
        keys: &[&[u8]],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<Option<usize>>> {
        assert_eq!(keys.len(), bufs.len(), "one buffer per key");
        let mut out: Vec<Option<Result<Option<usize>>>> = Vec::with_capacity(keys.len());
        let mut pending: VecDeque<(usize, Location, bool, Completion)> =
            VecDeque::with_capacity(self.window);
        for i in 0..keys.len() {
            self.counters.gets.fetch_add(1, Ordering::Relaxed);
            match self.plan(keys[i], bufs[i]) {
                Plan::Done(r) => out.push(Some(r)),
                Plan::Read { loc, bounce } => {
                    out.push(None);
                    if pending.len() >= self.window {
                        let (j, loc, bounce, c) = pending.pop_front().expect("full window");
                        out[j] = Some(self.complete(keys[j], bufs[j], &loc, bounce, c));
                    }
                    let req = self.read_req(&loc, bounce, bufs[i]);
                    let c = self.engine.submit(vec![req]).pop().expect("one completion");
                    pending.push_back((i, loc, bounce, c));
                }
            }
        }
        for (j, loc, bounce, c) in pending {
            out[j] = Some(self.complete(keys[j], bufs[j], &loc, bounce, c));
        }
        out.into_iter()
            .map(|r| r.expect("every key answered"))
            .collect()
    }

    /// The device read for a planned key: straight into `buf` or into a bounce buffer.
    fn read_req(&self, loc: &Location, bounce: bool, buf: &mut [u8]) -> IoReq {
        let len = round_up(loc.value_len as usize);
        let io = if bounce {
            self.engine.alloc(len)
        } else {
            // SAFETY: `buf` is aligned, at least `len` long, exclusively borrowed by
            // `batch_get_into`, and every read is waited for there before the borrow ends.
            unsafe {
                IoBuf::raw(
                    buf.as_mut_ptr(),
                    len,
                    self.engine.registered(buf.as_ptr(), len),
                )
            }
        };
        IoReq {
            op: Op::Read,
            offset: segment_offset(loc.segment, self.segments.segment_size)
                + loc.offset as u64
                + BLOCK as u64,
            buf: io,
        }
    }

    /// Waits for one read, releases its segment and checks it.
    fn complete(
        &self,
        key: &[u8],
        buf: &mut [u8],
        loc: &Location,
        bounce: bool,
        c: Completion,
    ) -> Result<Option<usize>> {
        let (io, r) = c.wait();
        self.segments.segs[loc.segment as usize]
            .readers
            .fetch_sub(1, Ordering::SeqCst);
        self.finish(key, buf, loc, bounce, &io, r)
    }

    fn plan(&self, key: &[u8], buf: &mut [u8]) -> Plan {
        if let Err(e) = check_key(key) {
            return Plan::Done(Err(e));
        }
        if let Some(v) = self.dram(key) {
            if buf.len() < v.len() {
                return Plan::Done(Err(Error::BufferTooSmall {
                    have: buf.len(),
                    need: v.len(),
                }));
            }
            buf[..v.len()].copy_from_slice(&v);
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Plan::Done(Ok(Some(v.len())));
        }
        let Some(loc) = self.index.get(key, true) else {
            return Plan::Done(Ok(None));
        };
        let need = loc.value_len as usize;
        if buf.len() < need {
            return Plan::Done(Err(Error::BufferTooSmall {
                have: buf.len(),
                need,
            }));
        }
        let seg = &self.segments.segs[loc.segment as usize];
        seg.readers.fetch_add(1, Ordering::SeqCst);
        if seg.epoch.load(Ordering::SeqCst) != loc.epoch {
            seg.readers.fetch_sub(1, Ordering::SeqCst);
            return Plan::Done(Ok(None));
        }
        let bounce = !(is_aligned(buf.as_ptr(), 0) && buf.len() >= round_up(need));
        Plan::Read { loc, bounce }
    }

    fn finish(
        &self,
        key: &[u8],
        buf: &mut [u8],
        loc: &Location,
        bounce: bool,
        io: &IoBuf,
        r: std::io::Result<()>,
    ) -> Result<Option<usize>> {
        let n = loc.value_len as usize;
        if let Err(e) = r {
            self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "page read failed");
            return Err(Error::Io(e));
        }
        let data: &[u8] = if bounce { &io[..n] } else { &buf[..n] };
        if value_crc(key, data) != loc.crc {
            self.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                segment = loc.segment,
                offset = loc.offset,
                "page failed its checksum; dropping it"
            );
            if self.index.remove(key, Some(loc.seq)).is_some() {
                self.tombstone_corrupt(key);
            }
            if !bounce {
                buf[..n].fill(0);
            }
            return Ok(None);
        }
        if bounce {
            buf[..n].copy_from_slice(&io[..n]);
        }
        self.mem.insert(key, &buf[..n]);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(n))
    }

    /// The value when it is in DRAM (the write-back buffer or the DRAM tier) and at most
    /// `max_len` bytes, shared without a copy (counted as a get and a memory hit); `Err(len)` when
    /// it is in DRAM but longer than `max_len`; `Ok(None)` when it is only on the device or absent.
    pub fn get_shared(
        &self,
        key: &[u8],
        max_len: usize,
    ) -> std::result::Result<Option<std::sync::Arc<[u8]>>, usize> {
        if check_key(key).is_err() {
            return Ok(None);
        }
        let Some(v) = self.dram(key) else {
            return Ok(None);
        };
        if v.len() > max_len {
            return Err(v.len());
        }
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(v))
    }

    /// The DRAM copy of `key`: the write-back buffer first, then the DRAM tier.
    fn dram(&self, key: &[u8]) -> Option<std::sync::Arc<[u8]>> {
        self.wb
            .as_ref()
            .and_then(|w| w.get(key))
            .or_else(|| self.mem.get(key))
    }

    /// True when `key` is stored.
    pub fn exists(&self, key: &[u8]) -> bool {
        self.index.contains(key) || self.wb.as_ref().is_some_and(|w| w.contains(key))
    }

    /// Length of the value stored under `key`.
    pub fn value_len(&self, key: &[u8]) -> Option<usize> {
        if let Some(v) = self.wb.as_ref().and_then(|w| w.get(key)) {
            return Some(v.len());
        }
        self.index.get(key, false).map(|l| l.value_len as usize)
    }

    /// How many keys hit consecutively from the start (the prefix-cache query).
    pub fn batch_exists(&self, keys: &[&[u8]]) -> usize {
        keys.iter().take_while(|k| self.exists(k)).count()
    }
}
