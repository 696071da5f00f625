//! The tool-call formats and the reply stream: each format's calls and text, malformed and
//! unknown calls kept as content, and the same answer whatever pieces a reply arrives in.

use super::output::{delta, finish_reason, message, parse_reply, ReplyParser};
use super::*;
use serde_json::json;

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments: arguments.into(),
    }
}

fn known() -> Vec<String> {
    vec!["get_weather".into(), "ping".into()]
}

fn parser(t: ToolParser) -> ReplyParser {
    ReplyParser::new(None, Some((t, known())))
}

/// Feeds `parts`, then finishes: (reasoning, content, calls in order). The streamed deltas add
/// up to the calls: each call's first delta names it, and its arguments pieces concatenate to
/// the call's arguments (plus, at most, the start of one that then failed to parse).
fn stream(p: &mut ReplyParser, parts: &[&str]) -> (String, String, Vec<ToolCall>) {
    let (mut r, mut c, mut calls) = (String::new(), String::new(), Vec::new());
    let mut streamed: Vec<(String, String)> = Vec::new();
    let pieces: Vec<_> = parts.iter().map(|x| p.push(x)).collect();
    for x in pieces.into_iter().chain([p.finish()]) {
        r += &x.reasoning;
        c += &x.content;
        for (i, k) in x.calls {
            assert_eq!(i, calls.len(), "call indices run in order");
            calls.push(k);
        }
        for d in x.deltas {
            match d.name {
                Some(n) => {
                    assert_eq!(d.index, streamed.len(), "a call starts once, in order");
                    streamed.push((n, d.arguments));
                }
                None => streamed[d.index].1 += &d.arguments,
            }
        }
    }
    let want: Vec<(String, String)> = calls
        .iter()
        .map(|k| (k.name.clone(), k.arguments.clone()))
        .collect();
    // A call streamed while open that then did not parse (it stays content, as in a whole
    // reply) is an extra entry of the stream; the calls are the others, in order.
    let mut rest = streamed.iter();
    for w in &want {
        assert!(
            rest.any(|s| s == w),
            "deltas of {parts:?}: {streamed:?} vs {want:?}"
        );
    }
    assert!(
        streamed.len() == want.len() || c.contains("<tool_call>") || c.contains('{'),
        "deltas of {parts:?}: {streamed:?} vs {want:?}"
    );
    (r, c, calls)
}

/// The reply in one piece and split at every place into two and three pieces gives the same
/// calls and text (the content may differ only by the trim of a whole reply).
fn check_splits(make: impl Fn() -> ReplyParser, text: &str) -> (String, String, Vec<ToolCall>) {
    let whole = stream(&mut make(), &[text]);
    let cuts: Vec<usize> = (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect();
    for &i in &cuts {
        let got = stream(&mut make(), &[&text[..i], &text[i..]]);
        assert_eq!(got, whole, "cut at {i} of {text:?}");
        for &j in cuts.iter().filter(|&&j| j > i).step_by(3) {
            let got = stream(&mut make(), &[&text[..i], &text[i..j], &text[j..]]);
            assert_eq!(got, whole, "cuts {i},{j} of {text:?}");
        }
    }
    whole
}

#[test]
fn names_are_checked_at_start_up() {
    assert_eq!(ToolParser::from_flag("qwen25"), Ok(ToolParser::Qwen25));
    assert_eq!(ToolParser::from_flag("pythonic"), Ok(ToolParser::Pythonic));
    let e = ToolParser::from_flag("bogus").unwrap_err();
    assert!(
        e.starts_with("--tool-call-parser bogus")
            && e.contains("hermes, kimi_k2, llama3, mistral, pythonic, qwen25, qwen3_coder"),
        "{e}"
    );
    assert_eq!(
        ReasoningParser::from_flag("deepseek-r1"),
        Ok(ReasoningParser::DeepSeekR1)
    );
    let e = ReasoningParser::from_flag("r2").unwrap_err();
    assert!(
        e.starts_with("--reasoning-parser r2")
            && e.contains("deepseek-r1, deepseek-v3, glm45, interns1, kimi, kimi_k2, minimax, qwen3, qwen3-thinking, step3, step3p5"),
        "{e}"
    );
    let id = call_id();
    assert!(
        id.len() == 29 && id.starts_with("call_") && id[5..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
}

#[test]
fn qwen25_and_hermes_tags() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\",\"unit\":\"c\"}}\n</tool_call>\n<tool_call>\n{\"name\":\"ping\",\"arguments\":{}}\n</tool_call>";
    for t in [ToolParser::Qwen25, ToolParser::Hermes] {
        let (_, c, calls) = check_splits(|| parser(t), text);
        assert_eq!(c, "Let me check.\n\n");
        assert_eq!(
            calls,
            [
                call("get_weather", r#"{"city": "Paris", "unit": "c"}"#),
                call("ping", "{}")
            ]
        );
        let r = parse_reply(parser(t), text);
        assert_eq!(r.content, "Let me check.");
    }
    // Hermes takes an unclosed last block and a list; Qwen 2.5 does not.
    let open = "<tool_call>{\"name\": \"ping\", \"arguments\": {\"n\": 1}}";
    assert_eq!(
        check_splits(|| parser(ToolParser::Hermes), open).2,
        [call("ping", r#"{"n": 1}"#)]
    );
    let r = parse_reply(parser(ToolParser::Qwen25), open);
    assert_eq!((r.content.as_str(), r.calls.len()), (open, 0));
    let list = r#"<tool_call>[{"name": "ping"}, {"name": "nope"}]</tool_call>"#;
    assert_eq!(
        parse_reply(parser(ToolParser::Hermes), list).calls,
        [call("ping", "{}")]
    );
}

#[test]
fn malformed_or_unknown_calls_stay_content() {
    for text in [
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call>",
        "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "Sure <tool_call>{\"name\": \"ping\"",
    ] {
        let (_, c, calls) = check_splits(|| parser(ToolParser::Qwen25), text);
        assert_eq!((c.as_str(), calls.len()), (text, 0));
    }
    // A bad block between good ones stays in the text between them.
    let text = "<tool_call>{\"name\":\"ping\"}</tool_call> <tool_call>oops</tool_call> <tool_call>{\"name\":\"ping\"}</tool_call>";
    let r = parse_reply(parser(ToolParser::Qwen25), text);
    assert_eq!(r.calls.len(), 2);
    assert_eq!(r.content, "<tool_call>oops</tool_call>");
}

#[test]
fn llama3_json_after_python_tag_or_at_the_start() {
    let p = || parser(ToolParser::Llama3);
    let text = "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"ping\", \"arguments\": {\"x\": [1, 2]}}";
    let (_, c, calls) = check_splits(p, text);
    assert_eq!(c, "");
    assert_eq!(
        calls,
        [
            call("get_weather", r#"{"city": "Oslo"}"#),
            call("ping", r#"{"x": [1, 2]}"#)
        ]
    );
    let (_, c, calls) = check_splits(p, "{\"name\": \"ping\", \"parameters\": {}}");
    assert_eq!((c.as_str(), calls), ("", vec![call("ping", "{}")]));
    // Text before the tag is content; JSON that is no call stays content.
    let r = parse_reply(p(), "Calling.<|python_tag|>{\"name\": \"ping\"} trailing");
    assert_eq!((r.content.as_str(), r.calls.len()), ("Calling.trailing", 1));
    let (_, c, calls) = check_splits(p, "{\"answer\": 42}");
    assert_eq!((c.as_str(), calls.len()), ("{\"answer\": 42}", 0));
    let (_, c, calls) = check_splits(p, "The {braces} are fine");
    assert_eq!((c.as_str(), calls.len()), ("The {braces} are fine", 0));
}

#[test]
fn mistral_array_and_compact() {
    let p = || parser(ToolParser::Mistral);
    let text = "Ok [TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}, {\"name\": \"ping\", \"arguments\": {}}] done";
    let (_, c, calls) = check_splits(p, text);
    assert_eq!(c, "Ok  done");
    assert_eq!(
        calls,
        [
            call("get_weather", r#"{"city": "Rome"}"#),
            call("ping", "{}")
        ]
    );
    assert_eq!(parse_reply(p(), text).content, "Ok  done");
    let compact = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Rome\"}[TOOL_CALLS]ping[ARGS]{}";
    assert_eq!(
        check_splits(p, compact).2,
        [
            call("get_weather", r#"{"city": "Rome"}"#),
            call("ping", "{}")
        ]
    );
    let bad = "[TOOL_CALLS] [{\"name\": \"get_weather\"";
    assert_eq!(
        check_splits(p, bad),
        (String::new(), bad.to_string(), vec![])
    );
    // An array cut short: its whole items are calls (they streamed as they closed), the rest
    // is content; an item naming no function is dropped; an array of only such items is text.
    let cut = "[TOOL_CALLS] [{\"name\": \"nope\", \"arguments\": {}}, {\"name\": \"ping\", \"arguments\": {}}, {\"name\": \"get_wea";
    let (_, c, calls) = check_splits(p, cut);
    assert_eq!(calls, [call("ping", "{}")]);
    assert_eq!(c, "{\"name\": \"get_wea");
    let unknown = "[TOOL_CALLS] [{\"name\": \"nope\", \"arguments\": {}}] after";
    assert_eq!(check_splits(p, unknown).1, unknown);
}

#[test]
fn pythonic_lists_of_calls() {
    let p = || parser(ToolParser::Pythonic);
    let text = "[get_weather(city='São Paulo', days=3, opts={'metric': True, \"x\": None}, hours=[1, -2.5]), ping()]";
    let (_, c, calls) = check_splits(p, text);
    assert_eq!(c, "");
    assert_eq!(
        calls,
        [
            call(
                "get_weather",
                r#"{"city": "São Paulo", "days": 3, "opts": {"metric": true, "x": null}, "hours": [1, -2.5]}"#
            ),
            call("ping", "{}")
        ]
    );
    let (_, c, calls) = check_splits(p, "See [note] and [ping(a=\"q\\\"x\")] ok");
    assert_eq!(
        (c.as_str(), calls),
        ("See [note] and  ok", vec![call("ping", r#"{"a": "q\"x"}"#)])
    );
    for bad in ["[ping(1)]", "[ping(a=foo)]", "[nope(a=1)]", "[ping(a=1"] {
        let (_, c, calls) = check_splits(p, bad);
        assert_eq!((c.as_str(), calls.len()), (bad, 0), "{bad}");
    }
}

#[test]
fn reasoning_then_tools_and_the_response_shapes() {
    let make = || {
        ReplyParser::new(
            Some((ReasoningParser::Qwen3, true)),
            Some((ToolParser::Qwen25, known())),
        )
    };
    let text = "<think>Need weather.</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let (r, c, calls) = check_splits(make, text);
    assert_eq!(
        (r.as_str(), c.as_str(), calls.len()),
        ("Need weather.", "\n\n", 1)
    );
    let reply = parse_reply(make(), text);
    let m = message(&reply);
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["content"], "");
    assert_eq!(m["reasoning_content"], "Need weather.");
    let tc = &m["tool_calls"][0];
    assert!(tc["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(
        (tc["index"].clone(), tc["type"].clone()),
        (json!(0), json!("function"))
    );
    assert_eq!(
        tc["function"],
        json!({"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"})
    );
    assert_eq!(finish_reason(json!("stop"), true), "tool_calls");
    assert_eq!(finish_reason(json!("length"), true), "length");
    assert_eq!(finish_reason(json!("stop"), false), "stop");
    // No parsers: the text as is, no reasoning, no tool_calls key.
    let plain = message(&parse_reply(ReplyParser::default(), "<think>x</think>"));
    assert_eq!(
        plain,
        json!({"role": "assistant", "content": "<think>x</think>", "reasoning_content": null})
    );
    // Stream deltas: the role first, only the fields a piece has.
    let mut p = make();
    let a = p.push("<think>Need");
    assert_eq!(
        delta(&a, true),
        json!({"role": "assistant", "reasoning_content": "Need"})
    );
    let b = p.push(" w.</think>Hi <tool");
    assert_eq!(
        delta(&b, false),
        json!({"reasoning_content": " w.", "content": "Hi "})
    );
    let c = p.push("_call>\n{\"name\": \"ping\"}\n</tool_call>");
    let d = delta(&c, false);
    assert_eq!(
        d["tool_calls"][0]["function"],
        json!({"name": "ping", "arguments": "{}"})
    );
    assert!(d.get("content").is_none() && p.has_calls());
    assert_eq!(delta(&p.finish(), false), json!({"content": ""}));
    assert!(p.finish().is_empty() && p.has_calls());
}

#[test]
fn a_forced_reply_is_one_json_array_of_calls() {
    let text = r#"[{"name": "get_weather", "parameters": {"city":"Paris"}}, {"name": "ping", "parameters": {}}]"#;
    let (r, c, calls) = check_splits(|| parser(ToolParser::JsonArray), text);
    assert_eq!((r.as_str(), c.as_str()), ("", ""));
    assert_eq!(
        calls,
        vec![
            call("get_weather", r#"{"city": "Paris"}"#),
            call("ping", "{}")
        ]
    );
    // Cut short (max_tokens): no call, the text stays content.
    let cut = r#"[{"name": "get_weather", "param"#;
    let (_, c, calls) = check_splits(|| parser(ToolParser::JsonArray), cut);
    assert_eq!((c.as_str(), calls.len()), (cut, 0));
    // JsonArray is no --tool-call-parser name.
    assert!(ToolParser::from_flag("json_array").is_err());
}

#[test]
fn marker_formats_parse_their_calls_whatever_the_pieces() {
    let w = r#"{"city": "Paris"}"#;
    let cases: [(ToolParser, String); 5] = [
        (
            ToolParser::DeepSeekV3,
            format!(
                "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{w}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>ping\n```json\n{{}}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
            ),
        ),
        (
            ToolParser::DeepSeekV31,
            format!(
                "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{w}<｜tool▁call▁end｜><｜tool▁call▁begin｜>ping<｜tool▁sep｜>{{}}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
            ),
        ),
        (
            ToolParser::KimiK2,
            format!(
                "Sure.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{w}<|tool_call_end|><|tool_call_begin|>functions.ping:1<|tool_call_argument_begin|>{{}}<|tool_call_end|><|tool_calls_section_end|>"
            ),
        ),
        (
            ToolParser::Glm45,
            "Sure.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call><tool_call>ping\n</tool_call>".to_string(),
        ),
        (
            ToolParser::Qwen3Coder,
            "Sure.<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=ping>\n</function>\n</tool_call>".to_string(),
        ),
    ];
    for (t, text) in cases {
        let (r, c, calls) = check_splits(|| parser(t), &text);
        assert_eq!(r, "", "{t:?}");
        assert_eq!(c.trim(), "Sure.", "{t:?}");
        assert_eq!(
            calls,
            vec![
                call("get_weather", r#"{"city": "Paris"}"#),
                call("ping", "{}")
            ],
            "{t:?}"
        );
    }
}

#[test]
fn marker_formats_keep_what_does_not_parse() {
    // An unknown function and a malformed block stay in the content; typed values come out as
    // JSON where they parse.
    let known = |n: &str| n == "get_weather";
    let s = marked::deepseek_v31(
        "<｜tool▁call▁begin｜>nope<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{bad<｜tool▁call▁end｜>",
        &known,
    );
    assert!(s.calls.is_empty());
    assert!(s.text.contains("nope") && s.text.contains("{bad"));
    let s = marked::glm45(
        "<tool_call>get_weather\n<arg_key>days</arg_key><arg_value>3</arg_value><arg_key>units</arg_key><arg_value>[\"c\"]</arg_value></tool_call>",
        &known,
    );
    assert_eq!(
        s.calls,
        vec![call("get_weather", r#"{"days": 3, "units": ["c"]}"#)]
    );
    assert_eq!(
        ToolParser::from_flag("qwen"),
        Ok(ToolParser::Qwen25),
        "SGLang's alias"
    );
    assert_eq!(ToolParser::from_flag("kimi_k2"), Ok(ToolParser::KimiK2));
}

/// `text` fed one character at a time, then finished: the streamed deltas and completed calls.
fn char_by_char(
    mut p: ReplyParser,
    text: &str,
) -> (Vec<super::output::CallDelta>, Vec<(usize, ToolCall)>) {
    let (mut deltas, mut calls) = (Vec::new(), Vec::new());
    let pieces: Vec<_> = text.chars().map(|c| p.push(&c.to_string())).collect();
    for x in pieces.into_iter().chain([p.finish()]) {
        deltas.extend(x.deltas);
        calls.extend(x.calls);
    }
    (deltas, calls)
}

/// The arguments streamed for call `index`, joined.
fn arguments_of(deltas: &[super::output::CallDelta], index: usize) -> String {
    deltas
        .iter()
        .filter(|d| d.index == index)
        .map(|d| d.arguments.as_str())
        .collect()
}

/// `qwen25` / `hermes` stream an open call's arguments as they arrive: the name first (with
/// empty arguments), then pieces, re-spaced as the complete call's arguments.
#[test]
fn json_calls_in_tags_stream_their_arguments() {
    let text = "Sure.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris, France\",\"days\" : [1,2]}}\n</tool_call>";
    for t in [ToolParser::Qwen25, ToolParser::Hermes] {
        let (deltas, calls) = char_by_char(parser(t), text);
        assert_eq!(
            calls,
            vec![(
                0,
                call(
                    "get_weather",
                    r#"{"city": "Paris, France", "days": [1, 2]}"#
                )
            )]
        );
        assert_eq!(deltas[0].name.as_deref(), Some("get_weather"));
        assert_eq!(deltas[0].arguments, "");
        assert!(deltas.len() > 10, "{deltas:?}");
        assert_eq!(arguments_of(&deltas, 0), calls[0].1.arguments);
        // The chunks: a start with id, type and name; then index and arguments only.
        let start = super::output::delta_json(&deltas[0]);
        assert!(
            start["id"].as_str().is_some_and(|i| i.starts_with("call_")),
            "{start}"
        );
        assert_eq!(start["function"]["name"], "get_weather");
        let more = super::output::delta_json(&deltas[1]);
        assert_eq!(
            more,
            json!({"index": 0, "function": {"arguments": deltas[1].arguments}})
        );
    }
    // llama3: calls one after another, each streamed while open.
    let text = "<|python_tag|>{\"name\": \"ping\", \"parameters\": {\"host\": \"a.b\"}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
    let (deltas, _) = char_by_char(parser(ToolParser::Llama3), text);
    let starts: Vec<_> = deltas.iter().filter_map(|d| d.name.clone()).collect();
    assert_eq!(starts, ["ping", "get_weather"]);
    assert!(deltas.len() > 6, "{deltas:?}");
    assert_eq!(arguments_of(&deltas, 1), r#"{"city": "Oslo"}"#);
    // An unknown function is not streamed (its block stays content).
    let mut p = parser(ToolParser::Qwen25);
    let x = p.push("<tool_call>{\"name\": \"nope\", \"arguments\": {\"a\": 1");
    assert!(x.deltas.is_empty(), "{x:?}");
}

/// `stream_reasoning: false`: the reasoning arrives whole in the piece where it ends (or at the
/// finish of a reply cut inside it); the content is streamed as before.
#[test]
fn held_reasoning_is_released_whole_when_it_ends() {
    let mut p = ReplyParser::new(Some((ReasoningParser::DeepSeekR1, true)), None).hold_reasoning();
    let pieces: Vec<_> = ["Hmm, ", "2+2", "=4.</th", "ink>It is", " 4."]
        .iter()
        .map(|x| p.push(x))
        .collect();
    let reasoning: Vec<&str> = pieces.iter().map(|x| x.reasoning.as_str()).collect();
    assert_eq!(reasoning, ["", "", "", "Hmm, 2+2=4.", ""]);
    let content: String = pieces.iter().map(|x| x.content.as_str()).collect();
    assert_eq!(content + &p.finish().content, "It is 4.");
    // Cut inside the reasoning: all of it at the finish.
    let mut p = ReplyParser::new(Some((ReasoningParser::DeepSeekR1, true)), None).hold_reasoning();
    assert_eq!(p.push("still thin").reasoning, "");
    assert_eq!(p.finish().reasoning, "still thin");
}

/// The formats that name a call before its JSON arguments (`mistral`'s compact form,
/// `deepseekv3`, `deepseekv31`, `kimi_k2`) stream the arguments while the call is open, each
/// call under its own index, joining to the complete calls' arguments.
#[test]
fn named_formats_stream_their_arguments() {
    let w = r#"{"city":"Paris, France","days" : [1,2]}"#;
    let cases = [
        (
            ToolParser::Mistral,
            format!("[TOOL_CALLS]get_weather[ARGS]{w}[TOOL_CALLS]ping[ARGS]{{\"host\": \"a.b\"}}"),
        ),
        (
            ToolParser::Mistral,
            format!("[TOOL_CALLS] [{{\"name\": \"get_weather\", \"arguments\": {w}}}, {{\"name\":\"ping\",\"arguments\":{{\"host\": \"a.b\"}}}}]"),
        ),
        (
            ToolParser::DeepSeekV3,
            format!("Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{w}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>ping\n```json\n{{\"host\": \"a.b\"}}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
        ),
        (
            ToolParser::DeepSeekV31,
            format!("Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{w}<｜tool▁call▁end｜><｜tool▁call▁begin｜>ping<｜tool▁sep｜>{{\"host\": \"a.b\"}}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
        ),
        (
            ToolParser::KimiK2,
            format!("Sure.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{w}<|tool_call_end|><|tool_call_begin|>functions.ping:1<|tool_call_argument_begin|>{{\"host\": \"a.b\"}}<|tool_call_end|><|tool_calls_section_end|>"),
        ),
    ];
    for (t, text) in cases {
        let (deltas, calls) = char_by_char(parser(t), &text);
        let calls: Vec<ToolCall> = calls.into_iter().map(|(_, c)| c).collect();
        assert_eq!(
            calls,
            vec![
                call(
                    "get_weather",
                    r#"{"city": "Paris, France", "days": [1, 2]}"#
                ),
                call("ping", r#"{"host": "a.b"}"#)
            ],
            "{t:?}"
        );
        let starts: Vec<_> = deltas.iter().filter_map(|d| d.name.clone()).collect();
        assert_eq!(starts, ["get_weather", "ping"], "{t:?}: {deltas:?}");
        assert!(deltas.len() > 12, "{t:?}: {deltas:?}");
        for (i, c) in calls.iter().enumerate() {
            assert_eq!(arguments_of(&deltas, i), c.arguments, "{t:?}");
        }
    }
}

/// The key/value formats (`glm45`, `qwen3_coder`) keep the arguments in the order the model
/// wrote them and stream them a pair at a time while the call is open (a value whole once it is
/// closed), joining to the complete call's arguments.
#[test]
fn key_value_formats_keep_order_and_stream_pairs() {
    let cases = [
        (
            ToolParser::Glm45,
            "Sure.<tool_call>get_weather\n<arg_key>unit</arg_key>\n<arg_value>celsius</arg_value>\n<arg_key>city</arg_key>\n<arg_value>Paris, France</arg_value>\n<arg_key>days</arg_key>\n<arg_value>[1, 2]</arg_value>\n</tool_call><tool_call>ping\n</tool_call>",
        ),
        (
            ToolParser::Qwen3Coder,
            "Sure.<tool_call>\n<function=get_weather>\n<parameter=unit>\ncelsius\n</parameter>\n<parameter=city>\nParis, France\n</parameter>\n<parameter=days>\n[1, 2]\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=ping>\n</function>\n</tool_call>",
        ),
    ];
    for (t, text) in cases {
        let want = vec![
            call(
                "get_weather",
                r#"{"unit": "celsius", "city": "Paris, France", "days": [1, 2]}"#,
            ),
            call("ping", "{}"),
        ];
        assert_eq!(check_splits(|| parser(t), text).2, want, "{t:?}");
        let (deltas, _) = char_by_char(parser(t), text);
        let starts: Vec<_> = deltas.iter().filter_map(|d| d.name.clone()).collect();
        assert_eq!(starts, ["get_weather", "ping"], "{t:?}: {deltas:?}");
        // The first call: its start, one piece per pair, the closing brace.
        let first: Vec<_> = deltas.iter().filter(|d| d.index == 0).collect();
        assert!(first.len() >= 4, "{t:?}: {deltas:?}");
        for (i, c) in want.iter().enumerate() {
            assert_eq!(arguments_of(&deltas, i), c.arguments, "{t:?}");
        }
    }
}

/// A streamed call whose text then fails to parse keeps its index; the next call streams under
/// the next one, whole and in order.
#[test]
fn a_call_after_a_broken_one_streams_under_its_own_index() {
    let text = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": }</tool_call><tool_call>{\"name\": \"ping\", \"arguments\": {\"host\": \"x\"}}</tool_call>";
    let (deltas, calls) = char_by_char(parser(ToolParser::Qwen25), text);
    assert_eq!(calls, vec![(0, call("ping", r#"{"host": "x"}"#))]);
    let starts: Vec<_> = deltas
        .iter()
        .filter_map(|d| d.name.clone().map(|n| (d.index, n)))
        .collect();
    assert_eq!(
        starts,
        [(0, "get_weather".to_string()), (1, "ping".to_string())]
    );
    assert_eq!(arguments_of(&deltas, 1), r#"{"host": "x"}"#);
}
