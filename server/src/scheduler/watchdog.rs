//! SGLang's `--watchdog-timeout` and `--soft-watchdog-timeout`: a scheduler round (a forward
//! launched, the one before taken back) that runs longer than the timeout means a hung device,
//! kernel or copy. The hard watchdog logs it and exits the process (status 70, as for a lost GPU
//! context) so that a supervisor restarts the server, instead of a server that answers `/health`
//! while serving nothing; the soft one logs a warning once per round and lets it go on.
//!
//! The scheduler stamps a round's start and end ([`round`]: a guard, around each round and
//! around taking a forward in flight back outside one); a thread per scheduler looks at the
//! stamp a few times per timeout and stops when the scheduler is gone.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The limits (seconds; None: off).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WatchdogConfig {
    pub hard: Option<f64>,
    pub soft: Option<f64>,
}

/// A scheduler's round stamp.
#[derive(Debug, Default)]
pub struct Watchdog {
    /// When the round in progress started (ms after [`origin`], plus one); 0: none.
    since: AtomicU64,
}

fn origin() -> Instant {
    static O: OnceLock<Instant> = OnceLock::new();
    *O.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    origin().elapsed().as_millis() as u64 + 1
}

impl Watchdog {
    /// A stamp watched by its own thread (None when both limits are off).
    pub fn start(cfg: WatchdogConfig) -> Option<Arc<Self>> {
        let positive = |t: Option<f64>| t.filter(|&t| t > 0.0);
        let (hard, soft) = (positive(cfg.hard), positive(cfg.soft));
        let shortest = [hard, soft].into_iter().flatten().reduce(f64::min)?;
        let w = Arc::new(Watchdog::default());
        let weak = Arc::downgrade(&w);
        let every = Duration::from_secs_f64((shortest / 4.0).clamp(0.05, 1.0));
        let spawned = std::thread::Builder::new()
            .name("strata-watchdog".into())
            .spawn(move || watch(weak, hard, soft, every));
        if let Err(e) = spawned {
            tracing::warn!("the scheduler watchdog did not start: {e}");
        }
        Some(w)
    }

    /// A round starts, unless one is in progress (true: this call started it).
    fn enter(&self) -> bool {
        self.since
            .compare_exchange(0, now_ms(), Relaxed, Relaxed)
            .is_ok()
    }

    /// The round ended.
    fn leave(&self) {
        self.since.store(0, Relaxed);
    }

    /// How long the round in progress has run (None: no round).
    fn running_for(&self) -> Option<f64> {
        match self.since.load(Relaxed) {
            0 => None,
            s => Some(now_ms().saturating_sub(s) as f64 / 1000.0),
        }
    }
}

/// Stamps a round until dropped (nested in a round already stamped: that round's start stays).
pub struct Round(Option<Arc<Watchdog>>);

/// A round on `w`'s stamp (nothing without a watchdog).
pub fn round(w: &Option<Arc<Watchdog>>) -> Round {
    Round(w.as_ref().filter(|w| w.enter()).cloned())
}

impl Drop for Round {
    fn drop(&mut self) {
        if let Some(w) = &self.0 {
            w.leave();
        }
    }
}

fn watch(w: Weak<Watchdog>, hard: Option<f64>, soft: Option<f64>, every: Duration) {
    let mut warned = 0;
    loop {
        std::thread::sleep(every);
        let Some(w) = w.upgrade() else { return };
        let Some(t) = w.running_for() else { continue };
        if hard.is_some_and(|h| t > h) {
            tracing::error!(
                "watchdog: a scheduler round has run {t:.1} s (--watchdog-timeout {}): the device or a kernel hangs; exiting so a supervisor restarts the server",
                hard.unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200)); // (the log line out first)
            std::process::exit(70);
        }
        let round = w.since.load(Relaxed);
        if soft.is_some_and(|s| t > s) && warned != round {
            warned = round;
            tracing::warn!(
                "soft watchdog: a scheduler round has run {t:.1} s (--soft-watchdog-timeout {})",
                soft.unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_as_the_time_since_its_round_started() {
        assert!(Watchdog::start(WatchdogConfig::default()).is_none());
        assert!(Watchdog::start(WatchdogConfig {
            hard: Some(0.0),
            soft: None
        })
        .is_none());
        let w = Watchdog::start(WatchdogConfig {
            hard: None,
            soft: Some(1000.0),
        })
        .expect("a soft limit starts it");
        assert_eq!(w.running_for(), None);
        let w = Some(w);
        let outer = round(&w);
        std::thread::sleep(Duration::from_millis(30));
        let t = w.as_ref().unwrap().running_for().expect("in a round");
        assert!((0.02..5.0).contains(&t), "{t}");
        {
            let _inner = round(&w);
            let t2 = w.as_ref().unwrap().running_for().expect("still in it");
            assert!(t2 >= t, "a nested round keeps the outer start: {t2} < {t}");
        }
        assert!(
            w.as_ref().unwrap().running_for().is_some(),
            "the outer round goes on"
        );
        drop(outer);
        assert_eq!(w.as_ref().unwrap().running_for(), None);
    }
}
