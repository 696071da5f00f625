//! The seeded generator: SplitMix64 (`strata_kernels::seeded`), a tiny deterministic PRNG whose
//! stream is the same on every platform. Seeded sampling (`sampling`), the scheduler's
//! per-request seeds, the API driver's request seeds, `strata make-model`'s weights and
//! `strata bench serve`'s prompts all draw from it, so a seed names one output everywhere.

pub use strata_kernels::seeded::SplitMix64;

/// A randomised test's seed: `STRATA_TEST_SEED` when set, else the clock; printed after `what`
/// so a failure can be replayed.
#[cfg(test)]
pub(crate) fn test_seed(what: &str) -> u64 {
    print!("{what}: ");
    strata_kernels::seeded::test_seed()
}
