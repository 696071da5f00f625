//! A chat reply through the configured parsers: reasoning first, then tool calls in what is left,
//! as SGLang orders them. The same stream serves both answers: a non-streamed reply is one piece
//! and the finish ([`parse_reply`], [`message`]); a streamed one is fed delta by delta, each
//! delta's [`Piece`] becoming one chunk.
//!
//! Streaming: content passes through until a call's start marker (a tail that may begin one is
//! held back); from there the text is buffered and each call is sent with its id as soon as its
//! text is closed, the rest at the end. Where the format's calls are JSON objects complete on
//! their own (`qwen25`, `hermes`, `llama3`), an open call is streamed as SGLang streams it: its
//! id and name once the name is closed (arguments `""`), then its arguments piece by piece, each
//! piece re-spaced as the complete call's arguments are, so the pieces add up to them. A
//! section with no valid call is sent as content at the end.

use super::reasoning::ReasoningStream;
use super::{call_id, ReasoningParser, ToolCall, ToolParser};
use serde_json::{json, Value};

/// What one piece of the reply released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Piece {
    pub reasoning: String,
    pub content: String,
    /// Calls completed by this piece, with their index in the reply.
    pub calls: Vec<(usize, ToolCall)>,
    /// What a streamed reply sends of its calls in this piece, in order.
    pub deltas: Vec<CallDelta>,
}

/// One streamed `tool_calls` entry: a call's start (its name; the id is made then) with the
/// first arguments text, or more of its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDelta {
    pub index: usize,
    pub name: Option<String>,
    pub arguments: String,
}

impl Piece {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty()
            && self.content.is_empty()
            && self.calls.is_empty()
            && self.deltas.is_empty()
    }
}

/// A call being streamed: its index, where its text starts in the section, and the arguments
/// text sent so far.
#[derive(Debug)]
struct Streaming {
    index: usize,
    at: usize,
    sent: String,
}

#[derive(Debug)]
struct ToolStream {
    parser: ToolParser,
    known: Vec<String>,
    text: String,
    sent: usize,
    start: Option<usize>,
    emitted: usize,
    /// The open call streamed so far.
    open: Option<Streaming>,
    /// Streamed starts of calls that then did not parse: later calls' stream indices are
    /// shifted past them, so no two streamed calls share an index.
    orphans: usize,
}

impl ToolStream {
    fn new_calls(&mut self, calls: Vec<ToolCall>) -> Vec<(usize, ToolCall)> {
        let from = self.emitted;
        self.emitted = self.emitted.max(calls.len());
        calls.into_iter().enumerate().skip(from).collect()
    }

    /// The deltas of `done` (calls just completed) and of the call still open in the section.
    fn deltas(&mut self, done: &[(usize, ToolCall)], last: bool) -> Vec<CallDelta> {
        let mut out = Vec::new();
        for (i, c) in done {
            let open = match &self.open {
                Some(o) if o.index == *i => self.open.take(),
                _ => None,
            };
            let rest = open
                .as_ref()
                .and_then(|o| c.arguments.strip_prefix(o.sent.as_str()));
            match (open.is_some(), rest) {
                (true, Some(rest)) => {
                    if !rest.is_empty() {
                        out.push(CallDelta {
                            index: *i + self.orphans,
                            name: None,
                            arguments: rest.to_string(),
                        });
                    }
                }
                (streamed, _) => {
                    // Not streamed, or what was streamed was another call's start.
                    self.orphans += usize::from(streamed);
                    out.push(CallDelta {
                        index: *i + self.orphans,
                        name: Some(c.name.clone()),
                        arguments: c.arguments.clone(),
                    });
                }
            }
        }
        let (Some(s), false) = (self.start, last) else {
            return out;
        };
        let Some(call) = self.parser.open_call(&self.text[s..]) else {
            return out;
        };
        let index = self.emitted;
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.index == index && o.at != call.at)
        {
            // The streamed call's text never became a call; this is another.
            self.open = None;
            self.orphans += 1;
        }
        match (&mut self.open, call.name) {
            (Some(o), _) if o.index == index => {
                if let Some(more) = call.arguments.strip_prefix(o.sent.as_str()) {
                    if !more.is_empty() {
                        out.push(CallDelta {
                            index: index + self.orphans,
                            name: None,
                            arguments: more.to_string(),
                        });
                        o.sent = call.arguments;
                    }
                }
            }
            (_, Some(name)) if self.known.contains(&name) => {
                out.push(CallDelta {
                    index: index + self.orphans,
                    name: Some(name),
                    arguments: call.arguments.clone(),
                });
                self.open = Some(Streaming {
                    index,
                    at: call.at,
                    sent: call.arguments,
                });
            }
            _ => {}
        }
        out
    }

    fn push(&mut self, delta: &str) -> (String, Vec<(usize, ToolCall)>) {
        self.text.push_str(delta);
        if self.start.is_none() {
            self.start = self.parser.find_start(&self.text, self.sent);
        }
        let Some(s) = self.start else {
            let safe = self.text.len() - self.parser.hold(&self.text[self.sent..]);
            let out = self.text[self.sent..safe].to_string();
            self.sent = safe;
            return (out, Vec::new());
        };
        let out = self.text[self.sent..s.max(self.sent)].to_string();
        self.sent = self.sent.max(s);
        let known = |n: &str| self.known.iter().any(|k| k == n);
        let sec = self.parser.parse(&self.text[s..], &known, false);
        (out, self.new_calls(sec.calls))
    }

    fn finish(&mut self) -> (String, Vec<(usize, ToolCall)>) {
        let Some(s) = self.start else {
            let out = self.text[self.sent..].to_string();
            self.sent = self.text.len();
            return (out, Vec::new());
        };
        let known = |n: &str| self.known.iter().any(|k| k == n);
        let sec = self.parser.parse(&self.text[s..], &known, true);
        if sec.calls.is_empty() && self.emitted == 0 {
            tracing::warn!("no valid tool call in the model's call text; returned as content");
            return (self.text[s..].to_string(), Vec::new());
        }
        (sec.text, self.new_calls(sec.calls))
    }
}

/// The parsers of one reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    reasoning: Option<ReasoningStream>,
    tools: Option<ToolStream>,
    finished: bool,
    /// `stream_reasoning: false`: the reasoning is sent whole, once it is over.
    hold_reasoning: bool,
    held: String,
}

impl ReplyParser {
    /// `reasoning`: the parser and whether the reply starts in reasoning (None: not separated);
    /// `tools`: the parser and the request's function names (None: no tool parsing).
    pub fn new(
        reasoning: Option<(ReasoningParser, bool)>,
        tools: Option<(ToolParser, Vec<String>)>,
    ) -> Self {
        Self {
            reasoning: reasoning.map(|(k, forced)| ReasoningStream::new(k, forced)),
            tools: tools.map(|(parser, known)| ToolStream {
                parser,
                known,
                text: String::new(),
                sent: 0,
                start: None,
                emitted: 0,
                open: None,
                orphans: 0,
            }),
            finished: false,
            hold_reasoning: false,
            held: String::new(),
        }
    }

    /// The reasoning is released whole once it is over (SGLang's `stream_reasoning: false`),
    /// not piece by piece.
    pub fn hold_reasoning(mut self) -> Self {
        self.hold_reasoning = true;
        self
    }

    /// Reasoning `r` of this piece, as it may be released now.
    fn release(&mut self, r: String, last: bool) -> String {
        if !self.hold_reasoning {
            return r;
        }
        self.held += &r;
        let over = last || self.reasoning.as_ref().is_none_or(ReasoningStream::over);
        if over {
            std::mem::take(&mut self.held)
        } else {
            String::new()
        }
    }

    /// Whether any call was sent.
    pub fn has_calls(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| t.emitted > 0)
    }

    fn through_tools(&mut self, reasoning: String, text: &str, last: bool) -> Piece {
        let Some(t) = &mut self.tools else {
            return Piece {
                reasoning,
                content: text.to_string(),
                ..Piece::default()
            };
        };
        let (mut content, mut calls) = t.push(text);
        if last {
            let (c, k) = t.finish();
            content += &c;
            calls.extend(k);
        }
        let deltas = t.deltas(&calls, last);
        Piece {
            reasoning,
            content,
            calls,
            deltas,
        }
    }

    /// The next piece of the reply.
    pub fn push(&mut self, delta: &str) -> Piece {
        let (r, text) = match &mut self.reasoning {
            Some(s) => s.push(delta),
            None => (String::new(), delta.to_string()),
        };
        let r = self.release(r, false);
        self.through_tools(r, &text, false)
    }

    /// The reply is over: everything held back (nothing when called again).
    pub fn finish(&mut self) -> Piece {
        if std::mem::replace(&mut self.finished, true) {
            return Piece::default();
        }
        let (r, text) = match &mut self.reasoning {
            Some(s) => s.finish(),
            None => (String::new(), String::new()),
        };
        let r = self.release(r, true);
        self.through_tools(r, &text, true)
    }
}

/// A whole reply, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub reasoning: Option<String>,
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// Parses a complete reply. With calls the content is trimmed (SGLang strips the text around
/// them); empty reasoning is none.
pub fn parse_reply(mut p: ReplyParser, text: &str) -> Reply {
    let (a, b) = (p.push(text), p.finish());
    let reasoning = a.reasoning + &b.reasoning;
    let mut content = a.content + &b.content;
    let calls: Vec<ToolCall> = a.calls.into_iter().chain(b.calls).map(|(_, c)| c).collect();
    if !calls.is_empty() {
        content = content.trim().to_string();
    }
    Reply {
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        content,
        calls,
    }
}

/// One streamed `tool_calls` entry: a call's start carries a new id, its type and name; more
/// arguments only the index and the text (OpenAI's shape).
pub fn delta_json(d: &CallDelta) -> Value {
    match &d.name {
        Some(name) => json!({"id": call_id(), "index": d.index, "type": "function",
            "function": {"name": name, "arguments": d.arguments}}),
        None => json!({"index": d.index, "function": {"arguments": d.arguments}}),
    }
}

/// One entry of `tool_calls` (a new id each time).
pub fn call_json(index: usize, c: &ToolCall) -> Value {
    json!({"id": call_id(), "index": index, "type": "function",
        "function": {"name": c.name, "arguments": c.arguments}})
}

/// The non-streamed `message` of a reply, as SGLang writes it: `content` a string (empty when
/// there is none), `reasoning_content` null when none, `tool_calls` only when calls were found.
pub fn message(r: &Reply) -> Value {
    let mut m =
        json!({"role": "assistant", "content": r.content, "reasoning_content": r.reasoning});
    if !r.calls.is_empty() {
        m["tool_calls"] = r
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| call_json(i, c))
            .collect();
    }
    m
}

/// The `finish_reason` of a reply that found calls: a natural stop becomes `tool_calls`.
pub fn finish_reason(reason: Value, has_calls: bool) -> Value {
    if has_calls && reason == "stop" {
        json!("tool_calls")
    } else {
        reason
    }
}

/// The streamed `delta` of a piece (`first`: the chunk that carries the role).
pub fn delta(p: &Piece, first: bool) -> Value {
    let mut d = serde_json::Map::new();
    if first {
        d.insert("role".into(), json!("assistant"));
    }
    if !p.reasoning.is_empty() {
        d.insert("reasoning_content".into(), json!(p.reasoning));
    }
    if !p.content.is_empty() || (p.reasoning.is_empty() && p.deltas.is_empty()) {
        d.insert("content".into(), json!(p.content));
    }
    if !p.deltas.is_empty() {
        d.insert(
            "tool_calls".into(),
            p.deltas.iter().map(delta_json).collect(),
        );
    }
    Value::Object(d)
}
