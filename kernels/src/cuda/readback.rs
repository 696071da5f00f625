//! `Readback`: small device results (a forward's sampled token ids) brought to the host without
//! blocking the caller. Each slot is a region of pinned, device-mapped host memory;
//! [`Readback::queue`] puts a one-block kernel on the compute stream that stores the values into
//! it (`words_to_host`; `STRATA_READBACK_COPY=1`: an async device-to-host copy instead, the first
//! form, for A/B runs: a copy-engine transfer between two forwards holds the next one up by a
//! few microseconds) and records an event after it, and [`Readback::wait`] blocks on that event
//! only. The overlap scheduler keeps two forwards in
//! flight at most, so two slots are enough: a slot is queued again only after it was waited for.
//! A forward whose last kernel stores the values itself (the LM head's greedy pick through
//! `PickOut::host_cell`, given [`Readback::slot_device_ptr`]) needs neither: the caller
//! [`Readback::claim`]s the slot before queueing the forward and [`Readback::mark`]s it after.
//!
//! Invariant: the host side of a slot is read only after its event completed, and a slot is not
//! written again while its previous write may still be in flight (`queue` and `claim` wait for
//! it first).

use std::sync::Arc;

use cudarc::driver::{sys, CudaEvent, CudaFunction};

use super::device::GpuContext;
use super::error::{CudaError, Result};
use super::launch::{launch, Arg, Dims};
use super::nvrtc::Program;
use super::pinned::PinnedBuf;
use super::tensor::DTensor;

/// Pinned slots of `words` 4-byte values each, with the event of each slot's last copy.
pub struct Readback {
    ctx: Arc<GpuContext>,
    buf: PinnedBuf,
    words: usize,
    events: Vec<Option<CudaEvent>>,
    /// `words_to_host`, or None for the copy-engine form.
    store: Option<CudaFunction>,
}

impl Readback {
    /// `slots` slots of `words` values each.
    pub fn new(ctx: &Arc<GpuContext>, slots: usize, words: usize) -> Result<Self> {
        Ok(Self {
            ctx: ctx.clone(),
            buf: PinnedBuf::new(ctx, 4 * slots * words.max(1))?,
            words: words.max(1),
            events: (0..slots).map(|_| None).collect(),
            store: if std::env::var("STRATA_READBACK_COPY").is_ok_and(|v| v == "1") {
                None
            } else {
                Some(ctx.function(Program::Elementwise, "words_to_host")?)
            },
        })
    }

    /// Values one slot holds.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Queues a copy of the first `n` values of `src` into slot `k` after the work queued so far
    /// on the compute stream.
    pub fn queue(&mut self, k: usize, src: &DTensor, n: usize) -> Result<()> {
        if k >= self.events.len() || n > self.words || n > src.numel() || src.dtype().size() != 4 {
            return Err(CudaError::Shape(format!(
                "readback: {n} values of {:?} into slot {k} of {} x {}",
                src.shape(),
                self.events.len(),
                self.words
            )));
        }
        self.claim(k)?;
        self.ctx.cuda().bind_to_thread()?;
        let stream = self.ctx.stream();
        if let Some(f) = &self.store {
            let args = [
                Arg::U64(src.ptr()),
                Arg::U64(self.slot_device_ptr(k)),
                Arg::I32(n as i32),
            ];
            let dims = Dims {
                grid: (n.div_ceil(256).clamp(1, 64) as u32, 1, 1),
                block: 256,
                smem: 0,
            };
            // SAFETY: `src` holds at least `n` 4-byte values on this context (checked above);
            // the slot's n words lie inside the pinned buffer, mapped for the device (its
            // device address), and no write into the slot is in flight (its previous event
            // completed above).
            unsafe { launch(f, stream.cu_stream(), dims, &args) }?;
        } else {
            // SAFETY: the slot's range lies inside the pinned buffer and no copy into it is in
            // flight (its previous event completed above); `src` holds at least `n` values.
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    self.buf.host_ptr().add(4 * k * self.words) as *mut std::ffi::c_void,
                    src.ptr(),
                    4 * n,
                    stream.cu_stream(),
                )
                .result()?;
            }
        }
        self.mark(k)
    }

    /// The device address of slot `k`'s first value (slot `k` must exist), for a kernel that
    /// stores into the slot itself.
    pub fn slot_device_ptr(&self, k: usize) -> u64 {
        assert!(
            k < self.events.len(),
            "readback slot {k} of {}",
            self.events.len()
        );
        self.buf.device_ptr() + 4 * (k * self.words) as u64
    }

    /// Waits for slot `k`'s previous write, before work that writes the slot is queued.
    pub fn claim(&mut self, k: usize) -> Result<()> {
        let Some(ev) = self.events.get_mut(k) else {
            return Err(CudaError::Shape(format!("readback: no slot {k}")));
        };
        if let Some(ev) = ev.take() {
            ev.synchronize()?;
        }
        Ok(())
    }

    /// Records that the work queued so far on the compute stream writes slot `k` (claimed
    /// before that work was queued): [`Readback::wait`] returns once it completed.
    pub fn mark(&mut self, k: usize) -> Result<()> {
        if k >= self.events.len() {
            return Err(CudaError::Shape(format!("readback: no slot {k}")));
        }
        self.ctx.cuda().bind_to_thread()?;
        self.events[k] = Some(self.ctx.stream().record_event(None)?);
        Ok(())
    }

    /// Waits for every slot's copy still in flight (before the buffer is dropped).
    pub fn sync_all(&self) -> Result<()> {
        for ev in self.events.iter().flatten() {
            ev.synchronize()?;
        }
        Ok(())
    }

    /// Waits for slot `k`'s copy and returns its first `n` values.
    pub fn wait(&self, k: usize, n: usize) -> Result<Vec<i32>> {
        let Some(ev) = self.events.get(k).and_then(Option::as_ref) else {
            return Err(CudaError::Shape(format!(
                "readback: slot {k} was never queued"
            )));
        };
        ev.synchronize()?;
        let bytes =
            &self.buf.as_slice()[4 * k * self.words..4 * (k * self.words + n.min(self.words))];
        Ok(bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}
