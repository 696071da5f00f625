//! One forward pass in two halves: [`Scheduler::launch`] builds the batch of the round's items,
//! hands it to the runner and marks what it will produce (the positions it computes, one
//! placeholder token per sampled row); [`Scheduler::collect`] takes its sampled rows back,
//! streams them and finishes what ended. Without overlap scheduling the second half follows the
//! first at once; with it the next round is launched in between (`overlap.rs`).

use super::batch::Item;
use super::overlap::{InFlight, PLACEHOLDER};
use super::request::{Event, FinishReason, PosLogprobs};
use super::Scheduler;
use crate::model::{ForwardBatch, Launch, ModelRunner, Sampled, SeqSlice};
use crate::stats::Stats;
use std::collections::HashMap;

/// What one logits row of a forward is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Row {
    /// The sequence's next token (sampled), which goes at this index of its tokens.
    Next(usize),
    /// A prompt row kept for its log-probabilities: it scores the prompt token at this position.
    Score(usize),
    /// An embedding request's last prompt row: its hidden state is the answer.
    Embed,
    /// A position whose hidden state is reported (`return_hidden_states`), nothing sampled.
    Hidden(usize),
}

impl<R: ModelRunner> Scheduler<R> {
    /// Runs `items` (indices into `running`): launches them, takes back the forward that was in
    /// flight before, and keeps this one in flight under overlap scheduling when the runner
    /// queued it (else takes it back too).
    pub(super) fn forward(&mut self, items: Vec<(usize, Item)>) {
        let t0 = std::time::Instant::now();
        let mut launched = self.launch(items);
        let t1 = std::time::Instant::now();
        if let Some(prev) = self.inflight.take() {
            self.collect(prev);
        }
        if let Some(batch) = launched.later.take() {
            // The grammars have walked the tokens taken back: the rows' masks are known now.
            if launched.launch.is_ok() {
                launched.launch = self.sample_later(&batch, &launched.rows);
            }
        }
        // A forward that already ran (eager, or a runner that queues nothing) is taken back at
        // once: holding it would only delay its tokens by a round.
        let queued = matches!(launched.launch, Ok(Launch::Queued(_)));
        if self.overlap() && (queued || self.hold_done) {
            self.inflight = Some(launched);
        } else {
            self.collect(launched);
        }
        self.round_prof.add(t0, t1);
    }

    /// Builds and launches the batch of `items`. Input tokens still being sampled by the
    /// forward in flight come from it (its results, or on the device through
    /// `ForwardBatch::from_prev`).
    fn launch(&mut self, items: Vec<(usize, Item)>) -> InFlight {
        let ps = self.cfg.page_size as u32;
        let mut batch = ForwardBatch::default();
        // Per logits row: the running index and what the row is for.
        let mut rows: Vec<(usize, Row)> = Vec::new();
        let mut heads = Vec::new(); // sequences whose first input position is still to be sent
        let mut done = Vec::new(); // sequences at their length limit without sampling
        for (i, it) in &items {
            let s = &self.running[*i];
            let table = s.page_table();
            let q_start = batch.tokens.len();
            for p in it.start..it.end {
                let mut t = s.tokens[p];
                if t == PLACEHOLDER {
                    // Sampled by the forward in flight, in its row `pending_row`.
                    debug_assert_eq!(p + 1, s.tokens.len(), "a pending token is the last");
                    let r = s.pending_row;
                    match self.inflight.as_ref().map(|f| &f.launch) {
                        Some(Ok(Launch::Done(v))) => t = v[r].token,
                        _ => batch.from_prev.push((batch.tokens.len(), r)),
                    }
                }
                batch.tokens.push(t);
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
                // Feeding back a sampled token (not re-running a prompt or a retracted output).
                decode: it.end - it.start == 1 && it.start >= s.prompt_len,
                lora: s.req.params.lora.as_ref().map(|l| l.0.clone()),
            });
            // Prompt rows whose log-probabilities are owed (none unless asked for): row `p`
            // scores prompt token `p + 1`.
            let owed = s.lp_row.max(it.start)..s.owed_rows_end().min(it.end);
            debug_assert!(
                owed.is_empty() || s.lp_row >= it.start,
                "owed rows were skipped"
            );
            if s.lp_head {
                heads.push(*i);
            }
            for p in owed {
                rows.push((*i, Row::Score(p + 1)));
                batch.logit_rows.push(q_start + p - it.start);
            }
            if s.req.params.return_hidden_states {
                // Positions whose hidden states are owed, but the one that samples (its state
                // comes with its token).
                let samples = it.end == s.tokens.len()
                    && s.tokens.len() - s.prompt_len < s.req.params.max_new_tokens;
                let end = if samples { it.end - 1 } else { it.end };
                for p in s.hidden_next.max(it.start)..end {
                    rows.push((*i, Row::Hidden(p)));
                    batch.logit_rows.push(q_start + p - it.start);
                }
            }
            if it.end == s.tokens.len() {
                if s.req.embed {
                    rows.push((*i, Row::Embed));
                    batch.logit_rows.push(batch.tokens.len() - 1);
                } else if s.tokens.len() - s.prompt_len >= s.req.params.max_new_tokens {
                    // `max_new_tokens: 0`: the prompt is run (scored, cached), nothing sampled.
                    done.push(*i);
                } else {
                    rows.push((*i, Row::Next(s.tokens.len())));
                    batch.logit_rows.push(batch.tokens.len() - 1);
                }
            }
        }
        Stats::add(&self.stats.forward_passes, 1);
        // Under a grammar whose last token is still being sampled (a round run ahead), the
        // mask follows that token: the forward starts now and its rows are sampled once the
        // forward in flight is taken back (`forward`).
        let later = rows.iter().any(|&(i, row)| {
            let s = &self.running[i];
            matches!(row, Row::Next(_)) && s.req.params.grammar.is_some() && s.pending() > 0
        });
        let t0 = std::time::Instant::now();
        let launch = if later {
            self.launched_later += 1;
            self.model
                .launch_later(&batch, &mut self.pool.buffers)
                .map(|()| Launch::Done(Vec::new()))
        } else {
            self.launch_rows(&batch, &rows, false)
        };
        // What the forward produces, marked now so the next round can be built on it.
        for (r, &(i, row)) in rows.iter().enumerate() {
            if let Row::Next(at) = row {
                let s = &mut self.running[i];
                debug_assert_eq!(s.tokens.len(), at);
                s.tokens.push(PLACEHOLDER);
                s.pending_row = r;
            }
        }
        for (i, it) in &items {
            let s = &mut self.running[*i];
            s.computed = it.end;
            s.inflight += 1;
            // Its head goes out with this forward: a round built before it is taken back must
            // not send it again.
            s.lp_head = false;
        }
        if self.overlap() {
            // Chunks join the prefix cache as soon as they are queued: a forward that reads
            // them runs after this one (one stream), and no HiCache copy reads them early
            // (prefill chunks run inside their launch, and a store to the host first waits
            // for the work queued on the compute stream).
            for (i, _) in &items {
                self.cache_unfinished(*i);
            }
        }
        let uid = |i: usize| self.running[i].uid;
        let items = items.into_iter().map(|(i, it)| (uid(i), it)).collect();
        let rows = rows.into_iter().map(|(i, r)| (uid(i), r)).collect();
        let heads = heads.into_iter().map(uid).collect();
        let done = done.into_iter().map(uid).collect();
        InFlight {
            launch,
            items,
            rows,
            heads,
            done,
            t0,
            later: later.then_some(batch),
        }
    }

    /// Each running sequence's index, by uid.
    pub(super) fn running_by_uid(&self) -> HashMap<u64, usize> {
        self.running
            .iter()
            .enumerate()
            .map(|(i, s)| (s.uid, i))
            .collect()
    }

    /// Takes back a launched forward's sampled rows: streams them, and finishes the sequences
    /// that ended (those another forward in flight still feeds end when it is taken back).
    pub(super) fn collect(&mut self, f: InFlight) {
        let InFlight {
            launch,
            items,
            rows,
            heads,
            done,
            t0,
            later,
        } = f;
        debug_assert!(
            later.is_none(),
            "a forward taken back before its rows were sampled"
        );
        let sampled = match launch {
            Ok(Launch::Done(v)) => Ok(v),
            Ok(Launch::Queued(q)) => self.model.collect(q, &mut self.pool.buffers),
            Err(e) => Err(e),
        };
        // Running sequences by uid (the running list was rebuilt since the launch).
        let idx = self.running_by_uid();
        for (u, _) in &items {
            self.running[idx[u]].inflight -= 1;
        }
        let sampled = match sampled {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward pass failed: {e}");
                let mut finished = Vec::new();
                for (u, it) in &items {
                    let s = &mut self.running[idx[u]];
                    // Its KV was not written: nothing of it may reach the cache.
                    s.computed = s.computed.min(it.start);
                    finished.push((idx[u], FinishReason::Abort(format!("internal error: {e}"))));
                }
                self.end(finished, &items, &idx);
                if e.is_fatal() {
                    // The GPU context is gone: every later forward would fail the same way and
                    // /health would keep answering. Exit (as SGLang's scheduler does) so a
                    // supervisor restarts the server; the aborted requests' answers go out first.
                    tracing::error!("the GPU context is lost ({e}); exiting");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    std::process::exit(70);
                }
                return;
            }
        };
        let prefill: usize = items
            .iter()
            .map(|(_, it)| it.end - it.start)
            .filter(|&n| n > 1)
            .sum();
        if let Some(h) = &mut self.hicache {
            h.observe_prefill(prefill, t0.elapsed().as_secs_f64());
        }
        if !self.overlap() {
            for (u, _) in &items {
                self.cache_unfinished(idx[u]);
            }
        }
        let item_idx: Vec<usize> = items.iter().map(|(u, _)| idx[u]).collect();
        self.pd_push_parts(&item_idx);
        // Input log-probabilities first (they precede the first token on the event channel).
        let mut input: Vec<(usize, Vec<PosLogprobs>)> = heads
            .into_iter()
            .map(|u| (idx[&u], vec![PosLogprobs::default()]))
            .collect();
        let mut finished = Vec::new();
        let mut decode_tokens = 0;
        // Hidden states gathered per sequence, sent before its token (or at the end).
        let mut states: Vec<(usize, Vec<Vec<f32>>)> = Vec::new();
        for ((u, row), mut t) in rows.into_iter().zip(sampled) {
            let i = idx[&u];
            if self.running[i].zombie.is_some() {
                // It ended on an earlier forward's token: this one's rows go nowhere.
                continue;
            }
            if let Row::Hidden(p) = row {
                self.running[i].hidden_next = p + 1;
                push_for(&mut states, i, t.embedding.unwrap_or_default());
                continue;
            }
            if let Row::Next(at) = row {
                if let Some(v) = t.embedding.take() {
                    self.running[i].hidden_next = at;
                    push_for(&mut states, i, v);
                }
            }
            if row == Row::Embed {
                let e = t.embedding.unwrap_or_default();
                let _ = self.running[i].req.events.send(Event::Embedding(e));
                finished.push((i, FinishReason::Length(0)));
                continue;
            }
            if let Row::Score(p) = row {
                let s = &mut self.running[i];
                s.lp_row = s.lp_row.max(p);
                let lp = t.logprobs.map(|b| *b).unwrap_or_default();
                push_for(&mut input, i, lp);
                continue;
            }
            let Row::Next(at) = row else { continue };
            if let Some(lps) = take_for(&mut input, i) {
                let _ = self.running[i].req.events.send(Event::Input(lps));
            }
            if let Some(v) = take_for(&mut states, i) {
                let _ = self.running[i].req.events.send(Event::Hidden(v));
            }
            decode_tokens += 1;
            if let Some(reason) = self.accept_at(i, at, t) {
                finished.push((i, reason));
            }
        }
        for (i, lps) in input {
            let _ = self.running[i].req.events.send(Event::Input(lps));
        }
        for (i, v) in states {
            let _ = self.running[i].req.events.send(Event::Hidden(v));
        }
        for u in done {
            let i = idx[&u];
            let s = &self.running[i];
            finished.push((i, FinishReason::Length(s.tokens.len() - s.prompt_len)));
        }
        let dt = t0.elapsed().as_secs_f64().max(1e-9);
        Stats::share(
            &self.stats.gen_throughput_milli,
            &mut self.gauges.throughput,
            (decode_tokens as f64 / dt * 1000.0) as u64,
        );
        self.end(finished, &items, &idx);
    }

    /// Finishes `finished` (indices into `running`) and the sequences of `items` that met
    /// their end earlier; one that a forward in flight still feeds ends when that is taken back.
    fn end(
        &mut self,
        mut finished: Vec<(usize, FinishReason)>,
        items: &[(u64, Item)],
        idx: &HashMap<u64, usize>,
    ) {
        for (u, _) in items {
            let i = idx[u];
            let s = &mut self.running[i];
            if s.inflight == 0 && s.zombie.is_some() && !finished.iter().any(|f| f.0 == i) {
                let reason = s.zombie.take().expect("checked");
                finished.push((i, reason));
            }
        }
        finished.retain(|(i, reason)| {
            let s = &mut self.running[*i];
            if s.inflight == 0 {
                return true;
            }
            s.zombie.get_or_insert_with(|| reason.clone());
            false
        });
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        finished.dedup_by_key(|f| f.0);
        for (i, reason) in finished {
            let mut s = self.running.remove(i);
            let reason = s.zombie.take().unwrap_or(reason);
            self.finish(s, reason);
        }
    }

    /// Puts sampled token `t` at index `at` of running sequence `i`'s tokens (its placeholder;
    /// placeholders after it stay) and streams it; returns a finish reason if the sequence is
    /// done.
    fn accept_at(&mut self, i: usize, at: usize, t: Sampled) -> Option<FinishReason> {
        let s = &mut self.running[i];
        debug_assert_eq!(s.tokens[at], PLACEHOLDER);
        let later = s.tokens.len() - at - 1;
        s.tokens.truncate(at);
        let reason = self.accept_token(i, t);
        self.running[i]
            .tokens
            .extend(std::iter::repeat_n(PLACEHOLDER, later));
        reason
    }

    /// Appends sampled token `t` to running sequence `i` and streams it; returns a finish reason
    /// if the sequence is done.
    pub(super) fn accept_token(&mut self, i: usize, t: Sampled) -> Option<FinishReason> {
        let ctx = self.cfg.context_length;
        let s = &mut self.running[i];
        let Sampled {
            token: tok,
            logprobs: logprob,
            ..
        } = t;
        s.tokens.push(tok);
        s.note_reasoning_end();
        if s.first_token_at.is_none() {
            s.first_token_at = Some(std::time::Instant::now());
            if s.req.bootstrap.is_some() {
                s.first_lp.clone_from(&logprob); // a PD prefill leg hands it over
            }
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
        if let (Some(r), Some(w)) = (&p.stop_regex_compiled, &mut s.stop_walk) {
            // The patterns walk every output token (a match before `min_new_tokens` is kept and
            // ends the request once that many are out, as SGLang's search of the text then would).
            let (tok_ref, skip) = (&self.tokenizer, p.skip_special_tokens);
            let out = &s.tokens[s.prompt_len..];
            let m = r.0.follow(w, out, || tok_ref.decode(out, skip));
            if let Some(k) = m.filter(|_| n >= p.min_new_tokens) {
                return Some(FinishReason::StopRegex(r.0.patterns()[k].clone()));
            }
        }
        if let (Some(g), Some(from)) = (p.grammar.clone(), s.grammar_from) {
            // The grammar ends the request once its text matches and nothing can follow (or
            // once a token left the language: an EOS kept under `ignore_eos`).
            let w = s.walk.get_or_insert_with(|| g.0.walk_start());
            let done = match g.0.follow(w, &s.tokens[s.prompt_len + from..]) {
                None => true,
                Some(state) => {
                    let m = g.0.mask(state);
                    m.accepting && !m.can_continue
                }
            };
            if done {
                return Some(FinishReason::StopToken(tok));
            }
        }
        let p = &s.req.params;
        if n >= p.max_new_tokens || s.tokens.len() >= ctx {
            return Some(FinishReason::Length(n));
        }
        None
    }
}

/// Adds `v` to running sequence `i`'s list in `lists` (what a forward gathers per sequence
/// before sending it: input log-probabilities, hidden states).
fn push_for<T>(lists: &mut Vec<(usize, Vec<T>)>, i: usize, v: T) {
    match lists.iter_mut().find(|x| x.0 == i) {
        Some(x) => x.1.push(v),
        None => lists.push((i, vec![v])),
    }
}

/// Removes and returns sequence `i`'s list from `lists`.
fn take_for<T>(lists: &mut Vec<(usize, Vec<T>)>, i: usize) -> Option<Vec<T>> {
    let k = lists.iter().position(|x| x.0 == i)?;
    Some(lists.swap_remove(k).1)
}
