//! A forward's sampling requests: one per logits row, built from the sequence as it stands
//! (its counts for the penalties, the bans of `min_new_tokens`, its grammar's mask, the seeded
//! draw of its output length) and handed to the runner with the batch. A forward launched in
//! two halves (rows under a grammar in a round run ahead, `overlap.rs`) gets them once the
//! forward in flight is taken back, built on the tokens a round without overlap would see.

use super::forward::Row;
use super::overlap::PLACEHOLDER;
use super::Scheduler;
use crate::grammar::Mask;
use crate::model::{ForwardBatch, Launch, ModelError, ModelRunner, SampleReq};
use std::sync::Arc;
use strata_kernels::sample_rows::Allow;

impl<R: ModelRunner> Scheduler<R> {
    /// Builds the sampling requests of `rows` (running index, what the row is for) and hands
    /// them to the runner with `batch`: launched whole, or (`later`) for the forward
    /// `launch_later` started.
    pub(super) fn launch_rows(
        &mut self,
        batch: &ForwardBatch,
        rows: &[(usize, Row)],
        later: bool,
    ) -> Result<Launch, ModelError> {
        for &(i, row) in rows {
            let s = &mut self.running[i];
            if matches!(row, Row::Next(_)) && s.req.params.penalises_output() && s.zombie.is_none()
            {
                s.update_counts();
            }
        }
        let (banned, masks): (Vec<Vec<u32>>, Vec<Option<Arc<Mask>>>) = rows
            .iter()
            .map(|&(i, row)| match row {
                Row::Next(_) if self.running[i].zombie.is_none() => self.banned_tokens(i),
                _ => (Vec::new(), None),
            })
            .unzip();
        let reqs: Vec<SampleReq<'_>> = rows
            .iter()
            .zip(banned.iter().zip(&masks))
            .zip(&batch.logit_rows)
            .map(|((&(i, row), (banned, mask)), &at)| {
                let s = &self.running[i];
                let out_len = s.tokens.len() - s.prompt_len;
                SampleReq {
                    params: &s.req.params,
                    counts: s.counts(),
                    banned,
                    // The grammar's mask as it is cached (no per-step copy), EOS let through
                    // where the text so far is a whole match.
                    allow: mask.as_ref().map(|m| Allow {
                        bits: &m.allow,
                        also: if m.accepting { &self.eos } else { &[] },
                    }),
                    uniform: crate::sampling::uniform(s.seed, out_len),
                    logprobs: s.req.logprobs.as_ref(),
                    score: match row {
                        Row::Score(p) => Some(s.tokens[p]),
                        _ => None,
                    },
                    embed: matches!(row, Row::Embed | Row::Hidden(_)),
                    hidden: matches!(row, Row::Next(_))
                        && s.req.params.return_hidden_states
                        && s.tokens.len() > s.hidden_next,
                    // The input token still being sampled by the forward in flight: not in the
                    // counts yet (`update_counts` skips placeholders), counted by the runner.
                    uncounted: (matches!(row, Row::Next(_))
                        && s.req.params.penalises_output()
                        && s.tokens.last() == Some(&PLACEHOLDER))
                    .then_some(at),
                }
            })
            .collect();
        let kv = &mut self.pool.buffers;
        if later {
            self.model.sample_later(batch, &reqs, kv)
        } else {
            self.model.launch(batch, &reqs, kv)
        }
    }

    /// The second half of a forward launched in two (`launch_later`): its rows' sampling
    /// requests, built on the tokens a round without overlap would see (each row's own
    /// placeholder, the last token, set aside meanwhile; the token before it is back now).
    pub(super) fn sample_later(
        &mut self,
        batch: &ForwardBatch,
        rows: &[(u64, Row)],
    ) -> Result<Launch, ModelError> {
        let idx = self.running_by_uid();
        let rows: Vec<(usize, Row)> = rows.iter().map(|&(u, r)| (idx[&u], r)).collect();
        for &(i, row) in &rows {
            if let Row::Next(at) = row {
                let s = &mut self.running[i];
                debug_assert_eq!((s.tokens.len(), s.tokens[at]), (at + 1, PLACEHOLDER));
                s.tokens.truncate(at);
            }
        }
        let launch = self.launch_rows(batch, &rows, true);
        for &(i, row) in &rows {
            if let Row::Next(_) = row {
                self.running[i].tokens.push(PLACEHOLDER);
            }
        }
        launch
    }

    /// Tokens running sequence `i` may not sample now: EOS and stop ids before
    /// `min_new_tokens` (and EOS under a constraint whose output is not yet a whole match); and
    /// under a constraint its grammar's mask of the tokens that keep the output in the language.
    fn banned_tokens(&self, i: usize) -> (Vec<u32>, Option<Arc<Mask>>) {
        let s = &self.running[i];
        let p = &s.req.params;
        let mut banned = Vec::new();
        if s.tokens.len() - s.prompt_len < p.min_new_tokens {
            banned.extend(self.eos.iter().copied());
            banned.extend(p.stop_token_ids.iter().copied());
        }
        let mut mask = None;
        if let (Some(g), Some(w), Some(out)) = (&p.grammar, &s.walk, s.constrained_output()) {
            if let Some(state) = g.0.peek(w, out) {
                let m = g.0.mask(state);
                if !m.accepting {
                    banned.extend(self.eos.iter().copied());
                }
                mask = Some(m);
            }
        }
        (banned, mask)
    }
}
