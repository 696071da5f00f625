//! xgrammar's `format` form of a structural tag (`{"type": "structural_tag", "format": {...}}`):
//! nested formats. Those that are regular become one regular expression: `const_string`,
//! `json_schema`, `regex`, `grammar` (EBNF, `ebnf.rs`), `any_text`, `sequence`, `or`, `tag`
//! (begin, content, end) and `tags_with_separator`. A top-level `triggered_tags` is free text with
//! triggered structures ([`Tags`]), with `at_least_one` and `stop_after_first`; nested inside
//! another format it is not regular, and is a 400, as are the formats not listed here.

use super::{Compiled, Structure, Tags};
use crate::grammar::{ebnf, schema};
use serde_json::Value;

/// Compiles a `format` object.
pub(super) fn compile(f: &Value) -> Result<Compiled, String> {
    if kind(f)? == "triggered_tags" {
        let tags = array(f, "tags")?
            .iter()
            .map(structure)
            .collect::<Result<Vec<_>, _>>()?;
        let triggers = array(f, "triggers")?
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("structural_tag triggers must be strings, got {t}."))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Tags::new(
            tags,
            triggers,
            flag(f, "at_least_one")?,
            flag(f, "stop_after_first")?,
        )
        .map(|t| Compiled::Tags(Box::new(t)));
    }
    regex(f).map(Compiled::Regex)
}

fn kind(f: &Value) -> Result<&str, String> {
    f.get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("structural_tag format without a type: {f}"))
}

fn text<'a>(f: &'a Value, key: &str) -> Result<&'a str, String> {
    f.get(key).and_then(Value::as_str).ok_or_else(|| {
        format!(
            "structural_tag format {} needs the string {key}.",
            f["type"]
        )
    })
}

fn array<'a>(f: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    f.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("structural_tag format {} needs the list {key}.", f["type"]))
}

fn flag(f: &Value, key: &str) -> Result<bool, String> {
    match f.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("structural_tag {key} must be a boolean, got {v}.")),
    }
}

/// A `tag` format as a structure.
fn structure(t: &Value) -> Result<Structure, String> {
    if kind(t)? != "tag" {
        return Err(format!(
            "structural_tag triggered_tags takes tag formats, got {t}."
        ));
    }
    Ok(Structure {
        begin: text(t, "begin")?.to_string(),
        content: regex(t.get("content").unwrap_or(&Value::Null))?,
        end: text(t, "end")?.to_string(),
    })
}

/// The regular expression of a regular format.
fn regex(f: &Value) -> Result<String, String> {
    let all = |key: &str, sep: &str| -> Result<String, String> {
        let parts = array(f, key)?
            .iter()
            .map(|e| regex(e).map(|r| format!("(?:{r})")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(parts.join(sep))
    };
    Ok(match kind(f)? {
        "const_string" => regex_syntax::escape(text(f, "value")?),
        "json_schema" => match f.get("json_schema") {
            Some(Value::String(s)) => schema::to_regex(
                &serde_json::from_str(s).map_err(|e| format!("structural_tag json_schema: {e}"))?,
            )?,
            Some(v) => schema::to_regex(v)?,
            None => return Err("structural_tag json_schema format needs json_schema.".into()),
        },
        "regex" => format!("(?:{})", text(f, "pattern")?),
        "grammar" => ebnf::to_regex(text(f, "grammar")?)?,
        "any_text" => "(?s:.*)".to_string(),
        "sequence" => all("elements", "")?,
        "or" => all("elements", "|")?,
        "tag" => {
            let s = structure(f)?;
            format!(
                "{}(?:{}){}",
                regex_syntax::escape(&s.begin),
                s.content,
                regex_syntax::escape(&s.end)
            )
        }
        "tags_with_separator" => {
            let tags = array(f, "tags")?
                .iter()
                .map(|t| regex(t).map(|r| format!("(?:{r})")))
                .collect::<Result<Vec<_>, _>>()?
                .join("|");
            let sep = regex_syntax::escape(text(f, "separator")?);
            let one = format!("(?:{tags})");
            match (flag(f, "at_least_one")?, flag(f, "stop_after_first")?) {
                (true, true) => one,
                (false, true) => format!("{one}?"),
                (true, false) => format!("{one}(?:{sep}{one})*"),
                (false, false) => format!("(?:{one}(?:{sep}{one})*)?"),
            }
        }
        "triggered_tags" => {
            return Err(
                "structural_tag: triggered_tags inside another format is not \
                 supported by this server (only at the top)."
                    .into(),
            )
        }
        t => {
            return Err(format!(
                "structural_tag format type {t} is not supported by this server."
            ))
        }
    })
}
