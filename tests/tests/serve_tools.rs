//! End-to-end: function calling and reasoning on `strata serve` (real processes on a made model).
//! The tiny random model never writes a call, so this proves the request side and the plumbing:
//! a `--chat-template` file that renders `tools`, assistant `tool_calls` (arguments turned into
//! objects), tool results and a `chat_template_kwargs` variable into the prompt the model sees
//! (request log, prompt token counts); `tool_choice: "none"` keeps the tools out; tools requests
//! answer 200 with well-formed messages and chunks; `--reasoning-parser qwen3` moves a reply with
//! no `</think>` into `reasoning_content` (thinking on) and leaves it alone with
//! `separate_reasoning: false`; unknown parser names are start-up errors; `tool_choice`
//! `required` or a named function constrains the reply, so even this model calls. The parsing of
//! calls in a fixed reply is unit-tested in `strata-server` (`parsers/tests.rs`).

mod serve_common;

use serde_json::{json, Value};
use serve_common::{bin, json_lines, MadeModel, Server};
use std::process::Command;
use std::time::{Duration, Instant};

const TEMPLATE: &str = concat!(
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }}={{ t | tojson }};{% endfor %}\n{% endif %}",
    "{% for m in messages %}<{{ m.role }}>",
    "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}",
    "{% elif m.role == 'tool' %}RESULT {{ m.tool_call_id }} {{ m.content }}",
    "{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
    "{% if enable_thinking is defined and not enable_thinking %}NOTHINK{% endif %}<assistant>",
);

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn conversation() -> Value {
    json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C and sunny"}
    ])
}

/// Waits (up to 5 s) until the server's log has a line containing `needle`; returns it.
fn log_line(s: &Server, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(l) = s.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no log line with {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `s` as the request log writes it inside a quoted string.
fn quoted(s: &str) -> String {
    format!("{s:?}").trim_matches('"').to_string()
}

async fn chat(s: &Server, body: Value) -> Value {
    let (st, v) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant", "{v}");
    assert!(c["message"]["content"].is_string(), "{v}");
    assert!(
        c["message"].get("tool_calls").is_none(),
        "the random model made a call? {v}"
    );
    assert!(
        ["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()),
        "{v}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_render_into_the_prompt_and_parsers_shape_the_reply() {
    let m = MadeModel::new("llama", "tiny");
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("tools.jinja");
    std::fs::write(&t, TEMPLATE).unwrap();
    let flags = [
        "--chat-template",
        t.to_str().unwrap(),
        "--tool-call-parser",
        "qwen25",
        "--reasoning-parser",
        "qwen3",
        "--log-requests",
        "--log-requests-level",
        "3",
    ];
    let s = Server::start(m.path(), &flags);

    // Tools, the call history and a kwarg reach the template.
    let body = json!({"messages": conversation(), "tools": tools(), "max_tokens": 6, "temperature": 0,
        "chat_template_kwargs": {"enable_thinking": false}, "rid": "with-tools"});
    let v = chat(&s, body.clone()).await;
    let line = log_line(&s, "Finish: rid=with-tools");
    // Python's json.dumps spacing and the client's key order, as SGLang renders the dicts.
    let tool_json = r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#;
    for want in [
        format!("TOOLS:get_weather={tool_json};"),
        "<user>Weather in Paris?".to_string(),
        r#"<assistant>CALL get_weather {"city": "Paris"}"#.to_string(),
        "<tool>RESULT call_1 21C and sunny".to_string(),
        "NOTHINK<assistant>".to_string(),
    ] {
        assert!(line.contains(&quoted(&want)), "{want:?} not in {line}");
    }
    // Thinking off and no <think>: the reply stays content.
    let with_tools = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        v["choices"][0]["message"]["reasoning_content"].is_null(),
        "{v}"
    );

    // tool_choice "none": the template gets no tools, so the prompt is shorter.
    let mut none = body.clone();
    none["tool_choice"] = json!("none");
    let v = chat(&s, none).await;
    let without = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(without + 20 < with_tools, "{without} vs {with_tools}");
    // A named tool is accepted; an unknown one, bad history arguments and bad tools are 400s.
    let mut named = body.clone();
    named["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    assert_eq!(
        chat(&s, named).await["usage"]["prompt_tokens"].as_u64(),
        Some(with_tools)
    );
    for (field, val) in [
        (
            "tool_choice",
            json!({"type": "function", "function": {"name": "nope"}}),
        ),
        ("tool_choice", json!("sometimes")),
        ("tools", json!([{"type": "function"}])),
    ] {
        let mut b = body.clone();
        b[field] = val;
        let (st, e) = s.post("/v1/chat/completions", &b).await;
        assert_eq!(st, 400, "{field}: {e}");
    }
    let mut b = body.clone();
    b["messages"][1]["tool_calls"][0]["function"]["arguments"] = json!("{not json");
    let (st, e) = s.post("/v1/chat/completions", &b).await;
    assert_eq!(st, 400, "{e}");
    assert!(e.to_string().contains("must be valid JSON"), "{e}");

    // Reasoning: the same greedy reply, as content without separation, as reasoning with
    // qwen3's thinking on (no </think> in it: the reply was cut while thinking).
    let ask = |sep: bool| {
        json!({"messages": [{"role": "user", "content": "Think about the sea"}],
        "max_tokens": 8, "temperature": 0, "separate_reasoning": sep})
    };
    let plain = chat(&s, ask(false)).await["choices"][0]["message"].clone();
    let text = plain["content"].as_str().unwrap().to_string();
    assert!(plain["reasoning_content"].is_null());
    let split = chat(&s, ask(true)).await["choices"][0]["message"].clone();
    let reasoning = split["reasoning_content"].as_str().unwrap_or("");
    assert_eq!(
        format!("{reasoning}{}", split["content"].as_str().unwrap()),
        text
    );
    if !["<think", "</think", "<tool_call"]
        .iter()
        .any(|m| text.contains(m))
    {
        assert_eq!(
            (reasoning, split["content"].as_str().unwrap()),
            (text.as_str(), "")
        );
    }

    // Streamed with tools: role first, only known fields, one finish, the same text.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let chunks = json_lines(&s.stream("/v1/chat/completions", &sbody).await);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut streamed = String::new();
    for (i, c) in chunks.iter().enumerate() {
        let ch = &c["choices"][0];
        assert_eq!(c["object"], "chat.completion.chunk");
        for k in ch["delta"].as_object().unwrap().keys() {
            assert!(
                ["role", "content", "reasoning_content", "tool_calls"].contains(&k.as_str()),
                "{c}"
            );
        }
        streamed += ch["delta"]["content"].as_str().unwrap_or("");
        assert_eq!(ch["finish_reason"].is_null(), i + 1 < chunks.len(), "{c}");
    }
    let v = chat(&s, body).await;
    assert_eq!(
        streamed,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // Streamed reasoning adds up to the reply too.
    let mut sask = ask(true);
    sask["stream"] = json!(true);
    let events = s.stream("/v1/chat/completions", &sask).await;
    let mut all = String::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let d = &serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"];
        all += d["reasoning_content"].as_str().unwrap_or("");
        all += d["content"].as_str().unwrap_or("");
    }
    assert_eq!(all, text);
}

/// Tools whose arguments are bounded (the random model must finish them within the budget).
fn bounded_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
            "required": ["city", "days"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
            "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"]}}}
    ])
}

/// The calls of a chat answer as (name, arguments as JSON), checked against `bounded_tools`.
fn checked_calls(v: &Value) -> Vec<(String, Value)> {
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{v}");
    let calls = c["message"]["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(!calls.is_empty(), "{v}");
    calls
        .iter()
        .map(|call| {
            assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
            let name = call["function"]["name"].as_str().unwrap().to_string();
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            match name.as_str() {
                "get_weather" => {
                    assert!(
                        args["city"].as_str().unwrap().chars().count() <= 8,
                        "{args}"
                    );
                    assert!(args["days"].is_i64() || args["days"].is_u64(), "{args}");
                }
                "get_time" => assert!(["utc", "cet"].contains(&args["zone"].as_str().unwrap())),
                other => panic!("unknown function {other}"),
            }
            (name, args)
        })
        .collect()
}

/// `tool_choice` `required` and a named function constrain the reply to calls (SGLang's JSON
/// array schema), with or without `--tool-call-parser`: the random model then always calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tool_choice_always_calls() {
    let m = MadeModel::new("llama", "tiny");
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("tools.jinja");
    std::fs::write(&t, TEMPLATE).unwrap();
    let s = Server::start(m.path(), &["--chat-template", t.to_str().unwrap()]);
    let ask = |choice: Value| {
        json!({"messages": [{"role": "user", "content": "Weather or time?"}], "tools": bounded_tools(),
            "tool_choice": choice, "max_tokens": 400, "temperature": 0})
    };
    let (st, v) = s
        .post("/v1/chat/completions", &ask(json!("required")))
        .await;
    assert_eq!(st, 200, "{v}");
    let required = checked_calls(&v);
    // Named, one call at most: that function, once.
    let mut named = ask(json!({"type": "function", "function": {"name": "get_time"}}));
    named["parallel_tool_calls"] = json!(false);
    let (st, v) = s.post("/v1/chat/completions", &named).await;
    assert_eq!(st, 200, "{v}");
    let calls = checked_calls(&v);
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0].0, "get_time");
    // Sampled, several seeds: always well-formed calls.
    for seed in 0..3 {
        let mut b = ask(json!("required"));
        b["temperature"] = json!(1.0);
        b["seed"] = json!(seed);
        let (st, v) = s.post("/v1/chat/completions", &b).await;
        assert_eq!(st, 200, "{v}");
        checked_calls(&v);
    }
    // Streamed: the same calls arrive in the chunks' tool_calls.
    let mut sb = ask(json!("required"));
    sb["stream"] = json!(true);
    let events = s.stream("/v1/chat/completions", &sb).await;
    let mut streamed = Vec::new();
    let mut finish = Value::Null;
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let c = &serde_json::from_str::<Value>(e).unwrap()["choices"][0];
        for call in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            streamed.push((call["function"]["name"].as_str().unwrap().to_string(), args));
        }
        if !c["finish_reason"].is_null() {
            finish = c["finish_reason"].clone();
        }
    }
    assert_eq!(streamed, required);
    assert_eq!(finish, "tool_calls");
    // Another constraint beside a forced choice is a 400.
    let mut both = ask(json!("required"));
    both["regex"] = json!("a+");
    let (st, v) = s.post("/v1/chat/completions", &both).await;
    assert_eq!(st, 400, "{v}");
}

#[test]
fn unknown_parser_names_are_start_up_errors() {
    let m = MadeModel::new("llama", "tiny");
    for (flag, name, known) in [
        (
            "--tool-call-parser",
            "bogus",
            "hermes, kimi_k2, llama3, mistral, pythonic, qwen25, qwen3_coder",
        ),
        (
            "--reasoning-parser",
            "r2",
            "deepseek-r1, deepseek-v3, glm45, interns1, kimi, kimi_k2, minimax, qwen3, qwen3-thinking, step3, step3p5",
        ),
    ] {
        let out = Command::new(bin())
            .args(["serve", "--model-path"])
            .arg(m.path())
            .args([flag, name, "--port", "0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{flag} {name}")) && err.contains(known),
            "{err}"
        );
    }
}
