//! `--log-requests`: one INFO line per finished request (`Finish: rid=...`), with what
//! `--log-requests-level` asks for, SGLang's levels:
//! - 0: metadata: rid, prompt / completion / cached tokens, finish reason, end-to-end latency;
//! - 1: and the sampling parameters;
//! - 2 (the default): and the input and output text, each cut to 2048 characters (the first and
//!   the last 1024) as SGLang cuts them;
//! - 3: and the input and output text in full.
//!
//! The input is the prompt as the model saw it (after the chat template, after
//! `--allow-auto-truncate`), decoded from its token ids with special tokens. SGLang logs a line
//! on arrival as well; Strata logs only the finish, which carries everything. Off, it costs one
//! branch per request: the prompt ids are kept for the line only at level 2 and above.

use super::output::finish_reason_json;
use crate::model::Tokenizer;
use crate::sampling::SamplingParams;
use crate::scheduler::request::Finish;

/// SGLang's cut for level 2, in characters.
const CUT: usize = 2048;

/// The request log's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestLog {
    pub level: u8,
}

/// What one finished request reports.
pub struct Finished<'a> {
    pub rid: &'a str,
    pub finish: &'a Finish,
    pub e2e_secs: f64,
    pub params: &'a SamplingParams,
    /// The prompt ids (kept only when [`RequestLog::wants_input`]).
    pub input_ids: &'a [u32],
    pub output_text: &'a dyn Fn() -> String,
}

impl RequestLog {
    /// The log at `level` (0..=3; clap checks the range, larger values log everything).
    pub fn new(level: u8) -> Self {
        RequestLog { level }
    }

    /// Whether lines carry the input text (so the prompt ids must be kept).
    pub fn wants_input(&self) -> bool {
        self.level >= 2
    }

    /// Writes the line of `f` at INFO.
    pub fn log(&self, tok: &Tokenizer, f: &Finished) {
        tracing::info!("{}", self.line(tok, f));
    }

    /// The line of `f`.
    pub fn line(&self, tok: &Tokenizer, f: &Finished) -> String {
        let d = f.finish;
        let mut s = format!(
            "Finish: rid={} prompt_tokens={} completion_tokens={} cached_tokens={} finish_reason={} e2e_latency={:.3}",
            f.rid,
            d.prompt_tokens,
            d.completion_tokens,
            d.cached_tokens,
            finish_reason_json(&d.reason),
            f.e2e_secs
        );
        if self.level >= 1 {
            s.push_str(&format!(" sampling_params={:?}", f.params));
        }
        if self.wants_input() {
            let input = tok.decode(f.input_ids, false);
            let output = (f.output_text)();
            s.push_str(&format!(
                " input={} output={}",
                self.cut(&input),
                self.cut(&output)
            ));
        }
        s
    }

    /// `text` quoted on one line; at level 2 longer than [`CUT`] characters, its first and last
    /// halves around ` ... `.
    fn cut(&self, text: &str) -> String {
        let n = text.chars().count();
        if self.level >= 3 || n <= CUT {
            return format!("{text:?}");
        }
        let head: String = text.chars().take(CUT / 2).collect();
        let tail: String = text.chars().skip(n - CUT / 2).collect();
        format!("{head:?} ... {tail:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::request::FinishReason;

    #[test]
    fn long_text_is_cut_at_level_2_only() {
        let long = "a".repeat(1500) + &"b".repeat(1500);
        let two = RequestLog::new(2).cut(&long);
        assert_eq!(
            two,
            format!("{:?} ... {:?}", "a".repeat(1024), "b".repeat(1024))
        );
        assert_eq!(RequestLog::new(3).cut(&long), format!("{long:?}"));
        assert_eq!(
            RequestLog::new(2).cut("x\ny"),
            "\"x\\ny\"",
            "one line, quoted"
        );
    }

    #[test]
    fn each_level_adds_its_fields() {
        let dir = tempfile::tempdir().unwrap();
        strata_make_model::make_model(&Default::default(), dir.path()).unwrap();
        let tok = Tokenizer::load(dir.path()).unwrap();
        let ids = tok.encode("Hello world", false).unwrap();
        let finish = Finish {
            reason: FinishReason::Length(3),
            prompt_tokens: ids.len(),
            completion_tokens: 3,
            cached_tokens: 1,
        };
        let params = SamplingParams::default();
        let out = || "out text".to_string();
        let f = Finished {
            rid: "r1",
            finish: &finish,
            e2e_secs: 0.25,
            params: &params,
            input_ids: &ids,
            output_text: &out,
        };
        let line = |lv| RequestLog::new(lv).line(&tok, &f);
        let l0 = line(0);
        assert!(l0.starts_with("Finish: rid=r1 prompt_tokens="), "{l0}");
        assert!(l0.contains("completion_tokens=3 cached_tokens=1"), "{l0}");
        assert!(
            l0.contains(r#"finish_reason={"type":"length","length":3}"#),
            "{l0}"
        );
        assert!(l0.contains("e2e_latency=0.250"), "{l0}");
        assert!(
            !l0.contains("sampling_params") && !l0.contains("input="),
            "{l0}"
        );
        let l1 = line(1);
        assert!(l1.contains("sampling_params=SamplingParams {") && !l1.contains("input="));
        let l2 = line(2);
        assert!(l2.contains("sampling_params="), "{l2}");
        assert!(
            l2.ends_with(r#" input="Hello world" output="out text""#),
            "{l2}"
        );
    }
}
