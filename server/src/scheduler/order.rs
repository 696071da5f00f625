//! Applies `--schedule-policy` to the waiting queue before admission: builds each request's
//! [`Candidate`] (cached prefix from a read-only peek at the radix tree, only for the cache-aware
//! policies) and reorders the queue by the policy's permutation.

use super::policy::{order, Candidate, SchedulePolicy, CACHE_AWARE_MAX_QUEUE};
use super::Scheduler;
use crate::model::ModelRunner;

impl<R: ModelRunner> Scheduler<R> {
    /// Reorders `waiting` for this round's admission (fcfs leaves it alone).
    pub(super) fn order_waiting(&mut self) {
        let policy = self.policy;
        if policy == SchedulePolicy::Fcfs || self.waiting.len() < 2 {
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
                    self.tree.peek_prefix(&s.tokens[..s.cache_match_limit()])
                } else {
                    (0, Vec::new())
                };
                Candidate {
                    tokens: &s.tokens,
                    cached,
                    path,
                    max_new_tokens: s.req.params.max_new_tokens,
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
}
