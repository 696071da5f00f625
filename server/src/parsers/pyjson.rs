//! JSON written the way Python's `json.dumps(x, ensure_ascii=False)` writes it: `", "` between
//! items, `": "` after keys (or, with an indent, one item per line), non-ASCII kept as is. SGLang
//! builds a tool call's `arguments` string and transformers' `tojson` template filter this way, so
//! the bytes a client (or the model, through the prompt) sees match.
//!
//! [`reformat`] re-spaces JSON text without parsing it into a map, so the keys keep the order the
//! model wrote them in (serde_json's map here is sorted).

use serde_json::Value;

pub(crate) fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline(out: &mut String, indent: Option<usize>, depth: usize) {
    if let Some(n) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * depth));
    }
}

fn write(out: &mut String, v: &Value, indent: Option<usize>, depth: usize) {
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => string(out, s),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, indent, depth + 1);
                write(out, x, indent, depth + 1);
            }
            newline(out, indent, depth);
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, indent, depth + 1);
                string(out, k);
                out.push_str(": ");
                write(out, x, indent, depth + 1);
            }
            newline(out, indent, depth);
            out.push('}');
        }
    }
}

/// `json.dumps(v, ensure_ascii=False, indent=indent)`.
pub fn dumps(v: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write(&mut out, v, indent, 0);
    out
}

/// Valid JSON text re-spaced as `json.dumps` spaces it, keeping its key order and its strings
/// (escapes included) as written. `None` when `text` is not one JSON value.
pub fn reformat(text: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    Some(respace(text))
}

/// [`reformat`]'s re-spacing without the check: char by char, so the output of a prefix of some
/// JSON text is a prefix of the output of the whole (a streamed call's arguments so far).
pub fn respace(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    out.push(c);
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
            }
            ',' => out.push_str(", "),
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dumps_spaces_like_python() {
        let v = json!({"a": [1, 2.5, "é\n"], "b": {}, "c": null, "d": true});
        assert_eq!(
            dumps(&v, None),
            r#"{"a": [1, 2.5, "é\n"], "b": {}, "c": null, "d": true}"#
        );
        assert_eq!(
            dumps(&json!({"a": [1]}), Some(2)),
            "{\n  \"a\": [\n    1\n  ]\n}"
        );
    }

    #[test]
    fn reformat_keeps_order_and_strings() {
        assert_eq!(
            reformat(r#" {"z":1,"a" : ["x, y:\"", {"k":2}]} "#).unwrap(),
            r#"{"z": 1, "a": ["x, y:\"", {"k": 2}]}"#
        );
        assert_eq!(reformat("{\"a\": 1"), None);
        assert_eq!(reformat("1 2"), None);
    }
}
