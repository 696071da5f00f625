//! Per-segment state and the append allocator.
//!
//! Invariants:
//! - exactly one segment is `Open` at a time (or none); records are appended to it at increasing,
//!   4 KiB-aligned offsets, each leaving room for the summary of every record reserved so far;
//! - a `Sealing` segment gets its summary and footer written by whoever completes its last in-flight
//!   write; it is then `Sealed` and waits in `fifo` (seal order) for reclaim;
//! - `Segment::epoch` is the epoch of the segment's current use, or 0 while it is free or being
//!   reclaimed; a reader registers in `readers` and then re-checks the epoch, and reclaim sets the epoch
//!   to 0 and waits for `readers` to drain, so a read never sees a reused segment.
//!
//! Lock order: `Alloc` before any `SegMeta`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::format::segment::{Footer, SegmentHeader};
use crate::format::summary::{key_cost, padded, reserve, SegmentSummary, SummaryEntry};
use crate::format::{segment_offset, BLOCK};
use crate::io::engine::{run_one, IoEngine, Op};
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegState {
    Free,
    Open,
    Sealing,
    Sealed,
}

pub struct SegMeta {
    pub state: SegState,
    pub entries: Vec<SummaryEntry>,
    pub in_flight: u32,
    pub write_off: u32,
    reserved: usize,
    key_bytes: usize,
}

impl SegMeta {
    fn fresh(state: SegState) -> Self {
        Self {
            state,
            entries: Vec::new(),
            in_flight: 0,
            write_off: BLOCK as u32,
            reserved: 0,
            key_bytes: 0,
        }
    }
}

pub struct Segment {
    pub epoch: AtomicU64,
    pub readers: AtomicU32,
    pub meta: Mutex<SegMeta>,
}

/// Allocator state.
pub struct Alloc {
    pub open: Option<u32>,
    pub free: VecDeque<u32>,
    pub fifo: VecDeque<u32>,
    pub next_seq: u64,
    pub next_epoch: u64,
}

/// A reserved place for one record.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub segment: u32,
    pub epoch: u64,
    pub offset: u32,
    pub seq: u64,
}

/// Outcome of a reservation attempt.
pub enum Reserve {
    Got(Slot),
    /// No free segment: reclaim one and retry.
    NeedReclaim,
}

/// All segments of a store plus the allocator.
pub struct Segments {
    pub segs: Vec<Segment>,
    pub alloc: Mutex<Alloc>,
    pub segment_size: u64,
    pub store_id: u64,
    engine: Arc<dyn IoEngine>,
}

impl Segments {
    pub fn new(engine: Arc<dyn IoEngine>, count: u32, segment_size: u64, store_id: u64) -> Self {
        let segs = (0..count)
            .map(|_| Segment {
                epoch: AtomicU64::new(0),
                readers: AtomicU32::new(0),
                meta: Mutex::new(SegMeta::fresh(SegState::Free)),
            })
            .collect();
        Self {
            segs,
            alloc: Mutex::new(Alloc {
                open: None,
                free: VecDeque::new(),
                fifo: VecDeque::new(),
                next_seq: 1,
                next_epoch: 1,
            }),
            segment_size,
            store_id,
            engine,
        }
    }

    /// Installs a recovered sealed segment.
    pub fn install_sealed(&self, index: u32, epoch: u64, entries: Vec<SummaryEntry>) {
        let s = &self.segs[index as usize];
        s.epoch.store(epoch, Ordering::SeqCst);
        let mut m = s.meta.lock();
        *m = SegMeta::fresh(SegState::Sealed);
        m.entries = entries;
    }

    /// Longest value a record can carry in this geometry.
    pub fn max_value_len(&self) -> usize {
        let seg = self.segment_size as usize;
        (seg - 3 * BLOCK - reserve(1, key_cost(crate::MAX_KEY_LEN))).min(crate::MAX_VALUE_LEN)
    }

    /// Reserves `disk_len` bytes for a record with a key of `key_len` bytes. Returns the segments
    /// that became ready to seal (the caller seals them after dropping no locks: none are held).
    pub fn reserve(
        &self,
        disk_len: usize,
        key_len: usize,
        to_seal: &mut Vec<u32>,
    ) -> Result<Reserve> {
        let seg = self.segment_size as usize;
        let mut a = self.alloc.lock();
        loop {
            if let Some(o) = a.open {
                let s = &self.segs[o as usize];
                let mut m = s.meta.lock();
                let summary = reserve(m.reserved + 1, m.key_bytes + key_cost(key_len));
                if m.write_off as usize + disk_len + summary + BLOCK <= seg {
                    let slot = Slot {
                        segment: o,
                        epoch: s.epoch.load(Ordering::SeqCst),
                        offset: m.write_off,
                        seq: a.next_seq,
                    };
                    a.next_seq += 1;
                    m.write_off += disk_len as u32;
                    m.reserved += 1;
                    m.key_bytes += key_cost(key_len);
                    m.in_flight += 1;
                    return Ok(Reserve::Got(slot));
                }
                m.state = SegState::Sealing;
                if m.in_flight == 0 {
                    to_seal.push(o);
                }
                drop(m);
                a.fifo.push_back(o);
                a.open = None;
            }
            let Some(i) = a.free.pop_front() else {
                return Ok(Reserve::NeedReclaim);
            };
            let epoch = a.next_epoch;
            a.next_epoch += 1;
            let header = SegmentHeader {
                segment: i,
                epoch,
                store_id: self.store_id,
            };
            let mut buf = self.engine.alloc(BLOCK);
            buf[..BLOCK].copy_from_slice(&header.encode());
            let (_, r) = run_one(
                self.engine.as_ref(),
                Op::Write,
                segment_offset(i, self.segment_size),
                buf,
            );
            // The new header must be durable before records land: otherwise a power cut could bring
            // back the segment's previous contents (its old header, summary and footer still agree).
            let r = r.and_then(|_| self.engine.sync());
            if let Err(e) = r {
                a.free.push_back(i);
                return Err(e.into());
            }
            let s = &self.segs[i as usize];
            *s.meta.lock() = SegMeta::fresh(SegState::Open);
            s.epoch.store(epoch, Ordering::SeqCst);
            a.open = Some(i);
        }
    }

    /// Records the end of a write to `segment`. Returns true when the segment is now ready to seal.
    pub fn complete(&self, segment: u32, entry: Option<SummaryEntry>) -> bool {
        let mut m = self.segs[segment as usize].meta.lock();
        m.in_flight -= 1;
        if let Some(e) = entry {
            m.entries.push(e);
        }
        m.state == SegState::Sealing && m.in_flight == 0
    }

    /// Writes the summary and footer of a segment whose writes have all completed.
    pub fn seal(&self, segment: u32) -> Result<()> {
        let s = &self.segs[segment as usize];
        let mut m = s.meta.lock();
        if m.state != SegState::Sealing || m.in_flight != 0 {
            return Ok(());
        }
        let epoch = s.epoch.load(Ordering::SeqCst);
        let r = write_summary(
            self.engine.as_ref(),
            self.segment_size,
            segment,
            epoch,
            &m.entries,
        );
        m.state = SegState::Sealed;
        r
    }
}

/// Writes the summary (just before the footer) and the footer of a segment.
pub fn write_summary(
    engine: &dyn IoEngine,
    segment_size: u64,
    segment: u32,
    epoch: u64,
    entries: &[SummaryEntry],
) -> Result<()> {
    let summary = SegmentSummary {
        segment,
        epoch,
        entries: entries.to_vec(),
    };
    let bytes = summary.to_bytes();
    let plen = padded(bytes.len());
    let seg = segment_size as usize;
    let records_end = entries
        .iter()
        .map(|e| {
            e.offset as usize + crate::format::record::RecordHeader::disk_len(e.value_len) as usize
        })
        .max()
        .unwrap_or(BLOCK);
    if records_end + plen + BLOCK > seg {
        tracing::error!(
            segment,
            "summary does not fit; the segment will be scanned at recovery"
        );
        return Ok(());
    }
    let summary_offset = seg - BLOCK - plen;
    let footer = Footer {
        segment,
        epoch,
        summary_offset: summary_offset as u32,
        summary_len: bytes.len() as u32,
        entry_count: entries.len() as u32,
        summary_crc: crc32c::crc32c(&bytes),
        min_seq: entries.iter().map(|e| e.seq).min().unwrap_or(0),
        max_seq: entries.iter().map(|e| e.seq).max().unwrap_or(0),
    };
    let mut buf = engine.alloc(plen + BLOCK);
    buf.fill(0);
    buf[..bytes.len()].copy_from_slice(&bytes);
    buf[plen..plen + BLOCK].copy_from_slice(&footer.encode());
    let off = segment_offset(segment, segment_size) + summary_offset as u64;
    let (_, r) = run_one(engine, Op::Write, off, buf);
    Ok(r?)
}
