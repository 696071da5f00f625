//! Scheduler hooks: the seams the hierarchical cache (L2/L3 prefetch) and PD disaggregation plug
//! into without the scheduler knowing about them.

/// Decides whether a newly queued request must wait for KV to be fetched from elsewhere (the host
/// pool, the L3 store, a prefill server). A held request is skipped by admission — it never blocks
/// the requests behind it — until [`ready`](Self::ready) says so.
pub trait PrefetchHook: Send {
    /// Called once when `rid` is queued with `tokens`, of which `cached` are already in the device
    /// prefix cache. Returns true to hold the request.
    fn on_enqueue(&mut self, rid: &str, tokens: &[u32], cached: usize) -> bool;
    /// Polled each scheduling round for a held request; true releases it.
    fn ready(&mut self, rid: &str) -> bool;
    /// The request left the queue (admitted or aborted).
    fn on_dequeue(&mut self, _rid: &str) {}
}

/// The default: nothing to fetch.
#[derive(Debug, Default)]
pub struct NoPrefetch;

impl PrefetchHook for NoPrefetch {
    fn on_enqueue(&mut self, _: &str, _: &[u32], _: usize) -> bool {
        false
    }
    fn ready(&mut self, _: &str) -> bool {
        true
    }
}
