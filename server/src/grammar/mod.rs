//! Constrained decoding: SGLang's `regex` and `json_schema` sampling parameters (and OpenAI's
//! `response_format`). A constraint compiles to a byte-level DFA ([`Grammar`]); each decode step
//! the scheduler advances the request's DFA state over the tokens it generated and bans every
//! token whose bytes would leave the language ([`Mask`]), so the sampler (host or GPU, through the
//! same banned-token list as `min_new_tokens`) only draws continuations that can still match.
//! EOS is allowed only where the text so far is a whole match, and a request whose text matches
//! and can grow no further finishes there (SGLang's grammar termination).
//!
//! JSON schemas become regular expressions first ([`schema`]). Grammars that recurse (recursive
//! EBNF rules and `$ref`s, JSON of unknown shape) become rules that call each other, run by a
//! pushdown automaton over the same byte DFAs ([`pda`]). Masks are cached per automaton state,
//! and compiled grammars per constraint text ([`Compiler`]), so copies of a request (`n > 1`) and
//! repeated requests pay the vocabulary walk once per state.

pub mod bytes;
pub mod ebnf;
pub mod pda;
pub mod schema;
mod search;
pub mod stop;
pub mod tags;
#[cfg(test)]
mod tests;

use bytes::TokenBytes;
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start::Config as StartConfig;
use regex_automata::{Anchored, MatchKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a request constrains its output to (the source text, before compilation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// The whole output matches this regular expression.
    Regex(String),
    /// The whole output is JSON valid under this schema (its JSON text).
    JsonSchema(String),
    /// The whole output is derived from this EBNF grammar's `root` (recursive rules run on a
    /// pushdown automaton, [`pda`]).
    Ebnf(String),
    /// SGLang's `structural_tag` (its JSON text): free text, in which each trigger opens one of
    /// the tags that begin with it (`tags.rs`).
    StructuralTag(String),
}

impl Constraint {
    /// The regular expression the output must match.
    pub fn to_regex(&self) -> Result<String, String> {
        match self {
            Constraint::Regex(r) => Ok(r.clone()),
            Constraint::JsonSchema(s) => {
                let v: serde_json::Value = serde_json::from_str(s)
                    .map_err(|e| format!("json_schema is not valid JSON: {e}"))?;
                schema::to_regex(&v)
            }
            Constraint::Ebnf(g) => ebnf::to_regex(g),
            Constraint::StructuralTag(_) => {
                Err("a structural tag is no single regular expression".into())
            }
        }
    }

    /// The grammar the output must derive from: one regular expression, or rules that call
    /// each other (recursive EBNF rules and `$ref`s, JSON of unknown depth).
    pub fn to_rules(&self) -> Result<pda::Rules, String> {
        match self {
            Constraint::JsonSchema(s) => {
                let v: serde_json::Value = serde_json::from_str(s)
                    .map_err(|e| format!("json_schema is not valid JSON: {e}"))?;
                schema::to_rules(&v)
            }
            Constraint::Ebnf(g) => ebnf::to_rules(g),
            _ => self.to_regex().map(pda::Rules::regular),
        }
    }
}

/// Largest DFA a constraint may compile to (bytes); a larger one is refused with a 400.
const DFA_LIMIT: usize = 64 << 20;
/// The end marker appended to every pattern (never a byte of UTF-8 text).
const END: u8 = 0xFF;
/// Compiled grammars kept for reuse (the cache is emptied when it reaches this).
const CACHE_LIMIT: usize = 64;

/// Compiles constraints (and `stop_regex` patterns) against one tokenizer's vocabulary and keeps
/// the recent ones.
pub struct Compiler {
    bytes: Arc<TokenBytes>,
    cache: Mutex<HashMap<Constraint, Arc<Grammar>>>,
    stops: Mutex<HashMap<Vec<String>, Arc<stop::StopRegex>>>,
}

impl Compiler {
    pub fn new(bytes: TokenBytes) -> Self {
        Compiler {
            bytes: Arc::new(bytes),
            cache: Mutex::default(),
            stops: Mutex::default(),
        }
    }

    /// The compiled `stop_regex` of `patterns` (now, or the cached one); the error is a 400.
    pub fn stop_regex(&self, patterns: &[String]) -> Result<Arc<stop::StopRegex>, String> {
        if let Some(r) = self.stops.lock().expect("stop cache").get(patterns) {
            return Ok(r.clone());
        }
        let r = Arc::new(stop::StopRegex::new(patterns.to_vec(), self.bytes.clone())?);
        let mut cache = self.stops.lock().expect("stop cache");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(patterns.to_vec(), r.clone());
        Ok(r)
    }

    /// The grammar of `c` (compiled now, or the cached one); the error is a client's 400.
    pub fn compile(&self, c: &Constraint) -> Result<Arc<Grammar>, String> {
        if let Some(g) = self.cache.lock().expect("grammar cache").get(c) {
            if !g.retired() {
                return Ok(g.clone());
            }
        }
        let g = Arc::new(match c {
            Constraint::StructuralTag(t) => Grammar::structural(t, self.bytes.clone())?,
            _ => Grammar::from_rules(&c.to_rules()?, self.bytes.clone())?,
        });
        let mut cache = self.cache.lock().expect("grammar cache");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(c.clone(), g.clone());
        Ok(g)
    }
}

/// A compiled constraint: the automaton of its language over bytes, and the masks computed so
/// far.
pub struct Grammar {
    machine: Machine,
    bytes: Arc<TokenBytes>,
    masks: Mutex<HashMap<u64, Arc<Mask>>>,
}

/// The automaton a constraint compiles to.
enum Machine {
    /// One regular expression, anchored at both ends.
    Regex(Dfa),
    /// A structural tag's free text and tags.
    Tags(tags::Tags),
    /// Rules that call each other.
    Pda(pda::Pda),
}

impl Machine {
    fn start(&self) -> u64 {
        match self {
            Machine::Regex(d) => u64::from(d.start.as_u32()),
            Machine::Tags(t) => t.start(),
            Machine::Pda(p) => p.start(),
        }
    }
    fn walk(&self, mut s: u64, bytes: &[u8]) -> Option<u64> {
        match self {
            Machine::Regex(d) => {
                for &b in bytes {
                    s = u64::from(d.step(state_id(s), b)?.as_u32());
                }
                Some(s)
            }
            Machine::Tags(t) => {
                for &b in bytes {
                    s = t.step(s, b)?;
                }
                Some(s)
            }
            Machine::Pda(p) => p.walk(s, bytes),
        }
    }
    fn accepting(&self, s: u64) -> bool {
        match self {
            Machine::Regex(d) => d.accepting(state_id(s)),
            Machine::Tags(t) => t.accepting(s),
            Machine::Pda(p) => p.accepting(s),
        }
    }
}

/// The DFA state of a packed state's low 32 bits.
fn state_id(s: u64) -> StateID {
    StateID::new(s as u32 as usize).expect("a state id of this DFA")
}

/// The DFA of one regular expression followed by the end marker, anchored.
///
/// The DFA is of `regex` followed by the byte 0xFF, which no UTF-8 text holds: a DFA reports
/// a match one byte late, so without an end marker a state one byte past a complete match
/// would look alive. With it, every state that is not dead can still reach a match, and the
/// text so far is whole when 0xFF then ends it.
pub(crate) struct Dfa {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
}

impl Dfa {
    pub(crate) fn build(regex: &str) -> Result<Self, String> {
        let marked = format!("(?:{regex})(?-u:\\xFF)");
        let dfa = dense::Builder::new()
            .syntax(regex_automata::util::syntax::Config::new().utf8(false))
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .match_kind(MatchKind::All)
                    .dfa_size_limit(Some(DFA_LIMIT))
                    .determinize_size_limit(Some(DFA_LIMIT)),
            )
            .build(&marked)
            .map_err(|e| format!("The constraint cannot be compiled: {e}"))?;
        let start = dfa
            .start_state(&StartConfig::new().anchored(Anchored::Yes))
            .map_err(|e| format!("The constraint cannot be compiled: {e}"))?;
        Ok(Dfa { dfa, start })
    }

    pub(crate) fn start(&self) -> StateID {
        self.start
    }

    /// The state after byte `b` (None: the text left the language).
    pub(crate) fn step(&self, s: StateID, b: u8) -> Option<StateID> {
        if b == END {
            return None;
        }
        let n = self.dfa.next_state(s, b);
        (!self.dfa.is_dead_state(n) && !self.dfa.is_quit_state(n)).then_some(n)
    }

    /// Whether the text that led to `s` is a whole match.
    pub(crate) fn accepting(&self, s: StateID) -> bool {
        let end = self.dfa.next_state(s, END);
        !self.dfa.is_dead_state(end) && self.dfa.is_match_state(self.dfa.next_eoi_state(end))
    }

    fn memory_usage(&self) -> usize {
        self.dfa.memory_usage()
    }
}

/// Where a request stands in its grammar (a DFA state; a structural tag packs its mode too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrammarState(u64);

/// A request's walk through its grammar: the state after the first `walked` output tokens
/// (`None`: a token left the language — an EOS kept under `ignore_eos`, or a PD leg's first
/// token from a server that did not constrain it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    state: Option<GrammarState>,
    walked: usize,
}

/// The tokens one DFA state allows.
#[derive(Debug)]
pub struct Mask {
    /// The tokens that may be sampled, one bit each (bit `t % 32` of word `t / 32`, over the
    /// model's logit rows): every token whose bytes keep the text in the language. Special
    /// tokens are never set (the scheduler lets EOS through when `accepting`). The samplers take
    /// it as it is ([`strata_kernels::sample_rows::Allow`]): 16 KB at a 128K vocabulary, where a
    /// list of the banned tokens was up to 512 KB and 1.5 MB of GPU entries a step.
    pub allow: Vec<u32>,
    /// The text so far is a whole match (EOS may end it).
    pub accepting: bool,
    /// Some token continues the text (false with `accepting`: the request is complete).
    pub can_continue: bool,
}

impl Mask {
    /// Whether token `t` keeps the text in the language.
    pub fn allows(&self, t: u32) -> bool {
        let word = self.allow.get(t as usize / 32).copied().unwrap_or(0);
        (word >> (t % 32)) & 1 == 1
    }
    /// How many tokens keep the text in the language.
    pub fn allowed(&self) -> usize {
        self.allow.iter().map(|w| w.count_ones() as usize).sum()
    }
}

impl Grammar {
    /// Compiles `regex` (anchored at both ends: the whole output matches it).
    pub fn new(regex: &str, bytes: Arc<TokenBytes>) -> Result<Self, String> {
        Ok(Grammar {
            machine: Machine::Regex(Dfa::build(regex)?),
            bytes,
            masks: Mutex::default(),
        })
    }

    /// Compiles `rules`: a plain regular expression to the DFA, rules with calls to the
    /// pushdown automaton.
    pub fn from_rules(rules: &pda::Rules, bytes: Arc<TokenBytes>) -> Result<Self, String> {
        if !rules.calls {
            return Self::new(&rules.bodies[0], bytes);
        }
        Ok(Grammar {
            machine: Machine::Pda(pda::Pda::build(rules)?),
            bytes,
            masks: Mutex::default(),
        })
    }

    /// Whether new requests should get a fresh compilation (a pushdown automaton whose shared
    /// tables grew large).
    fn retired(&self) -> bool {
        matches!(&self.machine, Machine::Pda(p) if p.retired())
    }

    /// Compiles a structural tag (its JSON text, `tags.rs`).
    pub fn structural(tag: &str, bytes: Arc<TokenBytes>) -> Result<Self, String> {
        Ok(Grammar {
            machine: match tags::Tags::parse(tag)? {
                tags::Compiled::Tags(t) => Machine::Tags(*t),
                tags::Compiled::Regex(r) => Machine::Regex(Dfa::build(&r)?),
            },
            bytes,
            masks: Mutex::default(),
        })
    }

    /// Ids the masks cover (the model's logit rows).
    pub fn vocab_len(&self) -> usize {
        self.bytes.len()
    }

    /// The state before any output.
    pub fn start(&self) -> GrammarState {
        GrammarState(self.machine.start())
    }

    /// The state after `token` (None: the token leaves the language, or is special).
    pub fn advance(&self, s: GrammarState, token: u32) -> Option<GrammarState> {
        let b = self.bytes.get(token)?;
        self.walk(s.0, b).map(GrammarState)
    }

    fn walk(&self, s: u64, bytes: &[u8]) -> Option<u64> {
        self.machine.walk(s, bytes)
    }

    /// A walk before any output.
    pub fn walk_start(&self) -> Walk {
        Walk {
            state: Some(self.start()),
            walked: 0,
        }
    }

    /// The state after `output` (the whole output so far; `w` has walked a prefix of it).
    pub fn peek(&self, w: &Walk, output: &[u32]) -> Option<GrammarState> {
        let rest = output.get(w.walked..).unwrap_or(&[]);
        rest.iter().try_fold(w.state?, |s, &t| self.advance(s, t))
    }

    /// Advances `w` over the rest of `output`; the state after it.
    pub fn follow(&self, w: &mut Walk, output: &[u32]) -> Option<GrammarState> {
        w.state = self.peek(w, output);
        w.walked = output.len();
        w.state
    }

    /// Whether the text that led to `s` is a whole match.
    pub fn accepting(&self, s: GrammarState) -> bool {
        self.machine.accepting(s.0)
    }

    /// The mask of state `s` (computed once per state: one walk of the vocabulary).
    pub fn mask(&self, s: GrammarState) -> Arc<Mask> {
        if let Some(m) = self.masks.lock().expect("grammar masks").get(&s.0) {
            return m.clone();
        }
        let (allow, can_continue) = match &self.machine {
            Machine::Pda(p) => p.mask(s.0, &self.bytes),
            _ => {
                let mut allow = vec![0u32; self.bytes.len().div_ceil(32)];
                let mut can_continue = false;
                for id in 0..self.bytes.len() as u32 {
                    match self.bytes.get(id) {
                        Some(b) if !b.is_empty() && self.walk(s.0, b).is_some() => {
                            can_continue = true;
                            allow[id as usize / 32] |= 1 << (id % 32);
                        }
                        _ => {}
                    }
                }
                (allow, can_continue)
            }
        };
        let m = Arc::new(Mask {
            allow,
            accepting: self.accepting(s),
            can_continue,
        });
        self.masks
            .lock()
            .expect("grammar masks")
            .insert(s.0, m.clone());
        m
    }
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = match &self.machine {
            Machine::Regex(d) => d.memory_usage(),
            Machine::Tags(t) => t.memory_usage(),
            Machine::Pda(p) => p.memory_usage(),
        };
        f.debug_struct("Grammar")
            .field("dfa_bytes", &bytes)
            .finish()
    }
}
