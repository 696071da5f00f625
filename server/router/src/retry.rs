//! Retry rules: which worker replies are retried, and the backoff between attempts
//! (`initial * multiplier^n`, capped, then spread by ±jitter).

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// Statuses worth another attempt (possibly on another worker).
pub fn is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Whether a reply counts against the worker's circuit: only server-side failures do; 4xx never.
pub fn is_worker_failure(status: u16) -> bool {
    status >= 500
}

/// Delay before retry number `retry` (0 for the first retry).
pub fn backoff(cfg: &RetryConfig, retry: u32, rng: &mut impl Rng) -> Duration {
    let base = cfg.initial_backoff_ms as f64 * (cfg.backoff_multiplier as f64).powi(retry as i32);
    let capped = base.min(cfg.max_backoff_ms as f64);
    let j = cfg.jitter_factor as f64;
    let factor = if j > 0.0 {
        rng.random_range(1.0 - j..=1.0 + j)
    } else {
        1.0
    };
    Duration::from_micros((capped * factor * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn exponential_capped_and_jittered() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let exact = RetryConfig {
            jitter_factor: 0.0,
            ..Default::default()
        };
        let ms: Vec<u128> = (0..4)
            .map(|n| backoff(&exact, n, &mut rng).as_millis())
            .collect();
        assert_eq!(ms, [50, 75, 112, 168]);
        assert_eq!(backoff(&exact, 40, &mut rng), Duration::from_secs(30));
        let jit = RetryConfig::default();
        for _ in 0..200 {
            let d = backoff(&jit, 0, &mut rng).as_micros();
            assert!((40_000..=60_000).contains(&d), "{d}");
        }
    }

    #[test]
    fn classification() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(s));
        }
        for s in [200, 400, 401, 404, 501] {
            assert!(!is_retryable(s));
        }
        assert!(!is_worker_failure(429) && !is_worker_failure(400) && is_worker_failure(503));
    }
}
