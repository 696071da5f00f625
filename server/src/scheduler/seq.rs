//! A request inside the scheduler: its tokens, how many have KV in the cache, and the pages that
//! hold them.
//!
//! Invariant: `prefix_pages` are pages of the radix cache locked through `lock_node`;
//! `own_pages` belong to this sequence alone; together they cover at least the first `computed`
//! tokens. Dropping a `Seq` frees its own pages (RAII); the scheduler unlocks the radix node on every
//! exit path through `Scheduler::release`. The two lists change only through the methods here,
//! which keep the page table (`page_table`) in step: a decode step appends to it and hands it to
//! the forward without copying it.

use super::overlap::PLACEHOLDER;
use super::request::{FinishReason, Request};
use crate::cache::{CacheNs, NodeId};
use crate::kv::{Page, PageId};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
pub struct Seq {
    pub req: Request,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are stored.
    pub computed: usize,
    prefix_pages: Vec<PageId>,
    pub lock_node: Option<NodeId>,
    own_pages: Vec<Page>,
    /// `prefix_pages` then the ids of `own_pages`.
    table: Arc<Vec<PageId>>,
    /// Prompt tokens served from the prefix cache at (first) admission.
    pub cached_tokens: usize,
    /// Times it was retracted (`Scheduler::requeue`).
    pub retractions: usize,
    pub held: bool,
    /// Held until its prompt's KV arrives from a PD prefill server.
    pub pd_fetch: bool,
    pub admitted_once: bool,
    pub seed: u64,
    pub first_token_at: Option<Instant>,
    /// Input log-probabilities: whether the first reported prompt position (which has no value)
    /// is still to be sent, and the next logits row of the prompt whose log-probabilities are
    /// owed (row `r` scores prompt token `r + 1`). Rows already reported are never sent again,
    /// even when a retraction recomputes them.
    pub lp_head: bool,
    pub lp_row: usize,
    /// PD prefill leg: the first output token's log-probabilities, handed to the decode side.
    pub first_lp: Option<Box<crate::logprobs::PosLogprobs>>,
    /// PD prefill leg: the prompt's pages already handed over as parts (finished chunks').
    pub pd_sent: usize,
    /// Constrained decoding: the walk of the request's grammar over its output from
    /// `grammar_from` on.
    pub walk: Option<crate::grammar::Walk>,
    /// Where in the output the grammar starts: 0, or (a request that reasons first) just past
    /// the reasoning end marker; None while the reasoning goes on (the output is free).
    pub grammar_from: Option<usize>,
    /// `stop_regex`: the walk of the request's patterns over its output.
    pub stop_walk: Option<crate::grammar::stop::StopWalk>,
    /// `return_hidden_states`: the next position whose hidden state is owed (positions already
    /// reported are never sent again, even when a retraction recomputes them).
    pub hidden_next: usize,
    /// The cache namespace of its KV (its adapter, its `extra_key`; None: the base model's).
    pub ns: Option<CacheNs>,
    /// Overlap scheduling (`overlap.rs`): its id among the scheduler's sequences, the forwards
    /// in flight that feed it, the logits row of the forward in flight that samples its pending
    /// token (a placeholder at the end of `tokens`), and the finish it met while a forward in
    /// flight still fed it (it ends when that forward is taken back).
    pub uid: u64,
    pub inflight: u32,
    pub pending_row: usize,
    pub zombie: Option<FinishReason>,
    /// Penalties: the output tokens counted so far, each once, ascending by token
    /// (`update_counts`).
    out_counts: Vec<(u32, u32)>,
}

impl Seq {
    /// The output tokens so far, each once with its count, ascending by token (what a penalty
    /// reads), brought up to date with the tokens added since the last call: a step costs its
    /// new token, not a count of the whole output. Placeholders (tokens still being sampled) are
    /// not counted: when a penalised sequence is sampled, its one placeholder is the input token
    /// fed forward, which the runner counts (`SampleReq::uncounted`).
    pub fn update_counts(&mut self) -> &[(u32, u32)] {
        let real = self.tokens.len() - self.prompt_len - self.pending();
        let mut counted: usize = self.out_counts.iter().map(|c| c.1 as usize).sum();
        if counted > real {
            self.out_counts.clear();
            counted = 0;
        }
        for &t in &self.tokens[self.prompt_len + counted..self.prompt_len + real] {
            strata_kernels::sample_rows::bump_count(&mut self.out_counts, t);
        }
        &self.out_counts
    }

    /// The counts as the last `update_counts` left them.
    pub fn counts(&self) -> &[(u32, u32)] {
        &self.out_counts
    }

    pub fn new(req: Request, seed: u64) -> Self {
        let tokens = req.input_ids.clone();
        let lp_start = req.logprobs.as_ref().map_or(tokens.len(), |l| l.start);
        let walk = req.params.grammar.as_ref().map(|g| g.0.walk_start());
        let stop_walk = req
            .params
            .stop_regex_compiled
            .as_ref()
            .map(|r| r.0.walk_start());
        let grammar_from = if req.params.think_end.is_some() {
            None
        } else {
            Some(0)
        };
        let ns = CacheNs::of(
            req.params.lora.as_ref().map(|l| &l.0.digest),
            req.params.extra_key.as_deref(),
        );
        Seq {
            ns,
            lp_head: lp_start < tokens.len(),
            lp_row: lp_start,
            prompt_len: tokens.len(),
            tokens,
            req,
            computed: 0,
            prefix_pages: Vec::new(),
            lock_node: None,
            own_pages: Vec::new(),
            table: Arc::default(),
            cached_tokens: 0,
            retractions: 0,
            held: false,
            pd_fetch: false,
            admitted_once: false,
            seed,
            first_token_at: None,
            first_lp: None,
            pd_sent: 0,
            walk,
            grammar_from,
            stop_walk,
            hidden_next: 0,
            uid: 0,
            inflight: 0,
            pending_row: 0,
            zombie: None,
            out_counts: Vec::new(),
        }
    }

    /// Its next forward may be launched before the token in flight is back: the token is drawn
    /// from its logits alone (what a runner can sample without the host,
    /// `SampleReq::from_logits_alone`), or when `grammar` also under a grammar's mask (the
    /// runner starts the forward and samples it once the mask is known,
    /// `ModelRunner::launch_later`); no hidden state. Temperature, top-k/p, min-p, logit
    /// bias, bans (the count of tokens decides those, and placeholders count), penalties (the
    /// token fed forward is counted on the device, `SampleReq::uncounted`) and output logprobs
    /// are fine when `wide` (`runner::overlap_wide_from_env`).
    pub fn samples_ahead(&self, wide: bool, grammar: bool) -> bool {
        let p = &self.req.params;
        (grammar || p.grammar.is_none())
            && !p.return_hidden_states
            && (wide || (!p.penalises_output() && self.req.logprobs.is_none()))
    }

    /// Tokens at the end of `tokens` still being sampled (placeholders; at most two: one whose
    /// forward is being taken back, one of the forward in flight).
    pub fn pending(&self) -> usize {
        let out = &self.tokens[self.prompt_len..];
        out.iter().rev().take_while(|&&t| t == PLACEHOLDER).count()
    }

    /// Its pending token surely ends it (its length limit): no forward is queued for it after.
    pub fn ends_on_pending(&self, context_length: usize) -> bool {
        self.pending() > 0
            && (self.tokens.len() - self.prompt_len >= self.req.params.max_new_tokens
                || self.tokens.len() >= context_length)
    }

    /// The output the grammar walks (None: still reasoning, nothing constrained yet).
    pub fn constrained_output(&self) -> Option<&[u32]> {
        let from = self.grammar_from?;
        Some(&self.tokens[self.prompt_len + from..])
    }

    /// After a new output token: a request reasoning first starts its grammar once the output
    /// ends with the reasoning end marker.
    pub fn note_reasoning_end(&mut self) {
        if self.grammar_from.is_some() {
            return;
        }
        if let Some(end) = &self.req.params.think_end {
            let out = &self.tokens[self.prompt_len..];
            if out.ends_with(end) {
                self.grammar_from = Some(out.len());
            }
        }
    }

    pub fn pages_held(&self) -> usize {
        self.prefix_pages.len() + self.own_pages.len()
    }

    /// The page table in position order (shared: a forward holds it while the sequence waits;
    /// the next append copies it only if the forward still does).
    pub fn page_table(&self) -> Arc<Vec<PageId>> {
        debug_assert!(self.table.iter().copied().eq(self
            .prefix_pages
            .iter()
            .copied()
            .chain(self.own_pages.iter().map(Page::id))));
        self.table.clone()
    }

    /// The radix-cache pages in front (locked through `lock_node`).
    pub fn prefix_pages(&self) -> &[PageId] {
        &self.prefix_pages
    }

    /// The pages this sequence alone owns, after the prefix's.
    pub fn own_pages(&self) -> &[Page] {
        &self.own_pages
    }

    /// Appends pages this sequence alone owns (a decode step's usual change: the table grows).
    pub fn add_own(&mut self, pages: impl IntoIterator<Item = Page>) {
        let start = self.own_pages.len();
        self.own_pages.extend(pages);
        Arc::make_mut(&mut self.table).extend(self.own_pages[start..].iter().map(Page::id));
    }

    /// Replaces the prefix pages (a prefix match at admission, or the front own pages moved into
    /// the radix cache by [`Seq::take_own_front`]).
    pub fn set_prefix(&mut self, pages: Vec<PageId>) {
        self.prefix_pages = pages;
        self.rebuild_table();
    }

    /// Takes the first `n` own pages out (to insert them into the radix cache; the caller then
    /// sets the prefix that covers them).
    pub fn take_own_front(&mut self, n: usize) -> Vec<Page> {
        let own = self.own_pages.drain(..n).collect();
        self.rebuild_table();
        own
    }

    /// Takes every page out: (own pages, prefix pages).
    pub fn take_pages(&mut self) -> (Vec<Page>, Vec<PageId>) {
        self.table = Arc::default();
        (
            std::mem::take(&mut self.own_pages),
            std::mem::take(&mut self.prefix_pages),
        )
    }

    /// A new table from the lists (a table a forward still holds is left to it).
    fn rebuild_table(&mut self) {
        let mut t = Vec::with_capacity(self.pages_held());
        t.extend(&self.prefix_pages);
        t.extend(self.own_pages.iter().map(Page::id));
        self.table = Arc::new(t);
    }

    /// Prompt rows `lp_row..owed_rows_end()` still need their logits reported.
    pub fn owed_rows_end(&self) -> usize {
        if self.req.logprobs.is_some() {
            self.prompt_len - 1
        } else {
            0
        }
    }

    /// How many leading tokens may come from the prefix cache (of the sequence's namespace):
    /// all but the last (there must be logits to sample from), none of the prompt rows whose
    /// log-probabilities are owed, and none for a request that reports hidden states.
    pub fn cache_match_limit(&self) -> usize {
        if self.req.params.return_hidden_states {
            // Every prompt position's hidden state is reported: none comes from the cache.
            return 0;
        }
        let limit = self.tokens.len() - 1;
        if self.lp_row < self.owed_rows_end() {
            limit.min(self.lp_row)
        } else {
            limit
        }
    }

    /// Tokens still to feed through the model.
    pub fn remaining(&self) -> usize {
        self.tokens.len() - self.computed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::FreeList;

    fn ids(s: &Seq) -> Vec<PageId> {
        let mut v = s.prefix_pages().to_vec();
        v.extend(s.own_pages().iter().map(Page::id));
        v
    }

    /// Every way the page lists change keeps the shared table equal to prefix + own pages, and a
    /// table a forward still holds is left as it was (the append copies it).
    #[test]
    fn the_page_table_follows_the_page_lists() {
        let list = FreeList::new(16);
        let (req, _rx) = super::super::tests::request("r", vec![1, 2, 3], 4, 0.0);
        let mut s = Seq::new(req, 0);
        assert!(s.page_table().is_empty());
        s.add_own(list.alloc(3).expect("pages"));
        assert_eq!(*s.page_table(), ids(&s));
        let held = s.page_table();
        s.add_own(list.alloc(1).expect("pages"));
        assert_eq!(held.len(), 3, "a held table does not change");
        assert_eq!(*s.page_table(), ids(&s));
        assert_eq!(s.page_table().len(), 4);
        let front = s.take_own_front(2);
        assert_eq!(front.len(), 2);
        assert_eq!(*s.page_table(), ids(&s));
        s.set_prefix(vec![14, 15]);
        assert_eq!(*s.page_table(), ids(&s));
        assert_eq!(s.page_table()[..2], [14, 15]);
        let (own, prefix) = s.take_pages();
        assert_eq!((own.len(), prefix.len()), (2, 2));
        assert!(s.page_table().is_empty());
    }

    /// The counts kept step by step equal a count of the whole output at every step, pending
    /// placeholders left out, and after the output is cut back.
    #[test]
    fn counts_kept_step_by_step_equal_a_recount() {
        use crate::seeded::{test_seed, SplitMix64};
        use strata_kernels::sample_rows::count_tokens;
        let seed = test_seed("seq counts");
        let mut rng = SplitMix64(seed);
        let (req, _rx) = super::super::tests::request("c", vec![1, 2, 3], 500, 0.0);
        let mut s = Seq::new(req, 0);
        for step in 0..400 {
            s.tokens.push((rng.next_u64() % 40) as u32);
            if step % 7 == 3 {
                s.tokens.push(PLACEHOLDER);
            }
            let real: Vec<u32> = s.tokens[s.prompt_len..]
                .iter()
                .copied()
                .filter(|&t| t != PLACEHOLDER)
                .collect();
            assert_eq!(
                s.update_counts(),
                count_tokens(&real),
                "seed {seed} step {step}"
            );
            s.tokens.retain(|&t| t != PLACEHOLDER);
            if step == 200 {
                s.tokens.truncate(s.prompt_len + 50);
            }
        }
    }
}
