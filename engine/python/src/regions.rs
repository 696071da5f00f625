//! The buffers a store has registered, and the check every zero-copy call makes against them.
//!
//! Mooncake's zero-copy calls take raw addresses. Strata reads or writes an address range only
//! when it lies entirely inside one registered buffer; any other range gets Mooncake's
//! `-600 INVALID_PARAMS` for that key and its memory is never touched. That turns a wrong pointer
//! or size from a segfault into an error code. A range inside a buffer the caller has freed
//! without unregistering is the caller's bug, as with Mooncake.
//!
//! Invariant: the regions are disjoint (an overlapping registration is refused, as Mooncake's
//! transfer engine refuses it) and kept sorted by start address.

/// Registered `(start, len)` ranges, disjoint, sorted by start.
#[derive(Debug, Default)]
pub struct Regions {
    list: Vec<(usize, usize)>,
}

impl Regions {
    /// Adds `ptr..ptr+len`. False when it is empty, wraps around, or overlaps a registered one.
    pub fn add(&mut self, ptr: usize, len: usize) -> bool {
        let Some(end) = ptr.checked_add(len) else {
            return false;
        };
        if ptr == 0 || len == 0 {
            return false;
        }
        let at = self.list.partition_point(|&(s, _)| s < ptr);
        let overlaps_prev = at > 0 && {
            let (s, l) = self.list[at - 1];
            s + l > ptr
        };
        let overlaps_next = at < self.list.len() && self.list[at].0 < end;
        if overlaps_prev || overlaps_next {
            return false;
        }
        self.list.insert(at, (ptr, len));
        true
    }

    /// Removes the region starting at `ptr`. False when none starts there.
    pub fn remove(&mut self, ptr: usize) -> bool {
        match self.list.binary_search_by_key(&ptr, |&(s, _)| s) {
            Ok(i) => {
                self.list.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether `ptr..ptr+len` (non-empty) lies inside one registered region.
    pub fn covers(&self, ptr: usize, len: usize) -> bool {
        let Some(end) = ptr.checked_add(len) else {
            return false;
        };
        if len == 0 {
            return false;
        }
        let at = self.list.partition_point(|&(s, _)| s <= ptr);
        at > 0 && {
            let (s, l) = self.list[at - 1];
            end <= s + l
        }
    }

    /// Every region, for the client's own bookkeeping.
    pub fn all(&self) -> &[(usize, usize)] {
        &self.list
    }
}
