//! The GPU direct path: whole KV pages between the GPU pool (layer-first) and a pinned host pool
//! (page-first), on the context's copy stream, with one event per layer for loads.
//!
//! GPU pool bytes: [layer][k|v][pool_page][chunk]; host bytes: [host_page][layer][k|v][chunk],
//! chunk = page_size * n_kv_heads * head_dim * 2 bytes. `store` (GPU -> host, "backup") moves all
//! layers in one launch. `load` (host -> GPU) launches layer by layer and records
//! `LayerEvents[l]` after layer l, so the forward pass can wait on layer l alone and start while
//! later layers are still in flight. Page ids are validated on the host before upload.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaFunction, CudaStream};

use super::device::GpuContext;
use super::error::{ensure, Result};
use super::launch::{launch, Arg, Dims};
use super::nvrtc::Program;
use super::pinned::PinnedBuf;
use super::tensor::{DTensor, DType};

/// Geometry shared by the GPU pool and the host pool.
#[derive(Clone, Copy, Debug)]
pub struct PageLayout {
    /// Model layers.
    pub layers: usize,
    /// Pages in the GPU pool.
    pub pool_pages: usize,
    /// Bytes of one page of one layer's K (or V).
    pub chunk_bytes: usize,
}

impl PageLayout {
    /// Bytes of the whole GPU pool.
    pub fn pool_bytes(&self) -> usize {
        self.layers * 2 * self.pool_pages * self.chunk_bytes
    }
    /// Bytes of one page across all layers (one host page).
    pub fn host_page_bytes(&self) -> usize {
        self.layers * 2 * self.chunk_bytes
    }
}

/// A validated, uploaded list of (GPU page, host page) pairs.
pub struct PagePairs {
    pool: DTensor,
    host: DTensor,
    n: usize,
}

impl PagePairs {
    /// Number of pages moved.
    pub fn len(&self) -> usize {
        self.n
    }
    /// True when no page is listed.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// One event per layer, recorded on the copy stream when that layer's pages have landed.
pub struct LayerEvents {
    events: Vec<CudaEvent>,
    /// Device buffers the queued copies still read (freed only after the events).
    _keep: Vec<DTensor>,
}

impl LayerEvents {
    pub(super) fn from_events(events: Vec<CudaEvent>, keep: Vec<DTensor>) -> Self {
        Self {
            events,
            _keep: keep,
        }
    }
    /// Number of layers.
    pub fn len(&self) -> usize {
        self.events.len()
    }
    /// True when there is no layer.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
    /// Takes over the device buffers an older load's queued copies still read, so a new load
    /// can replace it as the pending one. Buffers are freed stream-ordered on the compute
    /// stream, not the copy stream: dropping the older load's page lists while its copies are
    /// still queued let the allocator hand their memory to the next allocation, and the copies
    /// then read garbage page ids (an illegal address on an H200). The newer load's events come
    /// later on the same in-order copy stream, so waiting for them covers the older copies.
    pub fn absorb(&mut self, older: LayerEvents) {
        self._keep.extend(older._keep);
    }
    /// Makes `stream` wait until every layer has been loaded.
    pub fn wait_all(&self, stream: &CudaStream) -> Result<()> {
        match self.events.last() {
            Some(e) => Ok(stream.wait(e)?),
            None => Ok(()),
        }
    }
    /// Makes `stream` wait until layer `layer` has been loaded.
    pub fn wait(&self, layer: usize, stream: &CudaStream) -> Result<()> {
        Ok(stream.wait(&self.events[layer])?)
    }
    /// Blocks the host until layer `layer` has been loaded.
    pub fn synchronize(&self, layer: usize) -> Result<()> {
        Ok(self.events[layer].synchronize()?)
    }
}

/// Moves KV pages between a GPU pool and a pinned host pool.
pub struct PageMover {
    ctx: Arc<GpuContext>,
    layout: PageLayout,
    copy: CudaFunction,
}

impl PageMover {
    /// Loads the transfer kernel for `layout` (chunk_bytes must be a multiple of 16).
    pub fn new(ctx: Arc<GpuContext>, layout: PageLayout) -> Result<Self> {
        ensure(
            layout.chunk_bytes % 16 == 0 && layout.chunk_bytes > 0,
            || {
                format!(
                    "chunk_bytes {} must be a positive multiple of 16",
                    layout.chunk_bytes
                )
            },
        )?;
        let copy = ctx.function(Program::Transfer, "kv_page_copy")?;
        Ok(Self { ctx, layout, copy })
    }

    /// The geometry.
    pub fn layout(&self) -> PageLayout {
        self.layout
    }

    /// Validates and uploads page pairs for a host pool of `host_pages` pages.
    pub fn pairs(
        &self,
        pool_pages: &[i32],
        host_pages: &[i32],
        host: &PinnedBuf,
    ) -> Result<PagePairs> {
        ensure(pool_pages.len() == host_pages.len(), || {
            "pair lists differ in length".into()
        })?;
        let cap = host.len() / self.layout.host_page_bytes();
        ensure(
            pool_pages
                .iter()
                .all(|&p| p >= 0 && (p as usize) < self.layout.pool_pages),
            || format!("GPU page outside pool of {}", self.layout.pool_pages),
        )?;
        ensure(
            host_pages.iter().all(|&p| p >= 0 && (p as usize) < cap),
            || format!("host page outside host pool of {cap}"),
        )?;
        let n = pool_pages.len();
        Ok(PagePairs {
            pool: self.ctx.upload_i32(&[n], pool_pages)?,
            host: self.ctx.upload_i32(&[n], host_pages)?,
            n,
        })
    }

    fn check_pool(&self, pool: &DTensor) -> Result<()> {
        self.ctx.check_device("pool", pool)?;
        pool.expect_at_least("pool", pool.dtype(), 0)?;
        ensure(pool.bytes() == self.layout.pool_bytes(), || {
            format!(
                "pool has {} bytes, layout says {}",
                pool.bytes(),
                self.layout.pool_bytes()
            )
        })?;
        ensure(
            pool.dtype() == DType::U8 || pool.dtype() == DType::Bf16,
            || "pool must be bytes or bf16".into(),
        )
    }

    fn launch_copy(
        &self,
        pool: &DTensor,
        host: &PinnedBuf,
        pairs: &PagePairs,
        layers: (usize, usize),
        to_host: bool,
    ) -> Result<()> {
        let items = pairs.n * (layers.1 - layers.0) * 2;
        let args = [
            Arg::U64(pool.ptr()),
            Arg::U64(host.device_ptr()),
            Arg::U64(pairs.pool.ptr()),
            Arg::U64(pairs.host.ptr()),
            Arg::I32(self.layout.layers as i32),
            Arg::I32(layers.0 as i32),
            Arg::I32(layers.1 as i32),
            Arg::U64(self.layout.pool_pages as u64),
            Arg::U64(self.layout.chunk_bytes as u64),
            Arg::I32(to_host as i32),
        ];
        self.ctx.cuda().bind_to_thread()?;
        // SAFETY: pool size matches the layout, page ids were range-checked when the pairs were
        // built, the host buffer holds every listed host page, and chunk_bytes is a multiple of 16
        // with both bases 16-byte aligned (driver allocations are 256-byte aligned).
        unsafe {
            launch(
                &self.copy,
                self.ctx.copy_stream().cu_stream(),
                Dims::rows(items, 512),
                &args,
            )
        }
    }

    /// GPU -> host for every layer of the listed pages. Ordered after all work already queued
    /// on the compute stream (so the KV being backed up is complete).
    pub fn store(&self, pool: &DTensor, host: &PinnedBuf, pairs: &PagePairs) -> Result<CudaEvent> {
        self.check_pool(pool)?;
        let ready = self.ctx.stream().record_event(None)?;
        self.ctx.copy_stream().wait(&ready)?;
        self.launch_copy(pool, host, pairs, (0, self.layout.layers), true)?;
        Ok(self.ctx.copy_stream().record_event(None)?)
    }

    /// Host -> GPU, one launch and one event per layer.
    pub fn load(&self, pool: &DTensor, host: &PinnedBuf, pairs: &PagePairs) -> Result<LayerEvents> {
        self.check_pool(pool)?;
        let ready = self.ctx.stream().record_event(None)?;
        self.ctx.copy_stream().wait(&ready)?;
        let mut events = Vec::with_capacity(self.layout.layers);
        for l in 0..self.layout.layers {
            self.launch_copy(pool, host, pairs, (l, l + 1), false)?;
            events.push(self.ctx.copy_stream().record_event(None)?);
        }
        Ok(LayerEvents::from_events(events, Vec::new()))
    }
}
