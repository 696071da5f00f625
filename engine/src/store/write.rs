//! The write path: puts and tombstones, singly or in batches.
//!
//! A batch claims its keys in the index (so concurrent puts of one key write it once), reserves a
//! slot per record, submits every write at once (queue depth from a single caller), then publishes
//! the successful ones. Before it waits for a reclaim it flushes the slots it already holds, so a
//! reclaimer never waits on writes that cannot start.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{check_key, PutOptions, StoreInner};
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

impl StoreInner {
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
        let _ops = self.ops.read();
        let mut results: Vec<Result<bool>> = Vec::with_capacity(items.len());
        let mut todo = Vec::new();
        for (i, (key, value)) in items.iter().enumerate() {
            let r = check_key(key).and_then(|_| {
                let ok = !value.is_empty() && value.len() <= self.max_value_len;
                ok.then_some(()).ok_or(Error::ValueLen(value.len()))
            });
            match r {
                Err(e) => results.push(Err(e)),
                Ok(()) if !self.index.begin_put(key) => results.push(Ok(false)),
                Ok(()) => {
                    results.push(Ok(true));
                    let depth = depth_byte(PutOptions {
                        depth: opts.depth.map(|d| d + i as u32),
                    });
                    if let Some(wb) = &self.wb {
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
        self.write_records(todo, &mut results);
        results
    }

    /// [`Store::batch_put_with`] of values held as shared buffers: with a write-back buffer the
    /// buffer keeps them as they are (no copy); otherwise they are written like any other value.
    pub fn batch_put_shared(
        &self,
        items: &[(&[u8], Arc<[u8]>)],
        opts: PutOptions,
    ) -> Vec<Result<bool>> {
        let Some(wb) = &self.wb else {
            let refs: Vec<(&[u8], &[u8])> = items.iter().map(|(k, v)| (*k, &v[..])).collect();
            return self.batch_put_with(&refs, opts);
        };
        let _ops = self.ops.read();
        items
            .iter()
            .enumerate()
            .map(|(i, (key, value))| {
                check_key(key)?;
                if value.is_empty() || value.len() > self.max_value_len {
                    return Err(Error::ValueLen(value.len()));
                }
                if !self.index.begin_put(key) {
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

    /// Whether puts are acknowledged from a DRAM write-back buffer.
    pub fn has_write_back(&self) -> bool {
        self.wb.is_some()
    }

    /// Removes `key`. `Ok(true)` when it was present. A tombstone record makes the removal durable.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        if let Some(wb) = &self.wb {
            wb.drain();
        }
        let _ops = self.ops.read();
        self.mem.remove(key);
        if self.index.remove(key, None).is_none() {
            return Ok(false);
        }
        let mut results = vec![Ok(true)];
        let todo = vec![Pending {
            item: 0,
            key,
            value: None,
            shared: None,
            depth: DEPTH_UNKNOWN,
        }];
        self.write_records(todo, &mut results);
        results.pop().expect("one result")
    }

    /// Writes a tombstone for a key whose record failed its checksum, so that the damaged record is
    /// not indexed again at the next open (best effort: a failure is logged).
    pub(crate) fn tombstone_corrupt(&self, key: &[u8]) {
        let _ops = self.ops.read();
        let mut results = vec![Ok(true)];
        let todo = vec![Pending {
            item: 0,
            key,
            value: None,
            shared: None,
            depth: DEPTH_UNKNOWN,
        }];
        self.write_records(todo, &mut results);
        if let Some(Err(e)) = results.pop() {
            tracing::warn!(error = %e, "could not write a tombstone for a corrupt page");
        }
    }

    /// Writes records, recording each outcome in `results[item]`. Page keys must be claimed.
    pub(crate) fn write_records(&self, todo: Vec<Pending<'_>>, results: &mut [Result<bool>]) {
        let mut batch: Vec<(Pending<'_>, Slot)> = Vec::new();
        let mut to_seal = Vec::new();
        let mut iter = todo.into_iter();
        let mut next = iter.next();
        while let Some(p) = next.take() {
            let disk_len = RecordHeader::disk_len(p.value.map_or(0, |v| v.len() as u32)) as usize;
            match self.segments.reserve(disk_len, p.key.len(), &mut to_seal) {
                Ok(Reserve::Got(slot)) => {
                    batch.push((p, slot));
                    next = iter.next();
                }
                Ok(Reserve::NeedReclaim) => {
                    self.flush(std::mem::take(&mut batch), results, &mut to_seal);
                    if let Err(e) = self.reclaim_one() {
                        self.fail(p, e, results);
                        for rest in iter.by_ref() {
                            self.fail(rest, Error::Full, results);
                        }
                    } else {
                        next = Some(p);
                    }
                }
                Err(e) => {
                    self.fail(p, e, results);
                    next = iter.next();
                }
            }
        }
        self.flush(batch, results, &mut to_seal);
    }

    fn fail(&self, p: Pending<'_>, e: Error, results: &mut [Result<bool>]) {
        if p.value.is_some() {
            self.index.end_put(p.key, None);
        }
        results[p.item] = Err(e);
    }

    fn flush(
        &self,
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
            let seg_size = self.segments.segment_size;
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
            let mut buf: IoBuf = self.engine.alloc((end - start) as usize);
            let mut crcs = Vec::with_capacity(group.len());
            for (p, slot) in &group {
                let crc = p.crc();
                let at = (slot.offset as u64 - start) as usize;
                let len = disk_len(p) as usize;
                self.encode(p, slot, crc, &mut buf[at..at + len]);
                crcs.push(crc);
            }
            let req = IoReq {
                op: Op::Write,
                offset: segment_offset(group[0].1.segment, seg_size) + start,
                buf,
            };
            let done = self.engine.submit(vec![req]).pop().expect("one completion");
            pending.push_back((group, crcs, done));
            if pending.len() >= self.window {
                let (group, crcs, done) = pending.pop_front().expect("non-empty");
                self.publish_group(group, crcs, done, results, to_seal);
            }
        }
        for (group, crcs, done) in pending {
            self.publish_group(group, crcs, done, results, to_seal);
        }
        for seg in to_seal.drain(..) {
            if let Err(e) = self.segments.seal(seg) {
                tracing::error!(segment = seg, error = %e, "sealing a segment failed");
            }
        }
    }

    fn publish_group(
        &self,
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
            self.publish(p, slot, crc, r, results, to_seal);
        }
    }

    /// Encodes one record (header block, value, zero padding) into `buf`, its `disk_len` bytes.
    fn encode(&self, p: &Pending<'_>, slot: &Slot, crc: u32, buf: &mut [u8]) {
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
        p: Pending<'_>,
        slot: Slot,
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
        if self.segments.complete(slot.segment, entry) {
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
                self.index.end_put(p.key, Some(loc));
                match p.shared {
                    Some(a) => self.mem.insert_shared(p.key, a.clone()),
                    None => self.mem.insert(p.key, v),
                }
                self.counters.puts.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .put_bytes
                    .fetch_add(vlen as u64, Ordering::Relaxed);
            }
            (Ok(()), None) => {}
            (Err(e), _) => {
                self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "record write failed");
                self.fail(p, Error::Io(e), results);
            }
        }
    }
}

impl StoreInner {
    /// The write-back flusher: appends buffered pages to the log in batches until stopped and drained.
    pub(crate) fn flush_loop(&self) {
        let wb = self
            .wb
            .as_ref()
            .expect("flusher runs only with a write-back buffer");
        loop {
            // Small batches (8 pages / 1 MiB) with a yield between them: the flusher runs beside request threads
            // (at lower priority), and short bursts keep it from holding a core a request is
            // waiting for (single-key put/get tail latency on a 2-vCPU node).
            let batch = wb.take(8, 1 << 20);
            if batch.is_empty() {
                return;
            }
            let todo = batch
                .iter()
                .enumerate()
                .map(|(item, b)| Pending {
                    item,
                    key: &b.key,
                    value: Some(&b.value),
                    shared: Some(&b.value),
                    depth: b.depth,
                })
                .collect();
            let mut results: Vec<Result<bool>> = batch.iter().map(|_| Ok(true)).collect();
            {
                let _ops = self.ops.read();
                self.write_records(todo, &mut results);
            }
            let mut failed = 0;
            for r in &results {
                if let Err(e) = r {
                    failed += 1;
                    tracing::warn!(error = %e, "a buffered page could not be written; it is dropped");
                }
            }
            wb.done(&batch, failed);
            std::thread::yield_now();
        }
    }
}
