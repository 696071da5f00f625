//! The host KV pool (L2): pages in ordinary host memory, page-first so that each page's K and V are
//! each one contiguous run of bytes — the unit the L3 store reads into and writes from.
//!
//! Layout: a K region then a V region, each `pages × page_bytes_half` bytes; page `p`'s K object is
//! `k[p * half .. (p + 1) * half]`. Within an object the order is given by [`MemLayout`]
//! (`[token][layer][kv_dim]` for page_first, `[layer][token][kv_dim]` for page_first_direct) in the
//! device pool's element type.
//!
//! Memory: one anonymous mapping advised as transparent huge pages and faulted in at start (the
//! engine's [`AlignedBuf`]), the host-memory analogue of SGLang's pinned pool: an L3 read lands in
//! resident memory with few TLB misses instead of faulting 4 KiB pages on first touch.
//!
//! Sharing: the scheduler thread writes a page only while it owns the page's [`Page`] handle and no
//! I/O on it is in flight; the L3 I/O thread reads or writes a page only between the scheduler
//! handing it the page (locked in the tree or held by a prefetch) and the I/O's completion. That
//! protocol, not the type system, keeps accesses disjoint, which is why the bytes are reached
//! through raw pointers.

use super::page::{FreeList, Page, PageId};
use crate::hicache::MemLayout;
use std::sync::Arc;
use strata_engine::AlignedBuf;

/// The L2 pool.
pub struct HostKvPool {
    /// Owns the memory `ptr` points into.
    _mem: AlignedBuf,
    ptr: *mut u8,
    len: usize,
    half: usize,
    pages: usize,
    list: Arc<FreeList>,
    pub layout: MemLayout,
    pub page_size: usize,
    pub layers: usize,
    /// Elements per token per layer (kv_heads × head_dim).
    pub kv_dim: usize,
    /// Bytes per element.
    pub elem: usize,
}

// SAFETY: the pool owns its allocation; concurrent access follows the page protocol above.
unsafe impl Send for HostKvPool {}
// SAFETY: as above.
unsafe impl Sync for HostKvPool {}

impl HostKvPool {
    /// A pool of `pages` pages; fails (instead of being OOM-killed later) when the memory cannot be
    /// reserved.
    pub fn new(
        pages: usize,
        page_size: usize,
        layers: usize,
        kv_dim: usize,
        elem: usize,
        layout: MemLayout,
    ) -> Result<Self, String> {
        let half = page_size * layers * kv_dim * elem;
        let len = 2 * half * pages;
        // Fail with a message rather than abort inside the allocator.
        let mut mem = AlignedBuf::try_new(len)
            .ok_or_else(|| format!("cannot allocate a {} MiB host KV pool", len >> 20))?;
        let ptr = mem.as_mut_ptr();
        Ok(HostKvPool {
            _mem: mem,
            ptr,
            len,
            half,
            pages,
            list: FreeList::new(pages),
            layout,
            page_size,
            layers,
            kv_dim,
            elem,
        })
    }

    /// Allocates `n` pages or none.
    pub fn alloc(&self, n: usize) -> Option<Vec<Page>> {
        self.list.alloc(n)
    }

    pub fn free_pages(&self) -> usize {
        self.list.free_count()
    }

    pub fn total_pages(&self) -> usize {
        self.pages
    }

    /// Bytes of one page's K (or V) object.
    pub fn object_bytes(&self) -> usize {
        self.half
    }

    /// The whole pool's memory (to register with the L3 client).
    pub fn region(&self) -> (*mut u8, usize) {
        (self.ptr, self.len)
    }

    /// Address of page `p`'s K (`v = false`) or V object.
    pub fn object_ptr(&self, p: PageId, v: bool) -> *mut u8 {
        let p = p as usize;
        assert!(p < self.pages, "host page {p} out of range");
        let off = if v { self.pages * self.half } else { 0 } + p * self.half;
        // SAFETY: `off + half <= len` by the assertion above.
        unsafe { self.ptr.add(off) }
    }

    /// Byte offset, inside a K or V object, of token `t` of layer `l`.
    pub fn offset(&self, t: usize, l: usize) -> usize {
        let row = match self.layout {
            MemLayout::PageFirst => t * self.layers + l,
            MemLayout::PageFirstDirect => l * self.page_size + t,
        };
        row * self.kv_dim * self.elem
    }

    /// Page `p`'s K or V object as bytes.
    ///
    /// # Safety
    /// No write to the same page may run concurrently (see the module's sharing protocol).
    pub unsafe fn object(&self, p: PageId, v: bool) -> &[u8] {
        // SAFETY: in bounds (see `object_ptr`); the caller rules out concurrent writes.
        unsafe { std::slice::from_raw_parts(self.object_ptr(p, v), self.half) }
    }

    /// Page `p`'s K or V object, writable.
    ///
    /// # Safety
    /// The caller must have exclusive access to the page (see the module's sharing protocol).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn object_mut(&self, p: PageId, v: bool) -> &mut [u8] {
        // SAFETY: in bounds (see `object_ptr`); the caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.object_ptr(p, v), self.half) }
    }
}

impl std::fmt::Debug for HostKvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKvPool")
            .field("pages", &self.pages)
            .field("object_bytes", &self.half)
            .field("layout", &self.layout)
            .finish()
    }
}
