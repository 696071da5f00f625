//! The `pythonic` tool-call format: a Python list of calls with keyword arguments given as
//! Python literals, `[get_weather(city="Paris", days=3), ping()]`. The arguments become JSON
//! (strings, numbers, `True`/`False`/`None`, lists, tuples, dicts with string keys); anything
//! else makes the list plain text.

use super::tool_call::Section;
use super::{pyjson, ToolCall};

fn ident_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = if i == 0 {
            c.is_ascii_alphabetic() || c == '_'
        } else {
            c.is_ascii_alphanumeric() || c == '_'
        };
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

/// The first `[` followed by `name(`.
pub fn find_start(text: &str) -> Option<usize> {
    text.match_indices('[').map(|(i, _)| i).find(|&i| {
        let rest = &text[i + 1..];
        let n = ident_len(rest);
        n > 0 && rest[n..].starts_with('(')
    })
}

/// A tail `[name` that may still become a call.
pub fn hold(text: &str) -> usize {
    match text.rfind('[') {
        Some(j) if ident_len(&text[j + 1..]) == text.len() - j - 1 => text.len() - j,
        _ => 0,
    }
}

struct P<'a> {
    s: &'a str,
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        self.i = self.s.len() - self.s[self.i..].trim_start().len();
    }
    fn eat(&mut self, c: char) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(c) {
            self.i += c.len_utf8();
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Option<&str> {
        self.ws();
        let n = ident_len(&self.s[self.i..]);
        let id = &self.s[self.i..self.i + n];
        self.i += n;
        (n > 0).then_some(id)
    }
    /// Items until `close`, separated by commas (a trailing comma allowed).
    fn items(&mut self, close: char, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        loop {
            if self.eat(close) {
                return Some(());
            }
            item(self)?;
            if !self.eat(',') {
                return self.eat(close).then_some(());
            }
        }
    }
    fn string(&mut self) -> Option<String> {
        self.ws();
        let q = self.s[self.i..]
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')?;
        let mut out = String::new();
        let mut chars = self.s[self.i + 1..].char_indices();
        while let Some((k, c)) = chars.next() {
            match c {
                c if c == q => {
                    self.i += 1 + k + 1;
                    return Some(out);
                }
                '\\' => {
                    let (_, e) = chars.next()?;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        'u' => {
                            let hex: String =
                                (0..4).filter_map(|_| chars.next().map(|x| x.1)).collect();
                            char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                        }
                        e => e,
                    });
                }
                c => out.push(c),
            }
        }
        None
    }
    /// One literal, written to `out` as JSON.
    fn value(&mut self, out: &mut String) -> Option<()> {
        self.ws();
        let rest = &self.s[self.i..];
        let first = rest.chars().next()?;
        match first {
            '"' | '\'' => pyjson::string(out, &self.string()?),
            '[' | '(' => {
                self.i += 1;
                out.push('[');
                let mut n = 0;
                self.items(if first == '[' { ']' } else { ')' }, |p| {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    n += 1;
                    p.value(out)
                })?;
                out.push(']');
            }
            '{' => {
                self.i += 1;
                out.push('{');
                let mut n = 0;
                self.items('}', |p| {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    n += 1;
                    pyjson::string(out, &p.string()?);
                    p.eat(':').then_some(())?;
                    out.push_str(": ");
                    p.value(out)
                })?;
                out.push('}');
            }
            _ => {
                let n = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "+-._".contains(c)))
                    .unwrap_or(rest.len());
                let word = &rest[..n];
                let lit = match word {
                    "True" => "true".to_string(),
                    "False" => "false".to_string(),
                    "None" => "null".to_string(),
                    w => {
                        let v: serde_json::Number =
                            serde_json::from_str(w.trim_start_matches('+')).ok()?;
                        v.to_string()
                    }
                };
                out.push_str(&lit);
                self.i += n;
            }
        }
        Some(())
    }
    fn call(&mut self) -> Option<(String, String)> {
        let name = self.ident()?.to_string();
        self.eat('(').then_some(())?;
        let mut args = String::from("{");
        let mut n = 0;
        self.items(')', |p| {
            let key = p.ident()?.to_string();
            p.eat('=').then_some(())?;
            if n > 0 {
                args.push_str(", ");
            }
            n += 1;
            pyjson::string(&mut args, &key);
            args.push_str(": ");
            p.value(&mut args)
        })?;
        args.push('}');
        Some((name, args))
    }
}

/// The calls of a section that starts with `[name(`.
pub fn parse(section: &str, known: &dyn Fn(&str) -> bool) -> Section {
    let mut p = P { s: section, i: 0 };
    let mut found = Vec::new();
    let ok = p.eat('[')
        && p.items(']', |p| {
            found.push(p.call()?);
            Some(())
        })
        .is_some();
    let calls: Vec<ToolCall> = found
        .into_iter()
        .filter(|(n, _)| {
            let k = known(n);
            if !k {
                tracing::warn!("the model called an undefined function: {n}");
            }
            k
        })
        .map(|(name, arguments)| ToolCall { name, arguments })
        .collect();
    if !ok || calls.is_empty() {
        return Section {
            calls: Vec::new(),
            text: section.to_string(),
        };
    }
    Section {
        calls,
        text: section[p.i..].to_string(),
    }
}
