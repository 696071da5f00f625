//! Context-free constraints (recursive EBNF rules, recursive `$ref`s, JSON of any depth) as a
//! pushdown automaton over the byte DFAs of the regular constraints.
//!
//! A grammar arrives as [`Rules`]: one regular expression per rule, rule 0 the start, where a
//! call of rule `i` is written as the three bytes `0xFE, 0x80 + i / 64, 0x80 + i % 64` ([`call`];
//! UTF-8 text never holds 0xFE, and real text never steps on it). Each rule compiles to the
//! anchored DFA of the regular constraints; [`analysis`] walks every reachable state once at
//! compile time and keeps the states from which the rule can still end (through byte steps and
//! calls of rules that can end), so every position the automaton holds can complete: the same
//! "every live state reaches a match" the DFA constraints keep.
//!
//! At run time a position is (frame, rule, DFA state), a frame being the interned stack of
//! return points below it; the automaton state is the set of positions after closing over calls
//! and returns (a call whose return point can only end is a tail call and pushes nothing, so
//! right recursion stays flat). States, frames and byte transitions are interned on first use
//! and shared by every request of the grammar; a grammar whose tables grow past
//! [`SOFT_LIMIT`] states is retired from the compiler's cache (its requests keep it).
//!
//! Masks (xgrammar's split into context-independent and -dependent tokens): a token whose bytes
//! all stay inside one position's rule is allowed whatever the stack below, so each (rule, DFA
//! state) keeps, once, the bitmask of such tokens and the list of tokens that leave the rule
//! midway (through a return or a call); a state's mask is the union of its positions' bitmasks
//! plus those leaving tokens that the whole automaton takes. Nesting thus costs no new
//! vocabulary walks: a (rule, state) is walked once however many stacks it appears under.

mod analysis;
mod rules;

pub use rules::{call, RuleIds, Rules};

use super::bytes::TokenBytes;
use super::Dfa;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The deepest stack of open calls; a call past it is not taken (outputs nest at most this deep).
pub const MAX_STACK: u32 = 1024;
/// Interned states after which a grammar is no longer handed to new requests.
const SOFT_LIMIT: usize = 200_000;
/// The first byte of a call (never in UTF-8 text).
const CALL: u8 = 0xFE;
/// Real text bytes are below this (0xF8..=0xFF never occur in UTF-8).
const TEXT_END: u8 = 0xF8;
/// Most rules a grammar may have (two 6-bit bytes name one).
pub const MAX_RULES: usize = 64 * 64;
/// A transition that leaves the language (in the interned table).
const DEAD: u32 = u32::MAX;

/// What the automaton does at one live DFA state of one rule.
#[derive(Debug, Clone)]
struct Info {
    /// Some text byte leads to a live state.
    bytes: bool,
    /// The rule may end here.
    accepts: bool,
    /// Calls that may start here: (callee, the live state to return to).
    calls: Vec<(u32, u32)>,
    /// The rule can only end here (a call returning here is a tail call).
    final_only: bool,
}

/// One rule: its DFA, start state and the live states.
struct Rule {
    dfa: Dfa,
    start: u32,
    /// Per DFA state (its id shifted right by the DFA's stride), when live.
    info: Vec<Option<Info>>,
    stride2: u32,
}

impl Rule {
    /// What the automaton does at state `s` (None: not live).
    fn live(&self, s: u32) -> Option<&Info> {
        self.info.get((s >> self.stride2) as usize)?.as_ref()
    }
    /// What the automaton does at live state `s`.
    fn at(&self, s: u32) -> &Info {
        self.live(s).expect("a live state")
    }
}

/// A position: (frame, rule, DFA state).
type Pos = (u32, u32, u32);

/// A return point: the frame below, and the rule and state to go on in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Frame {
    parent: u32,
    rule: u32,
    ret: u32,
    depth: u32,
}

/// An automaton state: the positions that can read a byte, and whether the text may end here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Config {
    positions: Vec<Pos>,
    accepting: bool,
}

/// A multiply-rotate hasher for the interned tables (their keys are small integers; SipHash
/// was a third of a mask's time).
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fx>>;

/// Interned frames, states and transitions, shared by the grammar's requests.
#[derive(Default)]
struct Tables {
    frames: Vec<Frame>,
    frame_ids: FxMap<Frame, u32>,
    configs: Vec<Config>,
    config_ids: FxMap<Config, u32>,
    next: FxMap<u64, u32>,
}

/// The tokens one (rule, DFA state) takes: those whose bytes stay in the rule, and those that
/// leave it midway (allowed only where the stack lets them).
struct PosMask {
    inside: Vec<u32>,
    leaving: Vec<u32>,
}

/// A compiled context-free constraint.
pub(crate) struct Pda {
    rules: Vec<Rule>,
    tables: Mutex<Tables>,
    start: u32,
    positions: Mutex<FxMap<(u32, u32), Arc<PosMask>>>,
}

impl Pda {
    /// Compiles `rules`; the error (a client's 400) names the problem.
    pub(crate) fn build(rules: &Rules) -> Result<Self, String> {
        let rules = analysis::analyse(rules)?;
        let mut t = Tables::default();
        // Frame 0: the bottom of every stack (the start rule's level).
        t.frames.push(Frame {
            parent: 0,
            rule: 0,
            ret: 0,
            depth: 0,
        });
        let pda = Pda {
            tables: Mutex::default(),
            start: 0,
            rules,
            positions: Mutex::default(),
        };
        let c = pda.closure(&mut t, vec![(0, 0, pda.rules[0].start)]);
        let start = intern(&mut t, c);
        Ok(Pda {
            tables: Mutex::new(t),
            start,
            ..pda
        })
    }

    pub(crate) fn start(&self) -> u64 {
        u64::from(self.start)
    }

    /// The state after `bytes` from `s` (None: the text left the language).
    pub(crate) fn walk(&self, s: u64, bytes: &[u8]) -> Option<u64> {
        let mut t = self.tables.lock().expect("pda tables");
        let mut c = s as u32;
        for &b in bytes {
            c = self.step(&mut t, c, b)?;
        }
        Some(u64::from(c))
    }

    pub(crate) fn accepting(&self, s: u64) -> bool {
        self.tables.lock().expect("pda tables").configs[s as usize].accepting
    }

    /// Whether the tables grew past [`SOFT_LIMIT`] (new requests get a fresh compilation).
    pub(crate) fn retired(&self) -> bool {
        self.tables.lock().expect("pda tables").configs.len() > SOFT_LIMIT
    }

    /// Bytes held by the rules' DFAs.
    pub(crate) fn memory_usage(&self) -> usize {
        self.rules.iter().map(|r| r.dfa.memory_usage()).sum()
    }

    /// The tokens state `s` allows (bit `t % 32` of word `t / 32`), and whether any does.
    pub(crate) fn mask(&self, s: u64, bytes: &TokenBytes) -> (Vec<u32>, bool) {
        let (positions, deep) = {
            let t = self.tables.lock().expect("pda tables");
            let ps = t.configs[s as usize].positions.clone();
            // Near the stack limit a token inside a rule may need a call that is not taken.
            let deep = ps
                .iter()
                .any(|&(f, _, _)| t.frames[f as usize].depth + 2 >= MAX_STACK);
            (ps, deep)
        };
        let words = bytes.len().div_ceil(32);
        let mut allow = vec![0u32; words];
        if deep {
            for id in 0..bytes.len() as u32 {
                if let Some(b) = bytes.get(id).filter(|b| !b.is_empty()) {
                    if self.walk(s, b).is_some() {
                        allow[id as usize / 32] |= 1 << (id % 32);
                    }
                }
            }
        } else {
            let mut leaving = HashSet::new();
            for (_, r, st) in positions {
                let pm = self.position_mask(r, st, bytes);
                for (a, w) in allow.iter_mut().zip(&pm.inside) {
                    *a |= w;
                }
                leaving.extend(pm.leaving.iter().copied());
            }
            for id in leaving {
                if allow[id as usize / 32] >> (id % 32) & 1 == 0
                    && self
                        .walk(s, bytes.get(id).expect("a token with bytes"))
                        .is_some()
                {
                    allow[id as usize / 32] |= 1 << (id % 32);
                }
            }
        }
        let any = allow.iter().any(|&w| w != 0);
        (allow, any)
    }

    /// The tokens of one (rule, state), walked once through the rule's DFA.
    fn position_mask(&self, r: u32, s: u32, bytes: &TokenBytes) -> Arc<PosMask> {
        if let Some(m) = self.positions.lock().expect("pda masks").get(&(r, s)) {
            return m.clone();
        }
        let rule = &self.rules[r as usize];
        let mut inside = vec![0u32; bytes.len().div_ceil(32)];
        let mut leaving = Vec::new();
        for id in 0..bytes.len() as u32 {
            let Some(b) = bytes.get(id).filter(|b| !b.is_empty()) else {
                continue;
            };
            let mut st = s;
            let mut whole = true;
            for (k, &x) in b.iter().enumerate() {
                let next = (x < TEXT_END)
                    .then(|| rule.dfa.step(super::state_id(u64::from(st)), x))
                    .flatten()
                    .map(|n| n.as_u32())
                    .filter(|&n| rule.live(n).is_some());
                match next {
                    Some(n) => st = n,
                    None => {
                        // Leaving at the first byte is a return or call the state's closure
                        // has already taken: those positions are in the state too.
                        let i = rule.at(st);
                        if k > 0 && (i.accepts || !i.calls.is_empty()) {
                            leaving.push(id);
                        }
                        whole = false;
                        break;
                    }
                }
            }
            if whole {
                inside[id as usize / 32] |= 1 << (id % 32);
            }
        }
        let m = Arc::new(PosMask { inside, leaving });
        self.positions
            .lock()
            .expect("pda masks")
            .insert((r, s), m.clone());
        m
    }

    fn step(&self, t: &mut Tables, c: u32, b: u8) -> Option<u32> {
        let key = u64::from(c) << 8 | u64::from(b);
        if let Some(&n) = t.next.get(&key) {
            return (n != DEAD).then_some(n);
        }
        let mut seeds = Vec::new();
        if b < TEXT_END {
            for &(f, r, s) in &t.configs[c as usize].positions {
                let rule = &self.rules[r as usize];
                if let Some(n) = rule.dfa.step(super::state_id(u64::from(s)), b) {
                    let n = n.as_u32();
                    if rule.live(n).is_some() {
                        seeds.push((f, r, n));
                    }
                }
            }
        }
        let n = if seeds.is_empty() {
            DEAD
        } else {
            let cfg = self.closure(t, seeds);
            if cfg.positions.is_empty() && !cfg.accepting {
                DEAD
            } else {
                intern(t, cfg)
            }
        };
        t.next.insert(key, n);
        (n != DEAD).then_some(n)
    }

    /// The state of `seeds` closed over calls (push, or tail call) and ends (pop).
    fn closure(&self, t: &mut Tables, mut work: Vec<Pos>) -> Config {
        let mut seen: HashSet<Pos, std::hash::BuildHasherDefault<Fx>> = HashSet::default();
        let mut positions = Vec::new();
        let mut accepting = false;
        while let Some(p @ (f, r, s)) = work.pop() {
            if !seen.insert(p) {
                continue;
            }
            let rule = &self.rules[r as usize];
            let info = rule.at(s);
            if info.bytes {
                positions.push(p);
            }
            if info.accepts {
                if f == 0 {
                    accepting = true;
                } else {
                    let fr = t.frames[f as usize];
                    work.push((fr.parent, fr.rule, fr.ret));
                }
            }
            for &(callee, ret) in &info.calls {
                let start = self.rules[callee as usize].start;
                if rule.at(ret).final_only {
                    work.push((f, callee, start));
                } else if t.frames[f as usize].depth < MAX_STACK {
                    let nf = push(t, f, r, ret);
                    work.push((nf, callee, start));
                }
            }
        }
        positions.sort_unstable();
        Config {
            positions,
            accepting,
        }
    }
}

fn push(t: &mut Tables, parent: u32, rule: u32, ret: u32) -> u32 {
    let fr = Frame {
        parent,
        rule,
        ret,
        depth: t.frames[parent as usize].depth + 1,
    };
    if let Some(&i) = t.frame_ids.get(&fr) {
        return i;
    }
    let i = t.frames.len() as u32;
    t.frames.push(fr);
    t.frame_ids.insert(fr, i);
    i
}

fn intern(t: &mut Tables, c: Config) -> u32 {
    if let Some(&i) = t.config_ids.get(&c) {
        return i;
    }
    let i = t.configs.len() as u32;
    t.configs.push(c.clone());
    t.config_ids.insert(c, i);
    i
}

#[cfg(test)]
mod tests;
