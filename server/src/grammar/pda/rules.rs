//! The form a context-free constraint arrives in: one regular expression per rule, calls
//! written as byte markers ([`call`]), and the ids the translators (`ebnf.rs`, `schema.rs`) hand
//! out while they build it ([`RuleIds`]).

use super::{CALL, MAX_RULES};
use std::collections::HashMap;

/// The regex text of a call of rule `i` (a byte sequence text never holds).
pub fn call(i: usize) -> String {
    assert!(i < MAX_RULES, "rule index {i} out of range");
    format!(
        "(?-u:\\x{CALL:02X}\\x{:02X}\\x{:02X})",
        0x80 + i / 64,
        0x80 + i % 64
    )
}

/// A grammar as regular rule bodies that call each other ([`call`]); rule 0 is the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// One regular expression per rule.
    pub bodies: Vec<String>,
    /// Names for messages (`$ref` targets, EBNF rule names).
    pub names: Vec<String>,
    /// Whether any body calls a rule (false: rule 0 alone is a plain regular expression).
    pub calls: bool,
}

impl Rules {
    /// A regular constraint: one rule without calls.
    pub fn regular(regex: String) -> Self {
        Rules {
            bodies: vec![regex],
            names: vec!["root".into()],
            calls: false,
        }
    }
}

/// Rule ids handed out while a grammar is translated: a name gets an id on its first call and
/// a body once its translation is done.
#[derive(Debug, Default)]
pub struct RuleIds {
    ids: HashMap<String, usize>,
    names: Vec<String>,
    bodies: Vec<Option<String>>,
    called: bool,
}

impl RuleIds {
    /// Ids starting with the start rule `root` as 0.
    pub fn with_root(root: &str) -> Self {
        let mut r = RuleIds::default();
        r.id(root);
        r
    }
    /// The id of `name` (a new one on first sight).
    pub fn id(&mut self, name: &str) -> usize {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let i = self.names.len();
        self.ids.insert(name.into(), i);
        self.names.push(name.into());
        self.bodies.push(None);
        i
    }
    /// The regex of a call of `name`; an error past [`MAX_RULES`].
    pub fn call(&mut self, name: &str) -> Result<String, String> {
        let i = self.id(name);
        if i >= MAX_RULES {
            return Err(format!(
                "the grammar has more than {MAX_RULES} recursive rules"
            ));
        }
        self.called = true;
        Ok(call(i))
    }
    /// Whether `name` has an id.
    pub fn known(&self, name: &str) -> bool {
        self.ids.contains_key(name)
    }
    /// Records `name`'s body (the first one given stays).
    pub fn define(&mut self, name: &str, body: &str) {
        if let Some(&i) = self.ids.get(name) {
            self.bodies[i].get_or_insert_with(|| body.to_string());
        }
    }
    /// A name that has an id but no body yet.
    pub fn undefined(&self) -> Option<String> {
        let i = self.bodies.iter().position(Option::is_none)?;
        Some(self.names[i].clone())
    }
    /// The finished grammar (every id defined).
    pub fn finish(self) -> Rules {
        Rules {
            bodies: self
                .bodies
                .into_iter()
                .map(|b| b.expect("every rule defined"))
                .collect(),
            names: self.names,
            calls: self.called,
        }
    }
}
