//! The adaptive skip's estimates (SGLang issue #26305: a slow L3 made TTFT worse than
//! recompute): the prefill rate of this server and the L3's read bandwidth, both measured.
//!
//! - Nothing is skipped until both are measured (an unmeasured L3 is assumed fast).
//! - The read bandwidth is the aggregate rate: prefetches run in parallel (four reader threads),
//!   so one prefetch's bytes over its own wall time is only its share. A finished prefetch is
//!   counted together with the recent ones that overlapped it: their bytes over the span they
//!   covered together.
//! - A skipped L3 is never measured again, so after `EXPLORE_AFTER` skips in a row one prefetch
//!   goes ahead anyway to refresh the estimate.

use std::collections::VecDeque;
use std::time::Instant;

/// Skips in a row after which one prefetch goes ahead to re-measure the L3.
pub(super) const EXPLORE_AFTER: u32 = 8;
/// Finished prefetches remembered for the overlap accounting.
const RECENT: usize = 16;

#[derive(Debug, Default)]
pub(super) struct Estimates {
    /// Aggregate L3 read bandwidth, bytes/s; `None` until a prefetch finished.
    store_bw: Option<f64>,
    /// Prefill tokens/s; `None` until measured.
    prefill_rate: Option<f64>,
    /// (start, end, bytes) of recent finished prefetches.
    recent: VecDeque<(Instant, Instant, usize)>,
    skips_in_row: u32,
}

fn ewma(old: Option<f64>, new: f64, keep: f64) -> f64 {
    match old {
        Some(o) => keep * o + (1.0 - keep) * new,
        None => new,
    }
}

impl Estimates {
    /// Folds one prefill measurement (tokens computed in `secs`) into the recompute estimate.
    pub(super) fn observe_prefill(&mut self, tokens: usize, secs: f64) {
        if tokens >= 64 && secs > 0.0 {
            self.prefill_rate = Some(ewma(self.prefill_rate, tokens as f64 / secs, 0.8));
        }
    }

    /// Folds one finished prefetch (`bytes` read between `start` and `end`) into the bandwidth
    /// estimate; returns the aggregate rate of it and the prefetches that overlapped it.
    pub(super) fn observe_read(&mut self, start: Instant, end: Instant, bytes: usize) -> f64 {
        self.recent.push_back((start, end, bytes));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        let (mut lo, mut hi, mut sum) = (start, end, 0usize);
        for &(s, e, b) in &self.recent {
            if s < end && e > start || (s, e) == (start, end) {
                lo = lo.min(s);
                hi = hi.max(e);
                sum += b;
            }
        }
        let secs = hi.duration_since(lo).as_secs_f64().max(1e-6);
        let bw = sum as f64 / secs;
        self.store_bw = Some(ewma(self.store_bw, bw, 0.7));
        bw
    }

    /// Whether reading `bytes` for `tokens` tokens from the L3 should be skipped: its estimated
    /// load time exceeds the estimated recompute time (both measured), except every
    /// `EXPLORE_AFTER + 1`-th such case, which goes ahead to re-measure.
    pub(super) fn skip(&mut self, bytes: f64, tokens: usize) -> bool {
        let slow = match (self.store_bw, self.prefill_rate) {
            (Some(bw), Some(rate)) => bytes / bw > tokens as f64 / rate,
            _ => false,
        };
        if !slow || self.skips_in_row >= EXPLORE_AFTER {
            self.skips_in_row = 0;
            return false;
        }
        self.skips_in_row += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unmeasured_never_skips() {
        let mut e = Estimates::default();
        assert!(!e.skip(1e12, 1));
        e.observe_prefill(1000, 0.001);
        assert!(!e.skip(1e12, 1), "the L3 is not measured yet");
    }

    #[test]
    fn concurrent_prefetches_count_as_one_aggregate_rate() {
        let mut e = Estimates::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        // Four prefetches of 1 GB each over the same second: 4 GB/s, not 1.
        let mut last = 0.0;
        for _ in 0..4 {
            last = e.observe_read(t0, t1, 1_000_000_000);
        }
        assert!((last - 4e9).abs() < 1e6, "aggregate {last}");
        // A later, separate prefetch is measured on its own.
        let t2 = t1 + Duration::from_secs(5);
        let alone = e.observe_read(t2, t2 + Duration::from_millis(500), 1_000_000_000);
        assert!((alone - 2e9).abs() < 1e6, "alone {alone}");
    }

    #[test]
    fn slow_store_is_skipped_but_re_measured() {
        let mut e = Estimates::default();
        e.observe_prefill(10_000, 1.0); // 10K tokens/s
        let t0 = Instant::now();
        e.observe_read(t0, t0 + Duration::from_secs(1), 1_000_000); // 1 MB/s
                                                                    // 1,000 tokens of 128 KB each: 128 s to load vs 0.1 s to recompute.
        let skips: Vec<bool> = (0..2 * (EXPLORE_AFTER as usize + 1))
            .map(|_| e.skip(128e6, 1000))
            .collect();
        let gone_ahead = skips.iter().filter(|&&s| !s).count();
        assert_eq!(
            gone_ahead, 2,
            "one exploration per {EXPLORE_AFTER} skips: {skips:?}"
        );
        assert!(skips[..EXPLORE_AFTER as usize].iter().all(|&s| s));
        // A fast store is used.
        e.observe_read(t0, t0 + Duration::from_millis(1), 10_000_000_000);
        e.observe_read(t0, t0 + Duration::from_millis(1), 10_000_000_000);
        e.observe_read(t0, t0 + Duration::from_millis(1), 10_000_000_000);
        e.observe_read(t0, t0 + Duration::from_millis(1), 10_000_000_000);
        assert!(!e.skip(128e6, 1000));
    }
}
