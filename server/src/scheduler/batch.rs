//! One scheduling round: page allocation (with eviction and retraction), admission, the forward
//! pass, sampling and finishing.

use super::logprobs;
use super::request::{Event, FinishReason, PosLogprobs};
use super::seq::Seq;
use super::Scheduler;
use crate::kv::KvPool;
use crate::model::{ForwardBatch, SeqSlice};
use crate::stats::Stats;
use std::collections::VecDeque;
use strata_kernels::sampling::sample;
use strata_kernels::Backend;

/// What one sequence feeds in this round: tokens `start..end` of `Seq::tokens`.
struct Item {
    start: usize,
    end: usize,
}

impl<B: Backend> Scheduler<B> {
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
            self.tree.evict(need - free);
        }
        match self.pool.alloc(need) {
            Some(p) => {
                s.own_pages.extend(p);
                true
            }
            None => false,
        }
    }

    /// Runs one round; false if nothing could run.
    pub(super) fn step(&mut self) -> bool {
        let mut budget = self.cfg.chunked_prefill_size.unwrap_or(usize::MAX);
        let (mut decodes, mut prefills): (VecDeque<Seq>, VecDeque<Seq>) =
            std::mem::take(&mut self.running)
                .into_iter()
                .partition(|s| s.computed > 0 && s.remaining() == 1);
        // Items index into the new `running`.
        let mut items: Vec<(usize, Item)> = Vec::new();
        // 1. Decodes, oldest first: one token each. When the pool is exhausted even after
        //    eviction, retract the newest other sequence (prefilling ones first).
        while let Some(mut s) = decodes.pop_front() {
            let upto = s.tokens.len();
            let ok = loop {
                if self.ensure_pages(&mut s, upto) {
                    break true;
                }
                match prefills.pop_back().or_else(|| decodes.pop_back()) {
                    Some(v) => self.retract(v),
                    None => break false,
                }
            };
            if ok {
                items.push((
                    self.running.len(),
                    Item {
                        start: s.computed,
                        end: upto,
                    },
                ));
                self.running.push(s);
            } else if !self.running.is_empty() {
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
        // 2. Sequences still prefilling, in admission order, under the chunk budget.
        while let Some(mut s) = prefills.pop_front() {
            if budget > 0 {
                let start = s.computed;
                let end = start + s.remaining().min(budget);
                if self.ensure_pages(&mut s, end) {
                    budget -= end - start;
                    items.push((self.running.len(), Item { start, end }));
                }
            }
            self.running.push(s);
        }
        // 3. Admission of queued requests.
        let mut held = VecDeque::new();
        while budget > 0 && self.running.len() < self.cfg.max_running_requests {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            if s.held {
                if self.hook.ready(&s.req.rid) {
                    s.held = false;
                } else {
                    held.push_back(s);
                    continue;
                }
            }
            if self.cfg.radix_cache {
                let limit = s.cache_match_limit();
                let m = self.tree.match_prefix(&s.tokens[..limit]);
                self.tree.lock(m.node);
                s.lock_node = Some(m.node);
                s.prefix_pages = m.pages;
                s.computed = m.tokens;
            }
            let start = s.computed;
            let end = start + s.remaining().min(budget);
            if !self.ensure_pages(&mut s, end) {
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
            budget -= end - start;
            items.push((self.running.len(), Item { start, end }));
            self.running.push(s);
        }
        while let Some(s) = held.pop_back() {
            self.waiting.push_front(s);
        }
        if items.is_empty() {
            if self.running.is_empty() {
                return false;
            }
            // Prefilling sequences hold pages but none can get more: free the newest one so the
            // others can go on. Alone it could have taken every page (prompts that cannot fit the
            // pool are refused at submission), so this is a last-resort guard against a hang.
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

    /// Frees a running sequence's pages (caching what it computed) and requeues it at the front.
    fn retract(&mut self, s: Seq) {
        tracing::info!(rid = %s.req.rid, "retracting request: KV pool exhausted");
        Stats::add(&self.stats.retractions, 1);
        let s = self.release(s, true);
        self.waiting.push_front(s);
    }

    fn forward(&mut self, items: Vec<(usize, Item)>) {
        let ps = self.cfg.page_size as u32;
        let mut batch = ForwardBatch::default();
        let mut sample_rows = Vec::new(); // (running index, logits row)
        let mut input_rows = Vec::new(); // (running index, first logits row, prompt rows)
        for (i, it) in &items {
            let s = &self.running[*i];
            let table = s.page_table();
            let q_start = batch.tokens.len();
            for p in it.start..it.end {
                batch.tokens.push(s.tokens[p]);
                batch.positions.push(p as u32);
                batch
                    .slots
                    .push(table[p / ps as usize] * ps + p as u32 % ps);
            }
            batch.seqs.push(SeqSlice {
                q_start,
                q_len: it.end - it.start,
                kv_len: it.end,
                pages: table,
            });
            // Prompt rows whose log-probabilities are owed (none unless asked for).
            let owed = s.lp_row.max(it.start)..s.owed_rows_end().min(it.end);
            debug_assert!(
                owed.is_empty() || s.lp_row >= it.start,
                "owed rows were skipped"
            );
            if !owed.is_empty() || s.lp_head {
                let first = batch.logit_rows.len();
                batch
                    .logit_rows
                    .extend(owed.clone().map(|p| q_start + p - it.start));
                input_rows.push((*i, first, owed));
            }
            if it.end == s.tokens.len() {
                sample_rows.push((*i, batch.logit_rows.len()));
                batch.logit_rows.push(batch.tokens.len() - 1);
            }
        }
        Stats::add(&self.stats.forward_passes, 1);
        let t0 = std::time::Instant::now();
        let logits = match self.model.forward(&batch, &mut self.pool.buffers) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward pass failed: {e}");
                let mut idx: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
                idx.sort_unstable_by_key(|&i| std::cmp::Reverse(i));
                for i in idx {
                    let s = self.running.remove(i);
                    self.finish(s, FinishReason::Abort(format!("internal error: {e}")));
                }
                return;
            }
        };
        for (i, it) in &items {
            self.running[*i].computed = it.end;
        }
        let vocab = self.model.cfg.vocab_size;
        for (i, first, owed) in input_rows {
            let s = &mut self.running[i];
            let spec = s.req.logprobs.as_ref().expect("input rows only when asked");
            let mut out = Vec::with_capacity(owed.len() + 1);
            if std::mem::take(&mut s.lp_head) {
                out.push(PosLogprobs::default());
            }
            for (k, p) in owed.clone().enumerate() {
                let row = &logits[(first + k) * vocab..(first + k + 1) * vocab];
                out.push(logprobs::at_position(row, s.tokens[p + 1], spec));
            }
            s.lp_row = s.lp_row.max(owed.end);
            let _ = s.req.events.send(Event::Input(out));
        }
        let mut finished = Vec::new();
        let decode_tokens = sample_rows.len() as u64;
        for (i, row) in sample_rows {
            let mut l = logits[row * vocab..(row + 1) * vocab].to_vec();
            if let Some(reason) = self.sample_into(i, &mut l) {
                finished.push((i, reason));
            }
        }
        let dt = t0.elapsed().as_secs_f64().max(1e-9);
        Stats::set(
            &self.stats.gen_throughput_milli,
            (decode_tokens as f64 / dt * 1000.0) as u64,
        );
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let s = self.running.remove(i);
            self.finish(s, reason);
        }
    }

    /// Samples the next token of running sequence `i`; returns a finish reason if it is done.
    fn sample_into(&mut self, i: usize, logits: &mut [f32]) -> Option<FinishReason> {
        let ctx = self.cfg.context_length;
        let s = &mut self.running[i];
        let p = &s.req.params;
        let out_len = s.tokens.len() - s.prompt_len;
        if out_len >= p.max_new_tokens {
            // `max_new_tokens: 0`: the prompt is scored (and cached), nothing is generated.
            return Some(FinishReason::Length(out_len));
        }
        let mut banned = Vec::new();
        if out_len < p.min_new_tokens {
            banned.extend(self.eos.iter().copied());
            banned.extend(p.stop_token_ids.iter().copied());
        }
        p.apply_penalties(logits, &s.tokens[s.prompt_len..], &banned);
        let tok = sample(logits, &p.sample, crate::sampling::uniform(s.seed, out_len)) as u32;
        let logprob = s
            .req
            .logprobs
            .as_ref()
            .map(|spec| Box::new(logprobs::at_position(logits, tok, spec)));
        s.tokens.push(tok);
        if s.first_token_at.is_none() {
            s.first_token_at = Some(std::time::Instant::now());
        }
        Stats::add(&self.stats.generation_tokens, 1);
        let _ = s.req.events.send(Event::Token { id: tok, logprob });
        let n = s.tokens.len() - s.prompt_len;
        let p = &s.req.params;
        if n >= p.min_new_tokens
            && (p.stop_token_ids.contains(&tok) || (!p.ignore_eos && self.eos.contains(&tok)))
        {
            return Some(FinishReason::StopToken(tok));
        }
        if !p.stop.is_empty() && n >= p.min_new_tokens {
            let window = p.stop.iter().map(String::len).max().unwrap_or(0) + 2;
            let tail = &s.tokens[s.tokens.len().saturating_sub(window).max(s.prompt_len)..];
            let text = self.tokenizer.decode(tail, p.skip_special_tokens);
            if let Some(m) = p.stop.iter().find(|st| text.contains(st.as_str())) {
                return Some(FinishReason::StopStr(m.clone()));
            }
        }
        if n >= p.max_new_tokens || s.tokens.len() >= ctx {
            return Some(FinishReason::Length(n));
        }
        None
    }
}
