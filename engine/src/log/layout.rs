//! Read-only view of what is on the device: the superblock and, per segment, its records — from the
//! sealed summary when it is intact, otherwise from a scan of the segment. Used by recovery and by
//! offline inspection; writes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use crate::format::record::{Kind, RecordHeader};
use crate::format::segment::{Footer, SegmentHeader};
use crate::format::summary::{padded, SegmentSummary, SummaryEntry};
use crate::format::superblock::Superblock;
use crate::format::{segment_offset, value_crc, BLOCK};
use crate::io::engine::{run_one, IoEngine, Op};
use crate::io::iobuf::IoBuf;
use crate::{Error, Result};

/// Where a segment's entries came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The sealed summary, read in place.
    Summary,
    /// A scan of the records (open at the last stop, or its summary was damaged).
    Scanned {
        /// Blocks that looked like a record header but failed validation (torn or corrupt).
        bad_records: u32,
        /// Why the summary was not used.
        why: &'static str,
    },
}

/// One segment in use.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    pub index: u32,
    pub epoch: u64,
    pub source: Source,
    pub entries: Vec<SummaryEntry>,
}

impl SegmentScan {
    pub fn min_seq(&self) -> u64 {
        self.entries.iter().map(|e| e.seq).min().unwrap_or(0)
    }
    pub fn max_seq(&self) -> u64 {
        self.entries.iter().map(|e| e.seq).max().unwrap_or(0)
    }
}

/// Reads both superblock copies. `Ok(None)` when neither is valid.
pub fn read_superblock(
    engine: &dyn IoEngine,
    path: &std::path::Path,
) -> Result<Option<Superblock>> {
    let (buf, r) = run_one(engine, Op::Read, 0, IoBuf::heap(2 * BLOCK));
    r?;
    match Superblock::pick(&buf[..BLOCK], &buf[BLOCK..]) {
        Ok(sb) => Ok(sb),
        Err(found) => Err(Error::Version {
            path: path.to_path_buf(),
            found,
            supported: crate::format::VERSION,
        }),
    }
}

/// Reads segment `index`: `None` when it is free (no valid header of this store).
pub fn scan_segment(
    engine: &dyn IoEngine,
    sb: &Superblock,
    index: u32,
) -> Result<Option<SegmentScan>> {
    let base = segment_offset(index, sb.segment_size);
    let seg = sb.segment_size as usize;
    let (hbuf, r) = run_one(engine, Op::Read, base, IoBuf::heap(BLOCK));
    r?;
    let Some(header) = SegmentHeader::decode(&hbuf) else {
        return Ok(None);
    };
    if header.store_id != sb.store_id || header.segment != index {
        return Ok(None);
    }
    let (fbuf, r) = run_one(
        engine,
        Op::Read,
        base + (seg - BLOCK) as u64,
        IoBuf::heap(BLOCK),
    );
    r?;
    let why = match Footer::decode(&fbuf) {
        None => "no footer (segment was open)",
        Some(f) if f.epoch != header.epoch || f.segment != index => "footer from an earlier use",
        Some(f) => match read_summary(engine, base, seg, &f)? {
            Some(s) if s.epoch == header.epoch && s.segment == index => {
                return Ok(Some(SegmentScan {
                    index,
                    epoch: header.epoch,
                    source: Source::Summary,
                    entries: s.entries,
                }))
            }
            _ => "summary failed its checks",
        },
    };
    if why != "no footer (segment was open)" {
        tracing::warn!(
            segment = index,
            why,
            "rebuilding a segment's index by scanning its records"
        );
    }
    scan_records(engine, base, seg, header.epoch, index, why).map(Some)
}

fn read_summary(
    engine: &dyn IoEngine,
    base: u64,
    seg: usize,
    f: &Footer,
) -> Result<Option<SegmentSummary>> {
    let len = f.summary_len as usize;
    let off = f.summary_offset as usize;
    if len == 0 || off % BLOCK != 0 || off < BLOCK || off + padded(len) > seg - BLOCK {
        return Ok(None);
    }
    let (buf, r) = run_one(
        engine,
        Op::Read,
        base + off as u64,
        IoBuf::heap(padded(len)),
    );
    r?;
    if crc32c::crc32c(&buf[..len]) != f.summary_crc {
        return Ok(None);
    }
    Ok(SegmentSummary::from_bytes(&buf[..len]))
}

fn scan_records(
    engine: &dyn IoEngine,
    base: u64,
    seg: usize,
    epoch: u64,
    index: u32,
    why: &'static str,
) -> Result<SegmentScan> {
    let (buf, r) = run_one(engine, Op::Read, base, IoBuf::heap(seg));
    r?;
    let end = seg - BLOCK;
    let mut off = BLOCK;
    let mut entries = Vec::new();
    let mut bad = 0u32;
    while off + BLOCK <= end {
        match valid_record(&buf, off, end, epoch, index) {
            Some(h) => {
                let len = RecordHeader::disk_len(h.value_len) as usize;
                entries.push(SummaryEntry {
                    key: h.key,
                    offset: off as u32,
                    value_len: h.value_len,
                    crc: h.crc,
                    seq: h.seq,
                    kind: h.kind as u8,
                    depth: h.depth,
                });
                off += len;
            }
            None => {
                if &buf[off..off + 8] == crate::format::record::MAGIC {
                    bad += 1;
                }
                off += BLOCK;
            }
        }
    }
    if bad > 0 {
        tracing::warn!(segment = index, bad, "skipped torn or corrupt records");
    }
    Ok(SegmentScan {
        index,
        epoch,
        source: Source::Scanned {
            bad_records: bad,
            why,
        },
        entries,
    })
}

fn valid_record(
    buf: &[u8],
    off: usize,
    end: usize,
    epoch: u64,
    index: u32,
) -> Option<RecordHeader> {
    let h = RecordHeader::decode(&buf[off..off + BLOCK])?;
    if h.epoch != epoch || h.segment != index {
        return None;
    }
    let len = RecordHeader::disk_len(h.value_len) as usize;
    if off + len > end {
        return None;
    }
    match h.kind {
        Kind::Tombstone => (h.value_len == 0).then_some(h),
        Kind::Page => {
            let v = &buf[off + BLOCK..off + BLOCK + h.value_len as usize];
            (h.value_len > 0 && value_crc(&h.key, v) == h.crc).then_some(h)
        }
    }
}

/// Every segment in use, in index order. `progress` is called once per segment.
pub fn read_all(
    engine: &Arc<dyn IoEngine>,
    sb: &Superblock,
    progress: &dyn Fn(u32),
) -> Result<Vec<SegmentScan>> {
    let mut out = Vec::new();
    for i in 0..sb.segment_count {
        if let Some(s) = scan_segment(engine.as_ref(), sb, i)? {
            out.push(s);
        }
        progress(i);
    }
    Ok(out)
}

/// Problems found by [`verify_segment`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub segment: u32,
    pub offset: u32,
    pub key: String,
    pub what: String,
}

/// Re-reads every record of a segment and checks header and value crcs against its entries.
pub fn verify_segment(
    engine: &dyn IoEngine,
    sb: &Superblock,
    s: &SegmentScan,
) -> Result<Vec<Problem>> {
    let base = segment_offset(s.index, sb.segment_size);
    let mut problems = Vec::new();
    if let Source::Scanned { bad_records, why } = &s.source {
        if *bad_records > 0 || *why != "no footer (segment was open)" {
            problems.push(Problem {
                segment: s.index,
                offset: 0,
                key: String::new(),
                what: format!("{why}; {bad_records} torn or corrupt records skipped"),
            });
        }
    }
    for e in &s.entries {
        let len = RecordHeader::disk_len(e.value_len) as usize;
        let (buf, r) = run_one(engine, Op::Read, base + e.offset as u64, IoBuf::heap(len));
        let mut report = |what: String| {
            problems.push(Problem {
                segment: s.index,
                offset: e.offset,
                key: String::from_utf8_lossy(&e.key).into_owned(),
                what,
            })
        };
        if let Err(err) = r {
            report(format!("read error: {err}"));
            continue;
        }
        match RecordHeader::decode(&buf[..BLOCK]) {
            None => report("record header fails its checks".into()),
            Some(h) if h.key != e.key || h.seq != e.seq || h.epoch != s.epoch => {
                report("record header disagrees with the summary".into())
            }
            Some(h) if h.kind == Kind::Page => {
                let v = &buf[BLOCK..BLOCK + h.value_len as usize];
                if value_crc(&h.key, v) != e.crc {
                    report("value checksum mismatch".into());
                }
            }
            Some(_) => {}
        }
    }
    Ok(problems)
}

/// The winning record of every key: the highest sequence number above `clear_seq`, as
/// `(scan index, entry index)`. A winning tombstone means the key is absent.
pub fn live_set(scans: &[SegmentScan], clear_seq: u64) -> HashMap<&[u8], (usize, usize)> {
    let mut order: Vec<(u64, usize, usize)> = Vec::new();
    for (si, s) in scans.iter().enumerate() {
        for (ei, e) in s.entries.iter().enumerate() {
            if e.seq > clear_seq {
                order.push((e.seq, si, ei));
            }
        }
    }
    order.sort_unstable();
    let mut state = HashMap::with_capacity(order.len());
    for (_, si, ei) in order {
        state.insert(scans[si].entries[ei].key.as_slice(), (si, ei));
    }
    state
}
