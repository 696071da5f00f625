//! The CUDA runner's paged KV cache: one bf16 allocation laid out `[layer][k|v][slot][kv_dim]`
//! (slot = page * page_size + offset), with per-layer K and V views for the kernels (the GPU
//! direct path's `PageLayout`). Whole pages move to and from the hierarchical cache's host pool
//! (`HostKvPool`, bf16 elements, page_first or page_first_direct):
//!
//! - the HiCache L2 pool is attached once ([`CudaKv::attach_host`]): page-locked in place and
//!   served by `HostKvCopy` on the copy stream (the `kv_host_copy` kernel, or one async memcpy
//!   per run with `--hicache-io-backend direct`). A load is queued layer by layer and left
//!   pending: the next forward waits for layer l's event just before layer l's attention, so
//!   later layers cross the bus while earlier ones compute. A store waits for the compute
//!   stream, then for its own copy.
//! - any other host pool (the PD staging buffers, not page-locked) is staged through a device
//!   buffer of just the listed pages, laid out like the host pool: the same kernel gathers (or scatters, layer by layer,
//!   pending like a load from the L2) and each page's K and V object crosses in one plain copy.

use crate::kv::{HostKvPool, PageId};
use std::sync::Arc;
use strata_kernels::cuda::{
    CudaError, DTensor, DType, GpuContext, HostIo, HostKvCopy, HostKvGeometry, HostRegion,
    LayerEvents,
};

/// The attached L2 pool: its registration and the mover (field order = drop order: the mover's
/// kernel handle before the region's unregistration).
struct Attached {
    copy: HostKvCopy,
    region: HostRegion,
}

/// The paged KV cache on one GPU.
pub struct CudaKv {
    pub(super) pool: DTensor,
    pub(super) k: Vec<DTensor>,
    pub(super) v: Vec<DTensor>,
    pub(super) page_size: usize,
    pub(super) num_pages: usize,
    /// Layer events of the last queued load (waited for by the next forward).
    pub(super) pending: Option<LayerEvents>,
    attached: Option<Attached>,
    ctx: Arc<GpuContext>,
}

impl CudaKv {
    /// Allocates and zeroes a pool of `num_pages` pages for `layers` layers of `kv_dim` values.
    pub fn new(
        ctx: &Arc<GpuContext>,
        layers: usize,
        kv_dim: usize,
        num_pages: usize,
        page_size: usize,
    ) -> Result<Self, CudaError> {
        let slots = num_pages * page_size;
        // cuMemAlloc, not the stream-ordered pool: a PD prefill exports it with CUDA IPC.
        let pool = ctx.alloc_exportable(DType::Bf16, &[layers * 2 * slots, kv_dim])?;
        ctx.memset(&pool, 0)?;
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for l in 0..layers {
            k.push(pool.view(2 * l * slots * kv_dim, &[slots, kv_dim])?);
            v.push(pool.view((2 * l + 1) * slots * kv_dim, &[slots, kv_dim])?);
        }
        Ok(CudaKv {
            ctx: ctx.clone(),
            pool,
            k,
            v,
            page_size,
            num_pages,
            pending: None,
            attached: None,
        })
    }

    /// The whole pool, `[layer][k|v][page][page_size x kv_dim]` bf16 (benchmarks check bytes in
    /// it; the runner goes through the per-layer views).
    pub fn tensor(&self) -> &DTensor {
        &self.pool
    }

    /// The GPU this pool lives on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Page-locks the HiCache host pool in place and moves its pages on the copy stream from
    /// now on (`io`: the kernel or one async memcpy per run).
    pub fn attach_host(&mut self, host: &HostKvPool, io: HostIo) -> Result<(), CudaError> {
        self.check_host(host, &[], &[])?;
        let copy = HostKvCopy::new(self.ctx.clone(), self.geometry(host), io)?;
        let (ptr, len) = host.region();
        // SAFETY: the host pool outlives the device pool's use of it: both live until the
        // scheduler stops, and `Drop for CudaKv` drops this registration first (it synchronises
        // the device before unregistering).
        let region = unsafe { HostRegion::register(&self.ctx, ptr, len)? };
        self.attached = Some(Attached { copy, region });
        Ok(())
    }

    /// The attached mover when `host` is the attached pool.
    fn mover(&self, host: &HostKvPool) -> Option<&Attached> {
        let (ptr, len) = host.region();
        self.attached.as_ref().filter(|a| a.region.is(ptr, len))
    }

    /// Makes the compute stream wait for layer `l` of a pending load.
    pub(super) fn wait_layer(&self, l: usize) -> Result<(), CudaError> {
        match &self.pending {
            Some(ev) => ev.wait(l, self.ctx.stream()),
            None => Ok(()),
        }
    }

    /// Makes the compute stream wait for every pending load and forgets it.
    pub(super) fn settle(&mut self) -> Result<(), CudaError> {
        if let Some(ev) = self.pending.take() {
            ev.wait_all(self.ctx.stream())?;
        }
        Ok(())
    }

    /// Copies device pages `dev[i]` into host-pool pages `host_pages[i]` (all layers, K and V) in
    /// the host pool's layout (`HostKvPool::offset`); returns when the bytes are on the host.
    pub fn save_pages(
        &self,
        dev: &[PageId],
        host: &HostKvPool,
        host_pages: &[PageId],
    ) -> Result<(), CudaError> {
        self.check_host(host, dev, host_pages)?;
        if let Some(a) = self.mover(host) {
            return a.copy.store(&self.pool, &a.region, dev, host_pages);
        }
        // Not page-locked: gather on the device into a staging buffer holding just the listed
        // pages in the host layout (page i of the list at slot i), then bring each page's K and V
        // object down in one copy.
        if dev.is_empty() {
            return Ok(());
        }
        let (copy, slots, staging) = self.staging(host, host_pages.len())?;
        copy.store_device(&self.pool, &staging, dev, &slots)?;
        let obj = host.object_bytes();
        for (i, &h) in host_pages.iter().enumerate() {
            for v in [false, true] {
                // SAFETY: the caller owns host page `h` exclusively (freshly allocated, no I/O).
                let dst = unsafe { host.object_mut(h, v) };
                let at = (v as usize * slots.len() + i) * obj;
                self.ctx.download_bytes(&staging, at, dst)?;
            }
        }
        Ok(())
    }

    /// Copies host-pool pages `host_pages[i]` into device pages `dev[i]` (inverse of
    /// [`CudaKv::save_pages`]). The copy is queued layer by layer and the next forward waits for
    /// it (from the attached pool directly; from any other pool after one upload per page object
    /// into a device staging buffer), so later forwards see the pages. Attached-pool pages must
    /// not be rewritten until that forward has run (they are locked in the tree for the request
    /// being loaded, or the scheduler calls `finish_host_io` first).
    pub fn load_pages(
        &mut self,
        host: &HostKvPool,
        host_pages: &[PageId],
        dev: &[PageId],
    ) -> Result<(), CudaError> {
        self.check_host(host, dev, host_pages)?;
        if let Some(a) = self.mover(host) {
            // Each queued load waits for the compute stream and the copy stream is in order, so
            // the newest load's layer-l event also covers every earlier load's layers.
            let ev = a.copy.load(&self.pool, &a.region, host_pages, dev)?;
            self.set_pending(ev);
            return Ok(());
        }
        // Not page-locked: each listed page's K and V object goes up in one copy into a staging
        // buffer holding just those pages (page i of the list at slot i), then the copy kernel
        // scatters it layer by layer.
        if dev.is_empty() {
            return Ok(());
        }
        let (copy, slots, staging) = self.staging(host, host_pages.len())?;
        let obj = host.object_bytes();
        for (i, &h) in host_pages.iter().enumerate() {
            for v in [false, true] {
                // SAFETY: host page `h` is held for this copy; nothing writes it meanwhile.
                let src = unsafe { host.object(h, v) };
                let at = (v as usize * slots.len() + i) * obj;
                self.ctx.upload_bytes(&staging, at, src)?;
            }
        }
        let ev = copy.load_device(&self.pool, staging, &slots, dev)?;
        self.set_pending(ev);
        Ok(())
    }

    /// Makes `ev` the pending load, keeping an earlier pending load's buffers alive with it
    /// (their copies may still be queued on the copy stream; see `LayerEvents::absorb`).
    fn set_pending(&mut self, mut ev: LayerEvents) {
        if let Some(older) = self.pending.take() {
            ev.absorb(older);
        }
        self.pending = Some(ev);
    }

    /// For `n` pages of a host pool that is not page-locked: the mover for a device staging
    /// buffer of just `n` pages in that pool's layout, the slot list `0..n`, and the buffer (sized
    /// by the transfer, not by the pool, which may be a larger reused one).
    fn staging(
        &self,
        host: &HostKvPool,
        n: usize,
    ) -> Result<(HostKvCopy, Vec<u32>, DTensor), CudaError> {
        let geo = HostKvGeometry {
            host_pages: n,
            ..self.geometry(host)
        };
        let staging = self.ctx.alloc(DType::U8, &[geo.host_bytes()])?;
        let copy = HostKvCopy::new(self.ctx.clone(), geo, HostIo::Kernel)?;
        Ok((copy, (0..n as u32).collect(), staging))
    }

    /// The copy geometry between this pool and `host`.
    fn geometry(&self, host: &HostKvPool) -> HostKvGeometry {
        let row = host.kv_dim * host.elem;
        let (tok_stride, layer_stride) = match host.layout {
            crate::hicache::MemLayout::PageFirst => (host.layers * row, row),
            crate::hicache::MemLayout::PageFirstDirect => (row, host.page_size * row),
        };
        HostKvGeometry {
            layers: host.layers,
            page_size: host.page_size,
            row_bytes: row,
            pool_pages: self.num_pages,
            host_pages: host.total_pages(),
            tok_stride,
            layer_stride,
        }
    }

    /// Checks the host pool's geometry and the page lists against this pool.
    fn check_host(
        &self,
        host: &HostKvPool,
        dev: &[PageId],
        host_pages: &[PageId],
    ) -> Result<(), CudaError> {
        let kv_dim = self.pool.shape()[1];
        let fits = host.elem == 2
            && host.kv_dim == kv_dim
            && host.layers == self.k.len()
            && host.page_size == self.page_size
            && dev.len() == host_pages.len()
            && dev.iter().all(|&d| (d as usize) < self.num_pages);
        if !fits {
            return Err(CudaError::Shape(format!(
                "host pool (elem {}, kv_dim {}, {} layers, page {}) or pages do not match the bf16 device pool",
                host.elem, host.kv_dim, host.layers, host.page_size
            )));
        }
        Ok(())
    }
}

impl Drop for CudaKv {
    fn drop(&mut self) {
        // Queued copies read the host pool and the page lists: finish them, then unregister.
        let _ = self.ctx.synchronize();
        self.pending = None;
        self.attached = None;
    }
}
