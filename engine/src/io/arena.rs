//! A registered-memory arena with a buddy allocator over 4 KiB pages.
//!
//! io_uring rings register the whole arena once as buffer 0; any 4 KiB-aligned slice of it can then be
//! used with `ReadFixed`/`WriteFixed`, which skips the per-I/O page pinning of plain reads and writes.
//! Blocks are powers of two pages; freeing merges buddies. Allocation and free are O(orders).

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use super::buf::AlignedBuf;
use super::iobuf::IoBuf;
use crate::ALIGN;

/// Registered memory shared by an engine's rings.
pub struct Arena {
    mem: AlignedBuf,
    max_order: u8,
    free: Mutex<Vec<HashSet<usize>>>,
}

// SAFETY: the arena memory is only reached through `IoBuf`s that own disjoint blocks.
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena of `bytes` rounded down to a power of two pages (at least one page).
    pub fn new(bytes: usize) -> Arc<Self> {
        let pages = (bytes / ALIGN).max(1);
        let max_order = (usize::BITS - 1 - pages.leading_zeros()) as u8;
        let mem = AlignedBuf::new(ALIGN << max_order);
        let mut free = vec![HashSet::new(); max_order as usize + 1];
        free[max_order as usize].insert(0);
        Arc::new(Self {
            mem,
            max_order,
            free: Mutex::new(free),
        })
    }

    pub fn base(&self) -> *const u8 {
        self.mem.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.mem.len()
    }

    pub(crate) fn ptr_at(&self, offset: usize) -> *mut u8 {
        // SAFETY: offsets handed out by `alloc` lie inside the arena.
        unsafe { (self.mem.as_ptr() as *mut u8).add(offset) }
    }

    /// A block of at least `len` bytes, or `None` when the arena has no room. The contents are
    /// whatever the previous user left (initialised bytes; callers overwrite what they use).
    pub fn alloc(self: &Arc<Self>, len: usize) -> Option<IoBuf> {
        let pages = len.div_ceil(ALIGN).max(1);
        let order = (usize::BITS - (pages - 1).leading_zeros()) as u8;
        let order = if pages == 1 { 0 } else { order };
        if order > self.max_order {
            return None;
        }
        let mut free = self.free.lock();
        let mut o = order;
        while (o as usize) < free.len() && free[o as usize].is_empty() {
            o += 1;
        }
        if o > self.max_order {
            return None;
        }
        let page = *free[o as usize].iter().next().expect("non-empty");
        free[o as usize].remove(&page);
        while o > order {
            o -= 1;
            free[o as usize].insert(page + (1 << o));
        }
        drop(free);
        let offset = page * ALIGN;
        Some(IoBuf::from_arena(
            self.clone(),
            offset,
            pages * ALIGN,
            order,
        ))
    }

    pub(crate) fn free(&self, offset: usize, order: u8) {
        let mut free = self.free.lock();
        let mut page = offset / ALIGN;
        let mut o = order;
        while o < self.max_order {
            let buddy = page ^ (1 << o);
            if !free[o as usize].remove(&buddy) {
                break;
            }
            page = page.min(buddy);
            o += 1;
        }
        free[o as usize].insert(page);
    }

    /// Free bytes (for tests).
    #[cfg(test)]
    pub fn free_bytes(&self) -> usize {
        let free = self.free.lock();
        free.iter()
            .enumerate()
            .map(|(o, s)| s.len() * (ALIGN << o))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn alloc_free_merges_back() {
        let seed = rand::random::<u64>();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let a = Arena::new(4 << 20);
        let total = a.free_bytes();
        let mut live = Vec::new();
        for _ in 0..2000 {
            if rng.random_bool(0.6) {
                let len = rng.random_range(1..300_000);
                if let Some(mut b) = a.alloc(len) {
                    assert!(b.len() >= len);
                    assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
                    b[0] = 1;
                    live.push(b);
                }
            } else if !live.is_empty() {
                let i = rng.random_range(0..live.len());
                live.swap_remove(i);
            }
        }
        drop(live);
        assert_eq!(a.free_bytes(), total);
        assert!(a.alloc(4 << 20).is_some());
    }
}
