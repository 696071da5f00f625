//! The decode's fetch threads: kept between fetches instead of one new thread per fetch (a thread
//! start was ~0.1 ms of a GPU transfer's fixed cost on the H200 machine, docs/perf.md). Every job
//! starts at once: a job finding no idle thread gets a new one, so fetches never queue behind
//! each other; a thread idle for [`IDLE_EXIT`] ends.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// An idle fetch thread ends after this long without a job.
const IDLE_EXIT: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job (each takes at most one queued job when woken).
    idle: usize,
    /// Threads alive.
    threads: usize,
}

/// A pool of fetch threads.
#[derive(Default)]
pub struct Workers {
    q: Arc<(Mutex<Queue>, Condvar)>,
}

impl Workers {
    /// Runs `job` on an idle thread, or on a new one when every thread is busy or already
    /// promised to an earlier job.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let mut g = self.q.0.lock();
        g.jobs.push_back(Box::new(job));
        if g.jobs.len() <= g.idle {
            self.q.1.notify_one();
            return Ok(());
        }
        g.threads += 1;
        drop(g);
        let q = self.q.clone();
        let spawned = std::thread::Builder::new()
            .name("strata-pd-fetch".into())
            .spawn(move || work(&q));
        if spawned.is_err() {
            let mut g = self.q.0.lock();
            g.threads -= 1;
            g.jobs.pop_back();
        }
        spawned.map(|_| ())
    }

    /// Threads alive now.
    #[cfg(test)]
    fn threads(&self) -> usize {
        self.q.0.lock().threads
    }
}

fn work(q: &(Mutex<Queue>, Condvar)) {
    let mut g = q.0.lock();
    loop {
        if let Some(job) = g.jobs.pop_front() {
            drop(g);
            job();
            g = q.0.lock();
            continue;
        }
        g.idle += 1;
        let timed_out = q.1.wait_for(&mut g, IDLE_EXIT).timed_out();
        g.idle -= 1;
        if timed_out && g.jobs.is_empty() {
            g.threads -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// Jobs run together (each waits for all the others), and finished threads are reused.
    #[test]
    fn jobs_start_at_once_and_threads_are_reused() {
        let w = Workers::default();
        for round in 0..3 {
            let n = 6;
            let all = Arc::new(Barrier::new(n + 1));
            for _ in 0..n {
                let all = all.clone();
                w.run(move || {
                    all.wait();
                })
                .unwrap();
            }
            all.wait(); // every job was running at once, or this would hang
            assert!(w.threads() <= n + round, "{} threads", w.threads());
            // Let the threads go idle before the next round.
            let t0 = std::time::Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                let g = w.q.0.lock();
                if g.idle == g.threads {
                    break;
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(
            w.threads(),
            6,
            "the later rounds reused the first round's threads"
        );
    }
}
