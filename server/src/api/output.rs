//! Turning a request's event stream into text: cumulative output ids, incremental text deltas that
//! never cut a UTF-8 character or run into a stop string, and the final trimmed text.
//!
//! Invariant: the concatenation of all deltas equals [`Output::final_text`]. While stop strings
//! are set, the last `max_stop_len - 1` bytes are held back (they may start a stop string) and
//! nothing at or after a complete stop string is ever sent.

use crate::model::Tokenizer;
use crate::sampling::SamplingParams;
use crate::scheduler::request::{Event, Finish, FinishReason, PosLogprobs};

/// The output of one request so far.
#[derive(Debug, Default)]
pub struct Output {
    pub ids: Vec<u32>,
    /// Per output token, when log-probabilities were asked for.
    pub logprobs: Vec<PosLogprobs>,
    /// Per reported prompt position, when log-probabilities were asked for.
    pub input_logprobs: Vec<PosLogprobs>,
    /// Log-probabilities were asked for (`logprobs` then has one entry per id).
    pub want_logprobs: bool,
    pub finish: Option<Finish>,
    sent: usize,
    /// Nobody reads the deltas before the end (a non-streamed request): tokens are not decoded
    /// one by one (each decode is of the whole output, so per token that is O(output)).
    pub quiet: bool,
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Output {
    /// An empty output; `want_logprobs` when the request asked for log-probabilities.
    pub fn new(want_logprobs: bool) -> Self {
        Output {
            want_logprobs,
            ..Output::default()
        }
    }

    /// Applies one event; returns the text delta that may be sent now.
    pub fn push(&mut self, ev: Event, tok: &Tokenizer, p: &SamplingParams) -> String {
        match ev {
            Event::Input(lps) => {
                self.input_logprobs.extend(lps);
                String::new()
            }
            Event::Token { id, logprob } => {
                self.ids.push(id);
                match logprob {
                    Some(l) => self.logprobs.push(*l),
                    // A token that arrived without values (PD decode: the first token comes
                    // from the prefill leg) keeps the lists aligned with `ids` as nulls.
                    None if self.want_logprobs => self.logprobs.push(PosLogprobs::default()),
                    None => {}
                }
                if self.quiet {
                    return String::new();
                }
                let text = tok.decode(&self.ids, p.skip_special_tokens);
                let mut end = text.len();
                if text.ends_with('\u{FFFD}') {
                    end = text.len() - '\u{FFFD}'.len_utf8();
                }
                if !p.stop.is_empty() && !p.no_stop_trim {
                    let hold = p.stop.iter().map(String::len).max().unwrap_or(1) - 1;
                    end = end.saturating_sub(hold);
                    if let Some(k) = p.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                        end = end.min(k);
                    }
                }
                self.take(&text, end)
            }
            Event::Done(f) => {
                self.finish = Some(f);
                let text = self.final_text(tok, p);
                let end = text.len();
                self.take(&text, end)
            }
        }
    }

    fn take(&mut self, text: &str, end: usize) -> String {
        let end = floor_boundary(text, end);
        if end <= self.sent {
            return String::new();
        }
        let d = text[self.sent..end].to_string();
        self.sent = end;
        d
    }

    /// The complete text (special tokens such as EOS skipped by default), cut before the first
    /// stop string unless `no_stop_trim`.
    pub fn final_text(&self, tok: &Tokenizer, p: &SamplingParams) -> String {
        let mut text = tok.decode(&self.ids, p.skip_special_tokens);
        if !p.no_stop_trim {
            if let Some(k) = p.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(k);
            }
        }
        text
    }
}

/// SGLang's `meta_info.finish_reason` object.
pub fn finish_reason_json(r: &FinishReason) -> serde_json::Value {
    use serde_json::json;
    match r {
        FinishReason::Length(n) => json!({"type": "length", "length": n}),
        FinishReason::StopToken(t) => json!({"type": "stop", "matched": t}),
        FinishReason::StopStr(s) | FinishReason::StopRegex(s) => {
            json!({"type": "stop", "matched": s})
        }
        FinishReason::Abort(m) => json!({"type": "abort", "message": m}),
        FinishReason::Refused(m) => json!({"type": "abort", "message": m, "status_code": 503}),
    }
}

/// OpenAI's `finish_reason` string.
pub fn openai_finish_reason(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Length(_) => "length",
        FinishReason::StopToken(_) | FinishReason::StopStr(_) | FinishReason::StopRegex(_) => {
            "stop"
        }
        FinishReason::Abort(_) | FinishReason::Refused(_) => "abort",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::{test_seed, SplitMix64};
    use strata_make_model::{make_model, MakeModel};

    /// Random token streams (seed printed): the streamed deltas add up to the final text, with
    /// and without stop strings, and a quiet output (a non-streamed request) gives that text at
    /// the end alone.
    #[test]
    fn deltas_add_up_to_the_final_text_and_quiet_outputs_only_end() {
        let dir = tempfile::tempdir().unwrap();
        make_model(&MakeModel::default(), dir.path()).unwrap();
        let tok = Tokenizer::load(dir.path()).unwrap();
        let seed = test_seed("output deltas");
        let mut rng = SplitMix64(seed);
        for case in 0..40 {
            let ids: Vec<u32> = (0..60).map(|_| (rng.next_u64() % 300) as u32).collect();
            let mut p = SamplingParams::default();
            if case % 2 == 1 {
                let t = tok.decode(&ids[20..22], true);
                p.stop = vec![t].into_iter().filter(|t| !t.is_empty()).collect();
            }
            let done = || {
                Event::Done(Finish {
                    reason: FinishReason::Length(60),
                    prompt_tokens: 1,
                    completion_tokens: 60,
                    cached_tokens: 0,
                })
            };
            let (mut loud, mut quiet) = (Output::new(false), Output::new(false));
            quiet.quiet = true;
            let (mut streamed, mut late) = (String::new(), String::new());
            for &id in &ids {
                let ev = || Event::Token { id, logprob: None };
                streamed += &loud.push(ev(), &tok, &p);
                assert_eq!(quiet.push(ev(), &tok, &p), "", "seed {seed}");
            }
            streamed += &loud.push(done(), &tok, &p);
            late += &quiet.push(done(), &tok, &p);
            assert_eq!(
                streamed,
                loud.final_text(&tok, &p),
                "seed {seed} case {case}"
            );
            assert_eq!(late, streamed, "seed {seed} case {case}");
        }
    }
}
