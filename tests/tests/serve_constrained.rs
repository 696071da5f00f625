//! End-to-end: constrained decoding on `strata serve` (a real process on a made model, whose
//! random weights would never produce the shapes asked for by themselves). Greedy and seeded
//! sampled outputs under `regex` match it whole and finish when the pattern is complete;
//! `json_schema` outputs parse as JSON of the schema's shape on `/generate`, completions and
//! chat (`response_format`); an EBNF grammar's outputs derive from its root; streaming adds up to
//! the non-streamed answer; bad constraints (an EBNF grammar without a finite derivation, no
//! `root`) are 400s. `stop_regex` ends the output at a match; `structural_tag` constrains the
//! text after each trigger.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};

/// Whether `t` is three digits, a dash and two lowercase letters (the test's regex).
fn matches_code(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'-'
        && b[4..].iter().all(u8::is_ascii_lowercase)
}

const CODE: &str = "[0-9]{3}-[a-z]{2}";

fn person_schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
        "required": ["name", "age"]})
}

/// The person's JSON, checked against the schema's shape.
fn check_person(text: &str) {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
    let o = v.as_object().unwrap_or_else(|| panic!("{text:?}"));
    assert!(o["name"].as_str().unwrap().chars().count() <= 8, "{text}");
    assert!(o["age"].is_i64() || o["age"].is_u64(), "{text}");
    if let Some(t) = o.get("tags") {
        let t = t.as_array().unwrap();
        assert!(
            t.len() <= 2 && t.iter().all(|x| x == "a" || x == "b"),
            "{text}"
        );
    }
    assert!(
        o.keys()
            .all(|k| ["name", "age", "tags"].contains(&k.as_str())),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_follow_regex_and_json_schema() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);

    // Greedy and sampled (several seeds) under a regex: whole matches, finished by the grammar.
    for (temperature, seed) in [(0.0, 0), (1.0, 1), (1.0, 2), (1.0, 3), (1.5, 4)] {
        let (st, v) = s
            .post(
                "/generate",
                &json!({"text": "Once upon a time", "sampling_params": {"regex": CODE,
                "max_new_tokens": 40, "temperature": temperature, "seed": seed}}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let text = v["text"].as_str().unwrap();
        assert!(matches_code(text), "seed {seed}: {text:?}");
        assert_eq!(v["meta_info"]["finish_reason"]["type"], "stop", "{v}");
    }
    // Unconstrained, the same prompt says something else.
    let plain = s.greedy("Once upon a time", 6).await;
    assert!(!matches_code(plain["text"].as_str().unwrap()));

    // An EBNF grammar (regular: its rules expand to the same byte DFA), greedy and sampled.
    let ebnf =
        "root ::= answer \"!\" code? # a comment\nanswer ::= \"yes\" | \"no\"\ncode ::= [0-9]{2}";
    for (temperature, seed) in [(0.0, 0), (1.0, 1), (1.0, 2)] {
        let (st, v) = s
            .post(
                "/generate",
                &json!({"text": "Once upon a time", "sampling_params": {"ebnf": ebnf,
                "max_new_tokens": 40, "temperature": temperature, "seed": seed}}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let text = v["text"].as_str().unwrap();
        let rest = text.strip_prefix("yes!").or(text.strip_prefix("no!"));
        assert!(
            rest.is_some_and(
                |r| r.is_empty() || (r.len() == 2 && r.bytes().all(|b| b.is_ascii_digit()))
            ),
            "seed {seed}: {text:?}"
        );
    }

    // A recursive EBNF grammar and a recursive schema run on the pushdown automaton: finished
    // outputs derive from them, cut ones are prefixes of outputs that do.
    let nested = "root ::= \"(\" root \")\" | \"x\" | \"(\" root \",\" root \")\"";
    let tree = json!({"$defs": {"n": {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
        "required": ["v", "kids"]}}, "$ref": "#/$defs/n"});
    for (temperature, seed) in [(0.0, 0), (1.0, 1), (1.0, 2), (1.5, 3)] {
        let (st, v) = s
            .post(
                "/generate",
                &json!({"text": "Once upon a time", "sampling_params": {"ebnf": nested,
                "max_new_tokens": 60, "temperature": temperature, "seed": seed}}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let text = v["text"].as_str().unwrap();
        let finished = v["meta_info"]["finish_reason"]["type"] == "stop";
        assert!(nested_ok(text, finished), "seed {seed}: {text:?} ({v})");
        let (st, v) = s
            .post(
                "/generate",
                &json!({"text": "A tree:", "sampling_params": {"json_schema": tree.to_string(),
                "max_new_tokens": 120, "temperature": temperature, "seed": seed}}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let text = v["text"].as_str().unwrap();
        if v["meta_info"]["finish_reason"]["type"] == "stop" {
            check_tree(&serde_json::from_str(text).unwrap());
        } else {
            assert!(text.starts_with('{'), "seed {seed}: {text:?}");
        }
        // Left recursion through another rule (rewritten): root = y (zx)*.
        let (st, v) = s
            .post(
                "/generate",
                &json!({"text": "Once", "sampling_params": {
                "ebnf": "root ::= a \"x\" | \"y\"  a ::= root \"z\"",
                "max_new_tokens": 20, "temperature": temperature, "seed": seed}}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let text = v["text"].as_str().unwrap();
        let body = text.strip_prefix('y').unwrap_or_else(|| panic!("{text:?}"));
        let pairs = body.len() / 2;
        assert_eq!(
            &body[..2 * pairs],
            "zx".repeat(pairs),
            "seed {seed}: {text:?}"
        );
        let rest = &body[2 * pairs..];
        let finished = v["meta_info"]["finish_reason"]["type"] == "stop";
        assert!(
            rest.is_empty() || (!finished && rest == "z"),
            "seed {seed}: {text:?}"
        );
    }

    // JSON schema on /generate (as SGLang's string) and the same answer streamed.
    let schema = person_schema().to_string();
    let body = json!({"text": "Describe someone:", "sampling_params": {"json_schema": schema,
        "max_new_tokens": 200, "temperature": 0}});
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    let text = v["text"].as_str().unwrap();
    check_person(text);
    assert_eq!(v["meta_info"]["finish_reason"]["type"], "stop", "{v}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let evs = s.stream("/generate", &streamed).await;
    let last: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
    assert_eq!(last["text"], v["text"]);

    // Sampled JSON, several seeds.
    for seed in 0..4 {
        let (st, v) = s
            .post(
                "/generate",
                &json!({"text": "Describe someone:", "sampling_params": {"json_schema": schema,
                "max_new_tokens": 200, "temperature": 1.0, "seed": seed}}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        check_person(v["text"].as_str().unwrap());
    }

    // Completions with SGLang's regex field; chat with OpenAI's response_format.
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "Code:", "max_tokens": 20, "temperature": 0, "regex": CODE}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        matches_code(v["choices"][0]["text"].as_str().unwrap()),
        "{v}"
    );
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Who?"}], "max_tokens": 200,
            "temperature": 0, "response_format": {"type": "json_schema",
            "json_schema": {"name": "person", "schema": person_schema()}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    check_person(v["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Any JSON"}], "max_tokens": 300,
            "temperature": 0, "response_format": {"type": "json_object"}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with('{'), "{v}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(content).unwrap().is_object(),
            "{v}"
        );
    }

    // Errors: a 400 each, and the server keeps serving.
    for (path, body) in [
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"regex": "("}}),
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"json_schema": "{"}}),
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"json_schema": "{\"type\": \"thing\"}"}}),
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"regex": "a", "json_schema": "{}"}}),
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"ebnf": "root ::= \"a\" root"}}),
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"ebnf": "start ::= \"a\""}}),
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"ebnf": "root ::= e root \"z\" | \"q\"  e ::= \"\" | \"(\" e \")\""}}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "structural_tag"}}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        ),
    ] {
        let (st, v) = s.post(path, &body).await;
        assert_eq!(st, 400, "{body} -> {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let again = s.greedy("Once upon a time", 6).await;
    assert_eq!(again["text"], plain["text"]);
}

/// Whether `text` derives from `root ::= "(" root ")" | "x" | "(" root "," root ")"` (or, not
/// `finished`, is a prefix of a text that does).
fn nested_ok(text: &str, finished: bool) -> bool {
    // A value is `x` or a parenthesised list of one or two values: track the open lists and how
    // many values each holds.
    let mut open: Vec<u8> = Vec::new();
    let mut done = false;
    let mut after_value = false;
    for c in text.chars() {
        if done {
            return false;
        }
        match c {
            '(' if !after_value => open.push(0),
            'x' if !after_value => after_value = true,
            ',' if after_value && open.last() == Some(&0) => {
                *open.last_mut().unwrap() = 1;
                after_value = false;
            }
            ')' if after_value && !open.is_empty() => {
                open.pop();
            }
            _ => return false,
        }
        if after_value && open.is_empty() {
            done = true;
        }
    }
    !finished || done
}

fn check_tree(v: &Value) {
    let o = v.as_object().expect("an object");
    assert!(o["v"].is_i64(), "{v}");
    assert!(o.keys().all(|k| k == "v" || k == "kids"), "{v}");
    o["kids"]
        .as_array()
        .expect("kids")
        .iter()
        .for_each(check_tree);
}

/// `pattern`'s text with the regex syntax characters escaped.
fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let meta = "\\.+*?()|[]{}^$#&-~".contains(c);
            meta.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// `stop_regex` (a pattern or a list, on /generate and the OpenAI routes): the greedy output
/// stops at the first token that completes a match, is the unconstrained output cut there (the
/// match kept, as SGLang does), and reports the pattern as `matched`; a bad pattern is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_regex_ends_the_output_at_the_first_match() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let prompt = "Once upon a time";
    let plain = s.greedy(prompt, 32).await;
    let full = plain["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 12, "{full:?}");
    // A pattern over characters from the middle of the text: the first, any one, the third.
    let pattern = format!(
        "{}.{}",
        escape(&chars[6].to_string()),
        escape(&chars[8].to_string())
    );
    let re = regex_automata::meta::Regex::new(&pattern).unwrap();
    let first = re
        .find(full.as_str())
        .expect("the pattern matches the text")
        .end();
    for (path, body) in [
        (
            "/generate",
            json!({"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 32,
            "stop_regex": pattern}}),
        ),
        (
            "/generate",
            json!({"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 32,
            "stop_regex": ["zzz[0-9]{40}", pattern]}}),
        ),
        (
            "/v1/completions",
            json!({"prompt": prompt, "temperature": 0, "max_tokens": 32, "stop_regex": pattern}),
        ),
    ] {
        let (st, v) = s.post(path, &body).await;
        assert_eq!(st, 200, "{v}");
        let (text, finish) = if path == "/generate" {
            (
                v["text"].as_str().unwrap(),
                &v["meta_info"]["finish_reason"],
            )
        } else {
            assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
            (v["choices"][0]["text"].as_str().unwrap(), &json!(null))
        };
        assert!(
            full.starts_with(text),
            "{text:?} is not a prefix of {full:?}"
        );
        assert!(
            text.len() >= first,
            "{text:?} stops before the match in {full:?}"
        );
        assert!(text.len() < full.len(), "{text:?} did not stop");
        if path == "/generate" {
            assert_eq!(*finish, json!({"type": "stop", "matched": pattern}), "{v}");
            // It stopped at the token that completed the match: one token fewer has none.
            let n = v["meta_info"]["completion_tokens"].as_u64().unwrap() as usize;
            let shorter = s.greedy(prompt, n - 1).await;
            let t = shorter["text"].as_str().unwrap();
            assert!(!re.is_match(t), "{t:?} already matches {pattern:?}");
        }
    }
    // Streamed: the chunks add up to the same text.
    let body = json!({"text": prompt, "stream": true, "sampling_params": {"temperature": 0,
        "max_new_tokens": 32, "stop_regex": pattern}});
    let (_, whole) = s
        .post(
            "/generate",
            &json!({"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 32,
            "stop_regex": pattern}}),
        )
        .await;
    let chunks = s.stream("/generate", &body).await;
    let last: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    assert_eq!(last["text"], whole["text"], "{chunks:?}");
    // Bad patterns and shapes are 400s; the server keeps serving.
    for sr in [json!("("), json!(3), json!(["a", 1])] {
        let (st, v) = s
            .post(
                "/generate",
                &json!({"text": prompt, "sampling_params": {"stop_regex": sr}}),
            )
            .await;
        assert_eq!(st, 400, "{sr} -> {v}");
    }
    assert_eq!(s.greedy(prompt, 32).await["text"], plain["text"]);
}

/// Whether every `e` in `text` opens `e[<integer>]` (the structural tag of the test below).
fn tags_follow_each_e(text: &str) -> bool {
    let mut rest = text;
    while let Some(i) = rest.find('e') {
        let after = &rest[i + 1..];
        let Some(body) = after.strip_prefix('[') else {
            return false;
        };
        let Some(j) = body.find(']') else {
            return false;
        };
        let n = &body[..j];
        if serde_json::from_str::<i64>(n).is_err() {
            return false;
        }
        rest = &body[j + 1..];
    }
    true
}

/// `text` up to an unclosed last tag (a cut-off output may end inside one).
fn closed_part(text: &str) -> &str {
    match (text.rfind('e'), text.rfind(']')) {
        (Some(e), Some(b)) if b > e => text,
        (Some(e), _) => &text[..e],
        (None, _) => text,
    }
}

/// `structural_tag` (SGLang's structures and triggers, on /generate as JSON text and as OpenAI's
/// `response_format`): free text, but each trigger (`e`, common enough that a random model writes
/// it) opens its structure `e[<integer>]`; greedy and sampled outputs keep to that, and do write
/// tags; a bad tag is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structural_tag_constrains_the_text_after_each_trigger() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let prompt = "Once upon a time";
    let plain = s.greedy(prompt, 48).await;
    let plain = plain["text"].as_str().unwrap();
    assert!(
        !tags_follow_each_e(plain),
        "{plain:?} already keeps to the tag"
    );
    let tag = json!({"type": "structural_tag",
        "structures": [{"begin": "e[", "schema": {"type": "integer"}, "end": "]"}],
        "triggers": ["e"]});
    let mut tags = 0;
    for (temperature, seed) in [(0.0, 0), (1.0, 1), (1.0, 2)] {
        let (st, v) = s
            .post(
                "/generate",
                &json!({"text": prompt, "sampling_params": {"structural_tag": tag.to_string(),
                "max_new_tokens": 48, "temperature": temperature, "seed": seed}}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let text = v["text"].as_str().unwrap();
        let whole = closed_part(text);
        assert!(tags_follow_each_e(whole), "seed {seed}: {text:?}");
        tags += whole.matches("e[").count();
    }
    assert!(tags > 0, "no output opened a tag");
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 48,
            "temperature": 0, "response_format": tag}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let whole = closed_part(text);
    assert!(tags_follow_each_e(whole), "{text:?}");
    for bad in [
        json!({"type": "structural_tag", "structures": [{"begin": "x", "end": "y"}], "triggers": ["e"]}),
        json!({"type": "structural_tag", "format": {"type": "qwen_xml_parameter"}}),
    ] {
        let (st, v) = s
            .post(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": prompt}], "response_format": bad}),
            )
            .await;
        assert_eq!(st, 400, "{bad} -> {v}");
    }
}
