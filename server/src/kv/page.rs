//! Page accounting: a free list of page ids and [`Page`], the RAII handle of one allocated page.
//!
//! Invariant: every page id is either in the free list or owned by exactly one live [`Page`]
//! (`free + live == total`). Dropping a `Page` returns its id, so a request that is dropped on any
//! path — finished, aborted, retracted, its client gone — cannot leak KV memory. Allocation is
//! all-or-nothing and O(n) in the pages asked for.

use parking_lot::Mutex;
use std::sync::Arc;

/// Index of a page in a pool.
pub type PageId = u32;

/// The free pages of one pool.
#[derive(Debug)]
pub struct FreeList {
    free: Mutex<Vec<PageId>>,
    total: usize,
}

impl FreeList {
    /// A list with pages `0..total` free.
    pub fn new(total: usize) -> Arc<Self> {
        // Reverse so that pages come out in ascending order (easier to read in logs).
        Arc::new(FreeList {
            free: Mutex::new((0..total as PageId).rev().collect()),
            total,
        })
    }

    /// Takes `n` pages, or none if fewer are free.
    pub fn alloc(self: &Arc<Self>, n: usize) -> Option<Vec<Page>> {
        let mut free = self.free.lock();
        if free.len() < n {
            return None;
        }
        let at = free.len() - n;
        Some(
            free.drain(at..)
                .rev()
                .map(|id| Page {
                    id,
                    list: Arc::clone(self),
                })
                .collect(),
        )
    }

    /// Pages currently free.
    pub fn free_count(&self) -> usize {
        self.free.lock().len()
    }

    /// Pages in the pool.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// One allocated page; returns itself to its free list when dropped.
#[derive(Debug)]
pub struct Page {
    id: PageId,
    list: Arc<FreeList>,
}

impl Page {
    pub fn id(&self) -> PageId {
        self.id
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.list.free.lock().push(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_return_on_drop_and_alloc_is_all_or_nothing() {
        let l = FreeList::new(4);
        let a = l.alloc(3).unwrap();
        assert_eq!(a.iter().map(Page::id).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(l.alloc(2).is_none());
        assert_eq!(l.free_count(), 1);
        drop(a);
        assert_eq!(l.free_count(), 4);
    }
}
