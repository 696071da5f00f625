//! The `--tool-call-parser` formats: where a reply's calls start, and the calls in the text from
//! there on (the "section"). A block that does not parse, or names no function of the request,
//! stays in the section's text, so malformed output reaches the client as content; items of a
//! JSON list that name unknown functions are dropped, as SGLang drops them.

use super::{marked, pyjson, pythonic, ToolCall, ToolParser};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// What a section held: its complete calls, and the text around them (only meaningful when the
/// section was parsed as final).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub calls: Vec<ToolCall>,
    pub text: String,
}

const TAG_OPEN: &str = "<tool_call>";
const TAG_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const TOOL_CALLS: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";

impl ToolParser {
    /// Where the first call starts in `text` (the whole reply so far), looking from byte `from`
    /// on (text before it was released as content: no marker starts there).
    pub fn find_start(self, text: &str, from: usize) -> Option<usize> {
        let rest = &text[from..];
        let at = |i: Option<usize>| i.map(|i| i + from);
        match self {
            Self::Qwen25 | Self::Hermes => at(rest.find(TAG_OPEN)),
            Self::Llama3 if text.starts_with('{') => Some(0),
            Self::Llama3 => at(rest.find(PYTHON_TAG)),
            Self::Mistral => at(rest.find(TOOL_CALLS)),
            Self::Pythonic => at(pythonic::find_start(rest)),
            Self::JsonArray => Some(0),
            Self::DeepSeekV3 | Self::DeepSeekV31 => at(rest.find(marked::DS_CALLS)),
            Self::KimiK2 => at(rest.find(marked::KIMI_CALLS)),
            Self::Glm45 | Self::Qwen3Coder => at(rest.find(marked::TAG_OPEN)),
        }
    }

    /// How many bytes at the end of `text` could begin a start marker (held back from the
    /// content while streaming).
    pub fn hold(self, text: &str) -> usize {
        let marker = match self {
            Self::Qwen25 | Self::Hermes => TAG_OPEN,
            Self::Llama3 => PYTHON_TAG,
            Self::Mistral => TOOL_CALLS,
            Self::Pythonic => return pythonic::hold(text),
            Self::JsonArray => return 0,
            Self::DeepSeekV3 | Self::DeepSeekV31 => marked::DS_CALLS,
            Self::KimiK2 => marked::KIMI_CALLS,
            Self::Glm45 | Self::Qwen3Coder => marked::TAG_OPEN,
        };
        partial_suffix(text, marker)
    }

    /// The calls in `section` (text from [`find_start`](Self::find_start) on). Unless `last`
    /// (the reply is complete), only calls whose text is closed count.
    pub fn parse(self, section: &str, known: &dyn Fn(&str) -> bool, last: bool) -> Section {
        match self {
            Self::Qwen25 => tagged(section, false, known, last),
            Self::Hermes => tagged(section, true, known, last),
            Self::Llama3 => llama3(section, known),
            Self::Mistral => mistral(section, known, last),
            Self::Pythonic => pythonic::parse(section, known),
            Self::JsonArray => json_array(section, known, last),
            Self::DeepSeekV3 => marked::deepseek_v3(section, known),
            Self::DeepSeekV31 => marked::deepseek_v31(section, known),
            Self::KimiK2 => marked::kimi_k2(section, known),
            Self::Glm45 => marked::glm45(section, known),
            Self::Qwen3Coder => marked::qwen3_coder(section, known),
        }
    }
}

/// The length of the longest proper prefix of `marker` that `text` ends with.
pub fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct RawCall<'a> {
    name: Option<String>,
    #[serde(borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

/// Python's truthiness of a JSON value (SGLang takes `parameters or arguments`).
fn truthy(raw: &RawValue) -> bool {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Null) | Err(_) => false,
        Ok(Value::Bool(b)) => b,
        Ok(Value::Number(n)) => n.as_f64() != Some(0.0),
        Ok(Value::String(s)) => !s.is_empty(),
        Ok(Value::Array(a)) => !a.is_empty(),
        Ok(Value::Object(m)) => !m.is_empty(),
    }
}

/// The call `raw` (one JSON object) describes, if it names a known function.
fn one_call(raw: &RawValue, known: &dyn Fn(&str) -> bool) -> Option<ToolCall> {
    let c: RawCall = serde_json::from_str(raw.get()).ok()?;
    let name = c.name.filter(|n| !n.is_empty() && known(n));
    let Some(name) = name else {
        tracing::warn!("the model called an undefined function: {}", raw.get());
        return None;
    };
    let args = match (c.parameters, c.arguments) {
        (Some(p), _) if truthy(p) => pyjson::reformat(p.get())?,
        (_, Some(a)) => pyjson::reformat(a.get())?,
        _ => "{}".to_string(),
    };
    Some(ToolCall {
        name,
        arguments: args,
    })
}

/// The calls of JSON text holding one call object or a list of them; `None` when it does not
/// parse or yields no call.
pub fn json_calls(text: &str, known: &dyn Fn(&str) -> bool) -> Option<Vec<ToolCall>> {
    let raw: &RawValue = serde_json::from_str(text).ok()?;
    let calls: Vec<ToolCall> = if raw.get().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
        items
            .into_iter()
            .filter_map(|i| one_call(i, known))
            .collect()
    } else {
        one_call(raw, known).into_iter().collect()
    };
    (!calls.is_empty()).then_some(calls)
}

/// The first JSON value of `text` (leading whitespace skipped) and the bytes it took.
fn first_value(text: &str) -> Option<(&str, usize)> {
    let mut it = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
    match it.next() {
        Some(Ok(raw)) => Some((raw.get(), it.byte_offset())),
        _ => None,
    }
}

/// A reply that is one JSON array of calls: the calls once the array is complete (the text
/// after it stays text); an unfinished or invalid array is text at the end.
fn json_array(s: &str, known: &dyn Fn(&str) -> bool, last: bool) -> Section {
    let mut out = Section::default();
    match first_value(s).and_then(|(raw, used)| Some((json_calls(raw, known)?, used))) {
        Some((calls, used)) => {
            out.calls = calls;
            out.text.push_str(&s[used..]);
        }
        None if last => out.text.push_str(s),
        None => {}
    }
    out
}

/// `<tool_call>{json}</tool_call>` blocks; with `open_last`, the last block may be unclosed.
fn tagged(s: &str, open_last: bool, known: &dyn Fn(&str) -> bool, last: bool) -> Section {
    let mut out = Section::default();
    let mut pos = 0;
    while let Some(o) = s[pos..].find(TAG_OPEN).map(|o| o + pos) {
        out.text.push_str(&s[pos..o]);
        let body = o + TAG_OPEN.len();
        match s[body..].find(TAG_CLOSE) {
            Some(c) => {
                let end = body + c + TAG_CLOSE.len();
                match json_calls(s[body..body + c].trim(), known) {
                    Some(cs) => out.calls.extend(cs),
                    None => out.text.push_str(&s[o..end]),
                }
                pos = end;
            }
            None => {
                match json_calls(s[body..].trim(), known).filter(|_| open_last && last) {
                    Some(cs) => out.calls.extend(cs),
                    None => out.text.push_str(&s[o..]),
                }
                return out;
            }
        }
    }
    out.text.push_str(&s[pos..]);
    out
}

/// JSON call objects, after an optional `<|python_tag|>`, separated by `;`.
fn llama3(s: &str, known: &dyn Fn(&str) -> bool) -> Section {
    let mut out = Section::default();
    let body = s.strip_prefix(PYTHON_TAG).unwrap_or(s);
    let mut i = 0;
    loop {
        i += body[i..].len()
            - body[i..]
                .trim_start_matches(|c: char| c.is_whitespace() || c == ';')
                .len();
        if i >= body.len() {
            break;
        }
        let Some((raw, used)) = first_value(&body[i..]) else {
            out.text.push_str(&body[i..]);
            break;
        };
        match json_calls(raw, known).filter(|_| raw.starts_with('{')) {
            Some(cs) => out.calls.extend(cs),
            None => out.text.push_str(&body[i..i + used]),
        }
        i += used;
    }
    out
}

/// `[TOOL_CALLS] [{json}, ...]`, or compact `[TOOL_CALLS]name[ARGS]{json}` repeated.
fn mistral(s: &str, known: &dyn Fn(&str) -> bool, last: bool) -> Section {
    let mut out = Section::default();
    let mut rest = &s[TOOL_CALLS.len()..];
    if rest.trim_start().starts_with('[') {
        return mistral_array(s, known, last);
    }
    loop {
        let parsed = rest.find(ARGS).and_then(|a| {
            let name = rest[..a].trim();
            let (raw, used) = first_value(&rest[a + ARGS.len()..])?;
            let obj = format!("{{\"name\": {}, \"arguments\": {raw}}}", Value::from(name));
            let cs = json_calls(&obj, known)?;
            Some((cs, a + ARGS.len() + used))
        });
        let Some((cs, used)) = parsed else {
            out.text.push_str(TOOL_CALLS);
            out.text.push_str(rest);
            return out;
        };
        out.calls.extend(cs);
        rest = &rest[used..];
        match rest.trim_start().strip_prefix(TOOL_CALLS) {
            Some(r) => rest = r,
            None => {
                out.text.push_str(rest);
                return out;
            }
        }
    }
}

/// `[TOOL_CALLS] [{json}, ...]`: each item is a call as soon as its object closes (so calls
/// stream before the array ends; an item naming no function of the request is dropped). Text
/// after the closed array is content; an array whose items named no known function, or (at the
/// end) one that never closed without a call before, is content whole; at the end, what follows
/// the last whole item of an unclosed array is content.
fn mistral_array(s: &str, known: &dyn Fn(&str) -> bool, last: bool) -> Section {
    let mut out = Section::default();
    let bracket = s[TOOL_CALLS.len()..]
        .find('[')
        .expect("an array follows the marker");
    let (mut i, mut items) = (TOOL_CALLS.len() + bracket + 1, 0);
    loop {
        i += s[i..].len()
            - s[i..]
                .trim_start_matches(|c: char| c.is_whitespace() || c == ',')
                .len();
        if s[i..].starts_with(']') {
            if out.calls.is_empty() && items > 0 {
                out.text.push_str(&s[..=i]);
            }
            out.text.push_str(&s[i + 1..]);
            return out;
        }
        match first_value(&s[i..]).filter(|(raw, _)| raw.starts_with('{')) {
            Some((raw, used)) => {
                items += 1;
                if let Ok(raw) = serde_json::from_str::<&RawValue>(raw) {
                    out.calls.extend(one_call(raw, known));
                }
                i += used;
            }
            None => break,
        }
    }
    if last {
        if out.calls.is_empty() {
            out.text.push_str(s);
        } else {
            out.text.push_str(&s[i..]);
        }
    }
    out
}

/// The item of a `[TOOL_CALLS] [...]` array still open at the end of `section`: its text from
/// its `{` and where it starts; None once the array is closed or before an item opens.
fn open_array_item(section: &str) -> Option<(&str, usize)> {
    let at = last_open_object(section, section.find('[')?, 1)?;
    Some((&section[at..], at))
}

/// A call whose text is still open: its function name once its string is closed, and its
/// arguments so far (re-spaced as the complete call's will be, [`pyjson::respace`]).
#[derive(Debug, PartialEq, Eq)]
pub struct OpenCall {
    /// Where the call's object starts in the section (which call this is).
    pub at: usize,
    pub name: Option<String>,
    pub arguments: String,
}

impl ToolParser {
    /// The open call at the end of `section`, for the formats whose calls are JSON objects
    /// each complete on its own: in `<tool_call>` blocks (`qwen25`, `hermes`) or one after
    /// another (`llama3`), or whose name comes before JSON arguments (`mistral`'s compact
    /// form, `deepseekv3`, `deepseekv31`, `kimi_k2`); None for the other formats (the key/value
    /// ones and `mistral`'s array), when no call is open, or when the open text does not begin
    /// as one call.
    pub fn open_call(self, section: &str) -> Option<OpenCall> {
        match self {
            Self::Qwen25 | Self::Hermes => {
                let o = section.rfind(TAG_OPEN)?;
                let body = &section[o + TAG_OPEN.len()..];
                if body.contains(TAG_CLOSE) {
                    return None;
                }
                let obj = body.trim_start();
                open_object(obj, section.len() - obj.len())
            }
            Self::Llama3 => {
                let body = section.strip_prefix(PYTHON_TAG).unwrap_or(section);
                let obj = open_top_object(body)?;
                open_object(obj, section.len() - obj.len())
            }
            Self::Mistral => {
                let at = section.rfind(TOOL_CALLS)?;
                let body = &section[at + TOOL_CALLS.len()..];
                if body.trim_start().starts_with('[') {
                    let (obj, item) = open_array_item(body)?;
                    return open_object(obj, at + TOOL_CALLS.len() + item);
                }
                named_open(at, body.split_once(ARGS))
            }
            Self::DeepSeekV3 | Self::DeepSeekV31 | Self::KimiK2 => marked::open_call(self, section),
            Self::Glm45 | Self::Qwen3Coder => marked::open_kv_call(self, section),
            _ => None,
        }
    }
}

/// The open call starting at `at` whose text after its opening marker is `(name, arguments so
/// far)` once the name is complete (None before: the call is open, its name not yet known).
/// None when the arguments do not begin as a JSON object, or once that object is closed (the
/// call is complete or about to be: what was streamed is the call's until it parses).
pub(super) fn named_open(at: usize, split: Option<(&str, &str)>) -> Option<OpenCall> {
    let Some((name, args)) = split else {
        return Some(OpenCall {
            at,
            name: None,
            arguments: String::new(),
        });
    };
    Some(OpenCall {
        at,
        name: Some(name.trim().to_string()),
        arguments: pyjson::respace(open_object_text(args)?),
    })
}

/// The JSON object at the start of `text` (after whitespace) while it is open; "" when nothing
/// has come yet; None when the text begins as something else or the object is closed.
fn open_object_text(text: &str) -> Option<&str> {
    let t = text.trim_start();
    let b = t.as_bytes();
    match b.first() {
        None => return Some(""),
        Some(b'{') => {}
        Some(_) => return None,
    }
    let (mut depth, mut i) = (0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => match string_end(b, i) {
                Some(end) => i = end,
                None => return Some(t),
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Some(t)
}

/// Scans the start of one call object: the `name` string once closed, and the raw text of the
/// `arguments` (or `parameters`) object or array so far, up to its end.
fn open_object(text: &str, at: usize) -> Option<OpenCall> {
    let b = text.as_bytes();
    if b.first() != Some(&b'{') {
        return None;
    }
    let (mut depth, mut i) = (0usize, 0usize);
    let mut key: Option<String> = None;
    let mut name = None;
    let mut args: Option<(usize, usize)> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // A whole string: a key at depth 1, or the name's value. One still open ends
                // the scan (inside the arguments, its text so far is theirs).
                let Some(end) = string_end(b, i) else {
                    break;
                };
                let raw = &text[i..=end];
                let at_top = depth == 1;
                let is_key = at_top && next_non_ws(b, end + 1) == Some(b':');
                if is_key {
                    key = serde_json::from_str::<String>(raw).ok();
                } else if at_top && key.as_deref() == Some("name") {
                    name = serde_json::from_str::<String>(raw).ok();
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                if depth == 1
                    && args.is_none()
                    && matches!(key.as_deref(), Some("arguments" | "parameters"))
                {
                    args = Some((i, b.len()));
                }
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if let Some((_, e)) = args.as_mut().filter(|_| depth == 1) {
                    if *e == b.len() {
                        *e = i + 1;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    Some(OpenCall {
        at,
        name,
        arguments: args.map_or(String::new(), |(s, e)| pyjson::respace(&text[s..e])),
    })
}

/// The last top-level object of `text` when it is still open (its text from its `{`).
fn open_top_object(text: &str) -> Option<&str> {
    last_open_object(text, 0, 0).map(|at| &text[at..])
}

/// Where the last object opened at nesting `level` (0: top level; 1: an item of the array that
/// opens at `from`) starts, scanning from `from`, while it is still open at the end of `text`;
/// None when none is open, or once the container of that level has closed.
fn last_open_object(text: &str, from: usize, level: usize) -> Option<usize> {
    let b = text.as_bytes();
    let (mut depth, mut i, mut start) = (0usize, from, None);
    while i < b.len() {
        match b[i] {
            b'"' => match string_end(b, i) {
                Some(end) => i = end,
                None => break,
            },
            b'{' | b'[' => {
                if depth == level {
                    start = (b[i] == b'{').then_some(i);
                }
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth < level {
                    return None;
                }
                if depth == level {
                    start = None;
                }
            }
            _ => {}
        }
        i += 1;
    }
    (depth > level).then_some(start)?
}

/// The index of the quote closing the string that opens at `b[start]`; None while it is open.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn next_non_ws(b: &[u8], from: usize) -> Option<u8> {
    b[from.min(b.len())..]
        .iter()
        .copied()
        .find(|c| !c.is_ascii_whitespace())
}
