//! `stop_regex`: SGLang's regular-expression stop condition. The request finishes once its output
//! text contains a match of any of its patterns (Python `re.search` over the output; SGLang
//! reports the pattern as `matched`). The patterns compile to one unanchored byte DFA that walks
//! each new token's bytes ([`TokenBytes`], the grammar's table) once: O(1) per token, where
//! searching the decoded text again every step is O(output) per token.
//!
//! A match is seen one byte late by a DFA; at the end of each token the end-of-text transition
//! shows a match that ends exactly there, so `$` matches at the end of the output as it does at
//! the end of SGLang's tail string. Patterns with a Unicode `\b` make the DFA give up on
//! non-ASCII bytes: from the first such byte the request's text is searched whole instead.

use super::bytes::TokenBytes;
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start::Config as StartConfig;
use regex_automata::{meta, Anchored, MatchKind};
use std::sync::Arc;

/// Largest DFA the patterns may compile to (bytes).
const DFA_LIMIT: usize = 16 << 20;

/// A request's compiled `stop_regex` patterns.
pub struct StopRegex {
    patterns: Vec<String>,
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
    /// The same patterns for whole-text searches (after a quit byte).
    text: meta::Regex,
    bytes: Arc<TokenBytes>,
}

impl std::fmt::Debug for StopRegex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopRegex")
            .field("patterns", &self.patterns)
            .finish()
    }
}

/// Where a request's output stands against its patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopWalk {
    /// The DFA state after the output so far (None: a quit byte; search the text instead).
    state: Option<StateID>,
    /// Output tokens walked.
    walked: usize,
    /// The first pattern a walked prefix of the output matched.
    matched: Option<usize>,
}

impl StopRegex {
    /// Compiles `patterns` (at least one); the error names the pattern and is a client's 400.
    pub fn new(patterns: Vec<String>, bytes: Arc<TokenBytes>) -> Result<Self, String> {
        let syntax = regex_automata::util::syntax::Config::new().utf8(false);
        let dfa = dense::Builder::new()
            .syntax(syntax)
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Unanchored)
                    .match_kind(MatchKind::All)
                    .unicode_word_boundary(true)
                    .dfa_size_limit(Some(DFA_LIMIT))
                    .determinize_size_limit(Some(DFA_LIMIT)),
            )
            .build_many(&patterns)
            .map_err(|e| compile_error(&patterns, &e.to_string()))?;
        let start = dfa
            .start_state(&StartConfig::new().anchored(Anchored::No))
            .map_err(|e| compile_error(&patterns, &e.to_string()))?;
        let text = meta::Regex::new_many(&patterns)
            .map_err(|e| compile_error(&patterns, &e.to_string()))?;
        Ok(StopRegex {
            patterns,
            dfa,
            start,
            text,
            bytes,
        })
    }

    /// The patterns, in request order.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// A walk before any output.
    pub fn walk_start(&self) -> StopWalk {
        StopWalk {
            state: Some(self.start),
            walked: 0,
            matched: None,
        }
    }

    /// Walks the output tokens `output` not walked yet (`text` decodes the whole output, for
    /// the rare walk past a quit byte); returns the pattern matched by the output so far, if
    /// any has been.
    pub fn follow(
        &self,
        w: &mut StopWalk,
        output: &[u32],
        text: impl Fn() -> String,
    ) -> Option<usize> {
        if w.matched.is_some() || w.walked >= output.len() {
            return w.matched;
        }
        let new = &output[w.walked..];
        w.walked = output.len();
        if let Some(mut s) = w.state {
            'tokens: for &t in new {
                for &b in self.bytes.get(t).unwrap_or(&[]) {
                    s = self.dfa.next_state(s, b);
                    if self.dfa.is_quit_state(s) {
                        w.state = None;
                        break 'tokens;
                    }
                    if self.dfa.is_match_state(s) {
                        w.matched = Some(self.dfa.match_pattern(s, 0).as_usize());
                        return w.matched;
                    }
                }
                let end = self.dfa.next_eoi_state(s);
                if self.dfa.is_match_state(end) {
                    w.matched = Some(self.dfa.match_pattern(end, 0).as_usize());
                    return w.matched;
                }
            }
            if w.state.is_some() {
                w.state = Some(s);
                return None;
            }
        }
        // Past a quit byte: the whole text, every step.
        w.matched = self
            .text
            .search(&regex_automata::Input::new(&text()))
            .map(|m| m.pattern().as_usize());
        w.matched
    }
}

fn compile_error(patterns: &[String], e: &str) -> String {
    format!("stop_regex {patterns:?} cannot be compiled: {e}")
}
