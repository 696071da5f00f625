//! Staging pools reused across PD transfers. A fresh pool per transfer costs a mapping, a zero fill
//! and cold caches and TLB on both sides: a cross-memory copy between fresh buffers ran at about
//! half the rate of one between reused buffers on the development VM (docs/perf.md, PD). Each side
//! keeps the pools of finished transfers and hands the smallest one that fits to the next transfer.
//!
//! Only a pool whose transfer succeeded comes back (the prefill's after the decode acknowledged
//! its copy, the decode's after it loaded the pages), so nothing can still be reading or writing
//! a pool that is handed out again. One server has one KV geometry; pools are matched by their
//! object size and page count.

use crate::kv::HostKvPool;
use parking_lot::Mutex;

/// Most idle pools kept.
const MAX_POOLS: usize = 4;
/// Most idle bytes kept (larger pools are freed when they come back).
const MAX_BYTES: usize = 1 << 30;

/// The idle staging pools of one side.
#[derive(Default)]
pub struct StagingCache {
    idle: Mutex<Vec<HostKvPool>>,
}

fn bytes(p: &HostKvPool) -> usize {
    2 * p.object_bytes() * p.total_pages()
}

impl StagingCache {
    /// A pool of at least `pages` pages of `object_bytes`-byte objects: an idle one, or one made
    /// by `make` with the page count rounded up to a power of two (so later, longer prompts fit).
    pub fn take(
        &self,
        pages: usize,
        object_bytes: usize,
        make: impl Fn(usize) -> Result<HostKvPool, String>,
    ) -> Result<HostKvPool, String> {
        {
            let mut g = self.idle.lock();
            let best = g
                .iter()
                .enumerate()
                .filter(|(_, p)| p.object_bytes() == object_bytes && p.total_pages() >= pages)
                .min_by_key(|(_, p)| p.total_pages())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(g.swap_remove(i));
            }
        }
        make(pages.max(1).next_power_of_two()).or_else(|_| make(pages))
    }

    /// Keeps `p` for a later transfer (within the limits), or frees it.
    pub fn give(&self, p: HostKvPool) {
        let mut g = self.idle.lock();
        let held: usize = g.iter().map(bytes).sum();
        if held + bytes(&p) > MAX_BYTES {
            return;
        }
        if g.len() >= MAX_POOLS {
            // Keep the larger ones: they fit more prompts.
            let (i, small) = g
                .iter()
                .enumerate()
                .min_by_key(|(_, q)| q.total_pages())
                .map(|(i, q)| (i, q.total_pages()))
                .expect("MAX_POOLS > 0");
            if small >= p.total_pages() {
                return;
            }
            g.swap_remove(i);
        }
        g.push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hicache::MemLayout;

    fn make(pages: usize) -> Result<HostKvPool, String> {
        HostKvPool::new(pages, 4, 2, 8, 4, MemLayout::PageFirst)
    }

    #[test]
    fn pools_come_back_smallest_fit_first() {
        let c = StagingCache::default();
        let a = c.take(3, 256, make).unwrap();
        assert_eq!(a.total_pages(), 4, "rounded up to a power of two");
        let b = c.take(9, 256, make).unwrap();
        assert_eq!(b.total_pages(), 16);
        let (pa, pb) = (a.region().0, b.region().0);
        c.give(a);
        c.give(b);
        let x = c.take(2, 256, make).unwrap();
        assert_eq!(x.region().0, pa, "the smallest pool that fits");
        let y = c.take(5, 256, make).unwrap();
        assert_eq!(y.region().0, pb);
        // Another object size never matches.
        c.give(x);
        assert_eq!(c.take(2, 512, make).unwrap().total_pages(), 2);
        drop(y);
    }
}
