//! SGLang's `ebnf` constraint (xgrammar's EBNF dialect, GBNF-like): rules `name ::= expr` (a rule
//! runs until the next `name ::=`), alternatives `|`, sequences, groups `( )`, quantifiers `*`,
//! `+`, `?`, `{m}`, `{m,}`, `{m,n}`, double- or single-quoted strings and character classes
//! `[a-z]` / `[^...]` with the escapes `\n \r \t \\ \" \' \] \- \xHH \uHHHH`, references to
//! other rules, and `#` comments; the start is `root`.
//!
//! [`to_rules`] (the `ebnf` sampling parameter) expands every reference to a rule that is not
//! recursive in place and keeps each recursive rule (one on a cycle of references) as a rule of
//! its own that the others call ([`super::pda`]), so nesting has no fixed bound; a directly
//! left-recursive rule (`expr ::= expr "+" term | term`) is first rewritten as the repetition it
//! stands for (`expr ::= term ("+" term)*`), left recursion behind optional prefixes is first made
//! visible and left recursion through other rules direct (Paull's algorithm). Where a single
//! regular expression is needed (the `grammar` format inside a structural tag), [`to_regex`]
//! unrolls recursion [`MAX_NESTING`] levels deep and drops the alternatives that would need a
//! deeper level (outputs nest at most that deep and still derive from the grammar). A grammar
//! that derives nothing, or any syntax outside the above, is a 400.

use super::pda::{RuleIds, Rules};
use std::collections::{HashMap, HashSet};

/// The largest regular expression a grammar may expand to (bytes).
const MAX_REGEX: usize = 1 << 20;

#[derive(Debug, Clone)]
enum Node {
    /// A sequence of literal characters.
    Lit(String),
    /// A character class: (negated, inclusive ranges).
    Class(bool, Vec<(char, char)>),
    Ref(String),
    Seq(Vec<Node>),
    Alt(Vec<Node>),
    Rep(Box<Node>, u32, Option<u32>),
}

/// How many times one rule may be open inside itself in [`to_regex`]: recursion is unrolled
/// this deep, and a deeper use is cut (the alternatives that need it are dropped).
pub const MAX_NESTING: usize = 4;

/// How references are expanded.
enum Mode<'a> {
    /// In place, recursion unrolled: the names of the rules open around this point.
    Unroll(Vec<String>),
    /// In place, except the recursive rules: those become calls.
    Calls {
        recursive: &'a HashSet<String>,
        ids: &'a mut RuleIds,
    },
}

/// The regular expression `src`'s `root` rule matches, recursion unrolled; the error is the
/// client's 400.
pub fn to_regex(src: &str) -> Result<String, String> {
    unrolled(&parse_rooted(src)?)
}

/// The regular expression of `rules`' `root`, recursion unrolled [`MAX_NESTING`] deep.
fn unrolled(rules: &HashMap<String, Node>) -> Result<String, String> {
    let mut mode = Mode::Unroll(Vec::new());
    let root = Node::Ref("root".into());
    expand(rules, &root, &mut mode, &mut MAX_REGEX.clone())?.ok_or_else(|| {
        format!(
            "The EBNF grammar derives no text within {MAX_NESTING} levels of recursion (recursive \
             rules are unrolled that deep)."
        )
    })
}

/// The grammar of `src`'s `root` rule: one regular expression when no rule is recursive (once
/// direct left recursion is rewritten), else the recursive rules as rules of their own; the
/// error is the client's 400.
pub fn to_rules(src: &str) -> Result<Rules, String> {
    let mut rules = parse_rooted(src)?;
    for (name, body) in rules.iter_mut() {
        if let Some(b) = without_left_recursion(name, body) {
            *body = b;
        }
    }
    expose_nullable_heads(&mut rules)?;
    without_indirect_left_recursion(&mut rules)?;
    let recursive = recursive_rules(&rules);
    if recursive.is_empty() {
        return unrolled(&rules).map(Rules::regular);
    }
    let mut ids = RuleIds::with_root("root");
    let mut budget = MAX_REGEX;
    let mut name = "root".to_string();
    loop {
        // A recursive rule's body, its references to recursive rules calls; the root's body
        // likewise (it is rule 0 whether or not it is recursive).
        let mut mode = Mode::Calls {
            recursive: &recursive,
            ids: &mut ids,
        };
        let body = expand(&rules, &rules[&name], &mut mode, &mut budget)?
            .ok_or_else(|| format!("The EBNF grammar's rule `{name}` derives no text."))?;
        ids.define(&name, &body);
        match ids.undefined() {
            Some(next) => name = next,
            None => break,
        }
    }
    let mut rules = ids.finish();
    // The root may be expanded in place without being called: then it has no calls.
    rules.calls |= rules.bodies.len() > 1;
    Ok(rules)
}

/// A rule `A ::= A a1 | .. | A an | b1 | .. | bm` (directly left-recursive alternatives) as the
/// same language without left recursion, `A ::= (b1 | .. | bm) (a1 | .. | an)*`; None when the
/// rule has no such alternative (or no other one). Left recursion through other rules is
/// [`without_indirect_left_recursion`]'s.
fn without_left_recursion(name: &str, body: &Node) -> Option<Node> {
    let alts = match body {
        Node::Alt(v) => v.clone(),
        other => vec![other.clone()],
    };
    let (mut tails, mut heads) = (Vec::new(), Vec::new());
    for a in alts {
        match a {
            Node::Seq(items) if matches!(items.first(), Some(Node::Ref(r)) if r == name) => {
                // `A ::= A` alone adds nothing.
                if items.len() > 1 {
                    tails.push(Node::Seq(items[1..].to_vec()));
                }
            }
            Node::Ref(r) if r == name => {}
            other => heads.push(other),
        }
    }
    if tails.is_empty() || heads.is_empty() {
        return None;
    }
    Some(Node::Seq(vec![
        Node::Alt(heads),
        Node::Rep(Box::new(Node::Alt(tails)), 0, None),
    ]))
}

/// The most alternatives the left-recursion rewrite may give one rule.
const MAX_ALTERNATIVES: usize = 4096;

/// `n` as a list of alternatives, each a sequence, alternatives at the head of a sequence
/// distributed over its rest (`(a | b) c` gives `a c` and `b c`), so that what each alternative
/// starts with is visible.
fn alternatives(n: &Node) -> Vec<Vec<Node>> {
    match n {
        Node::Alt(v) => v.iter().flat_map(alternatives).collect(),
        Node::Seq(items) => match items.split_first() {
            None => vec![Vec::new()],
            Some((first @ (Node::Alt(_) | Node::Seq(_)), rest)) => alternatives(first)
                .into_iter()
                .map(|mut a| {
                    a.extend_from_slice(rest);
                    a
                })
                .collect(),
            Some(_) => vec![items.clone()],
        },
        other => vec![vec![other.clone()]],
    }
}

/// The rule an alternative starts with, if it starts with a reference.
fn leading(alt: &[Node]) -> Option<&str> {
    match alt.first() {
        Some(Node::Ref(r)) => Some(r),
        _ => None,
    }
}

/// The rules that may derive the empty text.
fn nullable_rules(rules: &HashMap<String, Node>) -> HashSet<String> {
    let mut set = HashSet::new();
    loop {
        let before = set.len();
        for (k, v) in rules {
            if !set.contains(k) && nullable(v, &set) {
                set.insert(k.clone());
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// Whether `n` may derive the empty text, given the rules known to.
fn nullable(n: &Node, rules: &HashSet<String>) -> bool {
    match n {
        Node::Lit(s) => s.is_empty(),
        Node::Class(..) => false,
        Node::Ref(r) => rules.contains(r),
        Node::Seq(v) => v.iter().all(|i| nullable(i, rules)),
        Node::Alt(v) => v.iter().any(|i| nullable(i, rules)),
        Node::Rep(i, min, _) => *min == 0 || nullable(i, rules),
    }
}

/// Makes left recursion hidden behind a prefix that may read nothing (`root ::= opt root "z"`
/// with `opt ::= "o"?`) visible, for the rewrites that follow: in each rule that reaches itself
/// only through such prefixes, an alternative starting with an optional item is split in two
/// (`"o"+ root "z"` and `root "z"`), and one starting with a reference to a nullable rule that
/// is not recursive takes that rule's alternatives in its place, until every alternative starts
/// with something that reads text or with a recursive rule. The language is unchanged; other
/// rules are left as they are.
fn expose_nullable_heads(rules: &mut HashMap<String, Node>) -> Result<(), String> {
    let recursive = recursive_rules(rules);
    let empty = nullable_rules(rules);
    // Leading references, looking past prefixes that may read nothing.
    let hidden_edges: Edges = rules
        .iter()
        .map(|(k, v)| {
            let mut out = Vec::new();
            for alt in alternatives(v) {
                for item in &alt {
                    if let Node::Ref(r) = item {
                        out.push(r.clone());
                    }
                    if !nullable(item, &empty) {
                        break;
                    }
                }
            }
            (k.clone(), out)
        })
        .collect();
    let names: Vec<String> = recursive
        .iter()
        .filter(|k| on_cycle(&hidden_edges, k))
        .cloned()
        .collect();
    for name in names {
        let mut todo = alternatives(&rules[&name]);
        let mut done = Vec::new();
        while let Some(alt) = todo.pop() {
            if todo.len() + done.len() > MAX_ALTERNATIVES {
                return Err(format!(
                    "The EBNF grammar's rule `{name}` expands to more than {MAX_ALTERNATIVES} \
                     alternatives while its left recursion is made visible."
                ));
            }
            let rest = || alt[1..].to_vec();
            match alt.first() {
                Some(Node::Rep(x, 0, max)) => {
                    if *max != Some(0) {
                        let mut a = vec![Node::Rep(x.clone(), 1, *max)];
                        a.extend(rest());
                        done.push(a);
                    }
                    todo.push(rest());
                }
                Some(Node::Lit(s)) if s.is_empty() => todo.push(rest()),
                Some(Node::Ref(r)) if empty.contains(r) && !recursive.contains(r) => {
                    for mut a in alternatives(&rules[r]) {
                        a.extend(rest());
                        todo.push(a);
                    }
                }
                Some(first @ (Node::Seq(_) | Node::Alt(_))) => {
                    for mut a in alternatives(first) {
                        a.extend(rest());
                        todo.push(a);
                    }
                }
                _ => done.push(alt),
            }
        }
        rules.insert(
            name.clone(),
            Node::Alt(done.into_iter().rev().map(Node::Seq).collect()),
        );
    }
    Ok(())
}

/// Rewrites left recursion through other rules (`a ::= b "x" | "y"  b ::= a "z" | "w"`) away, as
/// Paull's algorithm does: the rules on a cycle of leading references are put in a fixed order;
/// in turn, each one's alternatives that start with an earlier such rule take that rule's
/// alternatives in its place (until none does), then its direct left recursion becomes a
/// repetition. The language is unchanged. What is left (a rule reached through a nullable
/// prefix, `opt root` with `opt` able to read nothing) the analysis still refuses.
fn without_indirect_left_recursion(rules: &mut HashMap<String, Node>) -> Result<(), String> {
    let edges: Edges = rules
        .iter()
        .map(|(k, v)| {
            let heads = alternatives(v)
                .iter()
                .filter_map(|a| leading(a).map(String::from))
                .collect();
            (k.clone(), heads)
        })
        .collect();
    let mut order: Vec<String> = rules
        .keys()
        .filter(|k| on_cycle(&edges, k))
        .cloned()
        .collect();
    order.sort();
    for i in 0..order.len() {
        let earlier = &order[..i];
        let mut alts = alternatives(&rules[&order[i]]);
        while alts
            .iter()
            .any(|a| leading(a).is_some_and(|r| earlier.iter().any(|e| e == r)))
        {
            let mut next = Vec::new();
            for a in alts {
                match leading(&a).filter(|r| earlier.iter().any(|e| e == r)) {
                    Some(r) => {
                        for mut b in alternatives(&rules[r]) {
                            b.extend_from_slice(&a[1..]);
                            next.push(b);
                        }
                    }
                    None => next.push(a),
                }
                if next.len() > MAX_ALTERNATIVES {
                    return Err(format!(
                        "The EBNF grammar's left recursion through rule `{}` expands to more \
                         than {MAX_ALTERNATIVES} alternatives.",
                        order[i]
                    ));
                }
            }
            alts = next;
        }
        let body = Node::Alt(alts.into_iter().map(Node::Seq).collect());
        let body = without_left_recursion(&order[i], &body).unwrap_or(body);
        rules.insert(order[i].clone(), body);
    }
    Ok(())
}

fn parse_rooted(src: &str) -> Result<HashMap<String, Node>, String> {
    let rules = parse(src).map_err(|e| format!("The EBNF grammar does not parse: {e}"))?;
    if !rules.contains_key("root") {
        return Err("The EBNF grammar has no `root` rule.".into());
    }
    Ok(rules)
}

/// The rules that can reach themselves through references.
fn recursive_rules(rules: &HashMap<String, Node>) -> HashSet<String> {
    fn refs<'a>(n: &'a Node, out: &mut Vec<&'a str>) {
        match n {
            Node::Ref(r) => out.push(r),
            Node::Seq(v) | Node::Alt(v) => v.iter().for_each(|i| refs(i, out)),
            Node::Rep(i, _, _) => refs(i, out),
            Node::Lit(_) | Node::Class(..) => {}
        }
    }
    let edges: Edges = rules
        .iter()
        .map(|(k, v)| {
            let mut out = Vec::new();
            refs(v, &mut out);
            (k.clone(), out.into_iter().map(String::from).collect())
        })
        .collect();
    rules
        .keys()
        .filter(|k| on_cycle(&edges, k))
        .cloned()
        .collect()
}

/// Rule references: from a rule to the rules it refers to (in some position).
type Edges = HashMap<String, Vec<String>>;

/// Whether rule `from` reaches itself along `edges`.
fn on_cycle(edges: &Edges, from: &str) -> bool {
    let mut seen = HashSet::new();
    let mut stack: Vec<&str> = edges
        .get(from)
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    while let Some(r) = stack.pop() {
        if r == from {
            return true;
        }
        if seen.insert(r) {
            stack.extend(edges.get(r).into_iter().flatten().map(String::as_str));
        }
    }
    false
}

/// The regex of `n`, or None where it derives no text (an empty class, or a recursion cut at
/// [`MAX_NESTING`]).
fn expand(
    rules: &HashMap<String, Node>,
    n: &Node,
    mode: &mut Mode<'_>,
    budget: &mut usize,
) -> Result<Option<String>, String> {
    let out = match n {
        Node::Lit(s) => Some(regex_syntax::escape(s)),
        Node::Class(neg, ranges) => {
            let mut c = String::from(if *neg { "[^" } else { "[" });
            for &(a, b) in ranges {
                c.push_str(&format!("\\x{{{:x}}}", a as u32));
                if a != b {
                    c.push_str(&format!("-\\x{{{:x}}}", b as u32));
                }
            }
            c.push(']');
            (*neg || !ranges.is_empty()).then_some(c)
        }
        Node::Ref(name) => {
            let body = rules
                .get(name)
                .ok_or_else(|| format!("The EBNF grammar refers to an undefined rule `{name}`."))?;
            match mode {
                Mode::Calls { recursive, ids } if recursive.contains(name) => Some(
                    ids.call(name)
                        .map_err(|e| format!("The EBNF grammar: {e}."))?,
                ),
                Mode::Calls { .. } => {
                    expand(rules, body, mode, budget)?.map(|r| format!("(?:{r})"))
                }
                Mode::Unroll(stack) => {
                    if stack.iter().filter(|r| *r == name).count() >= MAX_NESTING {
                        return Ok(None);
                    }
                    stack.push(name.clone());
                    let r = expand(rules, body, mode, budget);
                    if let Mode::Unroll(stack) = mode {
                        stack.pop();
                    }
                    r?.map(|r| format!("(?:{r})"))
                }
            }
        }
        Node::Seq(items) => {
            let mut s = String::new();
            for i in items {
                match expand(rules, i, mode, budget)? {
                    Some(r) => s.push_str(&r),
                    None => return Ok(None),
                }
            }
            Some(s)
        }
        Node::Alt(alts) => {
            let mut live = Vec::new();
            for a in alts {
                live.extend(expand(rules, a, mode, budget)?);
            }
            (!live.is_empty()).then(|| format!("(?:{})", live.join("|")))
        }
        Node::Rep(inner, lo, hi) => match expand(rules, inner, mode, budget)? {
            None if *lo == 0 => Some(String::new()),
            None => None,
            Some(r) => Some(match (lo, hi) {
                (0, None) => format!("(?:{r})*"),
                (1, None) => format!("(?:{r})+"),
                (0, Some(1)) => format!("(?:{r})?"),
                (m, None) => format!("(?:{r}){{{m},}}"),
                (m, Some(n)) if m == n => format!("(?:{r}){{{m}}}"),
                (m, Some(n)) => format!("(?:{r}){{{m},{n}}}"),
            }),
        },
    };
    let len = out.as_ref().map_or(0, String::len);
    *budget = budget
        .checked_sub(len)
        .ok_or("The EBNF grammar expands to regular expressions over 1 MiB in all.")?;
    Ok(out)
}

struct P<'a> {
    s: &'a [char],
    i: usize,
}

fn parse(src: &str) -> Result<HashMap<String, Node>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut p = P { s: &chars, i: 0 };
    let mut rules = HashMap::new();
    loop {
        p.ws();
        if p.i >= p.s.len() {
            break;
        }
        let name = p.ident().ok_or_else(|| p.err("a rule name"))?;
        p.ws();
        if !p.eat("::=") {
            return Err(p.err("`::=`"));
        }
        let body = p.alt()?;
        if rules.insert(name.clone(), body).is_some() {
            return Err(format!("rule `{name}` is defined twice"));
        }
    }
    Ok(rules)
}

impl P<'_> {
    fn err(&self, want: &str) -> String {
        let at: String = self.s[self.i.min(self.s.len())..].iter().take(20).collect();
        format!("expected {want} at character {} ({at:?})", self.i)
    }
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }
    /// Skips whitespace and `#` comments.
    fn ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.i += 1;
            } else if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.i += 1;
                }
            } else {
                break;
            }
        }
    }
    fn eat(&mut self, t: &str) -> bool {
        let t: Vec<char> = t.chars().collect();
        if self.s[self.i..].starts_with(&t) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Option<String> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            self.i += 1;
        }
        (self.i > start).then(|| self.s[start..self.i].iter().collect())
    }
    /// Whether a rule definition (`name ::=`) starts here.
    fn at_rule_start(&mut self) -> bool {
        let save = self.i;
        let yes = self.ident().is_some() && {
            self.ws();
            self.eat("::=")
        };
        self.i = save;
        yes
    }
    fn alt(&mut self) -> Result<Node, String> {
        let mut alts = vec![self.seq()?];
        loop {
            self.ws();
            if !self.eat("|") {
                break;
            }
            alts.push(self.seq()?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().expect("one")
        } else {
            Node::Alt(alts)
        })
    }
    fn seq(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        loop {
            self.ws();
            match self.peek() {
                None | Some('|') | Some(')') => break,
                _ if self.at_rule_start() => break,
                _ => {}
            }
            let atom = self.atom()?;
            items.push(self.quant(atom)?);
        }
        Ok(Node::Seq(items))
    }
    fn atom(&mut self) -> Result<Node, String> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.i += 1;
                let mut s = String::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err("the end of the string")),
                        Some(c) if c == q => {
                            self.i += 1;
                            break;
                        }
                        Some('\\') => s.push(self.escape()?),
                        Some(c) => {
                            self.i += 1;
                            s.push(c);
                        }
                    }
                }
                Ok(Node::Lit(s))
            }
            Some('[') => {
                self.i += 1;
                let neg = self.eat("^");
                let mut ranges = Vec::new();
                loop {
                    let a = match self.peek() {
                        None => return Err(self.err("`]`")),
                        Some(']') => {
                            self.i += 1;
                            break;
                        }
                        Some('\\') => self.escape()?,
                        Some(c) => {
                            self.i += 1;
                            c
                        }
                    };
                    let mut b = a;
                    if self.peek() == Some('-') && self.s.get(self.i + 1) != Some(&']') {
                        self.i += 1;
                        b = match self.peek() {
                            Some('\\') => self.escape()?,
                            Some(c) => {
                                self.i += 1;
                                c
                            }
                            None => return Err(self.err("a range end")),
                        };
                        if b < a {
                            return Err(format!("the range {a:?}-{b:?} runs backwards"));
                        }
                    }
                    ranges.push((a, b));
                }
                Ok(Node::Class(neg, ranges))
            }
            Some('(') => {
                self.i += 1;
                let inner = self.alt()?;
                self.ws();
                if !self.eat(")") {
                    return Err(self.err("`)`"));
                }
                Ok(inner)
            }
            _ => match self.ident() {
                Some(name) => Ok(Node::Ref(name)),
                None => Err(self.err("a string, a class, a group or a rule name")),
            },
        }
    }
    fn quant(&mut self, atom: Node) -> Result<Node, String> {
        let rep = |lo, hi| Node::Rep(Box::new(atom.clone()), lo, hi);
        Ok(match self.peek() {
            Some('*') => {
                self.i += 1;
                rep(0, None)
            }
            Some('+') => {
                self.i += 1;
                rep(1, None)
            }
            Some('?') => {
                self.i += 1;
                rep(0, Some(1))
            }
            Some('{') => {
                self.i += 1;
                let lo = self.number()?;
                let hi = if self.eat(",") {
                    if self.peek() == Some('}') {
                        None
                    } else {
                        Some(self.number()?)
                    }
                } else {
                    Some(lo)
                };
                if !self.eat("}") {
                    return Err(self.err("`}`"));
                }
                if hi.is_some_and(|h| h < lo) {
                    return Err(format!(
                        "the repetition {{{lo},{}}} runs backwards",
                        hi.unwrap_or(0)
                    ));
                }
                rep(lo, hi)
            }
            _ => atom,
        })
    }
    fn number(&mut self) -> Result<u32, String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let t: String = self.s[start..self.i].iter().collect();
        t.parse().map_err(|_| self.err("a number"))
    }
    /// A backslash escape (the backslash at `i`).
    fn escape(&mut self) -> Result<char, String> {
        self.i += 1;
        let c = self.peek().ok_or_else(|| self.err("an escape"))?;
        self.i += 1;
        let hex = |p: &mut Self, n: usize| -> Result<char, String> {
            let t: String = p.s[p.i..(p.i + n).min(p.s.len())].iter().collect();
            p.i += n;
            u32::from_str_radix(&t, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad escape \\{c}{t}"))
        };
        Ok(match c {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            other => other,
        })
    }
}
