//! `PinnedBuf`: page-locked, device-mapped host memory (`cuMemHostAlloc`) for the host KV pool.
//!
//! Invariants: `host` points at `len` bytes allocated by `cuMemHostAlloc(PORTABLE | DEVICEMAP)`
//! and freed exactly once in `Drop`; `device` is the address kernels use for the same bytes
//! (identical to `host` under unified addressing, but always asked of the driver). The host
//! side must not be mutated while a kernel or copy on the device still reads or writes it:
//! callers synchronise the copy stream (or its event) first.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys;

use super::device::GpuContext;
use super::error::Result;

/// Pinned host memory visible to the GPU.
pub struct PinnedBuf {
    host: *mut u8,
    device: u64,
    len: usize,
    ctx: Arc<GpuContext>,
}

// SAFETY: the buffer is plain memory owned by this value; the raw pointer is not shared with
// any other owner, so moving or sharing `&PinnedBuf` across threads is as safe as for Vec<u8>.
unsafe impl Send for PinnedBuf {}
// SAFETY: shared access only reads through `as_slice`; mutation needs `&mut self`.
unsafe impl Sync for PinnedBuf {}

impl PinnedBuf {
    /// Allocates `len` bytes of pinned, device-mapped host memory (contents unspecified).
    pub fn new(ctx: &Arc<GpuContext>, len: usize) -> Result<Self> {
        ctx.cuda().bind_to_thread()?;
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: plain allocation call; the result is checked before use.
        let host = unsafe { cudarc::driver::result::malloc_host(len.max(16), flags) }? as *mut u8;
        let mut device = 0u64;
        // SAFETY: `host` was returned by cuMemHostAlloc with DEVICEMAP, as the call requires.
        let rc = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host as *mut c_void, 0) };
        if let Err(e) = rc.result() {
            // SAFETY: `host` came from cuMemHostAlloc and is freed once, here.
            let _ = unsafe { cudarc::driver::result::free_host(host as *mut c_void) };
            return Err(e.into());
        }
        Ok(Self {
            host,
            device,
            len,
            ctx: ctx.clone(),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Address kernels use.
    pub fn device_ptr(&self) -> u64 {
        self.device
    }
    /// Host address.
    pub fn host_ptr(&self) -> *mut u8 {
        self.host
    }
    /// The bytes (caller has synchronised any device work touching them).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `host` is valid for `len` bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.host, self.len) }
    }
    /// The bytes, mutably (caller has synchronised any device work touching them).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `host` is valid for `len` bytes and `&mut self` excludes other access.
        unsafe { std::slice::from_raw_parts_mut(self.host, self.len) }
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        let _ = self.ctx.synchronize();
        let _ = self.ctx.cuda().bind_to_thread();
        // SAFETY: `host` came from cuMemHostAlloc; both streams are idle, so no device work
        // still touches it; freed exactly once.
        let _ = unsafe { cudarc::driver::result::free_host(self.host as *mut c_void) };
    }
}
