//! SGLang's `structural_tag` (xgrammar's structural tags, the form SGLang's protocol takes:
//! `{"type": "structural_tag", "structures": [{"begin", "schema", "end"}], "triggers": [...]}`).
//! The output is free text; where a trigger appears in it, the text goes on as one of the
//! structures whose `begin` starts with that trigger: the rest of `begin`, JSON valid under
//! `schema` (any JSON when it has none), then `end`; after `end` the text is free again. This is
//! how tool calls are constrained: `<function=` opens `<function=get_weather>{...}</function>`.
//!
//! Free text is walked by an unanchored DFA of the triggers (a match ending at a byte shows at
//! that byte through the end-of-text transition); each trigger has the anchored DFA of its
//! structures' rests ([`Dfa`]), left as soon as it accepts (the shortest tag: xgrammar's parser
//! could also go on inside a tag whose `end` text the content may contain, which no JSON value
//! does before its own end). Any text may end in free text; none inside a tag.
//!
//! xgrammar's newer `format` form is taken too (`tags/format.rs`): its regular formats become one
//! regular expression, a top-level `triggered_tags` this automaton (with `at_least_one`: the
//! output is whole only after a structure; `stop_after_first`: it ends with its first).
//!
//! A packed state ([`super::GrammarState`]): bit 63 set inside a tag, bits 32..63 the trigger's
//! index, the low 32 bits the DFA state; in free text bit 62 records a completed structure;
//! all bits set: done (`stop_after_first`).

mod format;

use super::search::Searcher;
use super::{schema, state_id, Dfa};
use serde::Deserialize;

/// A structural tag's automaton.
pub struct Tags {
    /// The output must hold at least one structure (`at_least_one`).
    at_least_one: bool,
    /// The output ends with its first structure (`stop_after_first`).
    stop_after_first: bool,
    /// Unanchored DFA of the triggers (one pattern each).
    triggers: Searcher,
    /// Byte lengths of the triggers.
    trigger_len: Vec<usize>,
    /// Per trigger: the DFA of its structures' rests (None: no structure begins with it).
    tags: Vec<Option<Dfa>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(rename = "type")]
    _kind: Option<String>,
    structures: Vec<WireStructure>,
    triggers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireStructure {
    begin: String,
    #[serde(alias = "schema_", alias = "structural_tag_schema")]
    schema: Option<serde_json::Value>,
    end: String,
}

const TAG: u64 = 1 << 63;
/// In free text: a structure has been completed.
const SEEN: u64 = 1 << 62;
/// After the first structure under `stop_after_first`: nothing may follow.
const DONE: u64 = u64::MAX;

/// One structure: `begin`, content matching a regular expression, `end`.
pub(super) struct Structure {
    begin: String,
    content: String,
    end: String,
}

/// What a structural tag's JSON compiles to.
pub enum Compiled {
    /// A regular language (xgrammar's `format` without free text around triggers).
    Regex(String),
    /// Free text with triggered structures.
    Tags(Box<Tags>),
}

impl Tags {
    /// Parses and compiles a structural tag's JSON text; the error is a client's 400. SGLang's
    /// form (`structures`, `triggers`) and xgrammar's `format` form (below).
    pub fn parse(text: &str) -> Result<Compiled, String> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("structural_tag is not valid JSON: {e}"))?;
        if let Some(f) = v.get("format") {
            return format::compile(f);
        }
        let w: Wire = serde_json::from_value(v).map_err(|e| format!("structural_tag: {e}"))?;
        let mut structures = Vec::new();
        for s in w.structures {
            let content = match &s.schema {
                None | Some(serde_json::Value::Null) => schema::to_regex(&serde_json::json!({}))?,
                Some(v) => schema::to_regex(v)?,
            };
            structures.push(Structure {
                begin: s.begin,
                content,
                end: s.end,
            });
        }
        Tags::new(structures, w.triggers, false, false).map(|t| Compiled::Tags(Box::new(t)))
    }

    /// Free text in which each of `triggers` opens one of the `structures` beginning with it.
    pub(super) fn new(
        structures: Vec<Structure>,
        triggers: Vec<String>,
        at_least_one: bool,
        stop_after_first: bool,
    ) -> Result<Self, String> {
        if triggers.is_empty() || triggers.iter().any(String::is_empty) {
            return Err("structural_tag needs at least one trigger, none empty.".into());
        }
        for s in &structures {
            if !triggers.iter().any(|t| s.begin.starts_with(t.as_str())) {
                return Err(format!(
                    "structural_tag: the begin {:?} starts with no trigger of {triggers:?}.",
                    s.begin
                ));
            }
        }
        let escaped: Vec<String> = triggers.iter().map(|t| regex_syntax::escape(t)).collect();
        let trigger_dfa =
            Searcher::new(&escaped).map_err(|e| format!("structural_tag triggers: {e}"))?;
        let mut tags = Vec::new();
        for t in &triggers {
            let alts: Vec<String> = structures
                .iter()
                .filter(|s| s.begin.starts_with(t.as_str()))
                .map(|s| {
                    format!(
                        "(?:{}(?:{}){})",
                        regex_syntax::escape(&s.begin[t.len()..]),
                        s.content,
                        regex_syntax::escape(&s.end)
                    )
                })
                .collect();
            tags.push(if alts.is_empty() {
                None
            } else {
                Some(Dfa::build(&alts.join("|"))?)
            });
        }
        Ok(Tags {
            at_least_one,
            stop_after_first,
            triggers: trigger_dfa,
            trigger_len: triggers.iter().map(String::len).collect(),
            tags,
        })
    }

    pub(super) fn start(&self) -> u64 {
        u64::from(self.triggers.start().as_u32())
    }

    /// The state after byte `b` (None: a trigger no structure begins with, or a byte a tag
    /// does not take).
    pub(super) fn step(&self, s: u64, b: u8) -> Option<u64> {
        if s == DONE {
            return None;
        }
        if s & TAG == 0 {
            let seen = s & SEEN;
            let n = self.triggers.next(state_id(s), b)?;
            // A trigger ending here (the longest, where several do) opens its structures.
            let Some(k) = self
                .triggers
                .ending_here(n)
                .max_by_key(|&k| self.trigger_len[k])
            else {
                return Some(seen | u64::from(n.as_u32()));
            };
            let d = self.tags[k].as_ref()?;
            return Some(TAG | (k as u64) << 32 | u64::from(d.start().as_u32()));
        }
        let k = ((s & !TAG) >> 32) as usize;
        let d = self.tags[k].as_ref()?;
        let n = d.step(state_id(s), b)?;
        if d.accepting(n) {
            Some(if self.stop_after_first {
                DONE
            } else {
                SEEN | self.start()
            })
        } else {
            Some(TAG | (k as u64) << 32 | u64::from(n.as_u32()))
        }
    }

    /// Free text may end anywhere (after a structure, under `at_least_one`); a tag must be
    /// closed.
    pub(super) fn accepting(&self, s: u64) -> bool {
        s == DONE || (s & TAG == 0 && (!self.at_least_one || s & SEEN != 0))
    }

    pub(super) fn memory_usage(&self) -> usize {
        self.triggers.memory_usage()
            + self
                .tags
                .iter()
                .flatten()
                .map(Dfa::memory_usage)
                .sum::<usize>()
    }
}
