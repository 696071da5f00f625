//! Context-free constraints: recursion to any depth, tail calls, what the analysis refuses or
//! prunes, and random masked walks (seed printed) that must spell text the grammar derives.

use super::super::tests::{admits, random_walk, vocab};
use super::super::{schema, Constraint, Grammar};
use crate::seeded::{test_seed, SplitMix64};
use serde_json::{json, Value};

fn compile(c: Constraint) -> Result<Grammar, String> {
    Grammar::from_rules(&c.to_rules()?, vocab())
}

fn ebnf(g: &str) -> Grammar {
    compile(Constraint::Ebnf(g.into())).unwrap()
}

fn schema_grammar(s: &Value) -> Grammar {
    compile(Constraint::JsonSchema(s.to_string())).unwrap()
}

#[test]
fn recursive_ebnf_nests_to_any_depth() {
    let g = ebnf(r#"root ::= "[" root "]" | "x""#);
    for d in [0, 1, 4, 5, 12, 300] {
        let t = format!("{}x{}", "[".repeat(d), "]".repeat(d));
        assert!(admits(&g, &t), "depth {d}");
        assert!(!admits(&g, &t[..t.len() - 1]), "depth {d} unclosed");
    }
    for bad in ["[x]]", "[[x]", "x]", "[]"] {
        assert!(!admits(&g, bad), "{bad}");
    }
    // Inside three brackets only `[` and `x` may come; after `x`, only `]`, and EOS only at
    // depth zero.
    let s = "[[["
        .bytes()
        .try_fold(g.start(), |s, b| g.advance(s, u32::from(b)));
    let m = g.mask(s.unwrap());
    assert!(m.allows(u32::from(b'[')) && m.allows(u32::from(b'x')) && !m.allows(u32::from(b']')));
    assert!(!m.accepting);
    let s = g.advance(s.unwrap(), u32::from(b'x')).unwrap();
    let m = g.mask(s);
    assert_eq!(m.allowed(), 1);
    assert!(m.allows(u32::from(b']')) && !m.accepting);
}

#[test]
fn right_recursion_is_a_tail_call_and_stays_flat() {
    // 5000 nested calls would be past MAX_STACK if each pushed a frame.
    let g = ebnf(r#"root ::= "a" root | "b""#);
    assert!(admits(&g, &format!("{}b", "a".repeat(5000))));
    let g = ebnf("root ::= item\nitem ::= [0-9] (\",\" item)?");
    assert!(admits(&g, &vec!["7"; 3000].join(",")));
    assert!(!admits(&g, "1,,2"));
}

#[test]
fn nesting_past_the_stack_limit_is_not_taken() {
    let g = ebnf(r#"root ::= "(" root ")" | "x""#);
    let n = super::MAX_STACK as usize;
    assert!(admits(&g, &format!("{}x{}", "(".repeat(n), ")".repeat(n))));
    assert!(!admits(
        &g,
        &format!("{}x{}", "(".repeat(n + 2), ")".repeat(n + 2))
    ));
}

#[test]
fn the_analysis_refuses_what_cannot_run_and_prunes_dead_ends() {
    for (g, want) in [
        (r#"root ::= "a" root"#, "derives no text"),
        (r#"root ::= a  a ::= "x" b  b ::= "y" a"#, "derives no text"),
    ] {
        let e = compile(Constraint::Ebnf(g.into())).expect_err(g);
        assert!(e.contains(want), "{g:?}: {e}");
    }
    // A nullable prefix that is itself recursive still counts: `e` may read nothing before
    // `root` calls itself.
    let e = compile(Constraint::Ebnf(
        r#"root ::= e root "z" | "q"  e ::= "" | "(" e ")""#.into(),
    ))
    .expect_err("left recursion through a recursive nullable rule");
    assert!(e.contains("left-recursive"), "{e}");
    // `y` leads only into a rule that never ends: it is not offered at all.
    let g = ebnf(r#"root ::= "x" | "y" "z" loop | "[" root "]"  loop ::= "a" loop"#);
    let m = g.mask(g.start());
    assert!(m.allows(u32::from(b'x')) && m.allows(u32::from(b'[')));
    assert!(!m.allows(u32::from(b'y')), "a dead end is masked");
    assert!(admits(&g, "[[x]]") && !admits(&g, "yz"));
}

#[test]
fn indirect_left_recursion_is_rewritten() {
    // `term` starts with `expr`, which starts with `term`.
    let g = ebnf(
        r#"root ::= expr  expr ::= term "+" expr | term  term ::= "(" expr ")" | expr "*" | "1""#,
    );
    for ok in ["1", "1+1", "1*", "1+1*", "1**", "(1)*+1", "(1+1)*", "((1))"] {
        assert!(admits(&g, ok), "{ok}");
    }
    for bad in ["", "+1", "1+", "*", "(1", "1)", "1*1"] {
        assert!(!admits(&g, bad), "{bad}");
    }
    // A cycle through three rules: a = (t y x | s) (z y x)*.
    let g = ebnf(r#"root ::= a  a ::= b "x" | "s"  b ::= c "y"  c ::= a "z" | "t""#);
    for ok in ["s", "tyx", "szyx", "tyxzyxzyx"] {
        assert!(admits(&g, ok), "{ok}");
    }
    for bad in ["zyx", "sz", "t", "syx"] {
        assert!(!admits(&g, bad), "{bad}");
    }
    // Alternatives grouped at the head are distributed first: `(b | "q") "x"`.
    let g = ebnf(r#"root ::= a  a ::= (b | "q") "x"  b ::= a "y" | "p""#);
    for ok in ["qx", "px", "qxyx", "pxyxyx"] {
        assert!(admits(&g, ok), "{ok}");
    }
    assert!(!admits(&g, "yx") && !admits(&g, "qxy"));
}

#[test]
fn left_recursion_behind_a_nullable_prefix_is_rewritten() {
    // root = o? root z | q: q z* with o's before nested roots: the language of q, oqz, qz, ...
    let g = ebnf(r#"root ::= opt root "z" | "q"  opt ::= "o"?"#);
    for ok in ["q", "qz", "oqz", "qzz", "ooqzz", "oqzz"] {
        assert!(admits(&g, ok), "{ok}");
    }
    for bad in ["", "o", "oq", "z", "qo", "ooqz"] {
        assert!(!admits(&g, bad), "{bad}");
    }
    // An optional item at the head of the rule itself.
    let g = ebnf(r#"root ::= "-"? root "+" | "1""#);
    for ok in ["1", "1+", "-1+", "1++", "-1++", "--1++"] {
        assert!(admits(&g, ok), "{ok}");
    }
    assert!(!admits(&g, "-1") && !admits(&g, "+1"));
}

/// The three-rule cycle's language is regular, `(tyx | s)(zyx)*`: random strings over its
/// alphabet (seed printed) are admitted exactly when that regex matches them.
#[test]
fn indirect_left_recursion_keeps_the_language() {
    let g = ebnf(r#"root ::= a  a ::= b "x" | "s"  b ::= c "y"  c ::= a "z" | "t""#);
    let re = regex_automata::meta::Regex::new("^(?:tyx|s)(?:zyx)*$").unwrap();
    let seed = test_seed("indirect_left_recursion_keeps_the_language");
    let mut rng = SplitMix64(seed);
    let (mut members, mut others) = (0, 0);
    for _ in 0..3000 {
        let len = (rng.next_u64() % 11) as usize;
        // Half the strings are built from the language's pieces, so that members come up.
        let s: String = if rng.next_u64() % 2 == 0 {
            let head = if rng.next_u64() % 2 == 0 { "tyx" } else { "s" };
            let mut s = head.to_string() + &"zyx".repeat(len / 3);
            if rng.next_u64() % 3 == 0 && !s.is_empty() {
                s.remove((rng.next_u64() as usize) % s.len());
            }
            s
        } else {
            (0..len)
                .map(|_| b"stxyz"[(rng.next_u64() % 5) as usize] as char)
                .collect()
        };
        let want = re.is_match(&s);
        assert_eq!(admits(&g, &s), want, "{s:?} (seed {seed})");
        if want {
            members += 1;
        } else {
            others += 1;
        }
    }
    assert!(
        members > 300 && others > 300,
        "{members} members, {others} others"
    );
}

#[test]
fn direct_left_recursion_is_rewritten_as_repetition() {
    let g = ebnf(
        r#"root ::= expr
        expr ::= expr "+" term | expr "-" term | term
        term ::= term "*" atom | atom
        atom ::= [0-9]+ | "(" expr ")""#,
    );
    for ok in ["1", "1+2", "1+2*3-4", "(1+2)*3", "((7))", "2*(3-(4+5))*6"] {
        assert!(admits(&g, ok), "{ok}");
    }
    for bad in ["", "+1", "1+", "1**2", "(1", "1)"] {
        assert!(!admits(&g, bad), "{bad}");
    }
    // Rewritten, the rule is no longer recursive: one DFA, any number of repeats.
    let c = Constraint::Ebnf(r#"root ::= root "a" | "b""#.into());
    assert!(!c.to_rules().unwrap().calls);
    let g = compile(c).unwrap();
    assert!(admits(&g, &format!("b{}", "a".repeat(40))) && admits(&g, "b") && !admits(&g, "ab"));
}

#[test]
fn random_walks_of_a_recursive_json_ebnf_spell_json() {
    let seed = test_seed("random_walks_of_a_recursive_json_ebnf_spell_json");
    let mut rng = SplitMix64(seed);
    let g = ebnf(
        r#"
        root ::= value
        value ::= object | array | string | number | ("true" | "false" | "null")
        object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
        array ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
        string ::= "\"" [a-z]{0,3} "\""
        number ::= "-"? ("0" | [1-9] [0-9]{0,2})
        ws ::= " "?
    "#,
    );
    let deep = r#"[[[[[[{"a": [[[{"b": [1]}]]]}]]]]]]"#;
    assert!(admits(&g, deep), "deeper than any unrolling");
    let mut deepest = 0;
    for walk in 0..150 {
        let Some(text) = random_walk(&g, &mut rng, 6, 600) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("walk {walk} (seed {seed}): {text:?}: {e}"));
        deepest = deepest.max(depth(&v));
    }
    println!("seed {seed}: deepest walk nests {deepest}");
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn recursive_schemas_and_json_of_unknown_shape_nest_without_bound() {
    let tree = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["v"]}},
        "$ref": "#/$defs/node"});
    // The regular form refuses it; the grammar serves it.
    assert!(schema::to_regex(&tree).is_err());
    let g = schema_grammar(&tree);
    let mut t = r#"{"v": 0}"#.to_string();
    for d in 1..9 {
        t = format!(r#"{{"v": {d}, "kids": [{t}, {{"v": 1}}]}}"#);
        assert!(admits(&g, &t), "depth {d}");
    }
    assert!(!admits(&g, r#"{"v": 1, "kids": [{"w": 1}]}"#));
    assert!(!admits(
        &g,
        r#"{"v": 1, "kids": [{"v": 1}, {"v": 2}, {"v": 3}]}"#
    ));
    // `$ref: "#"` recursion through the root.
    let list = json!({"type": "object", "properties": {
        "head": {"type": "string"}, "tail": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "required": ["head", "tail"]});
    let g = schema_grammar(&list);
    assert!(admits(
        &g,
        r#"{"head": "a", "tail": {"head": "b", "tail": {"head": "c", "tail": null}}}"#
    ));
    // json_object's schema and `{}`: any depth.
    let deep = r#"{"a": {"b": [[{"c": [1, {"d": {"e": null}}]}]]}}"#;
    for s in [json!({"type": "object"}), json!({})] {
        assert!(admits(&schema_grammar(&s), deep), "{s}");
    }
    assert!(!admits(&schema_grammar(&json!({"type": "object"})), "[1]"));
    // A schema that is its own first member is left-recursive: a 400 naming the problem.
    let e = compile(Constraint::JsonSchema(
        r##"{"anyOf": [{"$ref": "#"}, {"type": "null"}]}"##.into(),
    ))
    .err()
    .unwrap();
    assert!(e.contains("left-recursive"), "{e}");
    // A schema without recursion or unknown shapes stays one DFA.
    let flat = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    assert!(!schema::to_rules(&flat).unwrap().calls);
}

#[test]
fn random_walks_of_a_recursive_schema_keep_to_it() {
    let seed = test_seed("random_walks_of_a_recursive_schema_keep_to_it");
    let mut rng = SplitMix64(seed);
    let s = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "n": {"type": "string", "maxLength": 2},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 3},
            "extra": {}},
            "required": ["n"]}},
        "$ref": "#/$defs/node"});
    let g = schema_grammar(&s);
    fn check(v: &Value) {
        let o = v.as_object().expect("an object");
        assert!(o["n"].as_str().unwrap().chars().count() <= 2);
        assert!(o
            .keys()
            .all(|k| ["n", "kids", "extra"].contains(&k.as_str())));
        if let Some(k) = o.get("kids") {
            let k = k.as_array().unwrap();
            assert!(k.len() <= 3);
            k.iter().for_each(check);
        }
    }
    let mut finished = 0;
    for walk in 0..120 {
        let Some(text) = random_walk(&g, &mut rng, 3, 500) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("walk {walk} (seed {seed}): {text:?}: {e}"));
        check(&v);
        finished += 1;
    }
    assert!(finished > 20, "seed {seed}: only {finished} walks finished");
}
