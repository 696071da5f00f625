//! KV pools: where page contents live.
//!
//! [`KvPool`] is the seam for the hierarchical cache: the device pool (L1) here, a host pool (L2,
//! page-first layout, pinned when a GPU is present) and the PD transfer buffers later. All share the
//! page accounting of [`FreeList`]; they differ in where the values are and in layout. The device
//! pool's contents are the model runner's KV cache ([`ModelRunner::Kv`]): layer-first, for each
//! layer one K and one V buffer of `pages × page_size × kv_dim` values (f32 on the CPU runner,
//! bf16 on the CUDA runner).

use super::host::HostKvPool;
use super::page::{FreeList, Page, PageId};
use crate::model::{KvBuffers, ModelError, ModelRunner};
use std::sync::Arc;
use strata_kernels::{Backend, KernelError};

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

/// Copies device pages `dev[i]` of an f32 backend's KV cache into host pages `host[i]` (all layers,
/// K and V), converting the layer-first device layout into the host pool's page-first layout.
pub fn save_pages<B: Backend>(
    backend: &B,
    kv: &KvBuffers<B>,
    dev: &[PageId],
    host_pool: &HostKvPool,
    host: &[PageId],
) -> Result<(), KernelError> {
    assert_eq!(dev.len(), host.len());
    let (ps, kvd) = (kv.page_size, host_pool.kv_dim);
    let mut tmp = vec![0f32; ps * kvd];
    for (&d, &h) in dev.iter().zip(host) {
        for (v, bufs) in [(false, &kv.k), (true, &kv.v)] {
            // SAFETY: the caller owns host page `h` exclusively (freshly allocated, no I/O).
            let obj = unsafe { host_pool.object_mut(h, v) };
            for (l, buf) in bufs.iter().enumerate() {
                backend.read_range(buf, d as usize * ps * kvd, &mut tmp)?;
                for t in 0..ps {
                    let at = host_pool.offset(t, l);
                    let row = &tmp[t * kvd..(t + 1) * kvd];
                    for (dst, x) in obj[at..at + kvd * 4].chunks_exact_mut(4).zip(row) {
                        dst.copy_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Copies host pages `host[i]` into device pages `dev[i]` (the inverse of [`save_pages`]).
pub fn load_pages<B: Backend>(
    backend: &B,
    kv: &mut KvBuffers<B>,
    host_pool: &HostKvPool,
    host: &[PageId],
    dev: &[PageId],
) -> Result<(), KernelError> {
    assert_eq!(dev.len(), host.len());
    let (ps, kvd) = (kv.page_size, host_pool.kv_dim);
    let mut tmp = vec![0f32; ps * kvd];
    for (&h, &d) in host.iter().zip(dev) {
        for v in [false, true] {
            // SAFETY: host page `h` is locked in the tree; nothing writes it meanwhile.
            let obj = unsafe { host_pool.object(h, v) };
            let bufs = if v { &mut kv.v } else { &mut kv.k };
            for (l, buf) in bufs.iter_mut().enumerate() {
                for t in 0..ps {
                    let at = host_pool.offset(t, l);
                    let row = &mut tmp[t * kvd..(t + 1) * kvd];
                    for (x, src) in row.iter_mut().zip(obj[at..at + kvd * 4].chunks_exact(4)) {
                        *x = f32::from_le_bytes(src.try_into().expect("4 bytes"));
                    }
                }
                backend.write_range(buf, d as usize * ps * kvd, &tmp)?;
            }
        }
    }
    Ok(())
}
