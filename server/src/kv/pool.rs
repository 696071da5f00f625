//! KV pools: where page contents live.
//!
//! [`KvPool`] is the seam for the hierarchical cache: the device pool (L1) here, a host pool (L2,
//! page-first layout, pinned when a GPU is present) and the PD transfer buffers later. All share the
//! page accounting of [`FreeList`]; they differ in where the values are and in layout. The device
//! pool's contents are the model runner's KV cache ([`ModelRunner::Kv`]): layer-first, for each
//! layer one K and one V buffer of `pages × page_size × kv_dim` values (f32 on the CPU runner,
//! bf16 on the CUDA runner).

use super::page::{FreeList, Page};
use crate::model::{ModelError, ModelRunner};
use std::sync::Arc;

/// Memory tier of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryTier {
    /// Memory the compute backend reads directly (GPU memory, or host memory on the CPU backend).
    Device,
    /// Host memory used as a second-level cache.
    Host,
}

/// A pool of KV pages.
pub trait KvPool: Send {
    /// Tokens per page.
    fn page_size(&self) -> usize;
    /// Where the pages live.
    fn tier(&self) -> MemoryTier;
    /// The page accounting (allocate with [`FreeList::alloc`]).
    fn pages(&self) -> &Arc<FreeList>;
    /// Bytes of one page (all layers, K and V).
    fn page_bytes(&self) -> usize;
    /// Allocates `n` pages or none.
    fn alloc(&self, n: usize) -> Option<Vec<Page>> {
        self.pages().alloc(n)
    }
    /// Free pages.
    fn free_pages(&self) -> usize {
        self.pages().free_count()
    }
    /// Pages in the pool.
    fn total_pages(&self) -> usize {
        self.pages().total()
    }
}

/// The L1 pool: pages in the compute device's memory, read by attention.
pub struct DeviceKvPool<R: ModelRunner> {
    pub buffers: R::Kv,
    page_size: usize,
    list: Arc<FreeList>,
    page_bytes: usize,
}

impl<R: ModelRunner> DeviceKvPool<R> {
    /// Allocates `num_pages` pages of `page_size` tokens for `model`.
    pub fn new(model: &R, num_pages: usize, page_size: usize) -> Result<Self, ModelError> {
        Ok(DeviceKvPool {
            buffers: model.new_kv(num_pages, page_size)?,
            page_size,
            list: FreeList::new(num_pages),
            page_bytes: model.kv_bytes_per_token() * page_size,
        })
    }
}

impl<R: ModelRunner> KvPool for DeviceKvPool<R> {
    fn page_size(&self) -> usize {
        self.page_size
    }
    fn tier(&self) -> MemoryTier {
        MemoryTier::Device
    }
    fn pages(&self) -> &Arc<FreeList> {
        &self.list
    }
    fn page_bytes(&self) -> usize {
        self.page_bytes
    }
}
