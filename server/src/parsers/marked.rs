//! The `--tool-call-parser` formats whose calls sit between special-token markers: DeepSeek-V3
//! (`deepseekv3`), DeepSeek-V3.1 (`deepseekv31`), Kimi-K2 (`kimi_k2`), GLM-4.5 (`glm45`) and
//! Qwen3-Coder (`qwen3_coder`). Each block between a call's opening and closing marker is one
//! call; the section markers around the blocks are dropped from the text, and a block that does
//! not parse or names an unknown function stays in the text (as the other formats do).
//!
//! Arguments of the key/value formats (GLM-4.5's `<arg_value>`, Qwen3-Coder's `<parameter=..>`)
//! are taken as JSON where the value parses as JSON and as a string otherwise; SGLang converts
//! them by the tool's declared parameter types, so a string parameter whose value reads as a
//! number comes out as that number here. The keys keep the order the model wrote them in (as
//! SGLang's dict does).

use super::tool_call::{named_open, OpenCall, Section};
use super::{pyjson, ToolCall, ToolParser};
use serde_json::Value;

/// DeepSeek's section and call markers.
pub const DS_CALLS: &str = "<｜tool▁calls▁begin｜>";
const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";
const DS_CALL: &str = "<｜tool▁call▁begin｜>";
const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_SEP: &str = "<｜tool▁sep｜>";
/// Kimi-K2's.
pub const KIMI_CALLS: &str = "<|tool_calls_section_begin|>";
const KIMI_CALLS_END: &str = "<|tool_calls_section_end|>";
const KIMI_CALL: &str = "<|tool_call_begin|>";
const KIMI_CALL_END: &str = "<|tool_call_end|>";
const KIMI_ARGS: &str = "<|tool_call_argument_begin|>";
/// GLM-4.5's and Qwen3-Coder's (the Qwen 2.5 tags, another body).
pub const TAG_OPEN: &str = "<tool_call>";
const TAG_CLOSE: &str = "</tool_call>";

/// A call of `name` (if known) with JSON `args`, spaced as Python's `json.dumps`.
fn call(name: &str, args: &str, known: &dyn Fn(&str) -> bool) -> Option<ToolCall> {
    let name = name.trim();
    if name.is_empty() || !known(name) {
        tracing::warn!("the model called an undefined function: {name}");
        return None;
    }
    let args = args.trim();
    let args = if args.is_empty() { "{}" } else { args };
    if !args.starts_with('{') {
        return None;
    }
    Some(ToolCall {
        name: name.to_string(),
        arguments: pyjson::reformat(args)?,
    })
}

/// A key/value argument's value: its JSON where it parses, else the text as a string.
fn typed(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()))
}

/// The blocks `open` .. `close` of `s`, each made a call by `one`; the text between them is
/// kept without the section markers `strip`.
fn blocks(
    s: &str,
    open: &str,
    close: &str,
    strip: &[&str],
    one: &dyn Fn(&str) -> Option<ToolCall>,
) -> Section {
    let mut out = Section::default();
    let text = |out: &mut Section, t: &str| {
        let mut t = t.to_string();
        for m in strip {
            t = t.replace(m, "");
        }
        out.text.push_str(&t);
    };
    let mut pos = 0;
    while let Some(o) = s[pos..].find(open).map(|o| o + pos) {
        text(&mut out, &s[pos..o]);
        let body = o + open.len();
        let Some(c) = s[body..].find(close) else {
            out.text.push_str(&s[o..]);
            return out;
        };
        let end = body + c + close.len();
        match one(&s[body..body + c]) {
            Some(tc) => out.calls.push(tc),
            None => out.text.push_str(&s[o..end]),
        }
        pos = end;
    }
    text(&mut out, &s[pos..]);
    out
}

/// `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>`.
pub fn deepseek_v3(s: &str, known: &dyn Fn(&str) -> bool) -> Section {
    let one = |b: &str| {
        let (_, rest) = b.split_once(DS_SEP)?;
        let (name, rest) = rest.split_once('\n')?;
        let args = rest.trim().strip_prefix("```json")?.trim_end();
        let args = args.strip_suffix("```")?;
        call(name, args, known)
    };
    blocks(s, DS_CALL, DS_CALL_END, &[DS_CALLS, DS_CALLS_END], &one)
}

/// `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`.
pub fn deepseek_v31(s: &str, known: &dyn Fn(&str) -> bool) -> Section {
    let one = |b: &str| {
        let (name, args) = b.split_once(DS_SEP)?;
        call(name, args, known)
    };
    blocks(s, DS_CALL, DS_CALL_END, &[DS_CALLS, DS_CALLS_END], &one)
}

/// Kimi-K2's call head `functions.NAME:IDX`: NAME.
fn kimi_name(head: &str) -> &str {
    let head = head.trim();
    let head = head.rsplit_once(':').map_or(head, |(h, _)| h);
    head.strip_prefix("functions.").unwrap_or(head)
}

/// DeepSeek-V3's block after the call marker, `function<sep>NAME\n```json\nARGS`: (NAME,
/// what follows the fence), None until the name's line ends (the fence may still be coming:
/// then the arguments are "").
fn deepseek_v3_split(b: &str) -> Option<(&str, &str)> {
    let (_, rest) = b.split_once(DS_SEP)?;
    let (name, rest) = rest.split_once('\n')?;
    Some((
        name,
        rest.trim_start().strip_prefix("```json").unwrap_or(""),
    ))
}

/// [`ToolParser::open_call`] of the marker formats with JSON arguments: the call after the last
/// opening marker, unless its closing marker has come.
pub fn open_call(parser: ToolParser, s: &str) -> Option<OpenCall> {
    let (open, close) = match parser {
        ToolParser::KimiK2 => (KIMI_CALL, KIMI_CALL_END),
        _ => (DS_CALL, DS_CALL_END),
    };
    let at = s.rfind(open)?;
    let body = &s[at + open.len()..];
    if body.contains(close) {
        return None;
    }
    let split = match parser {
        ToolParser::KimiK2 => body
            .split_once(KIMI_ARGS)
            .map(|(head, args)| (kimi_name(head), args)),
        ToolParser::DeepSeekV3 => deepseek_v3_split(body),
        _ => body.split_once(DS_SEP),
    };
    named_open(at, split)
}

/// `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>ARGS<|tool_call_end|>`.
pub fn kimi_k2(s: &str, known: &dyn Fn(&str) -> bool) -> Section {
    let one = |b: &str| {
        let (head, args) = b.split_once(KIMI_ARGS)?;
        call(kimi_name(head), args, known)
    };
    blocks(
        s,
        KIMI_CALL,
        KIMI_CALL_END,
        &[KIMI_CALLS, KIMI_CALLS_END],
        &one,
    )
}

/// The `open` .. `close` pieces of `b` in order (an unclosed one ends the list).
fn pieces<'a>(b: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = b;
    while let Some(o) = rest.find(open) {
        let body = &rest[o + open.len()..];
        let Some(c) = body.find(close) else { break };
        out.push(&body[..c]);
        rest = &body[c + close.len()..];
    }
    out
}

/// A key/value call's arguments as JSON text in the order the model wrote them (as SGLang's
/// `json.dumps` of its dict), spaced as Python's; `close` ends the object (else it is the text
/// streamed so far: the complete pairs).
fn kv_object(pairs: &[(&str, &str)], close: bool) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        pyjson::string(&mut out, k.trim());
        out.push_str(": ");
        out.push_str(&pyjson::dumps(&typed(v), None));
    }
    if close {
        out.push('}');
    }
    out
}

/// GLM-4.5's block after `<tool_call>`: the name and the complete key/value pairs so far (None
/// when the keys and values do not pair up).
fn glm45_pairs(b: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let name_end = b.find("<arg_key>").unwrap_or(b.len());
    let keys = pieces(b, "<arg_key>", "</arg_key>");
    let values = pieces(b, "<arg_value>", "</arg_value>");
    if values.len() > keys.len() || keys.len() > values.len() + 1 {
        return None;
    }
    Some((b[..name_end].trim(), keys.into_iter().zip(values).collect()))
}

/// Qwen3-Coder's block after `<tool_call>`: the name (once its `>` has come) and the complete
/// parameters so far.
fn qwen3_coder_pairs(b: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let f = b.trim_start().strip_prefix("<function=")?;
    let (name, rest) = f.split_once('>')?;
    let mut pairs = Vec::new();
    for p in pieces(rest, "<parameter=", "</parameter>") {
        let (k, v) = p.split_once('>')?;
        let v = v.strip_prefix('\n').unwrap_or(v);
        pairs.push((k, v.strip_suffix('\n').unwrap_or(v)));
    }
    Some((name, pairs))
}

/// `<tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>...</tool_call>`.
pub fn glm45(s: &str, known: &dyn Fn(&str) -> bool) -> Section {
    let one = |b: &str| {
        let (name, pairs) = glm45_pairs(b)?;
        if b.matches("<arg_key>").count() != pairs.len() {
            return None;
        }
        call(name, &kv_object(&pairs, true), known)
    };
    blocks(s, TAG_OPEN, TAG_CLOSE, &[], &one)
}

/// `<tool_call>\n<function=NAME>\n<parameter=K>\nV\n</parameter>...\n</function>\n</tool_call>`.
pub fn qwen3_coder(s: &str, known: &dyn Fn(&str) -> bool) -> Section {
    let one = |b: &str| {
        b.trim_end().strip_suffix("</function>")?;
        let (name, pairs) = qwen3_coder_pairs(b)?;
        call(name, &kv_object(&pairs, true), known)
    };
    blocks(s, TAG_OPEN, TAG_CLOSE, &[], &one)
}

/// [`ToolParser::open_call`] of the key/value formats (`glm45`, `qwen3_coder`): the call after the
/// last `<tool_call>` unless closed, its arguments the complete pairs so far (a value is streamed
/// whole once its closing tag has come: its JSON type is known only then).
pub fn open_kv_call(parser: ToolParser, s: &str) -> Option<OpenCall> {
    let at = s.rfind(TAG_OPEN)?;
    let body = &s[at + TAG_OPEN.len()..];
    if body.contains(TAG_CLOSE) {
        return None;
    }
    let parsed = match parser {
        ToolParser::Glm45 => glm45_pairs(body).filter(|_| {
            // The name is complete once its line (or the first key) has begun.
            body.trim_start().contains(['\n', '<'])
        }),
        _ => qwen3_coder_pairs(body),
    };
    Some(match parsed {
        Some((name, pairs)) if !name.is_empty() => OpenCall {
            at,
            name: Some(name.to_string()),
            arguments: kv_object(&pairs, false),
        },
        _ => OpenCall {
            at,
            name: None,
            arguments: String::new(),
        },
    })
}
