//! The grammar against byte vocabularies: masks, termination, the byte-level alphabet, and JSON
//! schemas checked by walking random masked paths (seed printed) and parsing what they spell.

use super::bytes::{Spelling, TokenBytes};
use super::schema;
use super::{Compiler, Constraint, Grammar};
use crate::seeded::{test_seed, SplitMix64};
use serde_json::{json, Value};
use std::sync::Arc;

/// Every single byte (ids 0..256), then a few multi-byte tokens, then a special token.
pub(super) fn vocab() -> Arc<TokenBytes> {
    let mut t: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    for s in ["\"name\"", "true", "12", ", ", "{\"", "\":", "ab", "é"] {
        t.push(Some(s.as_bytes().to_vec()));
    }
    t.push(None);
    Arc::new(TokenBytes::from_tokens(t))
}

fn grammar(regex: &str) -> Grammar {
    Grammar::new(regex, vocab()).unwrap()
}

/// Whether the grammar admits exactly `text` (walked byte by byte).
pub(super) fn admits(g: &Grammar, text: &str) -> bool {
    let mut w = g.walk_start();
    let ids: Vec<u32> = text.bytes().map(u32::from).collect();
    g.follow(&mut w, &ids).is_some_and(|s| g.accepting(s))
}

/// Draws allowed tokens until the mask says the text is whole and a coin (or a dead end of
/// continuation) stops it: the text spelled, or None when `limit` tokens did not finish it.
pub(super) fn random_walk(
    g: &Grammar,
    rng: &mut SplitMix64,
    stop_one_in: u64,
    limit: usize,
) -> Option<String> {
    let v = vocab();
    let mut w = g.walk_start();
    let mut out: Vec<u32> = Vec::new();
    loop {
        let s = g
            .follow(&mut w, &out)
            .expect("masked tokens stay in the language");
        let m = g.mask(s);
        if m.accepting && (!m.can_continue || rng.next_u64() % stop_one_in == 0) {
            break;
        }
        assert!(
            m.can_continue,
            "stuck after {out:?}: every live state reaches an end"
        );
        let allowed: Vec<u32> = (0..v.len() as u32).filter(|&t| m.allows(t)).collect();
        assert_eq!(allowed.len(), m.allowed());
        out.push(allowed[(rng.next_u64() % allowed.len() as u64) as usize]);
        if out.len() >= limit {
            return None;
        }
    }
    let bytes: Vec<u8> = out
        .iter()
        .flat_map(|&t| v.get(t).unwrap().to_vec())
        .collect();
    Some(String::from_utf8(bytes).expect("UTF-8"))
}

#[test]
fn masks_allow_only_continuations_and_end_at_a_whole_match() {
    let g = grammar("[0-9]{3}");
    let m = g.mask(g.start());
    let allowed: Vec<u32> = (0..vocab().len() as u32).filter(|&t| m.allows(t)).collect();
    let twelve = 256 + 2;
    let mut want: Vec<u32> = (b'0'..=b'9').map(u32::from).collect();
    want.push(twelve);
    assert_eq!(allowed, want);
    assert!(!m.accepting && m.can_continue);
    let mut w = g.walk_start();
    let s = g.follow(&mut w, &[twelve]).unwrap();
    assert!(!g.mask(s).accepting);
    let s = g.follow(&mut w, &[twelve, u32::from(b'7')]).unwrap();
    let m = g.mask(s);
    assert!(m.accepting && !m.can_continue, "three digits: complete");
    assert_eq!(m.allowed(), 0);
    assert_eq!(m.allow.len(), vocab().len().div_ceil(32));
    // A letter leaves the language; the special token is always banned.
    assert_eq!(g.advance(g.start(), u32::from(b'a')), None);
    assert_eq!(g.advance(g.start(), vocab().len() as u32 - 1), None);
}

#[test]
fn alternatives_longer_than_a_match_stay_open() {
    // MatchKind::All: after "a" both the match and "ab" remain.
    let g = grammar("a|ab");
    let s = g.advance(g.start(), u32::from(b'a')).unwrap();
    let m = g.mask(s);
    assert!(m.accepting && m.can_continue);
    assert!(admits(&g, "ab") && admits(&g, "a") && !admits(&g, "abb"));
}

#[test]
fn byte_level_and_metaspace_spellings_map_to_bytes() {
    let byte_level = ["a", "\u{120}the", "\u{10a}", "\u{c3}\u{a9}"];
    let t = TokenBytes::build(5, Spelling::ByteLevel, |id| match id {
        4 => None,
        i => Some((byte_level[i as usize].to_string(), false)),
    });
    assert_eq!(t.get(0), Some(&b"a"[..]));
    assert_eq!(t.get(1), Some(&b" the"[..]));
    assert_eq!(t.get(2), Some(&b"\n"[..]));
    assert_eq!(t.get(3), Some("é".as_bytes()));
    assert_eq!(t.get(4), None);
    let t = TokenBytes::build(3, Spelling::Metaspace, |id| {
        Some((
            ["\u{2581}hi", "<0x0A>", "<|x|>"][id as usize].to_string(),
            id == 2,
        ))
    });
    assert_eq!(t.get(0), Some(&b" hi"[..]));
    assert_eq!(t.get(1), Some(&b"\n"[..]));
    assert_eq!(t.get(2), Some(&b"<|x|>"[..]));
}

#[test]
fn schemas_admit_their_json_and_refuse_other_json() {
    let cases: Vec<(Value, Vec<&str>, Vec<&str>)> = vec![
        (
            json!({"type": "object", "properties": {"name": {"type": "string"},
                "age": {"type": "integer"}}, "required": ["name"]}),
            vec![
                r#"{"name":"Al"}"#,
                r#"{"name": "Al", "age": 3}"#,
                r#"{ "name":"\u00e9\n" }"#,
            ],
            vec![
                r#"{"age":3}"#,
                r#"{"age":3,"name":"x"}"#,
                r#"{"name":"a","x":1}"#,
                r#"{"name":3}"#,
            ],
        ),
        (
            json!({"type": "array", "items": {"enum": ["a", 1, null]}, "minItems": 1, "maxItems": 2}),
            vec![r#"["a"]"#, r#"[1, null]"#],
            vec!["[]", r#"["a",1,null]"#, r#"["b"]"#],
        ),
        (
            json!({"anyOf": [{"type": "boolean"}, {"type": "number"}]}),
            vec!["true", "-1.5e3", "0"],
            vec!["01", "\"x\"", "null"],
        ),
        (
            json!({"$defs": {"p": {"type": "object", "properties": {"x": {"const": 1}},
                "required": ["x"]}}, "type": "array", "items": {"$ref": "#/$defs/p"}}),
            vec![r#"[{"x":1}, {"x": 1}]"#, "[]"],
            vec![r#"[{"x":2}]"#],
        ),
        (
            json!({"type": "string", "minLength": 2, "maxLength": 3}),
            vec![r#""ab""#, r#""a\"c""#],
            vec![r#""a""#, r#""abcd""#],
        ),
        (
            json!({"type": "string", "pattern": "^[a-c]+$"}),
            vec![r#""abc""#],
            vec![r#""abd""#, r#""""#],
        ),
        (
            json!({}),
            vec![r#"{"a": [1, 2]}"#, "3", "\"s\""],
            vec!["{a}", "[1,]"],
        ),
    ];
    for (s, good, bad) in cases {
        let g = grammar(&schema::to_regex(&s).unwrap());
        for t in good {
            assert!(admits(&g, t), "{s} should admit {t}");
        }
        for t in bad {
            assert!(!admits(&g, t), "{s} should refuse {t}");
        }
    }
    let any = grammar(&schema::any_object());
    assert!(admits(&any, r#"{"k": [true, {"z": null}]}"#) && !admits(&any, "[1]"));
}

#[test]
fn bad_schemas_and_regexes_are_errors() {
    for s in [
        json!({"type": "thing"}),
        json!({"$ref": "https://x/y"}),
        json!({"$ref": "#/$defs/none"}),
        json!({"enum": []}),
        json!({"type": "string", "minLength": 3, "maxLength": 2}),
        json!({"allOf": [{}, {}]}),
        json!({"$ref": "#"}),
    ] {
        assert!(schema::to_regex(&s).is_err(), "{s}");
    }
    let c = Compiler::new(TokenBytes::from_tokens(vec![Some(b"a".to_vec())]));
    assert!(c.compile(&Constraint::Regex("(".into())).is_err());
    assert!(c.compile(&Constraint::JsonSchema("{".into())).is_err());
    let a = c.compile(&Constraint::Regex("a+".into())).unwrap();
    let b = c.compile(&Constraint::Regex("a+".into())).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "compiled once per constraint");
}

/// Random paths through a schema's grammar, drawing only unmasked tokens, end in JSON the schema
/// describes.
#[test]
fn random_masked_walks_spell_valid_json() {
    let seed = test_seed("random_masked_walks_spell_valid_json");
    let mut rng = SplitMix64(seed);
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 6},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3},
        "ok": {"type": "boolean"}, "n": {"type": ["integer", "null"]}},
        "required": ["name", "ok"]});
    let g = grammar(&schema::to_regex(&schema).unwrap());
    for walk in 0..200 {
        let text = random_walk(&g, &mut rng, 4, 400)
            .unwrap_or_else(|| panic!("walk {walk} (seed {seed}) does not end"));
        let j: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("walk {walk} (seed {seed}): {text:?} is not JSON: {e}"));
        let o = j.as_object().unwrap();
        assert!(o["name"].as_str().unwrap().chars().count() <= 6, "{text}");
        assert!(o["ok"].is_boolean(), "{text}");
        assert!(
            o.get("n").is_none_or(|n| n.is_null() || n.is_i64()),
            "{text}"
        );
        if let Some(t) = o.get("tags") {
            assert!(t.as_array().unwrap().len() <= 3, "{text}");
        }
        assert!(o
            .keys()
            .all(|k| ["name", "tags", "ok", "n"].contains(&k.as_str())));
    }
}

#[test]
fn ebnf_grammars_become_regexes() {
    use super::ebnf::to_regex;
    let g = r#"
        # the answer, then an optional code
        root ::= answer "!" code?
        answer ::= "yes" | 'no' | "a\"b"
        code ::= [0-9a-f]{2,3} ( "-" [^\n-] )*
    "#;
    let re = regex_automata::meta::Regex::new(&format!("^(?:{})$", to_regex(g).unwrap())).unwrap();
    for ok in [
        "yes!",
        "no!",
        "a\"b!",
        "yes!0f",
        "no!abc-x-y",
        "yes!00-\u{e9}",
    ] {
        assert!(re.is_match(ok), "{ok:?} should match");
    }
    for bad in ["yes", "maybe!", "yes!0", "yes!0000", "no!ab-\n", "no!ab--"] {
        assert!(!re.is_match(bad), "{bad:?} should not match");
    }
    // A grammar compiles into the byte DFA like any constraint.
    let c = Constraint::Ebnf(g.into());
    assert!(Grammar::new(&c.to_regex().unwrap(), vocab()).is_ok());
    // Recursion is unrolled MAX_NESTING levels deep: every output derives from the grammar.
    let nested = to_regex(r#"root ::= "[" root "]" | "x""#).unwrap();
    let re = regex_automata::meta::Regex::new(&format!("^(?:{nested})$")).unwrap();
    assert_eq!(super::ebnf::MAX_NESTING, 4);
    for (text, ok) in [
        ("x", true),
        ("[x]", true),
        ("[[[x]]]", true),
        ("[[[[x]]]]", false),
    ] {
        assert_eq!(re.is_match(text), ok, "{text}");
    }
    // What it refuses, with a message naming the problem.
    for (g, want) in [
        (r#"root ::= a  a ::= "x" b  b ::= a"#, "derives no text"),
        (r#"main ::= "x""#, "no `root`"),
        (r#"root ::= missing"#, "undefined rule `missing`"),
        (r#"root ::= "x"  root ::= "y""#, "twice"),
        (r#"root ::= "unterminated"#, "does not parse"),
        (r#"root ::= [z-a]"#, "backwards"),
        (r#"root ::= "x"{3,1}"#, "backwards"),
        (r#"root := "x""#, "does not parse"),
    ] {
        let e = to_regex(g).unwrap_err();
        assert!(e.contains(want), "{g:?}: {e}");
    }
}

#[test]
fn schema_strings_escape_surrogates_only_in_pairs() {
    // Found by a random masked walk: `\uDb8D` alone is JSON text that strict parsers (serde_json)
    // refuse; the string rule allows a surrogate only as a high-low pair.
    let re = schema::to_regex(&json!({"type": "string"})).unwrap();
    let re = regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap();
    for ok in [
        r#""\u00e9""#,
        r#""\uD83D\uDE00""#,
        r#""\ud7ff\ue000""#,
        r#""plain""#,
    ] {
        assert!(re.is_match(ok), "{ok}");
        serde_json::from_str::<Value>(ok).unwrap();
    }
    for bad in [r#""\uDb8D""#, r#""\uDE00\uD83D""#, r#""\uD83Dx""#] {
        assert!(!re.is_match(bad), "{bad}");
    }
}

#[test]
fn a_recursive_json_ebnf_compiles_unrolled() {
    // A JSON grammar in xgrammar's style: values nest through objects and arrays.
    let g = r#"
        root ::= value
        value ::= object | array | string | number | ("true" | "false" | "null")
        object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
        array ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
        string ::= "\"" [^"\\\x00-\x1f]* "\""
        number ::= "-"? [0-9]+ ("." [0-9]+)?
        ws ::= [ \t\n]{0,2}
    "#;
    let c = Constraint::Ebnf(g.into());
    let re = c.to_regex().unwrap();
    let m = regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap();
    for ok in [r#"{"a": [1, {"b": null}], "c": "d"}"#, "[[[]]]", "-1.5"] {
        assert!(m.is_match(ok), "{ok}");
        serde_json::from_str::<Value>(ok).unwrap();
    }
    assert!(!m.is_match("[[[[[]]]]]"), "deeper than the unrolling");
    assert!(Grammar::new(&re, vocab()).is_ok());
}

/// `stop_regex`: the walk reports a match at the first token after which the text so far
/// contains one (the regex crate's search over the whole text: the reference), with the
/// pattern that matched; random texts over a small alphabet cut into random tokens.
#[test]
fn stop_regex_walk_finds_the_first_match_like_a_search_of_the_text() {
    use super::stop::StopRegex;
    let seed = test_seed("stop_regex walk");
    let mut rng = SplitMix64(seed);
    let cases: &[&[&str]] = &[
        &["ab"],
        &["a+b$"],
        &["b{3}", "ca"],
        &["^ba"],
        &["(?:ab|ba)c"],
        &["\\d\\d"],
        &["x*"],
        &["é"],
        &["\\bab\\b"],
    ];
    for pats in cases {
        let pats: Vec<String> = pats.iter().map(|p| p.to_string()).collect();
        let re = regex_automata::meta::Regex::new_many(&pats).unwrap();
        for _ in 0..200 {
            let alphabet = ["a", "b", "c", "1", "2", " ", "é"];
            let len = 1 + rng.next_u64() as usize % 12;
            let text: String = (0..len)
                .map(|_| alphabet[rng.next_u64() as usize % alphabet.len()])
                .collect();
            // Tokens: runs of 1-3 bytes (a character may be split), token k is id k.
            let bytes = text.as_bytes();
            let mut cuts = vec![0];
            while *cuts.last().unwrap() < bytes.len() {
                let step = 1 + rng.next_u64() as usize % 3;
                cuts.push((cuts.last().unwrap() + step).min(bytes.len()));
            }
            let pieces = cuts.windows(2).map(|c| Some(bytes[c[0]..c[1]].to_vec()));
            let vocab = Arc::new(TokenBytes::from_tokens(pieces.collect()));
            let sr = StopRegex::new(pats.clone(), vocab).unwrap();
            let mut w = sr.walk_start();
            let mut got = None;
            let mut want = None;
            for k in 0..cuts.len() - 1 {
                let ids: Vec<u32> = (0..=k as u32).collect();
                let so_far = &bytes[..cuts[k + 1]];
                let text_so_far = || String::from_utf8_lossy(so_far).into_owned();
                if got.is_none() {
                    got = sr.follow(&mut w, &ids, text_so_far).map(|p| (k, p));
                }
                if want.is_none() && re.is_match(so_far) {
                    want = Some(k);
                }
            }
            // The token where a match first shows is the same; the pattern reported is one
            // that matches there.
            assert_eq!(
                got.map(|g| g.0),
                want,
                "{pats:?} over {text:?} cut at {cuts:?} (seed {seed})"
            );
            if let Some((k, p)) = got {
                let so_far = &bytes[..cuts[k + 1]];
                let one = regex_automata::meta::Regex::new(&pats[p]).unwrap();
                assert!(one.is_match(so_far), "{pats:?}[{p}] over {so_far:?}");
            }
        }
    }
    // Bad patterns are errors naming them.
    let e = StopRegex::new(vec!["(".into()], vocab()).unwrap_err();
    assert!(e.contains("stop_regex") && e.contains("\"(\""), "{e}");
}

/// A structural tag (SGLang's structures and triggers): free text, and where the trigger shows,
/// one of its structures (begin, JSON of the schema, end); then free text again.
fn tool_tag() -> String {
    json!({"type": "structural_tag",
        "structures": [
            {"begin": "<f=get>", "schema": {"type": "object",
                "properties": {"a": {"type": "integer"}}, "required": ["a"],
                "additionalProperties": false}, "end": "</f>"},
            {"begin": "<f=put>", "schema": {"type": "object",
                "properties": {"b": {"enum": ["x", "y"]}}, "required": ["b"],
                "additionalProperties": false}, "end": "</f>"}],
        "triggers": ["<f="]})
    .to_string()
}

/// The reference: free text and tags, checked by hand.
fn tool_tag_admits(text: &str) -> bool {
    let mut rest = text;
    while let Some(i) = rest.find("<f=") {
        let after = &rest[i + 3..];
        let (name, body) = match after.split_at_checked(4) {
            Some((n, b)) if n == "get>" || n == "put>" => (n, b),
            _ => return false,
        };
        let Some(j) = body.find("</f>") else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<Value>(&body[..j]) else {
            return false;
        };
        let ok = match name {
            "get>" => v
                .as_object()
                .is_some_and(|o| o.len() == 1 && o["a"].is_i64()),
            _ => v
                .as_object()
                .is_some_and(|o| o.len() == 1 && (o["b"] == "x" || o["b"] == "y")),
        };
        if !ok {
            return false;
        }
        rest = &body[j + 4..];
    }
    true
}

#[test]
fn structural_tags_free_text_and_tags_after_triggers() {
    let g = Grammar::structural(&tool_tag(), vocab()).unwrap();
    for (text, want) in [
        ("", true),
        ("hello <f world", true),
        ("call <f=get>{\"a\":12}</f> done", true),
        ("<f=put>{\"b\":\"y\"}</f><f=get>{\"a\":1}</f>", true),
        ("<f=get>{\"a\":12}", false),
        ("x <f=del>{}</f>", false),
        ("<f=get>{\"a\":\"s\"}</f>", false),
        ("<f=put>{\"b\":\"z\"}</f>", false),
    ] {
        assert_eq!(admits(&g, text), want, "{text:?}");
        assert_eq!(tool_tag_admits(text), want, "reference on {text:?}");
    }
    // Masks: free text takes any token, but "<f=" only followed by a structure's begin.
    let m = g.mask(g.start());
    assert!(m.accepting && m.can_continue);
    assert!(m.allows(u32::from(b'<')) && m.allows(u32::from(b'q')));
    let mut w = g.walk_start();
    let ids: Vec<u32> = "<f=".bytes().map(u32::from).collect();
    let s = g.follow(&mut w, &ids).unwrap();
    let m = g.mask(s);
    assert!(!m.accepting, "inside a tag");
    assert_eq!(m.allowed(), 2, "only g or p");
    // Bad tags are errors.
    for bad in [
        "{",
        r#"{"structures": [{"begin": "<x>", "end": "</x>"}], "triggers": ["<f="]}"#,
        r#"{"structures": [], "triggers": []}"#,
        r#"{"type": "structural_tag", "format": {"type": "qwen_xml_parameter"}}"#,
        r#"{"format": {"type": "sequence", "elements": [{"type": "triggered_tags", "triggers": ["<"], "tags": []}]}}"#,
        r#"{"structures": [{"begin": "<f=a", "end": "x", "schema": {"type": "thing"}}], "triggers": ["<f="]}"#,
    ] {
        assert!(Grammar::structural(bad, vocab()).is_err(), "{bad}");
    }
}

/// Random masked walks through a structural tag: every text the masks let through (ended where
/// the mask allows an end) is one the reference admits, and the walks do open and close tags.
#[test]
fn structural_tag_masked_walks_stay_in_the_language() {
    let seed = test_seed("structural tag walks");
    let mut rng = SplitMix64(seed);
    let v = vocab();
    let g = Grammar::structural(&tool_tag(), v.clone()).unwrap();
    // Bias the walks towards the interesting bytes.
    let favoured: Vec<u32> = "<f=getpu>{\"ab:12xy}/ ".bytes().map(u32::from).collect();
    let (mut tags, mut ended) = (0, 0);
    for _ in 0..300 {
        let mut w = g.walk_start();
        let mut ids: Vec<u32> = Vec::new();
        for _ in 0..200 {
            let s = g
                .follow(&mut w, &ids)
                .expect("a masked walk stays in the language");
            let m = g.mask(s);
            if m.accepting && rng.next_u64() % 25 == 0 {
                break;
            }
            // In free text, now and then the trigger (the walk must then follow a structure).
            if m.accepting && rng.next_u64() % 6 == 0 {
                ids.extend("<f=".bytes().map(u32::from));
                continue;
            }
            let pick: Vec<u32> = favoured.iter().copied().filter(|&t| m.allows(t)).collect();
            let t = if !pick.is_empty() && rng.next_u64() % 10 != 0 {
                pick[rng.next_u64() as usize % pick.len()]
            } else {
                let all: Vec<u32> = (0..g.vocab_len() as u32).filter(|&t| m.allows(t)).collect();
                all[rng.next_u64() as usize % all.len()]
            };
            ids.push(t);
        }
        let s = g.follow(&mut w, &ids).unwrap();
        if !g.accepting(s) {
            continue;
        }
        ended += 1;
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&t| v.get(t).unwrap().to_vec())
            .collect();
        // Free text may hold any bytes; the reference reads text.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            assert!(tool_tag_admits(text), "{text:?} (seed {seed})");
            tags += text.matches("</f>").count();
        }
    }
    assert!(
        ended > 0 && tags > 0,
        "{ended} walks ended, {tags} tags closed (seed {seed})"
    );
}

/// xgrammar's `format` form: regular formats compile to one regex; a top-level triggered_tags is
/// free text with structures, with `at_least_one` and `stop_after_first`.
#[test]
fn structural_tag_formats() {
    let g = |f: Value| {
        Grammar::structural(
            &json!({"type": "structural_tag", "format": f}).to_string(),
            vocab(),
        )
        .unwrap()
    };
    // A sequence of a constant, a JSON schema and a choice.
    let seq = g(json!({"type": "sequence", "elements": [
        {"type": "const_string", "value": "n="},
        {"type": "json_schema", "json_schema": {"type": "integer"}},
        {"type": "or", "elements": [{"type": "const_string", "value": "!"},
                                    {"type": "regex", "pattern": "[ab]+"}]}]}));
    for (t, want) in [
        ("n=12!", true),
        ("n=3ab", true),
        ("n=x!", false),
        ("n=1", false),
        ("n=1!!", false),
    ] {
        assert_eq!(admits(&seq, t), want, "{t}");
    }
    // A tag with an EBNF content; tags with a separator.
    let tag = g(
        json!({"type": "tag", "begin": "<a>", "content": {"type": "grammar",
        "grammar": "root ::= \"yes\" | \"no\""}, "end": "</a>"}),
    );
    assert!(admits(&tag, "<a>yes</a>") && !admits(&tag, "<a>maybe</a>"));
    let sep = g(
        json!({"type": "tags_with_separator", "separator": ",", "at_least_one": true,
        "tags": [{"type": "tag", "begin": "[", "content": {"type": "const_string", "value": "x"}, "end": "]"}]}),
    );
    for (t, want) in [
        ("[x]", true),
        ("[x],[x]", true),
        ("", false),
        ("[x],", false),
    ] {
        assert_eq!(admits(&sep, t), want, "{t}");
    }
    // Top-level triggered_tags: at least one structure; the first one ends the output.
    let tt = |at_least_one: bool, stop: bool| {
        g(json!({"type": "triggered_tags", "triggers": ["<f="],
        "at_least_one": at_least_one, "stop_after_first": stop,
        "tags": [{"type": "tag", "begin": "<f=get>", "content": {"type": "json_schema",
            "json_schema": {"type": "integer"}}, "end": "</f>"}]}))
    };
    let plain = tt(false, false);
    assert!(admits(&plain, "hi") && admits(&plain, "a <f=get>1</f> b <f=get>2</f>"));
    let one = tt(true, false);
    assert!(!admits(&one, "hi") && admits(&one, "hi <f=get>1</f> bye"));
    let first = tt(false, true);
    assert!(admits(&first, "hi <f=get>1</f>") && !admits(&first, "hi <f=get>1</f> bye"));
    let mut w = first.walk_start();
    let ids: Vec<u32> = "<f=get>1</f>".bytes().map(u32::from).collect();
    let m = first.mask(first.follow(&mut w, &ids).unwrap());
    assert!(
        m.accepting && !m.can_continue,
        "the request ends after the first structure"
    );
}
