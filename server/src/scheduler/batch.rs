//! One scheduling round: page allocation (with eviction and retraction) and admission, up to
//! the batch handed to `forward.rs` (which runs it, samples and finishes).

use super::budget::PrefillBudget;
use super::request::FinishReason;
use super::seq::Seq;
use super::Scheduler;
use crate::cache::{NodeId, Tier};
use crate::hicache::{HiCache, WritePolicy, SELECTIVE_HITS};
use crate::kv::{KvPool, Page, PageId};
use crate::model::{ModelRunner, Sampled};
use crate::stats::Stats;
use std::collections::VecDeque;

/// What one sequence feeds in this round: tokens `start..end` of `Seq::tokens`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Item {
    pub start: usize,
    pub end: usize,
}

impl<R: ModelRunner> Scheduler<R> {
    /// Makes `s` hold pages for its first `upto` tokens, evicting cached prefixes if needed.
    fn ensure_pages(&mut self, s: &mut Seq, upto: usize) -> bool {
        let need = upto
            .div_ceil(self.cfg.page_size)
            .saturating_sub(s.pages_held());
        if need == 0 {
            return true;
        }
        let free = self.pool.free_pages();
        if free < need {
            self.evict_device(need - free);
        }
        match self.pool.alloc(need) {
            Some(p) => {
                s.add_own(p);
                true
            }
            None => false,
        }
    }

    /// Whether L3 writes (which keep their nodes locked) are still in flight.
    fn l3_writes_pending(&self) -> bool {
        self.hicache.as_ref().is_some_and(HiCache::writes_pending)
    }

    /// Frees device pages from the prefix cache; under write_back, evicted nodes are copied to the
    /// host (and on to the L3) first.
    pub(super) fn evict_device(&mut self, pages: usize) {
        let Some(h) = self.hicache.as_mut() else {
            self.tree.evict(pages);
            return;
        };
        let before = self.tree.cached_pages();
        let host = h.host().clone();
        let backed = if h.write_policy() == WritePolicy::WriteBack {
            let (pool, model) = (&self.pool, &self.model);
            let mut backup = |dev: &[PageId]| -> Option<Vec<Page>> {
                let hp = host.alloc(dev.len())?;
                let ids: Vec<PageId> = hp.iter().map(Page::id).collect();
                super::copy_out(model, pool, &host, dev, &ids).then_some(hp)
            };
            self.tree.evict_with(pages, &mut backup).1
        } else {
            self.tree.evict(pages);
            Vec::new()
        };
        for node in backed {
            h.store_node(&mut self.tree, node);
        }
        let freed = before - self.tree.cached_pages();
        Stats::add(
            &self.stats.hicache.evicted_tokens,
            (freed * self.cfg.page_size) as u64,
        );
    }

    /// Loads the host-only part of a match back into device pages (L2 -> L1). Returns false when
    /// the device pool has no room (the request then waits while others hold the pool, or
    /// computes those tokens when it is alone).
    fn load_back(&mut self, deep: NodeId) -> bool {
        let Some(h) = self.hicache.as_ref() else {
            return false;
        };
        let host = h.host().clone();
        self.tree.lock(deep);
        let path = self.tree.host_only_path(deep);
        let need: usize = path.iter().map(|&n| self.tree.node_pages(n)).sum();
        let free = self.pool.free_pages();
        if free < need {
            self.evict_device(need - free);
        }
        let ok = match self.pool.alloc(need) {
            Some(mut dev) => {
                let mut ok = true;
                for &n in &path {
                    let hp = self.tree.pages_of(n, Tier::Host);
                    let pages: Vec<Page> = dev.drain(..hp.len()).collect();
                    let ids: Vec<PageId> = pages.iter().map(Page::id).collect();
                    let kv = &mut self.pool.buffers;
                    if let Err(e) = self.model.load_pages(kv, &host, &hp, &ids) {
                        tracing::error!("hicache: host -> device copy failed: {e}");
                        ok = false;
                        break;
                    }
                    self.tree.set_pages(n, Tier::Device, pages);
                }
                if ok {
                    Stats::add(
                        &self.stats.hicache.load_back_tokens,
                        (need * self.cfg.page_size) as u64,
                    );
                }
                ok
            }
            None => false,
        };
        self.tree.unlock(deep);
        ok
    }

    /// Runs one round; false if nothing could run.
    pub(super) fn step(&mut self) -> bool {
        self.round_prof.start();
        if self.inflight.is_some() && (self.kv_short || !self.can_run_ahead()) {
            self.sync();
        }
        self.kv_short = false;
        self.ran_ahead += u64::from(self.inflight.is_some());
        self.preempt_for_priority();
        let mut budget =
            PrefillBudget::new(self.cfg.chunked_prefill_size, self.cfg.max_prefill_tokens);
        let ctx = self.cfg.context_length;
        let (mut decodes, mut prefills) = (VecDeque::new(), VecDeque::new());
        for s in std::mem::take(&mut self.running) {
            if s.zombie.is_some() || s.ends_on_pending(ctx) {
                // Under overlap: it ends when the forward in flight is taken back; no more work.
                self.running.push(s);
            } else if s.computed > 0 && s.remaining() == 1 {
                decodes.push_back(s);
            } else {
                prefills.push_back(s);
            }
        }
        if self.cfg.priority.enabled {
            // Highest-ranked first: under KV pressure the lowest-ranked are left, and retracted.
            decodes.make_contiguous().sort_by_key(|s| self.rank(s));
        }
        // Items index into the new `running`.
        let mut items: Vec<(usize, Item)> = Vec::new();
        // 1. Decodes, oldest first (under priority scheduling highest-ranked first): one token
        //    each. When the pool is exhausted even after eviction, retract the newest other
        //    sequence (prefilling ones first; under priority scheduling the lowest-ranked one,
        //    the newest of equals, or the sequence itself when it ranks below all others).
        while let Some(mut s) = decodes.pop_front() {
            let upto = s.tokens.len();
            let mut outranked = false;
            let ok = loop {
                if self.ensure_pages(&mut s, upto) {
                    break true;
                }
                if self.inflight.is_some() {
                    // A retraction could free pages the forward in flight still writes (the
                    // page count of `can_run_ahead` said it would not come to this): the
                    // sequence waits a round, and that round takes the forward back first.
                    self.kv_short = true;
                    break false;
                }
                if self.outranked_by_all(&s, &prefills, &decodes) {
                    outranked = true;
                    break false;
                }
                match self.retraction_victim(&mut prefills, &mut decodes) {
                    Some(v) => self.retract(v),
                    None => break false,
                }
            };
            if outranked {
                // It is the lowest-ranked: it gives way itself.
                self.retract(s);
                continue;
            }
            if ok {
                items.push((
                    self.running.len(),
                    Item {
                        start: s.computed,
                        end: upto,
                    },
                ));
                self.running.push(s);
            } else if self.kv_short {
                self.running.push(s);
            } else if !self.running.is_empty() || self.l3_writes_pending() {
                // In-flight L3 writes keep their nodes locked for a moment: wait for them
                // rather than fail a request that fits.
                self.retract(s);
            } else {
                self.finish(
                    s,
                    FinishReason::Abort(
                        "KV cache is full: the request does not fit in the pool.".into(),
                    ),
                );
            }
        }
        // 2. Sequences still prefilling, in admission order, under the prefill budget.
        let mut prefilling = 0; // requests in this round's prefill (`--prefill-max-requests`)
        while let Some(mut s) = prefills.pop_front() {
            let n = budget.grant(s.remaining());
            if n > 0 {
                let start = s.computed;
                let end = start + n;
                if self.ensure_pages(&mut s, end) {
                    prefilling += 1;
                    items.push((self.running.len(), Item { start, end }));
                } else {
                    budget.refund(n);
                }
            }
            self.running.push(s);
        }
        // 3. Admission of queued requests, in `--schedule-policy` order.
        let mut held = VecDeque::new();
        let mut installed = false;
        if budget.open() && self.running.len() < self.cfg.max_running_requests {
            self.order_waiting();
        }
        while budget.open()
            && self.running.len() < self.cfg.max_running_requests
            && self.cfg.prefill_max_requests.is_none_or(|m| prefilling < m)
        {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            if !self.lora_fits(&s) {
                // As SGLang: the batch is full of adapters; admission resumes when one leaves.
                self.waiting.push_front(s);
                break;
            }
            if s.pd_fetch {
                match self.pd_install(s) {
                    Some(s) => held.push_back(s),
                    // Installed (or finished): that is progress even without a forward.
                    None => installed = true,
                }
                continue;
            }
            if s.held {
                let l3_ready = match self.hicache.as_mut() {
                    Some(h) => h.prefetch_ready(&mut self.tree, &s.req.rid),
                    None => true,
                };
                if l3_ready && self.hook.ready(&s.req.rid) {
                    s.held = false;
                } else {
                    held.push_back(s);
                    continue;
                }
            }
            if self.cfg.radix_cache {
                let limit = s.cache_match_limit();
                let mut m = self.tree.match_prefix(s.ns, &s.tokens[..limit]);
                if m.host_tokens > 0 {
                    if self.load_back(m.host_node) {
                        m = self.tree.match_prefix(s.ns, &s.tokens[..limit]);
                    } else if !self.running.is_empty() {
                        // No device room for the host-cached prefix while other sequences hold
                        // the pool (chunked prefills): wait for it rather than recompute what the
                        // host pool holds. Alone, a request always gets room (eviction frees
                        // every unlocked page), so this cannot stall the server.
                        self.waiting.push_front(s);
                        break;
                    }
                }
                self.backup_selective(m.node);
                self.tree.lock(m.node);
                s.lock_node = Some(m.node);
                s.set_prefix(m.pages);
                s.computed = m.tokens;
            }
            let start = s.computed;
            // 0: unchunked, and it does not fit in what is left of --max-prefill-tokens; it
            // starts a later round.
            let n = budget.grant(s.remaining());
            let end = start + n;
            if n == 0 || !self.ensure_pages(&mut s, end) {
                if n > 0 {
                    budget.refund(n);
                    self.kv_blocked = true;
                }
                // A load-back queued for it must land before its host pages can be given away.
                if let Err(e) = self.model.finish_host_io(&mut self.pool.buffers) {
                    tracing::error!("hicache: host -> device copy failed: {e}");
                }
                let s = self.release(s, false);
                self.waiting.push_front(s);
                break;
            }
            if !s.admitted_once {
                s.admitted_once = true;
                s.cached_tokens = start;
                Stats::add(&self.stats.cached_tokens, start as u64);
                Stats::add(&self.stats.prompt_tokens, s.prompt_len as u64);
            }
            self.hook.on_dequeue(&s.req.rid);
            prefilling += 1;
            items.push((self.running.len(), Item { start, end }));
            self.running.push(s);
        }
        while let Some(s) = held.pop_back() {
            self.waiting.push_front(s);
        }
        if items.is_empty() {
            if self.inflight.is_some() {
                // Nothing more to launch before the forward in flight ends: take it back.
                self.sync();
                return true;
            }
            if installed {
                return true;
            }
            if self.running.is_empty() {
                return false;
            }
            // Prefilling sequences hold pages but none can get more: free the newest one so the
            // others can go on. Alone it could have taken every page (prompts that cannot fit the
            // pool are refused at submission), so this is a last-resort guard against a hang.
            if self.l3_writes_pending() {
                // Pages pinned by in-flight L3 writes come back when the writes finish.
                return false;
            }
            let s = self.running.pop().expect("non-empty");
            if self.running.is_empty() {
                self.finish(
                    s,
                    FinishReason::Abort(
                        "KV cache is full: the request does not fit in the pool.".into(),
                    ),
                );
            } else {
                self.retract(s);
            }
            return true;
        }
        self.forward(items);
        true
    }

    /// Whether `s` may join the running batch under `--max-loras-per-batch`: its adapter (or
    /// the base model) already runs, or fewer than that many distinct ones do.
    fn lora_fits(&self, s: &Seq) -> bool {
        let key = |s: &Seq| s.req.params.lora.as_ref().map(|l| l.0.id);
        let mine = key(s);
        if self.running.iter().all(|r| key(r) == mine) {
            return true; // the common case, and every batch without adapters
        }
        let mut keys: Vec<Option<u64>> = self.running.iter().map(key).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.contains(&mine) || keys.len() < self.cfg.max_loras_per_batch
    }

    /// PD decode side: once the prompt's KV arrived, loads it into fresh device pages and starts
    /// decoding from the prefill's first token (no forward over the prompt); a failed transfer
    /// finishes the request with its reason. Gives the sequence back while the KV is on its way
    /// or the pool has no room (returns it).
    fn pd_install(&mut self, mut s: Seq) -> Option<Seq> {
        let Some(super::PdSide::Decode(f)) = &self.pd else {
            s.pd_fetch = false;
            s.held = false;
            self.waiting.push_back(s);
            return None;
        };
        let Some(got) = f.take(&s.req.rid) else {
            return Some(s);
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                self.finish(s, FinishReason::Abort(e));
                return None;
            }
        };
        let mut got = got;
        if let Some(pages) = got.pages.take() {
            // The pages the fetch was given, the first of the sequence's (a held request has
            // none of its own before).
            debug_assert!(s.own_pages().is_empty() && s.prefix_pages().is_empty());
            s.add_own(pages);
        }
        let upto = s.prompt_len + 1;
        if !self.ensure_pages(&mut s, upto) {
            // Keep the KV; try again when pages free up.
            if let Some(super::PdSide::Decode(f)) = &self.pd {
                f.put_back(&s.req.rid, got);
            }
            return Some(s);
        }
        let dev: Vec<PageId> = s.own_pages()[..got.n_pages].iter().map(Page::id).collect();
        let (first_token, first_logprobs) = (got.first_token, got.first_logprobs);
        let loaded = match got.payload {
            crate::pd::decode::Payload::Host(staging) => {
                let host: Vec<PageId> = (0..got.n_pages as u32).collect();
                let r = self
                    .model
                    .load_pages(&mut self.pool.buffers, &staging, &host, &dev);
                if let Some(super::PdSide::Decode(f)) = &self.pd {
                    f.recycle(staging);
                }
                r
            }
            // Already there.
            crate::pd::decode::Payload::InPool => Ok(()),
        };
        if let Err(e) = loaded {
            self.finish(
                s,
                FinishReason::Abort(format!("PD: cannot load the KV cache: {e}")),
            );
            return None;
        }
        // The first token was sampled on the prefill leg, which sent its log-probabilities along.
        let wants_lp = s.req.logprobs.is_some();
        s.pd_fetch = false;
        s.held = false;
        s.computed = s.prompt_len;
        // The prompt never runs here: the prefill leg reports its log-probabilities and the
        // router puts them in front of this leg's (none), as sglang-router merges them.
        s.lp_head = false;
        s.lp_row = s.prompt_len;
        s.admitted_once = true;
        Stats::add(&self.stats.prompt_tokens, s.prompt_len as u64);
        self.hook.on_dequeue(&s.req.rid);
        self.running.push(s);
        let i = self.running.len() - 1;
        let first = Sampled::token(
            first_token,
            first_logprobs.filter(|_| wants_lp).map(Box::new),
        );
        if let Some(reason) = self.accept_token(i, first) {
            let s = self.running.remove(i);
            self.finish(s, reason);
        }
        None
    }

    /// write_through_selective: backs up the nodes of a match that became hot.
    fn backup_selective(&mut self, node: NodeId) {
        let Some(h) = self.hicache.as_mut() else {
            return;
        };
        if h.write_policy() != WritePolicy::WriteThroughSelective {
            return;
        }
        let host = h.host().clone();
        let (pool, model) = (&self.pool, &self.model);
        let mut copy = |dev: &[u32], hp: &[u32]| super::copy_out(model, pool, &host, dev, hp);
        for n in self.tree.unbacked_path(node, SELECTIVE_HITS) {
            h.backup_node(&mut self.tree, n, &mut copy);
        }
    }

    /// Frees a running sequence's pages (caching what it computed) and requeues it at the front.
    fn retract(&mut self, s: Seq) {
        self.requeue(s, "KV pool exhausted");
    }

    /// Under priority scheduling, whether `s` ranks below every other sequence left to serve
    /// (then it is the one to retract for KV room).
    fn outranked_by_all(&self, s: &Seq, prefills: &VecDeque<Seq>, decodes: &VecDeque<Seq>) -> bool {
        let others = prefills.iter().chain(decodes).map(|o| self.rank(o)).max();
        self.cfg.priority.enabled && others.is_some_and(|o| self.rank(s) > o)
    }

    /// The sequence to retract for KV room: the newest prefilling one, else the newest decoding
    /// one; with priority scheduling the lowest-ranked of all (the newest of equals, prefilling
    /// ones before decoding ones).
    fn retraction_victim(
        &self,
        prefills: &mut VecDeque<Seq>,
        decodes: &mut VecDeque<Seq>,
    ) -> Option<Seq> {
        if !self.cfg.priority.enabled {
            return prefills.pop_back().or_else(|| decodes.pop_back());
        }
        let worst = |q: &VecDeque<Seq>| (0..q.len()).max_by_key(|&i| (self.rank(&q[i]), i));
        match (worst(prefills), worst(decodes)) {
            (Some(p), Some(d)) if self.rank(&decodes[d]) > self.rank(&prefills[p]) => {
                decodes.remove(d)
            }
            (Some(p), _) => prefills.remove(p),
            (None, Some(d)) => decodes.remove(d),
            (None, None) => None,
        }
    }

    /// Retracts `s` (`why` it goes): its pages are freed and it waits at the front of the queue.
    pub(super) fn requeue(&mut self, s: Seq, why: &str) {
        if s.pd_sent > 0 {
            // Part of its KV went to the decode already; recomputing it elsewhere in the pool
            // would break that promise: the PD request fails (cleanly, on both legs).
            self.finish(
                s,
                FinishReason::Abort(format!(
                    "PD prefill retracted ({why}) after part of its KV was sent"
                )),
            );
            return;
        }
        tracing::info!(rid = %s.req.rid, "retracting request: {why}");
        Stats::add(&self.stats.retractions, 1);
        let mut s = self.release(s, true);
        s.retractions += 1;
        self.waiting.push_front(s);
    }
}
