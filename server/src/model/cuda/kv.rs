//! The CUDA runner's paged KV cache: one bf16 allocation laid out `[layer][k|v][slot][kv_dim]`
//! (slot = page * page_size + offset), with per-layer K and V views for the kernels (the GPU
//! direct path's `PageLayout`). Whole pages move to and from the hierarchical cache's host pool
//! (`HostKvPool`, bf16 elements, page_first or page_first_direct) with one copy per page, layer
//! and K/V, placed token by token on the host.

use crate::kv::{HostKvPool, PageId};
use std::sync::Arc;
use strata_kernels::cuda::{CudaError, DTensor, DType, GpuContext};

/// The paged KV cache on one GPU.
pub struct CudaKv {
    pub(super) pool: DTensor,
    pub(super) k: Vec<DTensor>,
    pub(super) v: Vec<DTensor>,
    pub(super) page_size: usize,
    pub(super) num_pages: usize,
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
        let pool = ctx.alloc(DType::Bf16, &[layers * 2 * slots, kv_dim])?;
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
        })
    }

    /// Copies device pages `dev[i]` into host-pool pages `host_pages[i]` (all layers, K and V) in
    /// the host pool's layout (`HostKvPool::offset`): per page and layer, the page's rows come
    /// down in one copy and are placed token by token (one run for page_first_direct).
    pub fn save_pages(
        &self,
        dev: &[PageId],
        host: &HostKvPool,
        host_pages: &[PageId],
    ) -> Result<(), CudaError> {
        let (row, run) = self.check_host(host, dev, host_pages)?;
        let mut tmp = vec![0u8; run];
        for (&d, &h) in dev.iter().zip(host_pages) {
            for (v, bufs) in [(false, &self.k), (true, &self.v)] {
                // SAFETY: the caller owns host page `h` exclusively (freshly allocated, no I/O).
                let obj = unsafe { host.object_mut(h, v) };
                for (l, buf) in bufs.iter().enumerate() {
                    self.ctx.download_bytes(buf, d as usize * run, &mut tmp)?;
                    for t in 0..self.page_size {
                        let at = host.offset(t, l);
                        obj[at..at + row].copy_from_slice(&tmp[t * row..(t + 1) * row]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies host-pool pages `host_pages[i]` into device pages `dev[i]` (inverse of
    /// [`CudaKv::save_pages`]); synchronous, so later forwards see them.
    pub fn load_pages(
        &mut self,
        host: &HostKvPool,
        host_pages: &[PageId],
        dev: &[PageId],
    ) -> Result<(), CudaError> {
        let (row, run) = self.check_host(host, dev, host_pages)?;
        let mut tmp = vec![0u8; run];
        for (&h, &d) in host_pages.iter().zip(dev) {
            for v in [false, true] {
                // SAFETY: host page `h` is locked in the tree; nothing writes it meanwhile.
                let obj = unsafe { host.object(h, v) };
                let bufs = if v { &self.v } else { &self.k };
                for (l, buf) in bufs.iter().enumerate() {
                    for t in 0..self.page_size {
                        let at = host.offset(t, l);
                        tmp[t * row..(t + 1) * row].copy_from_slice(&obj[at..at + row]);
                    }
                    self.ctx.upload_bytes(buf, d as usize * run, &tmp)?;
                }
            }
        }
        Ok(())
    }

    /// Checks the host pool's geometry against this pool; returns (bytes of one token's row of
    /// one layer, bytes of one page of one layer).
    fn check_host(
        &self,
        host: &HostKvPool,
        dev: &[PageId],
        host_pages: &[PageId],
    ) -> Result<(usize, usize), CudaError> {
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
        let row = kv_dim * 2;
        Ok((row, row * self.page_size))
    }
}
