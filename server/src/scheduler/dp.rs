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
    /// Replicas in turn.
    RoundRobin,
    /// A PD leg goes to replica `bootstrap_room % replicas`, any other request round robin
    /// (SGLang's `auto`: round robin without a PD role, this with one).
    #[default]
    FollowBootstrapRoom,
    /// The replica with the fewest unfinished requests (ties: the lowest index).
    ShortestQueue,
    /// The replica with the fewest unfinished tokens (prompt + `max_new_tokens` of each).
    MinimumTokens,
}

impl LoadBalance {
    /// SGLang's names, old (`shortest_queue`, `minimum_tokens`) and new (`total_requests`,
    /// `total_tokens`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "follow_bootstrap_room" => Ok(LoadBalance::FollowBootstrapRoom),
            "round_robin" => Ok(LoadBalance::RoundRobin),
            "shortest_queue" | "total_requests" => Ok(LoadBalance::ShortestQueue),
            "minimum_tokens" | "total_tokens" => Ok(LoadBalance::MinimumTokens),
            other => Err(format!(
                "--load-balance-method {other}: expected auto, round_robin, follow_bootstrap_room, total_requests (shortest_queue) or total_tokens (minimum_tokens)"
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

/// The replica for the next request among `n` whose loads `load(i)` gives, a PD leg of `room`
/// when given: `turn` counts requests placed so far (round robin).
pub fn pick<'a>(
    method: LoadBalance,
    n: usize,
    load: impl Fn(usize) -> &'a ReplicaLoad,
    turn: usize,
    room: Option<u64>,
) -> usize {
    let n = n.max(1);
    if n == 1 {
        return 0;
    }
    let least =
        |f: &dyn Fn(&ReplicaLoad) -> usize| (0..n).min_by_key(|&i| (f(load(i)), i)).unwrap_or(0);
    match method {
        LoadBalance::FollowBootstrapRoom => room.map_or(turn % n, |r| (r % n as u64) as usize),
        LoadBalance::RoundRobin => turn % n,
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
        let view = |i: usize| &loads[i];
        for method in [LoadBalance::RoundRobin, LoadBalance::FollowBootstrapRoom] {
            let turns: Vec<usize> = (0..4).map(|t| pick(method, 3, view, t, None)).collect();
            assert_eq!(turns, [0, 1, 2, 0]);
        }
        // A PD leg follows its room; round robin ignores it.
        assert_eq!(
            pick(LoadBalance::FollowBootstrapRoom, 3, view, 0, Some(7)),
            1
        );
        assert_eq!(pick(LoadBalance::RoundRobin, 3, view, 0, Some(7)), 0);
        // Replica 0: two short requests; replica 1: one long one; replica 2: nothing yet.
        let (short, long) = (req(10, 10), req(500, 500));
        loads[0].add(&short);
        loads[0].add(&short);
        loads[1].add(&long);
        assert_eq!(pick(LoadBalance::ShortestQueue, 3, view, 0, None), 2);
        loads[2].add(&long);
        loads[2].add(&short);
        // Requests: 2, 1, 2 -> replica 1; tokens: 40, 1000, 1020 -> replica 0.
        assert_eq!(pick(LoadBalance::ShortestQueue, 3, view, 0, None), 1);
        assert_eq!(pick(LoadBalance::MinimumTokens, 3, view, 0, None), 0);
        loads[0].done(&short);
        loads[0].done(&short);
        loads[0].done(&short); // one too many: stays at zero
        assert_eq!((loads[0].requests(), loads[0].tokens()), (0, 0));
        assert_eq!(
            LoadBalance::parse("auto"),
            Ok(LoadBalance::FollowBootstrapRoom)
        );
        assert_eq!(
            LoadBalance::parse("total_tokens"),
            Ok(LoadBalance::MinimumTokens)
        );
        assert!(LoadBalance::parse("random").is_err());
    }
}
