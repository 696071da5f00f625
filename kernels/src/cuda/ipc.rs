//! Device memory shared between processes on one host (CUDA IPC), for PD disaggregation.
//!
//! The prefill allocates its KV pool with `cuMemAlloc` ([`GpuContext::alloc_exportable`]; memory
//! from the stream-ordered pool allocator cannot be exported) and hands out the pool's
//! `cuIpcGetMemHandle` ([`ipc_handle`]). A decode process opens it once
//! ([`IpcMapping::open`], `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`, so a pool on another GPU with
//! peer access works too) and gathers the listed pages out of it into a device buffer of its own
//! on a stream of its own ([`PeerGather`]), without waiting for its compute stream. A handle
//! cannot be opened in the process that exported it (the driver refuses), so nothing here can be
//! exercised by one process alone. Every driver call's failure names the call.

use std::any::Any;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};

use super::device::GpuContext;
use super::error::{ensure, CudaError, Result};
use super::host_copy::HostKvGeometry;
use super::launch::{launch, Arg, Dims};
use super::nvrtc::Program;
use super::tensor::{DTensor, DType};

/// Turns a driver status into an error naming the call.
fn call(rc: sys::CUresult, name: &'static str) -> Result<()> {
    rc.result()
        .map_err(|source| CudaError::Call { call: name, source })
}

/// A `cuMemAlloc` allocation (exportable with `cuIpcGetMemHandle`), freed when dropped.
struct Exportable {
    ptr: u64,
    ctx: Arc<CudaContext>,
}

impl Drop for Exportable {
    fn drop(&mut self) {
        // Queued work may still use the memory: cuMemFree is not stream-ordered.
        let _ = self.ctx.bind_to_thread();
        let _ = self.ctx.synchronize();
        // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once.
        let _ = unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

impl GpuContext {
    /// Allocates an uninitialised tensor with `cuMemAlloc` (not the stream-ordered allocator), so
    /// that [`ipc_handle`] can export it.
    pub fn alloc_exportable(&self, dtype: DType, shape: &[usize]) -> Result<DTensor> {
        let numel: usize = shape.iter().product();
        let bytes = (numel * dtype.size()).max(16);
        self.cuda().bind_to_thread()?;
        let mut ptr = 0u64;
        // SAFETY: `ptr` is a valid out-pointer; the context is current.
        call(unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) }, "cuMemAlloc")?;
        let owner = Arc::new(Exportable {
            ptr,
            ctx: self.cuda().clone(),
        });
        // SAFETY: the allocation holds `bytes` bytes on this GPU and lives while `owner` does.
        Ok(unsafe { DTensor::over(owner, ptr, dtype, shape, self.ordinal()) })
    }
}

/// The IPC handle of `t`'s allocation; `t` must start at the base of a [`GpuContext::alloc_exportable`]
/// allocation.
pub fn ipc_handle(ctx: &GpuContext, t: &DTensor) -> Result<[u8; 64]> {
    ctx.cuda().bind_to_thread()?;
    // SAFETY: an all-zero handle is a valid value to overwrite.
    let mut h: sys::CUipcMemHandle = unsafe { std::mem::zeroed() };
    // SAFETY: `h` is a valid out-pointer; the driver checks the pointer.
    call(
        unsafe { sys::cuIpcGetMemHandle(&mut h, t.ptr()) },
        "cuIpcGetMemHandle",
    )?;
    Ok(h.reserved.map(|c| c as u8))
}

/// Another process's allocation mapped into this context; unmapped when dropped.
pub struct IpcMapping {
    ptr: u64,
    bytes: usize,
    ctx: Arc<GpuContext>,
}

impl IpcMapping {
    /// Opens `handle` (of an allocation of at least `bytes` bytes) in `ctx`.
    pub fn open(ctx: &Arc<GpuContext>, handle: &[u8; 64], bytes: usize) -> Result<Arc<Self>> {
        ctx.cuda().bind_to_thread()?;
        // SAFETY: zeroed then filled with the exporter's bytes.
        let mut h: sys::CUipcMemHandle = unsafe { std::mem::zeroed() };
        for (d, s) in h.reserved.iter_mut().zip(handle) {
            *d = *s as _;
        }
        let mut ptr = 0u64;
        // SAFETY: `ptr` is a valid out-pointer; the driver validates the handle.
        call(
            unsafe {
                sys::cuIpcOpenMemHandle_v2(
                    &mut ptr,
                    h,
                    sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32,
                )
            },
            "cuIpcOpenMemHandle",
        )?;
        let m = Arc::new(IpcMapping {
            ptr,
            bytes,
            ctx: ctx.clone(),
        });
        // The mapping must be at least as large as announced (when the driver can tell).
        let (mut base, mut size) = (0u64, 0usize);
        // SAFETY: valid out-pointers; `ptr` is mapped.
        let rc = unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr) };
        if rc == sys::CUresult::CUDA_SUCCESS {
            ensure(size >= bytes, || {
                format!("the opened pool has {size} bytes, {bytes} announced")
            })?;
        }
        Ok(m)
    }

    /// The mapped memory as a byte tensor (keeps the mapping open).
    pub fn tensor(self: &Arc<Self>) -> DTensor {
        let owner: Arc<dyn Any + Send + Sync> = self.clone();
        // SAFETY: `bytes` bytes are mapped at `ptr` while the mapping (kept by the tensor) lives.
        unsafe {
            DTensor::over(
                owner,
                self.ptr,
                DType::U8,
                &[self.bytes],
                self.ctx.ordinal(),
            )
        }
    }
}

impl Drop for IpcMapping {
    fn drop(&mut self) {
        let _ = self.ctx.cuda().bind_to_thread();
        // SAFETY: opened once by `open`, closed once here; users hold the mapping (Arc) while
        // their copies run and synchronise before letting go.
        let rc = unsafe { sys::cuIpcCloseMemHandle(self.ptr) };
        if let Err(e) = call(rc, "cuIpcCloseMemHandle") {
            eprintln!("strata: {e}");
        }
    }
}

/// Gathers pages of a (mapped) pool into a device buffer in a host pool's layout, on a stream of
/// its own.
pub struct PeerGather {
    ctx: Arc<GpuContext>,
    stream: Arc<CudaStream>,
    kernel: CudaFunction,
}

impl PeerGather {
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self> {
        let stream = ctx.cuda().new_stream()?;
        let kernel = ctx.function(Program::Transfer, "kv_host_copy")?;
        Ok(Self {
            ctx,
            stream,
            kernel,
        })
    }

    /// Copies pool pages `pages[i]` of `pool` (geometry `geo`, `geo.pool_pages` pages) into page
    /// `i` of a new device buffer laid out like a host pool of `pages.len()` pages (`geo`'s
    /// strides), and returns it once the copy is complete.
    pub fn gather(&self, pool: &DTensor, geo: HostKvGeometry, pages: &[u32]) -> Result<DTensor> {
        let n = pages.len();
        let geo = HostKvGeometry {
            host_pages: n,
            ..geo
        };
        ensure(geo.row_bytes % 16 == 0 && geo.row_bytes > 0, || {
            format!("row of {} bytes is not a multiple of 16", geo.row_bytes)
        })?;
        let pool_bytes = geo.layers * 2 * geo.pool_pages * geo.page_size * geo.row_bytes;
        ensure(pool.bytes() >= pool_bytes, || {
            format!("pool of {} bytes, geometry says {pool_bytes}", pool.bytes())
        })?;
        ensure(pages.iter().all(|&p| (p as usize) < geo.pool_pages), || {
            format!("page outside a pool of {}", geo.pool_pages)
        })?;
        // Not from the stream-ordered allocator: the buffer is read later on another stream (the
        // decode's copy stream) and must not be recycled in this stream's order meanwhile.
        let out = self.ctx.alloc_exportable(DType::U8, &[geo.host_bytes()])?;
        if n == 0 {
            return Ok(out);
        }
        let src: Vec<i32> = pages.iter().map(|&p| p as i32).collect();
        let dst: Vec<i32> = (0..n as i32).collect();
        let ids = DTensor::alloc(&self.stream, DType::I32, &[2 * n])?;
        self.ctx.cuda().bind_to_thread()?;
        let s = self.stream.cu_stream();
        // SAFETY: `ids` holds 2n i32; the host vectors live until the stream is synchronised
        // below (pageable sources are staged by the driver anyway).
        unsafe {
            call(
                sys::cuMemcpyHtoDAsync_v2(ids.ptr(), src.as_ptr() as *const c_void, 4 * n, s),
                "cuMemcpyHtoDAsync",
            )?;
            call(
                sys::cuMemcpyHtoDAsync_v2(
                    ids.ptr() + 4 * n as u64,
                    dst.as_ptr() as *const c_void,
                    4 * n,
                    s,
                ),
                "cuMemcpyHtoDAsync",
            )?;
        }
        let args = [
            Arg::U64(pool.ptr()),
            Arg::U64(out.ptr()),
            Arg::U64(ids.ptr()),
            Arg::U64(ids.ptr() + 4 * n as u64),
            Arg::I32(0),
            Arg::I32(geo.layers as i32),
            Arg::U64((geo.pool_pages * geo.page_size) as u64),
            Arg::I32(geo.page_size as i32),
            Arg::U64(geo.row_bytes as u64),
            Arg::U64(geo.tok_stride as u64),
            Arg::U64(geo.layer_stride as u64),
            Arg::U64(geo.obj_bytes() as u64),
            Arg::U64((geo.host_pages * geo.obj_bytes()) as u64),
            Arg::I32(1),
        ];
        // SAFETY: the argument list is kv_host_copy's; page ids were range-checked against the
        // pool, `out` holds `n` pages in `geo`'s layout, rows are 16-byte multiples and both bases
        // are 256-byte aligned (driver allocations).
        unsafe { launch(&self.kernel, s, Dims::rows(n * geo.layers * 2, 256), &args) }?;
        self.stream.synchronize()?;
        Ok(out)
    }

    /// Raw device-to-device copy of `bytes` bytes between two buffers on this stream, `rounds`
    /// times; returns the seconds of each round (the baseline of the PD transfer rate).
    pub fn memcpy_rounds(&self, src: &DTensor, dst: &DTensor, rounds: usize) -> Result<Vec<f64>> {
        let bytes = src.bytes().min(dst.bytes());
        self.ctx.cuda().bind_to_thread()?;
        let mut out = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = std::time::Instant::now();
            // SAFETY: both ranges lie inside their tensors.
            call(
                unsafe {
                    sys::cuMemcpyDtoDAsync_v2(dst.ptr(), src.ptr(), bytes, self.stream.cu_stream())
                },
                "cuMemcpyDtoDAsync",
            )?;
            self.stream.synchronize()?;
            out.push(t.elapsed().as_secs_f64());
        }
        Ok(out)
    }
}
