//! Reclaim: when no segment is free, the oldest sealed segment (FIFO by seal order) is freed whole.
//!
//! Before it goes, its live pages that are worth keeping — heads of prefixes (depth 0 or 1) first, then
//! pages read since they were written — are copied out, up to a quarter of a segment, and appended
//! again (new sequence numbers, same bytes). The rest become misses. Eviction thus removes the tails of
//! prefixes before their heads, and every reclaim frees at least three quarters of a segment.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::write::Pending;
use super::{Core, Stats};
use crate::format::record::Kind;
use crate::log::segments::SegState;
use crate::{Error, Result};

/// The reclaimer: owns the reclaim lock (one reclaim at a time) and its counters. It runs on the
/// writing thread that found no free segment.
#[derive(Default)]
pub(super) struct Reclaimer {
    lock: Mutex<()>,
    reclaimed_segments: AtomicU64,
    relocated_pages: AtomicU64,
}

impl Reclaimer {
    pub(super) fn report(&self, s: &mut Stats) {
        s.reclaimed_segments = self.reclaimed_segments.load(Ordering::Relaxed);
        s.relocated_pages = self.relocated_pages.load(Ordering::Relaxed);
    }

    /// Frees one segment (or returns at once if another thread already did).
    pub(super) fn reclaim_one(&self, c: &Core) -> Result<()> {
        let relocate = {
            let _g = self.lock.lock();
            if !c.segments.alloc.lock().free.is_empty() {
                return Ok(());
            }
            let victim = pick_victim(c)?;
            let seg = &c.segments.segs[victim as usize];
            let epoch = seg.epoch.load(Ordering::SeqCst);
            let entries = std::mem::take(&mut seg.meta.lock().entries);
            let budget = c.segments.segment_size as usize / 4;
            let mut live: Vec<_> = entries
                .into_iter()
                .filter(|e| e.kind == Kind::Page as u8)
                .filter_map(|e| {
                    let loc = c.index.get(&e.key, false)?;
                    (loc.segment == victim && loc.epoch == epoch && loc.seq == e.seq).then_some(e)
                })
                .collect();
            // Heads of prefixes first, then hot pages; within each, shallower first.
            live.sort_by_key(|e| (e.depth > 1, !c.index.is_hot(&e.key), e.depth));
            let mut keep = Vec::new();
            let mut used = 0usize;
            for e in &live {
                let worth = e.depth <= 1 || c.index.is_hot(&e.key);
                if !worth || used + e.value_len as usize > budget {
                    continue;
                }
                if let Ok(Some(v)) = c.reader.batch_get(c, &[&e.key]).pop().expect("one result") {
                    used += v.len();
                    keep.push((e.key.clone(), v, e.depth));
                }
            }
            for e in &live {
                c.index.remove(&e.key, Some(e.seq));
                c.mem.remove(&e.key);
            }
            seg.epoch.store(0, Ordering::SeqCst);
            while seg.readers.load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
            seg.meta.lock().state = SegState::Free;
            c.segments.alloc.lock().free.push_back(victim);
            self.reclaimed_segments.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                segment = victim,
                live = live.len(),
                kept = keep.len(),
                "reclaimed segment"
            );
            keep
        };
        let mut todo = Vec::new();
        for (i, (key, value, depth)) in relocate.iter().enumerate() {
            if c.index.begin_put(key) {
                todo.push(Pending {
                    item: i,
                    key,
                    value: Some(value),
                    shared: None,
                    depth: *depth,
                });
            }
        }
        let mut results: Vec<Result<bool>> = relocate.iter().map(|_| Ok(true)).collect();
        let n = todo.len() as u64;
        c.writer.write_records(c, todo, &mut results);
        self.relocated_pages.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// The oldest segment in seal order, waiting while its last writes finish (strict FIFO keeps
/// every tombstone younger than the records it shadows). Callers hold no unsubmitted slots, so
/// those writes always complete.
fn pick_victim(c: &Core) -> Result<u32> {
    loop {
        let mut a = c.segments.alloc.lock();
        let Some(&front) = a.fifo.front() else {
            return Err(Error::Full);
        };
        if c.segments.segs[front as usize].meta.lock().state == SegState::Sealed {
            a.fifo.pop_front();
            return Ok(front);
        }
        drop(a);
        std::thread::yield_now();
    }
}
