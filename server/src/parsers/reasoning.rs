//! `--reasoning-parser`: the reply's thinking part, split off as it streams.
//!
//! Forced (DeepSeek-R1; Qwen3 unless `enable_thinking` is false), the reply is reasoning from its
//! start; otherwise only a reply that opens with `<think>` (after whitespace) is. A leading
//! `<think>` is dropped, reasoning ends at `</think>` (Kimi's markers are `◁think▷` and
//! `◁/think▷`; Qwen3: reasoning also ends where `<tool_call>` starts,
//! which stays in the content), and a reply cut before the end is all reasoning. Text that could
//! be the start of a marker is held back until the next piece decides it.

use super::tool_call::partial_suffix;
use super::ReasoningParser;

const TOOL: &str = "<tool_call>";

/// The reasoning state of one reply.
#[derive(Debug)]
pub struct ReasoningStream {
    kind: ReasoningParser,
    forced: bool,
    /// Whether the opening (`<think>` or not) has been decided.
    opened: bool,
    in_reasoning: bool,
    buf: String,
}

impl ReasoningStream {
    pub fn new(kind: ReasoningParser, forced: bool) -> Self {
        Self {
            kind,
            forced,
            opened: false,
            in_reasoning: forced,
            buf: String::new(),
        }
    }

    /// Whether the request (its `chat_template_kwargs`) makes `kind` treat the reply as
    /// reasoning from its start.
    pub fn forced(
        kind: ReasoningParser,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> bool {
        let flag = |k: &str| kwargs.and_then(|m| m.get(k)).and_then(|v| v.as_bool());
        match kind {
            ReasoningParser::DeepSeekR1 | ReasoningParser::Qwen3Thinking => true,
            ReasoningParser::Qwen3 | ReasoningParser::Glm45 => {
                flag("enable_thinking") != Some(false)
            }
            ReasoningParser::DeepSeekV3 => flag("thinking") == Some(true),
            ReasoningParser::Kimi => false,
        }
    }

    /// Takes the next piece of the reply: (reasoning, content) that can be released now.
    pub fn push(&mut self, delta: &str) -> (String, String) {
        let (open, close) = self.kind.markers();
        self.buf.push_str(delta);
        if !self.opened {
            let t = self.buf.trim_start();
            if open.starts_with(t) && t.len() < open.len() {
                return (String::new(), String::new());
            }
            self.opened = true;
            if let Some(rest) = t.strip_prefix(open) {
                self.buf = rest.to_string();
                self.in_reasoning = true;
            }
        }
        if !self.in_reasoning {
            return (String::new(), std::mem::take(&mut self.buf));
        }
        let mut end = self.buf.find(close).map(|e| (e, e + close.len()));
        if self.kind.tool_call_ends_reasoning() {
            if let Some(t) = self
                .buf
                .find(TOOL)
                .filter(|&t| end.is_none_or(|(e, _)| t < e))
            {
                end = Some((t, t));
            }
        }
        if let Some((e, from)) = end {
            self.in_reasoning = false;
            let content = self.buf[from..].to_string();
            self.buf.truncate(e);
            return (std::mem::take(&mut self.buf), content);
        }
        let mut hold = partial_suffix(&self.buf, close);
        if self.kind.tool_call_ends_reasoning() {
            hold = hold.max(partial_suffix(&self.buf, TOOL));
        }
        let keep = self.buf.split_off(self.buf.len() - hold);
        (std::mem::replace(&mut self.buf, keep), String::new())
    }

    /// Whether the reasoning is over (or the reply opened without any).
    pub fn over(&self) -> bool {
        self.opened && !self.in_reasoning
    }

    /// The reply is over: what was held back.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.buf);
        if self.in_reasoning || (!self.opened && self.forced) {
            (rest, String::new())
        } else {
            (String::new(), rest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReasoningParser::*;

    /// `chat_template_kwargs` with `enable_thinking` set.
    fn kw(on: bool) -> Option<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_value(serde_json::json!({ "enable_thinking": on })).ok()
    }

    /// Feeds `parts` and finishes: (reasoning, content).
    fn run(kind: ReasoningParser, forced: bool, parts: &[&str]) -> (String, String) {
        let mut s = ReasoningStream::new(kind, forced);
        let (mut r, mut c) = (String::new(), String::new());
        for p in parts {
            let p = s.push(p);
            r += &p.0;
            c += &p.1;
        }
        let f = s.finish();
        (r + &f.0, c + &f.1)
    }

    /// Every split of `text` into two and three pieces gives the same answer as one piece.
    fn same_when_split(kind: ReasoningParser, forced: bool, text: &str) -> (String, String) {
        let whole = run(kind, forced, &[text]);
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &cuts {
            assert_eq!(
                run(kind, forced, &[&text[..i], &text[i..]]),
                whole,
                "cut at {i} of {text:?}"
            );
            for &j in cuts.iter().filter(|&&j| j >= i) {
                let parts = [&text[..i], &text[i..j], &text[j..]];
                assert_eq!(run(kind, forced, &parts), whole, "cuts {i},{j} of {text:?}");
            }
        }
        whole
    }

    fn pair(r: &str, c: &str) -> (String, String) {
        (r.to_string(), c.to_string())
    }

    #[test]
    fn deepseek_r1_reasons_until_the_end_tag_with_or_without_the_start_tag() {
        let f = ReasoningStream::forced(DeepSeekR1, kw(false).as_ref());
        assert!(f);
        assert_eq!(
            same_when_split(DeepSeekR1, f, "Hmm, 2+2.</think>It is 4."),
            pair("Hmm, 2+2.", "It is 4.")
        );
        assert_eq!(
            same_when_split(DeepSeekR1, f, "<think>Hmm.</think>\n\n4"),
            pair("Hmm.", "\n\n4")
        );
        // Cut short: everything is reasoning.
        assert_eq!(
            same_when_split(DeepSeekR1, f, "<think>still thin"),
            pair("still thin", "")
        );
        assert_eq!(same_when_split(DeepSeekR1, f, "</thi"), pair("</thi", ""));
        assert_eq!(same_when_split(DeepSeekR1, f, "</think>"), pair("", ""));
        assert_eq!(same_when_split(DeepSeekR1, f, "é</think>ü"), pair("é", "ü"));
    }

    #[test]
    fn kimi_uses_its_own_markers_and_reasons_only_when_the_reply_opens_with_one() {
        let f = ReasoningStream::forced(Kimi, None);
        assert!(!f);
        assert_eq!(
            same_when_split(
                Kimi,
                f,
                "\u{25c1}think\u{25b7}Hmm.\u{25c1}/think\u{25b7}It is 4."
            ),
            pair("Hmm.", "It is 4.")
        );
        assert_eq!(
            same_when_split(Kimi, f, "It is 4. <think>x</think>"),
            pair("", "It is 4. <think>x</think>")
        );
        assert_eq!(
            same_when_split(Kimi, f, "\u{25c1}think\u{25b7}cut"),
            pair("cut", "")
        );
        // The other names SGLang maps onto known detectors.
        for (name, kind) in [
            ("step3", DeepSeekR1),
            ("step3p5", DeepSeekR1),
            ("kimi_k2", Glm45),
            ("minimax", Glm45),
            ("interns1", Glm45),
            ("kimi", Kimi),
        ] {
            assert_eq!(ReasoningParser::from_flag(name), Ok(kind), "{name}");
            assert!(ReasoningParser::NAMES.contains(&name), "{name}");
        }
    }

    #[test]
    fn qwen3_follows_enable_thinking() {
        assert!(ReasoningStream::forced(Qwen3, None));
        assert!(ReasoningStream::forced(Qwen3, kw(true).as_ref()));
        let off = ReasoningStream::forced(Qwen3, kw(false).as_ref());
        // The other parsers' start states.
        assert!(ReasoningStream::forced(Qwen3Thinking, kw(false).as_ref()));
        assert!(!ReasoningStream::forced(Glm45, kw(false).as_ref()));
        assert!(ReasoningStream::forced(Glm45, None));
        assert!(!ReasoningStream::forced(DeepSeekV3, None));
        let think: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"thinking": true}"#).unwrap();
        assert!(ReasoningStream::forced(DeepSeekV3, Some(&think)));
        assert!(!off);
        // Thinking off: only an opening <think> makes reasoning.
        assert_eq!(
            same_when_split(Qwen3, off, "The answer is 4."),
            pair("", "The answer is 4.")
        );
        assert_eq!(
            same_when_split(Qwen3, off, "<think>a</think>b"),
            pair("a", "b")
        );
        assert_eq!(
            same_when_split(Qwen3, off, "\n<think>a</think>b"),
            pair("a", "b")
        );
        assert_eq!(
            same_when_split(Qwen3, off, "x <think>a</think>b"),
            pair("", "x <think>a</think>b")
        );
        assert_eq!(same_when_split(Qwen3, off, "<thi"), pair("", "<thi"));
        // Thinking on: reasoning from the start; <tool_call> ends it and stays in the content.
        assert_eq!(
            same_when_split(Qwen3, true, "plan</think>ok"),
            pair("plan", "ok")
        );
        assert_eq!(
            same_when_split(Qwen3, true, "<think>plan\n<tool_call>\n{}</tool_call>"),
            pair("plan\n", "<tool_call>\n{}</tool_call>")
        );
        assert_eq!(
            same_when_split(Qwen3, true, "a</think>b<tool_call>"),
            pair("a", "b<tool_call>")
        );
    }
}
