//! Routing policies: each one picks an index into a slice of available candidates.
//!
//! A policy never sees unhealthy or circuit-open workers (the pool filters them) and never
//! changes load counts (the caller does, at dispatch, through `LoadGuard`). `select` returns
//! `None` only for an empty slice. One file per policy, each with its own unit tests.

mod cache_aware;
mod power_of_two;
mod random;
mod round_robin;

pub use cache_aware::CacheAware;
pub use power_of_two::PowerOfTwo;
pub use random::RandomPolicy;
pub use round_robin::RoundRobin;

use crate::config::{CacheAwareConfig, PolicyKind};

/// One available worker as a policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: u32,
    pub url: &'a str,
    /// Requests in flight on it, counted at dispatch.
    pub load: usize,
}

/// What a request offers for prefix affinity: its token ids when given, else its text.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteKey<'a> {
    pub text: Option<&'a str>,
    pub ids: Option<&'a [u32]>,
}

pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Picks one of `candidates` for a request with `key`.
    fn select(&self, candidates: &[Candidate<'_>], key: &RouteKey<'_>) -> Option<usize>;
    /// Whether `select` uses the key (so callers may skip extracting it).
    fn needs_key(&self) -> bool {
        false
    }
    /// Forgets a removed worker.
    fn remove_worker(&self, _id: u32) {}
    /// Periodic upkeep (cache-aware tree eviction).
    fn maintain(&self) {}
}

/// Builds a policy; `seed` feeds the random ones (tests pass a fixed one).
pub fn build(kind: PolicyKind, cfg: &CacheAwareConfig, seed: u64) -> Box<dyn Policy> {
    match kind {
        PolicyKind::CacheAware => Box::new(CacheAware::new(cfg.clone())),
        PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
        PolicyKind::Random => Box::new(RandomPolicy::new(seed)),
        PolicyKind::PowerOfTwo => Box::new(PowerOfTwo::new(seed)),
    }
}

/// Index of the least-loaded candidate (the first one on ties).
pub(crate) fn least_loaded(c: &[Candidate<'_>]) -> Option<usize> {
    (0..c.len()).min_by_key(|&i| c[i].load)
}

#[cfg(test)]
pub(crate) fn cands(loads: &[usize]) -> Vec<Candidate<'static>> {
    loads
        .iter()
        .enumerate()
        .map(|(i, &load)| Candidate {
            id: i as u32 + 1,
            url: "http://w",
            load,
        })
        .collect()
}
