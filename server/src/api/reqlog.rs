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
//!
//! `/configure_logging` turns the log on or off and sets its level at runtime ([`LogSwitch`]); a
//! request follows the switch as it is when it finishes (one that started while the level was
//! below 2 logs no input text).

use super::output::finish_reason_json;
use crate::model::Tokenizer;
use crate::sampling::SamplingParams;
use crate::scheduler::request::Finish;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// SGLang's cut for level 2, in characters.
const CUT: usize = 2048;

/// The request log's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestLog {
    pub level: u8,
}

/// The request log as it is now, shared by every handler: on or off, and the level.
#[derive(Debug, Clone)]
pub struct LogSwitch(Arc<AtomicU16>);

impl LogSwitch {
    /// The bit that says the log is on (the low byte is the level).
    const ON: u16 = 0x100;

    /// The switch as `--log-requests` sets it; off, the level a later switch-on uses is 2,
    /// `--log-requests-level`'s default.
    pub fn new(log: Option<RequestLog>) -> Self {
        let v = match log {
            Some(l) => Self::ON | l.level as u16,
            None => 2,
        };
        LogSwitch(Arc::new(AtomicU16::new(v)))
    }

    /// The log, when it is on.
    pub fn get(&self) -> Option<RequestLog> {
        let v = self.0.load(Ordering::Relaxed);
        (v & Self::ON != 0).then_some(RequestLog { level: v as u8 })
    }

    /// `/configure_logging`'s `log_requests` and `log_requests_level` (`None`: unchanged).
    pub fn configure(&self, on: Option<bool>, level: Option<u8>) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                let on = on.unwrap_or(v & Self::ON != 0);
                let level = level.unwrap_or(v as u8);
                Some(if on { Self::ON } else { 0 } | level as u16)
            });
    }
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
    fn the_switch_turns_on_off_and_keeps_the_level() {
        let s = LogSwitch::new(None);
        assert_eq!(s.get(), None);
        s.configure(None, Some(3));
        assert_eq!(s.get(), None);
        s.configure(Some(true), None);
        assert_eq!(s.get(), Some(RequestLog::new(3)));
        let t = s.clone();
        t.configure(None, Some(0));
        assert_eq!(s.get(), Some(RequestLog::new(0)));
        s.configure(Some(false), None);
        assert_eq!(t.get(), None);
        assert_eq!(
            LogSwitch::new(Some(RequestLog::new(1))).get(),
            Some(RequestLog::new(1))
        );
        assert_eq!(LogSwitch::new(None).get(), None);
        let on = LogSwitch::new(None);
        on.configure(Some(true), None);
        assert_eq!(on.get(), Some(RequestLog::new(2)));
    }

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
            num_retractions: 0,
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
