//! KV pages between the GPU pool and host memory owned elsewhere (the inference server's HiCache
//! L2 pool): the host memory is page-locked in place ([`HostRegion`], `cuMemHostRegister`), and
//! [`HostKvCopy`] moves pages on the context's copy stream, either with the `kv_host_copy`
//! kernel reading or writing the host bytes over the bus ("kernel" io backend) or with one
//! async memcpy per contiguous run ("direct" io backend, page_first_direct hosts only).
//!
//! Loads are queued layer by layer with one event per layer ([`LayerEvents`]), so a forward can
//! make its compute stream wait for layer l alone and run layer l while later layers are still
//! crossing the bus (SGLang's LayerDoneCounter). Stores wait for the compute stream first (the
//! KV being copied must be complete) and return one event.
//!
//! GPU pool bytes: `[layer][k|v][slot][row]`, slot = page * page_size + t. Host bytes: a K region
//! then a V region (`v_region` bytes apart), `obj_bytes` per page, row (t, l) of a page at
//! `t * tok_stride + l * layer_stride`. Page ids are range-checked on the host before upload.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{sys, CudaEvent, CudaFunction};

use super::device::GpuContext;
use super::error::{ensure, Result};
use super::launch::{launch, Arg, Dims};
use super::nvrtc::Program;
use super::tensor::DTensor;
use super::transfer::LayerEvents;

/// Host memory owned by someone else, page-locked and mapped for the GPU while this lives.
pub struct HostRegion {
    host: *mut u8,
    device: u64,
    len: usize,
    ctx: Arc<GpuContext>,
}

// SAFETY: the region only records addresses; the memory's owner governs access to the bytes.
unsafe impl Send for HostRegion {}
// SAFETY: as above; no method mutates through the pointer.
unsafe impl Sync for HostRegion {}

impl HostRegion {
    /// Page-locks `len` bytes at `host` and maps them for the GPU.
    ///
    /// # Safety
    /// `host..host + len` must stay allocated (and not be unmapped or remapped) until the region
    /// is dropped, and nothing may free it while device work queued through the region runs.
    pub unsafe fn register(ctx: &Arc<GpuContext>, host: *mut u8, len: usize) -> Result<Self> {
        ctx.cuda().bind_to_thread()?;
        let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        // SAFETY: the caller guarantees the range is live memory owned for the region's life.
        unsafe { sys::cuMemHostRegister_v2(host as *mut c_void, len, flags) }.result()?;
        let mut device = 0u64;
        // SAFETY: `host` was just registered with DEVICEMAP, as the call requires.
        let rc = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host as *mut c_void, 0) };
        if let Err(e) = rc.result() {
            // SAFETY: registered above, unregistered once here.
            let _ = unsafe { sys::cuMemHostUnregister(host as *mut c_void) };
            return Err(e.into());
        }
        Ok(Self {
            host,
            device,
            len,
            ctx: ctx.clone(),
        })
    }

    /// True when this region is exactly `host..host + len`.
    pub fn is(&self, host: *const u8, len: usize) -> bool {
        std::ptr::eq(self.host, host) && self.len == len
    }

    /// Address kernels use for the first byte.
    pub fn device_ptr(&self) -> u64 {
        self.device
    }
}

impl Drop for HostRegion {
    fn drop(&mut self) {
        let _ = self.ctx.synchronize();
        let _ = self.ctx.cuda().bind_to_thread();
        // SAFETY: registered in `register`; both streams are idle; unregistered exactly once.
        let _ = unsafe { sys::cuMemHostUnregister(self.host as *mut c_void) };
    }
}

/// Geometry of the GPU pool and the host pool.
#[derive(Clone, Copy, Debug)]
pub struct HostKvGeometry {
    pub layers: usize,
    pub page_size: usize,
    /// Bytes of one token's K (or V) of one layer; a multiple of 16.
    pub row_bytes: usize,
    /// Pages in the GPU pool.
    pub pool_pages: usize,
    /// Pages in the host pool.
    pub host_pages: usize,
    /// Host offset step per token and per layer inside a page object.
    pub tok_stride: usize,
    pub layer_stride: usize,
}

impl HostKvGeometry {
    /// Bytes of one host page object (K or V).
    pub fn obj_bytes(&self) -> usize {
        self.page_size * self.layers * self.row_bytes
    }
    /// Bytes of the whole host pool (K region + V region).
    pub fn host_bytes(&self) -> usize {
        2 * self.host_pages * self.obj_bytes()
    }
    /// True when a page's rows of one layer are one contiguous run on the host.
    pub fn runs_contiguous(&self) -> bool {
        self.tok_stride == self.row_bytes || self.page_size == 1
    }
}

/// How pages cross the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIo {
    /// The `kv_host_copy` kernel reads/writes mapped host memory.
    Kernel,
    /// One async memcpy per (page, layer, K|V) run.
    Direct,
}

/// Moves KV pages between a GPU pool and a registered host pool.
pub struct HostKvCopy {
    ctx: Arc<GpuContext>,
    geo: HostKvGeometry,
    io: HostIo,
    kernel: CudaFunction,
}

impl HostKvCopy {
    /// Checks the geometry and loads the kernel.
    pub fn new(ctx: Arc<GpuContext>, geo: HostKvGeometry, io: HostIo) -> Result<Self> {
        ensure(geo.row_bytes % 16 == 0 && geo.row_bytes > 0, || {
            format!("row of {} bytes is not a multiple of 16", geo.row_bytes)
        })?;
        ensure(io == HostIo::Kernel || geo.runs_contiguous(), || {
            "the direct io backend needs page-contiguous layers (page_first_direct)".into()
        })?;
        let kernel = ctx.function(Program::Transfer, "kv_host_copy")?;
        Ok(Self {
            ctx,
            geo,
            io,
            kernel,
        })
    }

    /// The io backend in use.
    pub fn io(&self) -> HostIo {
        self.io
    }

    fn check(
        &self,
        pool: &DTensor,
        side_len: usize,
        dev: &[u32],
        host: &[u32],
    ) -> Result<(Vec<i32>, Vec<i32>)> {
        let g = &self.geo;
        ensure(
            pool.bytes() == g.layers * 2 * g.pool_pages * g.page_size * g.row_bytes,
            || format!("pool of {} bytes does not match the geometry", pool.bytes()),
        )?;
        ensure(side_len == g.host_bytes(), || {
            format!(
                "host side of {side_len} bytes, geometry says {}",
                g.host_bytes()
            )
        })?;
        ensure(dev.len() == host.len(), || {
            "page lists differ in length".into()
        })?;
        ensure(dev.iter().all(|&p| (p as usize) < g.pool_pages), || {
            format!("GPU page outside a pool of {}", g.pool_pages)
        })?;
        ensure(host.iter().all(|&p| (p as usize) < g.host_pages), || {
            format!("host page outside a pool of {}", g.host_pages)
        })?;
        Ok((
            dev.iter().map(|&p| p as i32).collect(),
            host.iter().map(|&p| p as i32).collect(),
        ))
    }

    /// Queues the copy of layers `[lo, hi)` of the listed pages on the copy stream.
    fn queue(
        &self,
        pool: &DTensor,
        side: Side,
        ids: &(DTensor, DTensor, Vec<i32>, Vec<i32>),
        (lo, hi): (usize, usize),
        to_host: bool,
    ) -> Result<()> {
        let g = &self.geo;
        let stream = self.ctx.copy_stream().cu_stream();
        let n = ids.2.len();
        self.ctx.cuda().bind_to_thread()?;
        match (self.io, side) {
            (HostIo::Kernel, _) | (_, Side::Device(_)) => {
                let base = match side {
                    Side::Region(r) => r.device_ptr(),
                    Side::Device(p) => p,
                };
                let args = [
                    Arg::U64(pool.ptr()),
                    Arg::U64(base),
                    Arg::U64(ids.0.ptr()),
                    Arg::U64(ids.1.ptr()),
                    Arg::I32(lo as i32),
                    Arg::I32(hi as i32),
                    Arg::U64((g.pool_pages * g.page_size) as u64),
                    Arg::I32(g.page_size as i32),
                    Arg::U64(g.row_bytes as u64),
                    Arg::U64(g.tok_stride as u64),
                    Arg::U64(g.layer_stride as u64),
                    Arg::U64(g.obj_bytes() as u64),
                    Arg::U64((g.host_pages * g.obj_bytes()) as u64),
                    Arg::I32(to_host as i32),
                ];
                // SAFETY: the pool matches the geometry, every page id was range-checked, the
                // registered region covers the whole host pool, rows are multiples of 16 bytes
                // and both bases are 16-byte aligned (driver allocations; the host pool is
                // page-aligned).
                unsafe {
                    launch(
                        &self.kernel,
                        stream,
                        Dims::rows(n * (hi - lo) * 2, 256),
                        &args,
                    )
                }
            }
            (HostIo::Direct, Side::Region(region)) => {
                let run = g.page_size * g.row_bytes;
                let slots = g.pool_pages * g.page_size;
                for l in lo..hi {
                    for kv in 0..2 {
                        for (&d, &h) in ids.2.iter().zip(&ids.3) {
                            let dev_off =
                                ((l * 2 + kv) * slots + d as usize * g.page_size) * g.row_bytes;
                            let host_off = kv * g.host_pages * g.obj_bytes()
                                + h as usize * g.obj_bytes()
                                + l * g.layer_stride;
                            let dptr = pool.ptr() + dev_off as u64;
                            // SAFETY: in bounds of the registered region (checked ids and
                            // geometry); the region is page-locked, so the copy is async.
                            let hptr = unsafe { region.host.add(host_off) } as *mut c_void;
                            // SAFETY: both ranges are `run` bytes inside their allocations.
                            let rc = unsafe {
                                if to_host {
                                    sys::cuMemcpyDtoHAsync_v2(hptr, dptr, run, stream)
                                } else {
                                    sys::cuMemcpyHtoDAsync_v2(dptr, hptr, run, stream)
                                }
                            };
                            rc.result()?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn upload(
        &self,
        dev: Vec<i32>,
        host: Vec<i32>,
    ) -> Result<(DTensor, DTensor, Vec<i32>, Vec<i32>)> {
        let n = dev.len().max(1);
        let pad = |v: &[i32]| if v.is_empty() { vec![0] } else { v.to_vec() };
        Ok((
            self.ctx.upload_i32(&[n], &pad(&dev))?,
            self.ctx.upload_i32(&[n], &pad(&host))?,
            dev,
            host,
        ))
    }

    /// GPU pages `dev[i]` -> host pages `host[i]`, all layers, after the work already queued on
    /// the compute stream; returns when the bytes are on the host (the caller hands them to the
    /// L3 writer next).
    pub fn store(
        &self,
        pool: &DTensor,
        region: &HostRegion,
        dev: &[u32],
        host: &[u32],
    ) -> Result<()> {
        self.store_side(pool, Side::Region(region), region.len, dev, host)
    }

    /// As [`store`](Self::store), into `staging`: device memory laid out like the host pool
    /// (the caller then brings it down in one copy; for host memory that is not page-locked).
    pub fn store_device(
        &self,
        pool: &DTensor,
        staging: &DTensor,
        dev: &[u32],
        host: &[u32],
    ) -> Result<()> {
        self.store_side(
            pool,
            Side::Device(staging.ptr()),
            staging.bytes(),
            dev,
            host,
        )
    }

    fn store_side(
        &self,
        pool: &DTensor,
        side: Side,
        len: usize,
        dev: &[u32],
        host: &[u32],
    ) -> Result<()> {
        let (d, h) = self.check(pool, len, dev, host)?;
        if dev.is_empty() {
            return Ok(());
        }
        let ids = self.upload(d, h)?;
        let ready = self.ctx.stream().record_event(None)?;
        self.ctx.copy_stream().wait(&ready)?;
        self.queue(pool, side, &ids, (0, self.geo.layers), true)?;
        let done: CudaEvent = self.ctx.copy_stream().record_event(None)?;
        Ok(done.synchronize()?)
    }

    /// Host pages `host[i]` -> GPU pages `dev[i]`, one layer at a time, after the work already
    /// queued on the compute stream; returns one event per layer.
    pub fn load(
        &self,
        pool: &DTensor,
        region: &HostRegion,
        host: &[u32],
        dev: &[u32],
    ) -> Result<LayerEvents> {
        self.load_side(
            pool,
            Side::Region(region),
            region.len,
            host,
            dev,
            Vec::new(),
        )
    }

    /// As [`load`](Self::load), from `staging`: device memory laid out like the host pool (the
    /// caller filled it in one copy); it is kept alive by the returned events.
    pub fn load_device(
        &self,
        pool: &DTensor,
        staging: DTensor,
        host: &[u32],
        dev: &[u32],
    ) -> Result<LayerEvents> {
        let (ptr, len) = (staging.ptr(), staging.bytes());
        self.load_side(pool, Side::Device(ptr), len, host, dev, vec![staging])
    }

    fn load_side(
        &self,
        pool: &DTensor,
        side: Side,
        len: usize,
        host: &[u32],
        dev: &[u32],
        mut keep: Vec<DTensor>,
    ) -> Result<LayerEvents> {
        let (d, h) = self.check(pool, len, dev, host)?;
        let ids = self.upload(d, h)?;
        let ready = self.ctx.stream().record_event(None)?;
        self.ctx.copy_stream().wait(&ready)?;
        let mut events = Vec::with_capacity(self.geo.layers);
        for l in 0..self.geo.layers {
            if !dev.is_empty() {
                self.queue(pool, side, &ids, (l, l + 1), false)?;
            }
            events.push(self.ctx.copy_stream().record_event(None)?);
        }
        // The page lists (and a staging buffer) stay alive until the events are dropped.
        keep.extend([ids.0, ids.1]);
        Ok(LayerEvents::from_events(events, keep))
    }
}

/// Where the host-layout bytes are: a registered host region, or device memory.
#[derive(Clone, Copy)]
enum Side<'a> {
    Region(&'a HostRegion),
    Device(u64),
}
