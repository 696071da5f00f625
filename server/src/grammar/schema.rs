//! JSON schema -> regular expression, for `json_schema` constraints. Covered: `type` (one or a
//! list: object, array, string, integer, number, boolean, null), `properties` with `required`
//! (properties in schema order, optional ones may be left out, no others), `items` with
//! `minItems` / `maxItems`, string `minLength` / `maxLength` / `pattern`, `enum`, `const`,
//! `anyOf` / `oneOf`, a one-element `allOf`, and local `$ref`s (`#/$defs/..`,
//! `#/definitions/..`, `#`). [`to_rules`] (the `json_schema` constraint) makes a `$ref` met again
//! inside its own expansion a call of a rule ([`super::pda`]), and JSON of unknown shape (a
//! schema with no type, `{}`, an object without `properties`, an array without `items`) a call
//! of a rule for any JSON value, so both nest without a fixed bound. [`to_regex`] (one regular
//! expression, for structural tags) refuses a recursive `$ref` and nests JSON of unknown shape at
//! most [`ANY_DEPTH`] deep. Sub-schemas nest at most [`MAX_DEPTH`] deep. Whitespace: at most one space after `:`
//! and `,` (compact JSON; a model that pads more would otherwise never stop). Unknown keywords
//! (formats, bounds on numbers) are ignored: the output is valid JSON of the right shape.

use super::pda::{RuleIds, Rules};
use serde_json::Value;
use std::cell::RefCell;

/// Deepest nesting of `$ref`s and sub-schemas followed.
pub const MAX_DEPTH: usize = 12;
/// Nesting of objects and arrays in JSON of unknown shape, in [`to_regex`].
pub const ANY_DEPTH: usize = 2;

const WS: &str = "[ ]?";
const STRING: &str = r#""(?:[^"\\\x00-\x1F]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2})|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})*""#;
// A JSON string's character: unescaped, a short escape, a \u escape of a code point outside
// the surrogates, or a high-low surrogate pair (a lone surrogate is valid JSON text, but strict
// parsers such as serde_json refuse it).
const STRING_CHAR: &str = r#"(?:[^"\\\x00-\x1F]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2})|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"#;
const INTEGER: &str = "(?:0|-?[1-9][0-9]{0,15})";
const NUMBER: &str = r"-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,16})?(?:[eE][+-]?[0-9]{1,2})?";

/// The regex of `schema` (the root of any `$ref`); a recursive `$ref` is an error.
pub fn to_regex(schema: &Value) -> Result<String, String> {
    Conv {
        root: schema,
        rules: None,
    }
    .value(schema, 0)
}

/// The rule name of JSON of unknown shape (no `$ref` starts so).
const ANY_RULE: &str = "any JSON value";

/// The grammar of `schema`: one regular expression, or rules where `$ref`s recurse or JSON of
/// unknown shape appears.
pub fn to_rules(schema: &Value) -> Result<Rules, String> {
    let conv = Conv {
        root: schema,
        rules: Some(RefCell::new(Recursion {
            ids: RuleIds::with_root("#"),
            open: vec!["#".into()],
        })),
    };
    let body = conv.value(schema, 0)?;
    let mut r = conv.rules.expect("rules mode").into_inner();
    r.ids.define("#", &body);
    if r.ids.known(ANY_RULE) {
        let item = super::pda::call(r.ids.id(ANY_RULE));
        r.ids.define(ANY_RULE, &any_with(&item));
    }
    Ok(r.ids.finish())
}

/// The regex of any JSON object (`response_format: {"type": "json_object"}`).
pub fn any_object() -> String {
    object_of(&any(ANY_DEPTH))
}

struct Conv<'a> {
    root: &'a Value,
    /// In [`to_rules`]: the rules so far and the `$ref`s being expanded.
    rules: Option<RefCell<Recursion>>,
}

struct Recursion {
    ids: RuleIds,
    open: Vec<String>,
}

/// A JSON value written as a literal regex.
fn literal(v: &Value) -> String {
    regex_syntax::escape(&serde_json::to_string(v).expect("a JSON value"))
}

/// Any JSON value with objects and arrays nested at most `depth` deep.
fn any(depth: usize) -> String {
    if depth == 0 {
        return format!("(?:{STRING}|{NUMBER}|true|false|null)");
    }
    any_with(&any(depth - 1))
}

/// Any JSON value whose members and items are `inner`.
fn any_with(inner: &str) -> String {
    format!(
        "(?:{STRING}|{NUMBER}|true|false|null|{}|{})",
        object_of(inner),
        array_of(inner, 0, None)
    )
}

/// An object of string keys to `value`.
fn object_of(value: &str) -> String {
    let member = format!("{STRING}{WS}:{WS}{value}");
    format!(r"\{{{WS}(?:{member}(?:{WS},{WS}{member})*)?{WS}\}}")
}

/// An array of `min..=max` items.
fn array_of(item: &str, min: usize, max: Option<usize>) -> String {
    let sep = format!("{WS},{WS}");
    let more = |lo: usize, hi: Option<usize>| match hi {
        Some(hi) => format!("(?:{sep}{item}){{{lo},{hi}}}"),
        None => format!("(?:{sep}{item}){{{lo},}}"),
    };
    let body = match (min, max) {
        (_, Some(0)) => String::new(),
        (0, hi) => format!("(?:{item}{})?", more(0, hi.map(|h| h - 1))),
        (lo, hi) => format!("{item}{}", more(lo - 1, hi.map(|h| h - 1))),
    };
    format!(r"\[{WS}{body}{WS}\]")
}

fn usize_of(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).map(|n| n as usize)
}

impl Conv<'_> {
    /// JSON of unknown shape nested `depth` deep (in rules mode: any depth, through a call).
    fn any(&self, depth: usize) -> Result<String, String> {
        match &self.rules {
            None => Ok(any(depth)),
            Some(r) => r.borrow_mut().ids.call(ANY_RULE),
        }
    }

    /// The regex of the schema `$ref` `r` points to (a call where it recurses, in rules mode).
    fn reference(&self, r: &str, depth: usize) -> Result<String, String> {
        let target = self.resolve(r)?;
        let Some(rules) = &self.rules else {
            return self.value(target, depth + 1);
        };
        if rules.borrow().open.iter().any(|o| o == r) {
            return rules.borrow_mut().ids.call(r);
        }
        rules.borrow_mut().open.push(r.into());
        let body = self.value(target, depth + 1);
        let mut rules = rules.borrow_mut();
        rules.open.pop();
        let body = body?;
        rules.ids.define(r, &body);
        Ok(body)
    }

    fn value(&self, s: &Value, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "json_schema nests deeper than {MAX_DEPTH} levels (a recursive $ref?)."
            ));
        }
        let s = match s {
            Value::Bool(true) => return self.any(ANY_DEPTH),
            Value::Bool(false) => return Err("json_schema `false` admits no value.".into()),
            Value::Object(o) => o,
            _ => return Err(format!("json_schema: a schema must be an object, got {s}.")),
        };
        if let Some(r) = s.get("$ref") {
            let r = r.as_str().ok_or("json_schema: $ref must be a string.")?;
            return self.reference(r, depth);
        }
        if let Some(c) = s.get("const") {
            return Ok(literal(c));
        }
        if let Some(e) = s.get("enum") {
            let e = e.as_array().ok_or("json_schema: enum must be a list.")?;
            if e.is_empty() {
                return Err("json_schema: enum is empty.".into());
            }
            let alts: Vec<String> = e.iter().map(literal).collect();
            return Ok(format!("(?:{})", alts.join("|")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = s.get(key) {
                let list = list
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| format!("json_schema: {key} must be a non-empty list."))?;
                let alts = list
                    .iter()
                    .map(|x| self.value(x, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(format!("(?:{})", alts.join("|")));
            }
        }
        if let Some(all) = s.get("allOf") {
            match all.as_array().map(Vec::as_slice) {
                Some([one]) => return self.value(one, depth + 1),
                _ => return Err("json_schema: allOf is supported with one schema only.".into()),
            }
        }
        match s.get("type") {
            Some(Value::String(t)) => self.typed(t, s, depth),
            Some(Value::Array(ts)) => {
                let alts = ts
                    .iter()
                    .map(|t| {
                        let t = t.as_str().ok_or("json_schema: type names are strings.")?;
                        self.typed(t, s, depth)
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(format!("(?:{})", alts.join("|")))
            }
            Some(t) => Err(format!(
                "json_schema: type must be a string or a list, got {t}."
            )),
            None if s.contains_key("properties") => self.typed("object", s, depth),
            None if s.contains_key("items") => self.typed("array", s, depth),
            None => self.any(ANY_DEPTH),
        }
    }

    fn resolve(&self, r: &str) -> Result<&Value, String> {
        if r == "#" {
            return Ok(self.root);
        }
        let path = r
            .strip_prefix("#/")
            .ok_or_else(|| format!("json_schema: only local $refs are supported, got {r:?}."))?;
        let mut v = self.root;
        for part in path.split('/') {
            let part = part.replace("~1", "/").replace("~0", "~");
            v = v
                .get(&part)
                .ok_or_else(|| format!("json_schema: $ref {r:?} points nowhere."))?;
        }
        Ok(v)
    }

    fn typed(
        &self,
        t: &str,
        s: &serde_json::Map<String, Value>,
        depth: usize,
    ) -> Result<String, String> {
        Ok(match t {
            "string" => self.string(s)?,
            "integer" => INTEGER.into(),
            "number" => NUMBER.into(),
            "boolean" => "(?:true|false)".into(),
            "null" => "null".into(),
            "array" => {
                let item = match s.get("items") {
                    Some(i) => self.value(i, depth + 1)?,
                    None => self.any(ANY_DEPTH - 1)?,
                };
                let min = usize_of(s.get("minItems")).unwrap_or(0);
                let max = usize_of(s.get("maxItems"));
                if max.is_some_and(|m| m < min) {
                    return Err("json_schema: maxItems is below minItems.".into());
                }
                array_of(&item, min, max)
            }
            "object" => self.object(s, depth)?,
            other => return Err(format!("json_schema: unknown type {other:?}.")),
        })
    }

    fn string(&self, s: &serde_json::Map<String, Value>) -> Result<String, String> {
        if let Some(p) = s.get("pattern") {
            let p = p.as_str().ok_or("json_schema: pattern must be a string.")?;
            let p = p.strip_prefix('^').unwrap_or(p);
            let p = p.strip_suffix('$').unwrap_or(p);
            return Ok(format!("\"(?:{p})\""));
        }
        let min = usize_of(s.get("minLength")).unwrap_or(0);
        Ok(match usize_of(s.get("maxLength")) {
            Some(max) if max < min => {
                return Err("json_schema: maxLength is below minLength.".into())
            }
            Some(max) => format!("\"{STRING_CHAR}{{{min},{max}}}\""),
            None if min > 0 => format!("\"{STRING_CHAR}{{{min},}}\""),
            None => STRING.into(),
        })
    }

    /// Properties in schema order; a required one must appear, an optional one may not.
    fn object(&self, s: &serde_json::Map<String, Value>, depth: usize) -> Result<String, String> {
        let Some(props) = s.get("properties") else {
            return Ok(object_of(&self.any(ANY_DEPTH - 1)?));
        };
        let props = props
            .as_object()
            .ok_or("json_schema: properties must be an object.")?;
        let required: Vec<&str> = match s.get("required") {
            Some(r) => r
                .as_array()
                .ok_or("json_schema: required must be a list.")?
                .iter()
                .filter_map(Value::as_str)
                .collect(),
            None => Vec::new(),
        };
        let members = props
            .iter()
            .map(|(k, v)| {
                let key = literal(&Value::String(k.clone()));
                Ok((
                    format!("{key}{WS}:{WS}{}", self.value(v, depth + 1)?),
                    required.contains(&k.as_str()),
                ))
            })
            .collect::<Result<Vec<(String, bool)>, String>>()?;
        // One alternative per first member present (only optional members may precede it).
        let mut alts = Vec::new();
        for (i, (m, _)) in members.iter().enumerate() {
            let mut alt = m.clone();
            for (n, req) in &members[i + 1..] {
                if *req {
                    alt += &format!("{WS},{WS}{n}");
                } else {
                    alt += &format!("(?:{WS},{WS}{n})?");
                }
            }
            alts.push(alt);
            if members[i].1 {
                break;
            }
        }
        let body = if alts.is_empty() {
            String::new()
        } else if members.iter().any(|(_, r)| *r) {
            format!("(?:{})", alts.join("|"))
        } else {
            format!("(?:{})?", alts.join("|"))
        };
        Ok(format!(r"\{{{WS}{body}{WS}\}}"))
    }
}
