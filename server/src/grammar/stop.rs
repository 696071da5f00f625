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
use super::search::Searcher;
use regex_automata::meta;
use regex_automata::util::primitives::StateID;
use std::sync::Arc;

/// A request's compiled `stop_regex` patterns.
pub struct StopRegex {
    patterns: Vec<String>,
    search: Searcher,
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
        let search = Searcher::new(&patterns).map_err(|e| compile_error(&patterns, &e))?;
        let text = meta::Regex::new_many(&patterns)
            .map_err(|e| compile_error(&patterns, &e.to_string()))?;
        Ok(StopRegex {
            patterns,
            search,
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
            state: Some(self.search.start()),
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
                    let Some(n) = self.search.next(s, b) else {
                        w.state = None;
                        break 'tokens;
                    };
                    s = n;
                    if let Some(k) = self.search.ended_before(s) {
                        w.matched = Some(k);
                        return w.matched;
                    }
                }
                if let Some(k) = self.search.ending_here(s).next() {
                    w.matched = Some(k);
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
