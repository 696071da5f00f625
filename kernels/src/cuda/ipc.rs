//! Device memory shared between processes on one host (CUDA IPC), for PD disaggregation.
//!
//! The prefill allocates its KV pool with `cuMemAlloc` ([`GpuContext::alloc_exportable`]; memory
//! from the stream-ordered pool allocator cannot be exported) and hands out the pool's
//! `cuIpcGetMemHandle` ([`ipc_handle`]). A decode process opens it once ([`IpcMapping::open`],
//! `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`: a pool on another GPU is read over the peer link, and
//! one on a GPU this one cannot reach is refused with a clear error) and copies the listed pages
//! straight into its own pool ([`super::peer_copy::PeerCopy`]); a mapping is closed only after
//! the last copy out of it finished. A handle cannot be opened in the process that exported it
//! (the driver refuses), so nothing here can be exercised by one process alone. Every driver
//! call's failure names the call.

use std::any::Any;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaEvent};

use super::device::GpuContext;
use super::error::{ensure, CudaError, Result};
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

/// Whether GPU `a` can read GPU `b`'s memory (peer access).
fn can_access_peer(a: usize, b: usize) -> Result<bool> {
    let (mut da, mut db, mut ok): (sys::CUdevice, sys::CUdevice, i32) = (0, 0, 0);
    // SAFETY: valid out-pointers; the ordinals are the driver's.
    unsafe {
        call(sys::cuDeviceGet(&mut da, a as i32), "cuDeviceGet")?;
        call(sys::cuDeviceGet(&mut db, b as i32), "cuDeviceGet")?;
        call(
            sys::cuDeviceCanAccessPeer(&mut ok, da, db),
            "cuDeviceCanAccessPeer",
        )?;
    }
    Ok(ok != 0)
}

/// Another process's allocation mapped into this context; unmapped when dropped, after the
/// last copy that read it ([`IpcMapping::used_until`]) has finished.
pub struct IpcMapping {
    ptr: u64,
    bytes: usize,
    ctx: Arc<GpuContext>,
    /// The GPU the memory lives on (this process's numbering).
    device: usize,
    /// Completes when the last queued copy out of the mapping has.
    last_use: Mutex<Option<Arc<CudaEvent>>>,
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
        let mut m = IpcMapping {
            ptr,
            bytes,
            ctx: ctx.clone(),
            device: ctx.ordinal(),
            last_use: Mutex::new(None),
        };
        // Memory of another GPU (a prefill on another --base-gpu-id): the kernels of this
        // context read it over the peer link, which the lazy flag above enables when the two
        // GPUs can reach each other; when they cannot, say so (the caller falls back).
        let mut ordinal: i32 = -1;
        // SAFETY: valid out-pointer of the attribute's type (int); `ptr` is mapped.
        let rc = unsafe {
            sys::cuPointerGetAttribute(
                &mut ordinal as *mut i32 as *mut c_void,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                ptr,
            )
        };
        if rc == sys::CUresult::CUDA_SUCCESS && ordinal >= 0 && ordinal as usize != ctx.ordinal() {
            m.device = ordinal as usize;
            let peer = can_access_peer(ctx.ordinal(), m.device)?;
            ensure(peer, || {
                format!(
                    "the prefill's pool is on GPU {ordinal}, which GPU {} cannot reach (no peer access)",
                    ctx.ordinal()
                )
            })?;
        }
        let m = Arc::new(m);
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

    /// The GPU the mapped memory lives on (another one than this context's: read over the peer
    /// link).
    pub fn device(&self) -> usize {
        self.device
    }

    /// Records that queued work reads the mapping until `done` completes: the mapping is closed
    /// only after that (a later call replaces the event: copies on one stream finish in order).
    pub fn used_until(&self, done: Arc<CudaEvent>) {
        *self.last_use.lock().unwrap_or_else(|e| e.into_inner()) = Some(done);
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
        // A copy still reading the peer's memory finishes first (the peer may have gone away:
        // its memory stays mapped here until the close below).
        if let Some(e) = self
            .last_use
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            if let Err(e) = e.synchronize() {
                eprintln!("strata: waiting for the last copy out of a peer pool: {e}");
            }
        }
        // SAFETY: opened once by `open`, closed once here; users hold the mapping (Arc) while
        // their copies run and synchronise before letting go.
        let rc = unsafe { sys::cuIpcCloseMemHandle(self.ptr) };
        if let Err(e) = call(rc, "cuIpcCloseMemHandle") {
            eprintln!("strata: {e}");
        }
    }
}
