//! Data parallelism (SGLang's `--dp-size`): several replicas of the model, each with its own
//! scheduler thread, KV pool, prefix cache and host tier (an L3 is shared by all of them), behind
//! one HTTP server. A request goes to one replica by `--load-balance-method`; control messages
//! (abort, pause, flush, weight updates, L3 attach) go to every replica.
//!
//! The balancer's view of a replica is its [`ReplicaLoad`]: the handle adds a request when it
//! submits it, the replica's scheduler takes it off when the request finishes (or is refused).

use super::request::Request;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `--load-balance-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalance {
    /// Replicas in turn (SGLang's default).
    #[default]
    RoundRobin,
    /// The replica with the fewest unfinished requests (ties: the lowest index).
    ShortestQueue,
    /// The replica with the fewest unfinished tokens (prompt + `max_new_tokens` of each).
    MinimumTokens,
}

impl LoadBalance {
    /// SGLang's names (`auto` is round robin without a PD role, as SGLang resolves it).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "round_robin" | "auto" => Ok(LoadBalance::RoundRobin),
            "shortest_queue" => Ok(LoadBalance::ShortestQueue),
            "minimum_tokens" => Ok(LoadBalance::MinimumTokens),
            other => Err(format!(
                "--load-balance-method {other}: expected round_robin, shortest_queue, minimum_tokens or auto"
            )),
        }
    }
}

/// One replica's unfinished work.
#[derive(Debug, Default)]
pub struct ReplicaLoad {
    requests: AtomicUsize,
    tokens: AtomicUsize,
    /// Of `requests`, those waiting for admission (published by the scheduler each round).
    waiting: AtomicUsize,
}

/// What a request weighs under `minimum_tokens`.
fn cost(req: &Request) -> usize {
    req.input_ids.len() + req.params.max_new_tokens
}

impl ReplicaLoad {
    /// A request was handed to the replica.
    pub fn add(&self, req: &Request) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.tokens.fetch_add(cost(req), Ordering::Relaxed);
    }

    /// A request the replica was handed is done (finished, aborted or refused).
    pub fn done(&self, req: &Request) {
        let sub = |a: &AtomicUsize, n: usize| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.requests, 1);
        sub(&self.tokens, cost(req));
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn tokens(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The scheduler's waiting queue length.
    pub fn set_waiting(&self, n: usize) {
        self.waiting.store(n, Ordering::Relaxed);
    }
}

/// The replica for the next request: `turn` counts requests placed so far (round robin).
pub fn pick(method: LoadBalance, loads: &[&ReplicaLoad], turn: usize) -> usize {
    let least = |f: &dyn Fn(&ReplicaLoad) -> usize| {
        (0..loads.len())
            .min_by_key(|&i| (f(loads[i]), i))
            .unwrap_or(0)
    };
    match method {
        LoadBalance::RoundRobin => turn % loads.len().max(1),
        LoadBalance::ShortestQueue => least(&|l| l.requests()),
        LoadBalance::MinimumTokens => least(&|l| l.tokens()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    fn req(prompt: usize, max_new: usize) -> Request {
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        Request {
            rid: "r".into(),
            input_ids: vec![1; prompt],
            params: SamplingParams {
                max_new_tokens: max_new,
                ..SamplingParams::default()
            },
            logprobs: None,
            events: tx,
            arrival: std::time::Instant::now(),
            bootstrap: None,
            embed: false,
        }
    }

    #[test]
    fn each_method_picks_as_documented() {
        let loads: Vec<ReplicaLoad> = (0..3).map(|_| ReplicaLoad::default()).collect();
        let view: Vec<&ReplicaLoad> = loads.iter().collect();
        let turns: Vec<usize> = (0..4)
            .map(|t| pick(LoadBalance::RoundRobin, &view, t))
            .collect();
        assert_eq!(turns, [0, 1, 2, 0]);
        // Replica 0: two short requests; replica 1: one long one; replica 2: nothing yet.
        let (short, long) = (req(10, 10), req(500, 500));
        loads[0].add(&short);
        loads[0].add(&short);
        loads[1].add(&long);
        assert_eq!(pick(LoadBalance::ShortestQueue, &view, 0), 2);
        loads[2].add(&long);
        loads[2].add(&short);
        // Requests: 2, 1, 2 -> replica 1; tokens: 40, 1000, 1020 -> replica 0.
        assert_eq!(pick(LoadBalance::ShortestQueue, &view, 0), 1);
        assert_eq!(pick(LoadBalance::MinimumTokens, &view, 0), 0);
        loads[0].done(&short);
        loads[0].done(&short);
        loads[0].done(&short); // one too many: stays at zero
        assert_eq!((loads[0].requests(), loads[0].tokens()), (0, 0));
        assert_eq!(LoadBalance::parse("auto"), Ok(LoadBalance::RoundRobin));
        assert!(LoadBalance::parse("random").is_err());
    }
}
