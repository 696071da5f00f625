//! Applies `--schedule-policy` to the waiting queue before admission: builds each request's
//! [`Candidate`] (cached prefix from a read-only peek at the radix tree, only for the cache-aware
//! policies; the priority rank under `--enable-priority-scheduling`) and reorders the queue by
//! the policy's permutation; and priority preemption (`policy.rs`).

use super::policy::{order, Candidate, SchedulePolicy, CACHE_AWARE_MAX_QUEUE};
use super::seq::Seq;
use super::Scheduler;
use crate::model::ModelRunner;

impl<R: ModelRunner> Scheduler<R> {
    /// Reorders `waiting` for this round's admission (fcfs without priorities leaves it alone).
    pub(super) fn order_waiting(&mut self) {
        let policy = self.policy;
        let pr = self.cfg.priority;
        if (policy == SchedulePolicy::Fcfs && !pr.enabled) || self.waiting.len() < 2 {
            return;
        }
        let peek = match policy {
            SchedulePolicy::Lpm => self.waiting.len() <= CACHE_AWARE_MAX_QUEUE,
            SchedulePolicy::DfsWeight => true,
            _ => false,
        };
        let waiting = self.waiting.make_contiguous();
        let cands: Vec<Candidate<'_>> = waiting
            .iter()
            .map(|s| {
                let (cached, path) = if peek {
                    self.tree
                        .peek_prefix(s.ns, &s.tokens[..s.cache_match_limit()])
                } else {
                    (0, Vec::new())
                };
                Candidate {
                    tokens: &s.tokens,
                    cached,
                    path,
                    max_new_tokens: s.req.params.max_new_tokens,
                    rank: pr.enabled.then(|| pr.rank(s.req.params.priority)),
                }
            })
            .collect();
        let perm = order(policy, &cands, &mut self.policy_rng);
        drop(cands);
        let mut slots: Vec<Option<_>> = self.waiting.drain(..).map(Some).collect();
        self.waiting = perm
            .into_iter()
            .map(|i| slots[i].take().expect("a permutation"))
            .collect();
    }

    /// `s`'s priority rank (smaller goes first; see `policy.rs`).
    pub(super) fn rank(&self, s: &Seq) -> i64 {
        self.cfg.priority.rank(s.req.params.priority)
    }

    /// Priority preemption: with every running slot taken, or when the last round's admission
    /// found no KV room, the lowest-ranked running request (the newest of equals; not a PD leg
    /// whose KV went out) is retracted when the best waiting one outranks it by more than the
    /// threshold. One per round.
    pub(super) fn preempt_for_priority(&mut self) {
        let kv_blocked = std::mem::take(&mut self.kv_blocked);
        let pr = self.cfg.priority;
        let (true, Some(threshold)) = (pr.enabled, pr.preempt_threshold) else {
            return;
        };
        if self.running.len() < self.cfg.max_running_requests && !kv_blocked {
            return;
        }
        let Some(best) = self
            .waiting
            .iter()
            .filter(|s| !s.held && !s.pd_fetch)
            .map(|s| self.rank(s))
            .min()
        else {
            return;
        };
        let worst = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, s)| s.pd_sent == 0)
            .map(|(i, s)| (self.rank(s), i))
            .max();
        if let Some((rank, i)) = worst {
            if rank.saturating_sub(best) > threshold {
                let s = self.running.remove(i);
                self.requeue(s, "preempted by a higher-priority request");
            }
        }
    }
}
