//! The compile-time pass of a context-free constraint: every rule's DFA is explored from its
//! start (text bytes and calls), then three fixed points decide what the automaton keeps.
//!
//! - **Productive rules and live states**: a state is live when the rule can end from it through
//!   byte steps and calls of productive rules; a rule is productive when its start is live. Dead
//!   states and calls of unproductive rules are dropped, so no output can walk into a dead end.
//!   A start rule that is not productive derives no text: a 400.
//! - **Nullable rules**: rules that can end without reading a byte.
//! - **Left recursion**: a rule that can call itself before reading a byte (through nullable
//!   prefixes) would push frames without end: a 400 naming it.

use super::{Info, Rule, Rules, CALL, TEXT_END};
use crate::grammar::Dfa;
use regex_automata::dfa::Automaton;
use regex_automata::util::primitives::StateID;
use std::collections::{HashMap, VecDeque};

/// The explored states of one rule.
struct Graph {
    start: u32,
    states: Vec<u32>,
    index: HashMap<u32, usize>,
    /// Byte successors (indices into `states`).
    succ: Vec<Vec<usize>>,
    /// Calls: (callee, index of the return state).
    calls: Vec<Vec<(u32, usize)>>,
    accepts: Vec<bool>,
}

/// The rules compiled and pruned to their live states.
pub(super) fn analyse(rules: &Rules) -> Result<Vec<Rule>, String> {
    let n = rules.bodies.len();
    let dfas = rules
        .bodies
        .iter()
        .zip(&rules.names)
        .map(|(b, name)| Dfa::build(b).map_err(|e| format!("rule `{name}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let graphs = dfas
        .iter()
        .map(|d| explore(d, n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut productive = vec![false; n];
    let live = loop {
        let live: Vec<Vec<bool>> = graphs
            .iter()
            .map(|g| co_reachable(g, &productive))
            .collect();
        let now: Vec<bool> = live.iter().map(|l| l[0]).collect();
        if now == productive {
            break live;
        }
        productive = now;
    };
    if !productive[0] {
        return Err("The grammar derives no text (every derivation recurses without end).".into());
    }
    // Calls kept: of productive rules, returning to live states.
    let (gr, prod, lv) = (&graphs, &productive, &live);
    let calls = move |r: usize, i: usize| {
        gr[r].calls[i]
            .iter()
            .copied()
            .filter(move |&(c, ret)| prod[c as usize] && lv[r][ret])
    };
    left_recursion(&graphs, &live, &calls).map_err(|r| {
        format!(
            "The grammar is left-recursive: rule `{}` can call itself before reading any text \
             (write the repetition with `*` or `+`).",
            rules.names[r]
        )
    })?;
    Ok(dfas
        .into_iter()
        .enumerate()
        .map(|(r, dfa)| {
            let g = &graphs[r];
            let stride2 = dfa.dfa.stride2() as u32;
            let slots = g.states.iter().map(|&s| (s >> stride2) as usize + 1).max();
            let mut info = vec![None; slots.unwrap_or(0)];
            for (i, &s) in g.states.iter().enumerate() {
                if !live[r][i] {
                    continue;
                }
                let bytes = g.succ[i].iter().any(|&j| live[r][j]);
                let calls: Vec<(u32, u32)> = calls(r, i).map(|(c, j)| (c, g.states[j])).collect();
                let accepts = g.accepts[i];
                info[(s >> stride2) as usize] = Some(Info {
                    bytes,
                    accepts,
                    final_only: accepts && !bytes && calls.is_empty(),
                    calls,
                });
            }
            Rule {
                dfa,
                start: g.start,
                info,
                stride2,
            }
        })
        .collect())
}

/// Every state reachable from the start by text bytes and calls (their return states).
fn explore(d: &Dfa, rules: usize) -> Result<Graph, String> {
    let start = d.start().as_u32();
    let mut g = Graph {
        start,
        states: vec![start],
        index: HashMap::from([(start, 0)]),
        succ: Vec::new(),
        calls: Vec::new(),
        accepts: Vec::new(),
    };
    let mut queue = VecDeque::from([0usize]);
    let add = |g: &mut Graph, s: u32, queue: &mut VecDeque<usize>| -> usize {
        if let Some(&i) = g.index.get(&s) {
            return i;
        }
        let i = g.states.len();
        g.states.push(s);
        g.index.insert(s, i);
        queue.push_back(i);
        i
    };
    while let Some(i) = queue.pop_front() {
        let s = id(g.states[i]);
        let mut succ = Vec::new();
        for b in 0..TEXT_END {
            if let Some(n) = d.step(s, b) {
                succ.push(add(&mut g, n.as_u32(), &mut queue));
            }
        }
        succ.sort_unstable();
        succ.dedup();
        let mut calls = Vec::new();
        for (callee, ret) in probe_calls(d, s) {
            if callee as usize >= rules {
                return Err(format!("a call of rule {callee}, which does not exist"));
            }
            calls.push((callee, add(&mut g, ret.as_u32(), &mut queue)));
        }
        // States are handled in the order they were added, so `i` is the next slot.
        debug_assert_eq!(g.succ.len(), i);
        g.succ.push(succ);
        g.calls.push(calls);
        g.accepts.push(d.accepting(s));
    }
    Ok(g)
}

/// The calls that may start at `s`: (callee, state after the call).
fn probe_calls(d: &Dfa, s: StateID) -> Vec<(u32, StateID)> {
    let alive = |n: StateID| !d.dfa.is_dead_state(n) && !d.dfa.is_quit_state(n);
    let mut out = Vec::new();
    let m = d.dfa.next_state(s, CALL);
    if !alive(m) {
        return out;
    }
    for hi in 0..64u8 {
        let h = d.dfa.next_state(m, 0x80 + hi);
        if !alive(h) {
            continue;
        }
        for lo in 0..64u8 {
            let r = d.dfa.next_state(h, 0x80 + lo);
            if alive(r) {
                out.push((u32::from(hi) * 64 + u32::from(lo), r));
            }
        }
    }
    out
}

fn id(s: u32) -> StateID {
    StateID::new(s as usize).expect("a state id of this DFA")
}

/// The states from which the rule can end, calling only `productive` rules.
fn co_reachable(g: &Graph, productive: &[bool]) -> Vec<bool> {
    let n = g.states.len();
    let mut rev: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for &j in &g.succ[i] {
            rev[j].push(i);
        }
        for &(c, ret) in &g.calls[i] {
            if productive[c as usize] {
                rev[ret].push(i);
            }
        }
    }
    let mut live = g.accepts.clone();
    let mut queue: VecDeque<usize> = (0..n).filter(|&i| live[i]).collect();
    while let Some(j) = queue.pop_front() {
        for &i in &rev[j] {
            if !live[i] {
                live[i] = true;
                queue.push_back(i);
            }
        }
    }
    live
}

/// A rule that can call itself before reading a byte, if any.
fn left_recursion<I: Iterator<Item = (u32, usize)>>(
    graphs: &[Graph],
    live: &[Vec<bool>],
    calls: &impl Fn(usize, usize) -> I,
) -> Result<(), usize> {
    let n = graphs.len();
    // States reachable from the start without bytes, given the nullable rules so far.
    let prefix = |r: usize, nullable: &[bool]| {
        let mut seen = vec![false; graphs[r].states.len()];
        let mut stack = vec![0usize];
        seen[0] = true;
        while let Some(i) = stack.pop() {
            for (c, ret) in calls(r, i) {
                if nullable[c as usize] && !seen[ret] {
                    seen[ret] = true;
                    stack.push(ret);
                }
            }
        }
        seen
    };
    let mut nullable = vec![false; n];
    let heads = loop {
        let heads: Vec<Vec<bool>> = (0..n).map(|r| prefix(r, &nullable)).collect();
        let now: Vec<bool> = (0..n)
            .map(|r| (0..heads[r].len()).any(|i| heads[r][i] && live[r][i] && graphs[r].accepts[i]))
            .collect();
        if now == nullable {
            break heads;
        }
        nullable = now;
    };
    // Left calls: r -> c where c may be called from a state in r's nullable prefix.
    let left: Vec<Vec<usize>> = (0..n)
        .map(|r| {
            let mut out: Vec<usize> = (0..heads[r].len())
                .filter(|&i| heads[r][i] && live[r][i])
                .flat_map(|i| calls(r, i).map(|(c, _)| c as usize))
                .collect();
            out.sort_unstable();
            out.dedup();
            out
        })
        .collect();
    // A cycle in the left-call graph (colours: 0 new, 1 on the path, 2 done).
    let mut colour = vec![0u8; n];
    fn visit(r: usize, left: &[Vec<usize>], colour: &mut [u8]) -> Result<(), usize> {
        colour[r] = 1;
        for &c in &left[r] {
            match colour[c] {
                1 => return Err(c),
                0 => visit(c, left, colour)?,
                _ => {}
            }
        }
        colour[r] = 2;
        Ok(())
    }
    for r in 0..n {
        if colour[r] == 0 {
            visit(r, &left, &mut colour)?;
        }
    }
    Ok(())
}
