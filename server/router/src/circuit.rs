//! Per-worker circuit breaker: Closed → (failure_threshold consecutive failures within the window)
//! → Open → (after timeout) → HalfOpen → (success_threshold successes) → Closed, or back to Open on
//! any failure while half-open.
//!
//! Time is passed in, so every transition is tested without sleeping. Only worker-side failures
//! (5xx, connection errors) are recorded as failures; 4xx replies never reach [`CircuitBreaker::record`]
//! as failures.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::CircuitConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    failures: u32,
    successes: u32,
    last_failure: Option<Instant>,
    opened_at: Option<Instant>,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    success_threshold: u32,
    timeout: Duration,
    window: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(cfg: &CircuitConfig) -> Self {
        Self {
            failure_threshold: cfg.failure_threshold.max(1),
            success_threshold: cfg.success_threshold.max(1),
            timeout: Duration::from_secs(cfg.timeout_duration_secs),
            window: Duration::from_secs(cfg.window_duration_secs),
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                failures: 0,
                successes: 0,
                last_failure: None,
                opened_at: None,
            }),
        }
    }

    pub fn state(&self) -> CircuitState {
        self.inner.lock().state
    }

    /// Whether a request may be sent now; an open circuit whose timeout passed turns half-open.
    pub fn can_execute(&self, now: Instant) -> bool {
        let mut s = self.inner.lock();
        match s.state {
            CircuitState::Closed | CircuitState::HalfOpen => true,
            CircuitState::Open => {
                let opened = s.opened_at.unwrap_or(now);
                if now.saturating_duration_since(opened) >= self.timeout {
                    s.state = CircuitState::HalfOpen;
                    s.successes = 0;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Records the outcome of one request sent to the worker.
    pub fn record(&self, success: bool, now: Instant) {
        let mut s = self.inner.lock();
        match (s.state, success) {
            (CircuitState::Closed, true) => s.failures = 0,
            (CircuitState::Closed, false) => {
                let stale = s
                    .last_failure
                    .is_some_and(|t| now.saturating_duration_since(t) > self.window);
                if stale {
                    s.failures = 0;
                }
                s.failures += 1;
                s.last_failure = Some(now);
                if s.failures >= self.failure_threshold {
                    s.state = CircuitState::Open;
                    s.opened_at = Some(now);
                }
            }
            (CircuitState::HalfOpen, true) => {
                s.successes += 1;
                if s.successes >= self.success_threshold {
                    s.state = CircuitState::Closed;
                    s.failures = 0;
                }
            }
            (CircuitState::HalfOpen, false) => {
                s.state = CircuitState::Open;
                s.opened_at = Some(now);
            }
            (CircuitState::Open, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cb() -> CircuitBreaker {
        CircuitBreaker::new(&CircuitConfig {
            failure_threshold: 3,
            success_threshold: 2,
            timeout_duration_secs: 10,
            window_duration_secs: 60,
        })
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let (c, t0) = (cb(), Instant::now());
        for _ in 0..2 {
            c.record(false, t0);
        }
        assert_eq!(c.state(), CircuitState::Closed);
        c.record(false, t0);
        assert_eq!(c.state(), CircuitState::Open);
        assert!(!c.can_execute(t0 + Duration::from_secs(9)));
        assert!(c.can_execute(t0 + Duration::from_secs(10)));
        assert_eq!(c.state(), CircuitState::HalfOpen);
        c.record(true, t0);
        assert_eq!(c.state(), CircuitState::HalfOpen);
        c.record(true, t0);
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[test]
    fn half_open_failure_reopens_and_success_resets_count() {
        let (c, t0) = (cb(), Instant::now());
        c.record(false, t0);
        c.record(false, t0);
        c.record(true, t0);
        c.record(false, t0);
        assert_eq!(
            c.state(),
            CircuitState::Closed,
            "a success resets the consecutive count"
        );
        for _ in 0..3 {
            c.record(false, t0);
        }
        assert!(c.can_execute(t0 + Duration::from_secs(11)));
        c.record(false, t0 + Duration::from_secs(11));
        assert_eq!(c.state(), CircuitState::Open);
        assert!(!c.can_execute(t0 + Duration::from_secs(12)));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let (c, t0) = (cb(), Instant::now());
        c.record(false, t0);
        c.record(false, t0);
        c.record(false, t0 + Duration::from_secs(61));
        assert_eq!(c.state(), CircuitState::Closed);
    }
}
