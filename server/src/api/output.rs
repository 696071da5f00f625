//! Turning a request's event stream into text: cumulative output ids, incremental text deltas that
//! never cut a UTF-8 character or run into a stop string, and the final trimmed text.
//!
//! Invariant: the concatenation of all deltas equals [`Output::final_text`]. While stop strings
//! are set, the last `max_stop_len - 1` bytes are held back (they may start a stop string) and
//! nothing at or after a complete stop string is ever sent.
//!
//! The text grows incrementally, as SGLang's and vLLM's detokenizers do: each token decodes a
//! short window (the tokens since the last complete piece, with the piece before them as left
//! context, so a tokenizer that strips a leading space or joins byte pieces sees what it needs)
//! and the window's new characters are appended once they are whole (no trailing U+FFFD). A step
//! costs the window, not the whole output (decoding all of it every token was O(output) per
//! token); the final text is one decode of everything.

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
    /// An embedding request's answer (the last prompt token's final hidden state).
    pub embedding: Option<Vec<f32>>,
    /// `return_hidden_states`: the final hidden state of every position run so far, in order.
    pub hidden: Vec<Vec<f32>>,
    sent: usize,
    /// The output's text so far (whole characters), and the window it was last extended from:
    /// `ids[prefix..read]` decoded last time to what `text` ends with.
    text: String,
    prefix: usize,
    read: usize,
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

/// The text of `text` from `*sent` to `end` (cut to whole characters), `*sent` moved past it.
fn take(sent: &mut usize, text: &str, end: usize) -> String {
    let end = floor_boundary(text, end);
    if end <= *sent {
        return String::new();
    }
    // A decoder may rewrite text already sent (byte-fallback tokens that a later byte makes
    // an invalid sequence turn into U+FFFD): go on from the next whole character.
    let d = text[ceil_boundary(text, *sent).min(end)..end].to_string();
    *sent = end;
    d
}

/// The first character boundary of `s` at or after `i` (its length past the end).
fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
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
                self.extend(tok, p.skip_special_tokens);
                let mut end = self.text.len();
                if !p.stop.is_empty() && !p.no_stop_trim {
                    let hold = p.stop.iter().map(String::len).max().unwrap_or(1) - 1;
                    end = end.saturating_sub(hold);
                    // Nothing at or after a stop string's start was sent, so one can only start
                    // at `sent` or later.
                    let from = ceil_boundary(&self.text, self.sent);
                    let tail = &self.text[from..];
                    if let Some(k) = p.stop.iter().filter_map(|s| tail.find(s.as_str())).min() {
                        end = end.min(from + k);
                    }
                }
                take(&mut self.sent, &self.text, end)
            }
            Event::Embedding(e) => {
                self.embedding = Some(e);
                String::new()
            }
            Event::Hidden(v) => {
                self.hidden.extend(v);
                String::new()
            }
            Event::Done(f) => {
                self.finish = Some(f);
                let text = self.final_text(tok, p);
                take(&mut self.sent, &text, text.len())
            }
        }
    }

    /// Appends the characters the newest token completes (see the module comment).
    fn extend(&mut self, tok: &Tokenizer, skip_special: bool) {
        let before = tok.decode(&self.ids[self.prefix..self.read], skip_special);
        let now = tok.decode(&self.ids[self.prefix..], skip_special);
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            match now.get(before.len()..).filter(|_| now.starts_with(&before)) {
                Some(new) => self.text.push_str(new),
                // The window decodes differently with more tokens (never seen with byte-level or
                // SentencePiece decoders): the whole output, decoded again.
                None => {
                    self.text = tok.decode(&self.ids, skip_special);
                    self.text
                        .truncate(self.text.trim_end_matches('\u{FFFD}').len());
                }
            }
            self.prefix = self.read;
            self.read = self.ids.len();
        }
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

    /// A Llama-2 style tokenizer: SentencePiece pieces (`▁` for a space, the first one stripped)
    /// and byte-fallback tokens `<0xNN>` that join into UTF-8 characters, three special tokens.
    fn sentencepiece(dir: &std::path::Path) -> Tokenizer {
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(t.to_string(), i.into());
        }
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), (3 + b).into());
        }
        for (i, t) in ["▁", "▁the", "▁cat", "s", ",", "▁日本", "é", "▁a"]
            .iter()
            .enumerate()
        {
            vocab.insert(t.to_string(), (259 + i).into());
        }
        let special = |id: u32, c: &str| {
            serde_json::json!({"id": id, "content": c, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": []}
        });
        std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
        Tokenizer::load(dir).unwrap()
    }

    /// Random token streams (seed printed) over a byte-level tokenizer and a SentencePiece one
    /// with byte fallback (multi-byte characters split over tokens, specials skipped or not):
    /// the streamed deltas add up to the final text, with and without stop strings, and a quiet
    /// output (a non-streamed request) gives that text at the end alone.
    #[test]
    fn deltas_add_up_to_the_final_text_and_quiet_outputs_only_end() {
        let (bl, sp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make_model(&MakeModel::default(), bl.path()).unwrap();
        let toks = [
            (Tokenizer::load(bl.path()).unwrap(), 300),
            (sentencepiece(sp.path()), 267),
        ];
        let seed = test_seed("output deltas");
        let mut rng = SplitMix64(seed);
        for case in 0..160 {
            let (tok, vocab) = &toks[case % 2];
            // SentencePiece: pieces, and whole characters spelled in byte tokens (é, 日), so
            // characters are split over tokens; lone bytes would make the decoder rewrite text
            // it already gave (see `take`).
            let mut ids: Vec<u32> = Vec::new();
            while ids.len() < 60 {
                match rng.next_u64() % 5 {
                    0 if *vocab == 267 => ids.extend([0xC3 + 3, 0xA9 + 3]),
                    1 if *vocab == 267 => ids.extend([0xE6 + 3, 0x97 + 3, 0xA5 + 3]),
                    2 if *vocab == 267 => ids.push(1), // <s>, a special token
                    _ if *vocab == 267 => ids.push(259 + (rng.next_u64() % 8) as u32),
                    _ => ids.push((rng.next_u64() % *vocab as u64) as u32),
                }
            }
            let mut p = SamplingParams {
                skip_special_tokens: case % 3 != 0,
                ..SamplingParams::default()
            };
            if case % 4 >= 2 {
                let t = tok.decode(&ids[20..22], true);
                p.stop = vec![t].into_iter().filter(|t| !t.is_empty()).collect();
            }
            let done = || {
                Event::Done(Finish {
                    reason: FinishReason::Length(60),
                    prompt_tokens: 1,
                    completion_tokens: 60,
                    cached_tokens: 0,
                    num_retractions: 0,
                })
            };
            let (mut loud, mut quiet) = (Output::new(false), Output::new(false));
            quiet.quiet = true;
            let (mut streamed, mut late) = (String::new(), String::new());
            for &id in &ids {
                let ev = || Event::Token { id, logprob: None };
                streamed += &loud.push(ev(), tok, &p);
                assert_eq!(quiet.push(ev(), tok, &p), "", "seed {seed}");
            }
            streamed += &loud.push(done(), tok, &p);
            late += &quiet.push(done(), tok, &p);
            assert_eq!(
                streamed,
                loud.final_text(tok, &p),
                "seed {seed} case {case}"
            );
            assert_eq!(late, streamed, "seed {seed} case {case}");
        }
    }
}
