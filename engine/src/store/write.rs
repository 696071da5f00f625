//! The write path: puts and tombstones, singly or in batches.
//!
//! A batch claims its keys in the index (so concurrent puts of one key write it once), reserves a
//! slot per record, submits every write at once (queue depth from a single caller), then publishes
//! the successful ones. Before it waits for a reclaim it flushes the slots it already holds, so a
//! reclaimer never waits on writes that cannot start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{check_key, Core, PutOptions, Stats};
use crate::format::record::{Kind, RecordHeader, DEPTH_UNKNOWN};
use crate::format::summary::SummaryEntry;
use crate::format::{segment_offset, value_crc, BLOCK};
use crate::index::Location;
use crate::io::engine::{Completion, IoReq, Op};
use crate::io::iobuf::IoBuf;
use crate::log::segments::{Reserve, Slot};
use crate::{Error, Result};

/// One record to write.
pub(crate) struct Pending<'a> {
    pub item: usize,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    /// The value as a shared buffer (write-back pages): the DRAM tier keeps it without a copy.
    pub shared: Option<&'a Arc<[u8]>>,
    pub depth: u8,
}

impl Pending<'_> {
    fn crc(&self) -> u32 {
        self.value.map_or(0, |v| value_crc(self.key, v))
    }
}

fn disk_len(p: &Pending<'_>) -> u64 {
    RecordHeader::disk_len(p.value.map_or(0, |v| v.len() as u32))
}

fn depth_byte(opts: PutOptions) -> u8 {
    opts.depth.map_or(DEPTH_UNKNOWN, |d| d.min(254) as u8)
}

/// The write path: owns the write window, the write-combining limit, the value-length limit and
/// the write counters.
pub(super) struct Writer {
    /// Records one caller keeps in flight (the configured queue depth).
    window: usize,
    /// Most bytes of one combined write (`StoreConfig::with_write_combine`).
    combine: u64,
    /// Largest value accepted (bounded by the segment size).
    max_value_len: usize,
    puts: AtomicU64,
    put_bytes: AtomicU64,
    io_errors: AtomicU64,
}

impl Writer {
    pub(super) fn new(window: usize, combine: u64, max_value_len: usize) -> Self {
        Self {
            window,
            combine,
            max_value_len,
            puts: AtomicU64::new(0),
            put_bytes: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
        }
    }

    pub(super) fn max_value_len(&self) -> usize {
        self.max_value_len
    }

    pub(super) fn report(&self, s: &mut Stats) {
        s.puts = self.puts.load(Ordering::Relaxed);
        s.put_bytes = self.put_bytes.load(Ordering::Relaxed);
        s.io_errors += self.io_errors.load(Ordering::Relaxed);
    }

    /// See [`super::Store::batch_put_with`].
    pub(super) fn batch_put(
        &self,
        c: &Core,
        items: &[(&[u8], &[u8])],
        opts: PutOptions,
    ) -> Vec<Result<bool>> {
        let _ops = c.ops.read();
        let mut results: Vec<Result<bool>> = Vec::with_capacity(items.len());
        let mut todo = Vec::new();
        for (i, (key, value)) in items.iter().enumerate() {
            let r = check_key(key).and_then(|_| {
                let ok = !value.is_empty() && value.len() <= self.max_value_len;
                ok.then_some(()).ok_or(Error::ValueLen(value.len()))
            });
            match r {
                Err(e) => results.push(Err(e)),
                Ok(()) if !c.index.begin_put(key) => results.push(Ok(false)),
                Ok(()) => {
                    results.push(Ok(true));
                    let depth = depth_byte(PutOptions {
                        depth: opts.depth.map(|d| d + i as u32),
                    });
                    if let Some(wb) = &c.wb {
                        wb.push(key, value, depth);
                        continue;
                    }
                    todo.push(Pending {
                        item: i,
                        key,
                        value: Some(value),
                        shared: None,
                        depth,
                    });
                }
            }
        }
        self.write_records(c, todo, &mut results);
        results
    }

    /// See [`super::Store::batch_put_shared`].
    pub(super) fn batch_put_shared(
        &self,
        c: &Core,
        items: &[(&[u8], Arc<[u8]>)],
        opts: PutOptions,
    ) -> Vec<Result<bool>> {
        let Some(wb) = &c.wb else {
            let refs: Vec<(&[u8], &[u8])> = items.iter().map(|(k, v)| (*k, &v[..])).collect();
            return self.batch_put(c, &refs, opts);
        };
        let _ops = c.ops.read();
        items
            .iter()
            .enumerate()
            .map(|(i, (key, value))| {
                check_key(key)?;
                if value.is_empty() || value.len() > self.max_value_len {
                    return Err(Error::ValueLen(value.len()));
                }
                if !c.index.begin_put(key) {
                    return Ok(false);
                }
                let depth = depth_byte(PutOptions {
                    depth: opts.depth.map(|d| d + i as u32),
                });
                wb.push_shared(key, value.clone(), depth);
                Ok(true)
            })
            .collect()
    }

    /// Removes `key` with a tombstone record. `Ok(true)` when it was present.
    pub(super) fn remove(&self, c: &Core, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        if let Some(wb) = &c.wb {
            wb.drain();
        }
        let _ops = c.ops.read();
        c.mem.remove(key);
        if c.index.remove(key, None).is_none() {
            return Ok(false);
        }
        self.tombstone(c, key).map(|_| true)
    }

    /// Writes a tombstone for a key whose record failed its checksum, so that the damaged record is
    /// not indexed again at the next open (best effort: a failure is logged).
    pub(super) fn tombstone_corrupt(&self, c: &Core, key: &[u8]) {
        let _ops = c.ops.read();
        if let Err(e) = self.tombstone(c, key) {
            tracing::warn!(error = %e, "could not write a tombstone for a corrupt page");
        }
    }

    /// Appends a tombstone record for `key` (the caller holds `ops`).
    fn tombstone(&self, c: &Core, key: &[u8]) -> Result<bool> {
        let mut results = vec![Ok(true)];
        let todo = vec![Pending {
            item: 0,
            key,
            value: None,
            shared: None,
            depth: DEPTH_UNKNOWN,
        }];
        self.write_records(c, todo, &mut results);
        results.pop().expect("one result")
    }

    /// Writes records, recording each outcome in `results[item]`. Page keys must be claimed.
    pub(super) fn write_records(
        &self,
        c: &Core,
        todo: Vec<Pending<'_>>,
        results: &mut [Result<bool>],
    ) {
        let mut batch: Vec<(Pending<'_>, Slot)> = Vec::new();
        let mut to_seal = Vec::new();
        let mut iter = todo.into_iter();
        let mut next = iter.next();
        while let Some(p) = next.take() {
            let disk_len = RecordHeader::disk_len(p.value.map_or(0, |v| v.len() as u32)) as usize;
            match c.segments.reserve(disk_len, p.key.len(), &mut to_seal) {
                Ok(Reserve::Got(slot)) => {
                    batch.push((p, slot));
                    next = iter.next();
                }
                Ok(Reserve::NeedReclaim) => {
                    self.flush(c, std::mem::take(&mut batch), results, &mut to_seal);
                    if let Err(e) = c.reclaimer.reclaim_one(c) {
                        self.fail(c, p, e, results);
                        for rest in iter.by_ref() {
                            self.fail(c, rest, Error::Full, results);
                        }
                    } else {
                        next = Some(p);
                    }
                }
                Err(e) => {
                    self.fail(c, p, e, results);
                    next = iter.next();
                }
            }
        }
        self.flush(c, batch, results, &mut to_seal);
    }

    fn fail(&self, c: &Core, p: Pending<'_>, e: Error, results: &mut [Result<bool>]) {
        if p.value.is_some() {
            c.index.end_put(p.key, None);
        }
        results[p.item] = Err(e);
    }

    fn flush(
        &self,
        c: &Core,
        batch: Vec<(Pending<'_>, Slot)>,
        results: &mut [Result<bool>],
        to_seal: &mut Vec<u32>,
    ) {
        // Records whose slots follow each other in one segment go out as one write of up to
        // `self.combine` bytes (a batch's slots are usually contiguous: the log is appended in order).
        // Each write is submitted as soon as it is encoded, so the device works on the first
        // records while the CPU copies and checksums the rest; at most `window` writes are in
        // flight, so their (registered) buffers come back to the arena as the window slides.
        let mut pending = std::collections::VecDeque::with_capacity(self.window);
        let mut iter = batch.into_iter().peekable();
        while let Some(first) = iter.next() {
            let seg_size = c.segments.segment_size;
            let mut end = first.1.offset as u64 + disk_len(&first.0);
            let mut group = vec![first];
            while let Some((p, slot)) = iter.peek() {
                let len = disk_len(p);
                let next_to = slot.segment == group[0].1.segment && slot.offset as u64 == end;
                let start = group[0].1.offset as u64;
                if !next_to || end + len - start > self.combine {
                    break;
                }
                end += len;
                group.push(iter.next().expect("peeked"));
            }
            let start = group[0].1.offset as u64;
            let mut buf: IoBuf = c.engine.alloc((end - start) as usize);
            let mut crcs = Vec::with_capacity(group.len());
            for (p, slot) in &group {
                let crc = p.crc();
                let at = (slot.offset as u64 - start) as usize;
                let len = disk_len(p) as usize;
                Self::encode(p, slot, crc, &mut buf[at..at + len]);
                crcs.push(crc);
            }
            let req = IoReq {
                op: Op::Write,
                offset: segment_offset(group[0].1.segment, seg_size) + start,
                buf,
            };
            let done = c.engine.submit(vec![req]).pop().expect("one completion");
            pending.push_back((group, crcs, done));
            if pending.len() >= self.window {
                let (group, crcs, done) = pending.pop_front().expect("non-empty");
                self.publish_group(c, group, crcs, done, results, to_seal);
            }
        }
        for (group, crcs, done) in pending {
            self.publish_group(c, group, crcs, done, results, to_seal);
        }
        for seg in to_seal.drain(..) {
            if let Err(e) = c.segments.seal(seg) {
                tracing::error!(segment = seg, error = %e, "sealing a segment failed");
            }
        }
    }

    fn publish_group(
        &self,
        c: &Core,
        group: Vec<(Pending<'_>, Slot)>,
        crcs: Vec<u32>,
        done: Completion,
        results: &mut [Result<bool>],
        to_seal: &mut Vec<u32>,
    ) {
        let (_, r) = done.wait();
        for ((p, slot), crc) in group.into_iter().zip(crcs) {
            // One write: every record of it shares the outcome.
            let r = match &r {
                Ok(_) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            self.publish(c, (p, slot), crc, r, results, to_seal);
        }
    }

    /// Encodes one record (header block, value, zero padding) into `buf`, its `disk_len` bytes.
    fn encode(p: &Pending<'_>, slot: &Slot, crc: u32, buf: &mut [u8]) {
        let vlen = p.value.map_or(0, |v| v.len());
        if let Some(v) = p.value {
            buf[BLOCK..BLOCK + vlen].copy_from_slice(v);
        }
        // The header block's unused bytes and the value's padding are zero on disk.
        buf[..BLOCK].fill(0);
        buf[BLOCK + vlen..].fill(0);
        let header = RecordHeader {
            key: p.key.to_vec(),
            kind: if p.value.is_some() {
                Kind::Page
            } else {
                Kind::Tombstone
            },
            depth: p.depth,
            value_len: vlen as u32,
            crc,
            seq: slot.seq,
            epoch: slot.epoch,
            segment: slot.segment,
        };
        header.encode_into(&mut buf[..BLOCK]);
    }

    fn publish(
        &self,
        c: &Core,
        (p, slot): (Pending<'_>, Slot),
        crc: u32,
        r: std::io::Result<()>,
        results: &mut [Result<bool>],
        to_seal: &mut Vec<u32>,
    ) {
        let vlen = p.value.map_or(0, |v| v.len() as u32);
        let entry = r.is_ok().then(|| SummaryEntry {
            key: p.key.to_vec(),
            offset: slot.offset,
            value_len: vlen,
            crc,
            seq: slot.seq,
            kind: if p.value.is_some() {
                Kind::Page as u8
            } else {
                Kind::Tombstone as u8
            },
            depth: p.depth,
        });
        if c.segments.complete(slot.segment, entry) {
            to_seal.push(slot.segment);
        }
        match (r, p.value) {
            (Ok(()), Some(v)) => {
                let loc = Location {
                    segment: slot.segment,
                    epoch: slot.epoch,
                    offset: slot.offset,
                    value_len: vlen,
                    crc,
                    seq: slot.seq,
                    depth: p.depth,
                };
                c.index.end_put(p.key, Some(loc));
                match p.shared {
                    Some(a) => c.mem.insert_shared(p.key, a.clone()),
                    None => c.mem.insert(p.key, v),
                }
                self.puts.fetch_add(1, Ordering::Relaxed);
                self.put_bytes.fetch_add(vlen as u64, Ordering::Relaxed);
            }
            (Ok(()), None) => {}
            (Err(e), _) => {
                self.io_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "record write failed");
                self.fail(c, p, Error::Io(e), results);
            }
        }
    }
}
