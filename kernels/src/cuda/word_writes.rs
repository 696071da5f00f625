//! Host-known words of small device buffers (a graph replay's batch metadata, a fixed decode
//! plan's tiles) brought up to date before each replay with as little stream work as possible:
//! a [`WordMirror`] remembers what the device holds, a [`WordBatch`] gathers the words that
//! differ from it across buffers, and [`GpuContext::write_batch`] sends them as one batch of
//! stream memory operations (`cuStreamBatchMemOp` 32-bit writes, executed by the GPU's front
//! end in stream order) instead of a host-to-device copy per buffer. More than
//! [`MEMOP_MAX`] words, a driver without stream memory operations or `STRATA_MEMOP_WRITES=0`:
//! each buffer with a change is copied whole, as before.
//!
//! Invariant: a mirror's words equal the device's only while every write to that buffer goes
//! through it; anything else that writes the buffer (a device-side copy, a blank reset) must
//! [`WordMirror::forget`] what it touched.

use std::sync::atomic::{AtomicU8, Ordering};

use cudarc::driver::sys;

use super::device::GpuContext;
use super::error::{CudaError, Result};
use super::tensor::DTensor;

/// Most words one batch of memory operations carries (more go up as copies).
pub const MEMOP_MAX: usize = 128;

/// What the device holds of one buffer's words, where known.
#[derive(Default)]
pub struct WordMirror {
    words: Vec<Option<i32>>,
}

impl WordMirror {
    /// Marks words `range` unknown (written behind the mirror's back).
    pub fn forget(&mut self, range: std::ops::Range<usize>) {
        for w in self.words.iter_mut().skip(range.start).take(range.len()) {
            *w = None;
        }
    }

    /// Marks every word unknown.
    pub fn clear(&mut self) {
        self.words.clear();
    }

    /// The indices of `new` that differ from (or are unknown to) the mirror, which then holds
    /// `new`.
    pub fn changes(&mut self, new: &[i32]) -> Vec<usize> {
        self.words.resize(new.len(), None);
        let mut out = Vec::new();
        for (i, (&v, known)) in new.iter().zip(self.words.iter_mut()).enumerate() {
            if *known != Some(v) {
                *known = Some(v);
                out.push(i);
            }
        }
        out
    }
}

/// The changed words of one or more buffers, to be sent by [`GpuContext::write_batch`].
#[derive(Default)]
pub struct WordBatch<'a> {
    /// (device address, value) of every changed word.
    words: Vec<(u64, i32)>,
    /// Each buffer with a change and its whole new contents (the copy fallback).
    whole: Vec<(&'a DTensor, Vec<i32>)>,
}

impl<'a> WordBatch<'a> {
    /// Adds the words of `new` (the first `new.len()` words of `t`) that `mirror` does not
    /// hold; the mirror then holds `new`.
    pub fn update(&mut self, t: &'a DTensor, mirror: &mut WordMirror, new: &[i32]) -> Result<()> {
        if t.dtype().size() != 4 || new.len() > t.numel() {
            return Err(CudaError::Shape(format!(
                "word batch: {} values into {:?}",
                new.len(),
                t.shape()
            )));
        }
        let changed = mirror.changes(new);
        if !changed.is_empty() {
            self.words
                .extend(changed.iter().map(|&i| (t.ptr() + 4 * i as u64, new[i])));
            self.whole.push((t, new.to_vec()));
        }
        Ok(())
    }

    /// Words to write.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// 0: not yet tried; 1: memory operations work; 2: they do not (or are turned off).
static MEMOPS: AtomicU8 = AtomicU8::new(0);

fn memops_on() -> bool {
    match MEMOPS.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("STRATA_MEMOP_WRITES").map_or(true, |v| v != "0");
            MEMOPS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
        s => s == 1,
    }
}

impl GpuContext {
    /// Sends `batch`'s words in stream order: one batch of memory operations when it holds
    /// at most [`MEMOP_MAX`] words, else (or without memory operations) a copy of each
    /// changed buffer. On an error the mirrors the batch was made from are stale: the caller
    /// clears them.
    pub fn write_batch(&self, batch: &WordBatch<'_>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.len() <= MEMOP_MAX && memops_on() {
            let mut ops: Vec<sys::CUstreamBatchMemOpParams> = batch
                .words
                .iter()
                .map(|&(addr, v)| {
                    // SAFETY: a plain-data union, zeroed; the write-value fields are set below.
                    let mut p: sys::CUstreamBatchMemOpParams = unsafe { std::mem::zeroed() };
                    p.writeValue.operation =
                        sys::CUstreamBatchMemOpType::CU_STREAM_MEM_OP_WRITE_VALUE_32;
                    p.writeValue.address = addr;
                    p.writeValue.__bindgen_anon_1.value = v as u32;
                    p
                })
                .collect();
            self.cuda().bind_to_thread()?;
            // SAFETY: every address lies inside a live tensor of this context
            // (WordBatch::update checked the range); the driver copies the parameters.
            let r = unsafe {
                sys::cuStreamBatchMemOp_v2(
                    self.stream().cu_stream(),
                    ops.len() as u32,
                    ops.as_mut_ptr(),
                    0,
                )
            };
            match r {
                sys::CUresult::CUDA_SUCCESS => return Ok(()),
                sys::CUresult::CUDA_ERROR_NOT_SUPPORTED => {
                    tracing::info!("stream memory operations not supported: copies instead");
                    MEMOPS.store(2, Ordering::Relaxed);
                }
                e => return Err(cudarc::driver::DriverError(e).into()),
            }
        }
        for (t, data) in &batch.whole {
            self.write_i32(t, data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded random walk of buffer contents: the mirror reports exactly the words that
    /// differ from the previous contents (all of them at first and after a clear; forgotten
    /// words always), and nothing when the contents repeat.
    #[test]
    fn a_mirror_reports_exactly_the_changed_words() {
        let seed = crate::seeded::test_seed();
        let mut rng = crate::seeded::SplitMix64(seed);
        let mut m = WordMirror::default();
        let mut dev: Vec<Option<i32>> = Vec::new();
        for step in 0..500 {
            let n = rng.range(1, 40);
            let new: Vec<i32> = (0..n).map(|_| rng.range(0, 4) as i32).collect();
            match rng.range(0, 10) {
                0 => {
                    m.clear();
                    dev.clear();
                }
                1 => {
                    let a = rng.range(0, n);
                    let b = rng.range(a, n + 1);
                    m.forget(a..b);
                    for w in dev.iter_mut().skip(a).take(b - a) {
                        *w = None;
                    }
                }
                _ => {}
            }
            dev.resize(n, None);
            let want: Vec<usize> = (0..n).filter(|&i| dev[i] != Some(new[i])).collect();
            assert_eq!(m.changes(&new), want, "seed {seed} step {step}");
            assert!(
                m.changes(&new).is_empty(),
                "seed {seed} step {step}: repeat"
            );
            dev = new.iter().map(|&v| Some(v)).collect();
        }
    }
}
