//! Pool-to-pool page copy for PD over CUDA IPC: a decode copies the prefill's pages (its pool,
//! opened with [`super::ipc::IpcMapping`]) straight into its own pool's pages, one launch of
//! `kv_pool_copy` (kernels/cuda/transfer.cu: 16-byte vector loads, every chunk cut into 32 KiB runs
//! so the grid fills the GPU) on a stream of its own, at the context's highest priority (the copy's
//! blocks go ahead of queued forward kernels as SMs free up). Nothing is allocated per transfer:
//! the page lists go through one device buffer that grows when a longer list comes and is reused
//! otherwise; it is written and read on the copy's own in-order stream, so a list is never
//! overwritten while a queued copy still reads it, and a replaced buffer is freed in that stream's
//! order too (cudarc frees a buffer on the stream that allocated it). The same copy serves both
//! directions: a decode pulling out of an opened prefill pool, or a prefill pushing into an opened
//! decode pool.
//!
//! Ordering: the copy waits for an event the caller recorded on its compute stream when the
//! destination pages were handed out (a forward queued before may still use them), and returns
//! an event recorded after the copy; the caller waits for that event (not for the context)
//! before it tells the prefill the pages may be reused. Both pools are `[layer][k|v][page][chunk]`.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys;
use cudarc::driver::{CudaEvent, CudaFunction, CudaStream};

use super::device::GpuContext;
use super::error::{ensure, CudaError, Result};
use super::launch::{launch, Arg, Dims};
use super::nvrtc::Program;
use super::tensor::{DTensor, DType};
use super::transfer::PageLayout;

/// Bytes one block of `kv_pool_copy` moves at most (a chunk is cut into runs of this size).
const RUN_BYTES: usize = 32 << 10;

fn call(rc: sys::CUresult, name: &'static str) -> Result<()> {
    rc.result()
        .map_err(|source| CudaError::Call { call: name, source })
}

/// Copies pages between two pools of the same chunk geometry on one stream.
pub struct PeerCopy {
    ctx: Arc<GpuContext>,
    stream: Arc<CudaStream>,
    kernel: CudaFunction,
    /// Reused page lists: `[src ids | dst ids]`, capacity in pages.
    lists: Mutex<Option<(DTensor, usize)>>,
}

impl PeerCopy {
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self> {
        ctx.cuda().bind_to_thread()?;
        let (_, greatest) = cudarc::driver::result::stream::get_priority_range()?;
        let stream = ctx.cuda().new_stream_with_priority(greatest)?;
        let kernel = ctx.function(Program::Transfer, "kv_pool_copy")?;
        Ok(Self {
            ctx,
            stream,
            kernel,
            lists: Mutex::new(None),
        })
    }

    /// The copy's stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Queues the copy of page `src_pages[i]` of pool `src` (its memory and layout) into page
    /// `dst_pages[i]` of pool `dst` (same layers and chunk size), every layer, K and V, after
    /// `after` (an event of another stream of this context) when given. Returns the event
    /// recorded after the copy (both pools must stay mapped until it completed) and, when
    /// `timed`, a timing event recorded before it once the stream waited for `after`: then both
    /// are timing events and `start.elapsed_ms(&end)` is the copy's own device time.
    pub fn copy(
        &self,
        src: (&DTensor, PageLayout),
        dst: (&DTensor, PageLayout),
        src_pages: &[u32],
        dst_pages: &[u32],
        after: Option<&CudaEvent>,
        timed: bool,
    ) -> Result<(Option<CudaEvent>, Arc<CudaEvent>)> {
        let ((src, src_layout), (dst, dst_layout)) = (src, dst);
        let n = src_pages.len();
        ensure(dst_pages.len() == n, || {
            format!("{n} source pages for {} destination pages", dst_pages.len())
        })?;
        ensure(
            src_layout.layers == dst_layout.layers
                && src_layout.chunk_bytes == dst_layout.chunk_bytes,
            || {
                format!(
                    "pools of {} layers x {} B chunks and {} x {} B",
                    src_layout.layers,
                    src_layout.chunk_bytes,
                    dst_layout.layers,
                    dst_layout.chunk_bytes
                )
            },
        )?;
        let chunk = src_layout.chunk_bytes;
        ensure(chunk % 16 == 0 && chunk > 0, || {
            format!("chunk of {chunk} bytes is not a multiple of 16")
        })?;
        for (what, t, l) in [
            ("source", src, src_layout),
            ("destination", dst, dst_layout),
        ] {
            ensure(t.bytes() >= l.pool_bytes(), || {
                format!(
                    "{what} pool of {} bytes, layout says {}",
                    t.bytes(),
                    l.pool_bytes()
                )
            })?;
            ensure(t.ptr() % 16 == 0, || {
                format!("{what} pool is not 16-byte aligned")
            })?;
        }
        ensure(
            src_pages
                .iter()
                .all(|&p| (p as usize) < src_layout.pool_pages)
                && dst_pages
                    .iter()
                    .all(|&p| (p as usize) < dst_layout.pool_pages),
            || "a page outside its pool".into(),
        )?;
        self.ctx.check_device("destination pool", dst)?;
        self.ctx.cuda().bind_to_thread()?;
        let s = self.stream.cu_stream();
        if let Some(e) = after {
            self.stream.wait(e)?;
        }
        let timing = timed.then_some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = match timing {
            Some(f) => Some(self.stream.record_event(Some(f))?),
            None => None,
        };
        if n > 0 {
            let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
            if lists.as_ref().is_none_or(|(_, cap)| *cap < n) {
                let cap = n.next_power_of_two().max(64);
                // The old buffer (if any) is freed on this stream, after the copies that read it.
                *lists = Some((DTensor::alloc(&self.stream, DType::I32, &[2 * cap])?, cap));
            }
            let (ids, cap) = lists.as_ref().expect("set above");
            let mut host: Vec<i32> = Vec::with_capacity(2 * cap);
            host.extend(src_pages.iter().map(|&p| p as i32));
            host.resize(*cap, 0);
            host.extend(dst_pages.iter().map(|&p| p as i32));
            // SAFETY: `ids` holds 2 * cap i32 and `host` n + cap <= 2 * cap of them; a pageable
            // source is copied to the driver's staging memory before the call returns, so
            // `host` may go right after it; the write is ordered after earlier copies on `s`.
            call(
                unsafe {
                    sys::cuMemcpyHtoDAsync_v2(
                        ids.ptr(),
                        host.as_ptr() as *const c_void,
                        4 * host.len(),
                        s,
                    )
                },
                "cuMemcpyHtoDAsync",
            )?;
            let parts = chunk.div_ceil(RUN_BYTES);
            let n16 = chunk / 16;
            let threads = (n16.div_ceil(parts).div_ceil(4).div_ceil(32) * 32).clamp(32, 256);
            let blocks = n * src_layout.layers * 2 * parts;
            ensure(blocks < i32::MAX as usize, || format!("{blocks} blocks"))?;
            let args = [
                Arg::U64(src.ptr()),
                Arg::U64(dst.ptr()),
                Arg::U64(ids.ptr()),
                Arg::U64(ids.ptr() + 4 * *cap as u64),
                Arg::I32(src_layout.layers as i32),
                Arg::U64(src_layout.pool_pages as u64),
                Arg::U64(dst_layout.pool_pages as u64),
                Arg::U64(chunk as u64),
                Arg::I32(parts as i32),
            ];
            // SAFETY: the argument list is kv_pool_copy's; page ids were range-checked against
            // both pools, both pools hold their layouts' bytes, chunks are 16-byte multiples and
            // both bases 16-byte aligned; the lists stay allocated until a later copy on this
            // stream replaces them.
            unsafe { launch(&self.kernel, s, Dims::rows(blocks, threads as u32), &args) }?;
        }
        Ok((start, Arc::new(self.stream.record_event(timing)?)))
    }

    /// Raw device-to-device copies of `(dst, src, bytes)` device addresses, all queued on this
    /// stream, then waited for; returns the seconds from the first call to completion seen by the
    /// host (the baseline of `strata bench pd-transfer` on the GPU).
    ///
    /// # Safety
    /// Every range must lie inside memory mapped in this context (allocated or opened over IPC)
    /// for as long as the call runs, and no destination range may be in use by other work.
    pub unsafe fn memcpy_ranges(&self, ranges: &[(u64, u64, usize)]) -> Result<f64> {
        self.ctx.cuda().bind_to_thread()?;
        let t = std::time::Instant::now();
        for &(dst, src, bytes) in ranges {
            // SAFETY: the caller's contract.
            call(
                unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream.cu_stream()) },
                "cuMemcpyDtoDAsync",
            )?;
        }
        self.stream.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Raw device-to-device copy of `bytes` bytes between two buffers on this stream, `rounds`
    /// times; returns the seconds of each round, launch to completion seen by the host (the
    /// baseline of the PD transfer rate).
    pub fn memcpy_rounds(&self, src: &DTensor, dst: &DTensor, rounds: usize) -> Result<Vec<f64>> {
        let one = [(dst.ptr(), src.ptr(), src.bytes().min(dst.bytes()))];
        // SAFETY: both ranges lie inside their tensors, which outlive the call.
        (0..rounds)
            .map(|_| unsafe { self.memcpy_ranges(&one) })
            .collect()
    }
}
