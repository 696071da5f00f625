//! An unanchored byte DFA over several patterns, walked one byte at a time: where in a text some
//! pattern's match ends. `stop_regex` (`stop.rs`) and a structural tag's triggers (`tags.rs`)
//! both search a growing output this way.
//!
//! A DFA reports a match one byte late: the state after byte `i` is a match state when a match
//! ended before `i`; a match ending at the text so far shows through the end-of-text transition.

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start::Config as StartConfig;
use regex_automata::{Anchored, MatchKind};

/// Largest DFA the patterns may compile to (bytes).
const DFA_LIMIT: usize = 16 << 20;

/// The compiled patterns.
pub(crate) struct Searcher {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
}

impl Searcher {
    /// Compiles `patterns` (regular expressions over bytes; a Unicode `\b` makes non-ASCII
    /// bytes quit the DFA). The error is the builder's message.
    pub(crate) fn new(patterns: &[String]) -> Result<Self, String> {
        let dfa = dense::Builder::new()
            .syntax(regex_automata::util::syntax::Config::new().utf8(false))
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Unanchored)
                    .match_kind(MatchKind::All)
                    .unicode_word_boundary(true)
                    .dfa_size_limit(Some(DFA_LIMIT))
                    .determinize_size_limit(Some(DFA_LIMIT)),
            )
            .build_many(patterns)
            .map_err(|e| e.to_string())?;
        let start = dfa
            .start_state(&StartConfig::new().anchored(Anchored::No))
            .map_err(|e| e.to_string())?;
        Ok(Searcher { dfa, start })
    }

    pub(crate) fn start(&self) -> StateID {
        self.start
    }

    /// The state after byte `b`; None at a quit byte (the DFA cannot decide from here on).
    pub(crate) fn next(&self, s: StateID, b: u8) -> Option<StateID> {
        let n = self.dfa.next_state(s, b);
        (!self.dfa.is_quit_state(n) && !self.dfa.is_dead_state(n)).then_some(n)
    }

    /// A pattern whose match ended before the last byte that led to `s`.
    pub(crate) fn ended_before(&self, s: StateID) -> Option<usize> {
        self.dfa
            .is_match_state(s)
            .then(|| self.dfa.match_pattern(s, 0).as_usize())
    }

    /// The patterns whose matches end at the text that led to `s`.
    pub(crate) fn ending_here(&self, s: StateID) -> impl Iterator<Item = usize> + '_ {
        let end = self.dfa.next_eoi_state(s);
        let n = if self.dfa.is_match_state(end) {
            self.dfa.match_len(end)
        } else {
            0
        };
        (0..n).map(move |i| self.dfa.match_pattern(end, i).as_usize())
    }

    pub(crate) fn memory_usage(&self) -> usize {
        self.dfa.memory_usage()
    }
}
