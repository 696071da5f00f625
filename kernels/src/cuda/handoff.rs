//! Handoff counters: the kernels of a single-row decode step waiting for their predecessor on an
//! arrival counter instead of PDL's grid-completion wait.
//!
//! Under programmatic dependent launch a kernel's `griddepcontrol.wait` returns only once its
//! whole predecessor grid has completed and its writes are flushed. In the batch-1 step most
//! kernels are latency-bound (the attention, the norms) and that boundary is paid six times per
//! layer. With a chain begun ([`Chain::begin`], `STRATA_HANDOFF=1`), each handoff-aware kernel
//! (the single-row GEMVs, the row norms and the register cluster attention: `Hand` in
//! kernels/cuda/common.cuh) gets a pair of counters in the step's counter array: it spins on the
//! first until its predecessor's blocks have all counted themselves in, and counts each of its own
//! blocks into the second when its writes are done. Every other launch in between (another
//! kernel, a cuBLASLt call: [`broken`]) breaks the chain, so the next aware kernel waits by PDL
//! again. The counters are zeroed on the stream when the chain begins (a memset node in a
//! captured graph).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use cudarc::driver::sys::{self, CUstream};

use super::error::Result;
use super::launch::Arg;

/// Aware kernels one step's chain may hold (six a layer: room for 150-layer models).
const KERNELS: usize = 1024;
/// Words between two counters (common.cuh HAND_STRIDE: 128 bytes, one line each).
const STRIDE: usize = 32;
/// u32 words of a step's counter array.
pub const COUNTERS: usize = KERNELS * STRIDE;

#[derive(Clone, Copy)]
struct State {
    base: u64,
    next: usize,
    /// Blocks of the last aware kernel (0: the next one waits by PDL).
    need: u32,
    /// The launch about to be made took its counters from [`hand`].
    aware: bool,
}

thread_local! {
    static CHAIN: Cell<Option<State>> = const { Cell::new(None) };
}

static ON: OnceLock<AtomicBool> = OnceLock::new();

fn on_flag() -> &'static AtomicBool {
    ON.get_or_init(|| AtomicBool::new(std::env::var("STRATA_HANDOFF").is_ok_and(|v| v == "1")))
}

/// Whether single-row steps chain their kernels by counters (`STRATA_HANDOFF=1`; PDL must be on).
pub fn enabled() -> bool {
    on_flag().load(Ordering::Relaxed) && super::launch::pdl()
}

/// Whether the counter chain was asked for (`STRATA_HANDOFF=1` or [`set_enabled`]).
pub fn flag() -> bool {
    on_flag().load(Ordering::Relaxed)
}

/// Turns the counter chain on or off for later steps (for side-by-side timing).
pub fn set_enabled(on: bool) {
    on_flag().store(on, Ordering::Relaxed);
}

/// A begun chain; ends when dropped.
pub struct Chain(());

impl Chain {
    /// Begins a chain on `stream` with the counter array at `counters` (a device allocation of at
    /// least [`COUNTERS`] u32), zeroing it first; None when [`enabled`] is off.
    ///
    /// # Safety
    /// `counters` must address [`COUNTERS`] u32 of device memory that nothing else uses while
    /// the step's kernels run.
    pub unsafe fn begin(stream: CUstream, counters: u64) -> Result<Option<Chain>> {
        if !enabled() {
            return Ok(None);
        }
        // SAFETY: the caller guarantees the extent.
        unsafe { sys::cuMemsetD32Async(counters, 0, COUNTERS, stream) }.result()?;
        CHAIN.with(|c| {
            c.set(Some(State {
                base: counters,
                next: 0,
                need: 0,
                aware: false,
            }))
        });
        Ok(Some(Chain(())))
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        CHAIN.with(|c| c.set(None));
    }
}

/// The two trailing arguments (this kernel's counter, blocks to wait for) of an aware kernel about to be
/// launched with `blocks` blocks: null and 0 outside a chain.
pub(crate) fn hand(blocks: u32) -> [Arg; 2] {
    CHAIN.with(|c| match c.get() {
        Some(mut s) if s.next + 1 < KERNELS => {
            let at = s.base + (4 * STRIDE * s.next) as u64;
            let args = [Arg::U64(at), Arg::I32(s.need as i32)];
            s.next += 1;
            s.need = blocks;
            s.aware = true;
            c.set(Some(s));
            args
        }
        _ => [Arg::U64(0), Arg::I32(0)],
    })
}

/// Called for every kernel launch: one that did not take counters breaks the chain.
pub(crate) fn launched() {
    CHAIN.with(|c| {
        if let Some(mut s) = c.get() {
            if !std::mem::take(&mut s.aware) {
                s.need = 0;
            }
            c.set(Some(s));
        }
    });
}

/// Work on the stream that is not an aware kernel (a cuBLASLt call) breaks the chain.
pub(crate) fn broken() {
    CHAIN.with(|c| {
        if let Some(mut s) = c.get() {
            s.need = 0;
            s.aware = false;
            c.set(Some(s));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin_at(base: u64) {
        CHAIN.with(|c| {
            c.set(Some(State {
                base,
                next: 0,
                need: 0,
                aware: false,
            }))
        });
    }

    fn words(a: [Arg; 2]) -> (u64, i32) {
        match a {
            [Arg::U64(p), Arg::I32(n)] => (p, n),
            _ => panic!("two words"),
        }
    }

    #[test]
    fn aware_kernels_wait_on_their_predecessor_and_other_launches_break_the_chain() {
        assert_eq!(words(hand(8)), (0, 0), "no chain: null counters");
        begin_at(4096);
        // The first aware kernel waits by PDL (need 0) and counts into the next counter.
        assert_eq!(words(hand(192)), (4096, 0));
        launched();
        // The next waits for the 192 blocks of the first on counter 1.
        assert_eq!(words(hand(128)), (4096 + 128, 192));
        launched();
        // A kernel that takes no counters: the next aware one waits by PDL.
        launched();
        assert_eq!(words(hand(1)), (4096 + 256, 0));
        launched();
        assert_eq!(words(hand(256)), (4096 + 384, 1));
        launched();
        broken();
        assert_eq!(words(hand(4)), (4096 + 512, 0));
        launched();
        CHAIN.with(|c| c.set(None));
        assert_eq!(words(hand(8)), (0, 0));
    }
}
