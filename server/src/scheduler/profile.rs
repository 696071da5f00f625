//! The scheduler thread's own step profile: where its time goes per forward (the runner logs
//! the device side: `model/cuda`'s step profile). Logged every 512 forwards at info level.

/// Where the scheduler thread's time goes per forward, logged every 512 forwards: `outside`
/// (the loop between rounds: messages, aborts, gauges), `schedule` (the round's decisions up to
/// its batch), `launch` (building and launching the batch) and `collect` (taking forwards back:
/// the wait for the device included, then streaming and finishing).
#[derive(Default)]
pub(super) struct RoundProfile {
    rounds: u64,
    outside: f64,
    schedule: f64,
    launch: f64,
    collect: f64,
    round_start: Option<std::time::Instant>,
    last_end: Option<std::time::Instant>,
}

impl RoundProfile {
    /// A round starts.
    pub fn start(&mut self) {
        let now = std::time::Instant::now();
        if let Some(e) = self.last_end.take() {
            self.outside += now.duration_since(e).as_secs_f64();
        }
        self.round_start = Some(now);
    }

    /// A round ran a forward: its parts' ends.
    pub fn add(&mut self, launching: std::time::Instant, launched: std::time::Instant) {
        let now = std::time::Instant::now();
        let start = self.round_start.take().unwrap_or(launching);
        self.rounds += 1;
        self.schedule += launching.duration_since(start).as_secs_f64();
        self.launch += launched.duration_since(launching).as_secs_f64();
        self.collect += now.duration_since(launched).as_secs_f64();
        self.last_end = Some(now);
        if self.rounds == 512 {
            let us = |x: f64| (x / self.rounds as f64 * 1e6).round();
            tracing::info!(
                rounds = self.rounds,
                outside_us = us(self.outside),
                schedule_us = us(self.schedule),
                launch_us = us(self.launch),
                collect_us = us(self.collect),
                "scheduler: time per forward"
            );
            *self = RoundProfile::default();
        }
    }
}
