//! End-to-end: SGLang's request-handling flags on `strata serve` (real processes on a made
//! model). `--chat-template FILE` changes the prompt the model sees (the request log shows it,
//! the prompt token count follows it); a name that is neither a file nor one of the
//! checkpoint's templates is a start-up error. `--max-queued-requests`: a burst against one
//! running and one waiting place gets 503 "The request queue is full." for the excess while the
//! others complete. `--allow-auto-truncate`: a prompt too long for the context is cut to its head
//! instead of refused. `--log-requests`: one line per finished request, with the level's fields.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{bin, MadeModel, Server};
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits (up to 5 s) until the server's log has a line containing `needle`; returns it.
fn log_line(s: &Server, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(l) = s.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no log line with {needle:?}: {:?}",
            s.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn chat(s: &Server, content: &str) -> Value {
    let body = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0});
    let (st, v) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_template_file_changes_the_prompt_and_requests_are_logged() {
    let m = MadeModel::new("llama", "tiny");
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once.jinja");
    std::fs::write(&once, "<<{{ messages[0].content }}>>\n").unwrap();
    let twice = dir.path().join("twice.jinja");
    std::fs::write(
        &twice,
        "<<{{ messages[0].content }}>> <<{{ messages[0].content }}>>",
    )
    .unwrap();
    let content = "Tell me a story about the sea";

    // The checkpoint's template (ChatML-like with BOS); nothing logged without --log-requests.
    let plain = {
        let s = Server::start(m.path(), &[]);
        let v = chat(&s, content).await;
        assert_eq!(s.log_count("Finish: rid="), 0);
        v["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let p_once = {
        let s = Server::start(
            m.path(),
            &["--chat-template", once.to_str().unwrap(), "--log-requests"],
        );
        let v = chat(&s, content).await;
        // Level 2 (the default): the prompt as the model saw it, i.e. rendered by the file.
        let line = log_line(&s, "Finish: rid=");
        assert!(line.contains(&format!("input=\"<<{content}>>\"")), "{line}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(line.contains(&format!("output={text:?}")), "{line}");
        assert!(line.contains("sampling_params=") && line.contains("completion_tokens=4"));
        assert!(line.contains(r#""type":"length""#), "{line}");
        // /generate requests are logged too, under their rid.
        let body =
            json!({"text": "Hello", "rid": "log-me", "sampling_params": {"max_new_tokens": 2}});
        let (st, _) = s.post("/generate", &body).await;
        assert_eq!(st, 200);
        let line = log_line(&s, "Finish: rid=log-me");
        assert!(
            line.contains("prompt_tokens=") && line.contains("input="),
            "{line}"
        );
        v["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let p_twice = {
        let s = Server::start(m.path(), &["--chat-template", twice.to_str().unwrap()]);
        chat(&s, content).await["usage"]["prompt_tokens"]
            .as_u64()
            .unwrap()
    };
    assert_ne!(p_once, plain, "the file did not replace the template");
    assert!(
        p_twice > 2 * p_once - 4 && p_twice < 2 * p_once + 4,
        "{p_once} vs {p_twice}"
    );

    // SGLang's built-in conversation template `chatml`: the prompt is its text (the default
    // system message, the turns, the opened answer) as the request log shows, tokenised with
    // the special tokens; its stop strings join the request's.
    {
        let s = Server::start(m.path(), &["--chat-template", "chatml", "--log-requests"]);
        let v = chat(&s, content).await;
        let rendered = format!(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
        );
        let line = log_line(&s, "Finish: rid=");
        // (after the BOS the special tokens put first)
        let escaped = format!("{rendered:?}");
        assert!(line.contains(&escaped[1..]), "{line}");
        let (st, t) = s
            .post(
                "/tokenize",
                &json!({"prompt": rendered, "add_special_tokens": true}),
            )
            .await;
        assert_eq!(st, 200, "{t}");
        assert_eq!(v["usage"]["prompt_tokens"], t["count"], "{v} vs {t}");
        assert!(
            line.contains("<|im_end|>") && line.contains("<|endoftext|>"),
            "{line}"
        );
        // A tool result has no turn in a conversation template: a 400, as in SGLang.
        let (st, e) = s
            .post(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": "x"},
                    {"role": "tool", "content": "y", "tool_call_id": "c"}], "max_tokens": 2}),
            )
            .await;
        assert_eq!(st, 400, "{e}");
    }

    // Neither a file, a built-in name nor a template of the checkpoint: a start-up error naming
    // the flag.
    let out = Command::new(bin())
        .args(["serve", "--model-path"])
        .arg(m.path())
        .args(["--chat-template", "chatml-9", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--chat-template chatml-9: not a file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queued_requests_refuses_the_excess_of_a_burst() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(
        m.path(),
        &["--max-running-requests", "1", "--max-queued-requests", "1"],
    );
    let body = json!({"text": "Once upon a time", "sampling_params": {"temperature": 0, "max_new_tokens": 256, "ignore_eos": true}});
    let burst = (0..10).map(|_| s.post("/generate", &body));
    let results = futures::future::join_all(burst).await;
    let (mut ok, mut refused) = (0, 0);
    for (st, v) in &results {
        match st {
            200 => {
                assert_eq!(v["meta_info"]["completion_tokens"], 256, "{v}");
                ok += 1;
            }
            503 => {
                assert_eq!(v["error"]["message"], "The request queue is full.", "{v}");
                assert_eq!(v["error"]["code"], 503);
                refused += 1;
            }
            _ => panic!("status {st}: {v}"),
        }
    }
    eprintln!("burst: {ok} served, {refused} refused");
    // One runs and one waits at a time: the burst arrives while the first runs.
    assert!(ok >= 1 && refused >= 1, "{ok} served, {refused} refused");
    // The chat endpoint answers the same way, and the server keeps serving.
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 256, "ignore_eos": true});
    let burst = (0..6).map(|_| s.post("/v1/chat/completions", &chat));
    let codes: Vec<u16> = futures::future::join_all(burst)
        .await
        .into_iter()
        .map(|(st, _)| st)
        .collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert!(codes.contains(&503), "{codes:?}");
    let v = s.greedy("Hello", 3).await;
    assert_eq!(v["meta_info"]["completion_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_auto_truncate_cuts_a_long_prompt_instead_of_refusing_it() {
    let m = MadeModel::new("llama", "tiny");
    let long = "word ".repeat(200);
    let body = json!({"text": long, "sampling_params": {"temperature": 0, "max_new_tokens": 16, "ignore_eos": true}});
    let chat = json!({"messages": [{"role": "user", "content": long}], "max_tokens": 16, "temperature": 0});
    {
        let s = Server::start(m.path(), &["--context-length", "64"]);
        let (st, v) = s.post("/generate", &body).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context length (64 tokens)"));
        let (st, _) = s.post("/v1/chat/completions", &chat).await;
        assert_eq!(st, 400);
    }
    let s = Server::start(
        m.path(),
        &[
            "--context-length",
            "64",
            "--allow-auto-truncate",
            "--log-requests",
            "--log-requests-level",
            "0",
        ],
    );
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    // SGLang's length, context - 1 - 5 tokens; the rest of the context is left to generate.
    assert_eq!(v["meta_info"]["prompt_tokens"], 58, "{v}");
    assert_eq!(v["meta_info"]["completion_tokens"], 6, "{v}");
    // The head is kept: the cut prompt starts as the whole one does, the tail is gone.
    let prompt_ids = |v: &Value| -> Vec<u64> {
        v["meta_info"]["input_token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[1].as_u64().unwrap())
            .collect()
    };
    let ask = |text: &str| {
        json!({"text": text, "return_logprob": true, "logprob_start_len": 0,
            "sampling_params": {"max_new_tokens": 1}})
    };
    let head = "alpha beta word word word";
    let (st, cut) = s
        .post(
            "/generate",
            &ask(&format!("{head}{}omega", " word".repeat(200))),
        )
        .await;
    assert_eq!(st, 200, "{cut}");
    let (cut, head) = (
        prompt_ids(&cut),
        prompt_ids(&s.post("/generate", &ask(head)).await.1),
    );
    assert_eq!(cut.len(), 58);
    assert_eq!(
        cut[..head.len()],
        head[..],
        "the cut prompt does not start with the head"
    );
    let (st, v) = s.post("/v1/chat/completions", &chat).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 58, "{v}");
    assert!(s.log_count("Truncating the input to 58 tokens") >= 2);
    // Level 0: metadata only.
    let line = log_line(&s, "Finish: rid=");
    assert!(line.contains("prompt_tokens=58"), "{line}");
    assert!(
        !line.contains("sampling_params=") && !line.contains("input="),
        "{line}"
    );
}

/// `continue_final_message` (SGLang's chat field): a final assistant message is continued, not
/// answered: the conversation before it rendered with the generation prompt, then the message's
/// tokens (the prompt is that long). Without the field the message is a turn of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_final_message_continues_the_assistant_turn() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let user = json!({"role": "user", "content": "Tell me a story about the sea"});
    let prefix = "Once upon a time";
    let chat = |msgs: Value, cont: Option<bool>| {
        let mut b = json!({"messages": msgs, "max_tokens": 6, "temperature": 0});
        if let Some(c) = cont {
            b["continue_final_message"] = json!(c);
        }
        b
    };
    let (st, alone) = s
        .post("/v1/chat/completions", &chat(json!([user]), None))
        .await;
    assert_eq!(st, 200, "{alone}");
    let p_alone = alone["usage"]["prompt_tokens"].as_u64().unwrap();
    let (st, t) = s
        .post(
            "/v1/tokenize",
            &json!({"prompt": prefix, "add_special_tokens": false}),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    let n_prefix = t["count"].as_u64().unwrap();
    let msgs = json!([user, {"role": "assistant", "content": prefix}]);
    let (st, cont) = s
        .post("/v1/chat/completions", &chat(msgs.clone(), Some(true)))
        .await;
    assert_eq!(st, 200, "{cont}");
    assert_eq!(
        cont["usage"]["prompt_tokens"].as_u64().unwrap(),
        p_alone + n_prefix,
        "{cont}"
    );
    let (st, turn) = s.post("/v1/chat/completions", &chat(msgs, None)).await;
    assert_eq!(st, 200, "{turn}");
    assert_ne!(
        turn["usage"]["prompt_tokens"], cont["usage"]["prompt_tokens"],
        "without the field the assistant message is a whole turn"
    );
}

/// The events of a streamed `/v1/responses` request.
async fn response_events(s: &Server, body: &Value) -> Vec<Value> {
    s.stream("/v1/responses", body)
        .await
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// `/v1/responses` (OpenAI's Responses API over the chat route): the text is the chat
/// completion's for the same messages, `usage` counts the same tokens, a cut answer is
/// `incomplete`; streamed, the `response.output_text.delta` events add up to it and the stream
/// ends with the whole response; message items with content parts, `text.format` JSON schema;
/// unstored features are 400s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_matches_the_chat_completion() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let (st, chat) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tell me a story"}], "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{chat}");
    let text = chat["choices"][0]["message"]["content"].as_str().unwrap();
    let req = json!({"instructions": "Be brief.", "input": "Tell me a story",
        "max_output_tokens": 8, "temperature": 0});
    let (st, r) = s.post("/v1/responses", &req).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "response", "{r}");
    assert_eq!(r["status"], "incomplete", "{r}");
    assert_eq!(
        r["incomplete_details"]["reason"], "max_output_tokens",
        "{r}"
    );
    assert_eq!(r["output"][0]["type"], "message", "{r}");
    assert_eq!(r["output"][0]["content"][0]["text"], text, "{r}");
    assert_eq!(r["usage"]["output_tokens"], 8, "{r}");
    assert_eq!(
        r["usage"]["input_tokens"], chat["usage"]["prompt_tokens"],
        "{r}"
    );
    // The same as message items with content parts.
    let items = json!({"input": [{"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story"}]}],
        "max_output_tokens": 8, "temperature": 0});
    let (st, r2) = s.post("/v1/responses", &items).await;
    assert_eq!(st, 200, "{r2}");
    assert_eq!(r2["output"][0]["content"][0]["text"], text, "{r2}");
    // Streamed: created first, the deltas add up, the last event has the whole response.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let events = response_events(&s, &sreq).await;
    assert_eq!(events[0]["type"], "response.created", "{events:?}");
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, text);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete", "{last}");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"], text,
        "{last}"
    );
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
    // Structured output through text.format.
    let (st, j) = s
        .post(
            "/v1/responses",
            &json!({"input": "Describe someone", "max_output_tokens": 200, "temperature": 0,
            "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object",
                "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}}),
        )
        .await;
    assert_eq!(st, 200, "{j}");
    let out: Value =
        serde_json::from_str(j["output"][0]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(out["ok"].is_boolean(), "{j}");
    // Reasoning (deepseek-r1: a reply without </think> is all reasoning) becomes a reasoning
    // item, streamed as reasoning_text deltas.
    let r1 = Server::start(m.path(), &["--reasoning-parser", "deepseek-r1"]);
    let (st, rc) = r1
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 8,
            "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{rc}");
    let thought = rc["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap();
    let rreq = json!({"input": "Tell me a story", "max_output_tokens": 8, "temperature": 0});
    let (st, rr) = r1.post("/v1/responses", &rreq).await;
    assert_eq!(st, 200, "{rr}");
    assert_eq!(rr["output"][0]["type"], "reasoning", "{rr}");
    assert_eq!(rr["output"][0]["content"][0]["text"], thought, "{rr}");
    let mut rs = rreq.clone();
    rs["stream"] = json!(true);
    let events = response_events(&r1, &rs).await;
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "response.reasoning_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, thought, "{events:?}");
    // SGLang's meta_info.reasoning_tokens: a /generate reply that must reason (no </think> in
    // 8 tokens of this model) counts every token; one that need not counts none; a chat whose
    // template forces the reasoning (deepseek-r1) counts under return_meta_info.
    for (require, want) in [(json!(true), 8), (json!(false), 0), (Value::Null, 0)] {
        let body = json!({"text": "Tell me a story", "require_reasoning": require,
            "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": true}});
        let (st, g) = r1.post("/generate", &body).await;
        assert_eq!(st, 200, "{g}");
        assert_eq!(
            g["meta_info"]["reasoning_tokens"], want,
            "require {require}: {g}"
        );
    }
    let (st, rc) = r1
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 8,
            "temperature": 0, "return_meta_info": true}),
        )
        .await;
    assert_eq!(st, 200, "{rc}");
    let toks = rc["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(
        rc["choices"][0]["meta_info"]["reasoning_tokens"], toks,
        "{rc}"
    );
    drop(r1);
    // Conversation objects are 400s, an unknown previous response a 404.
    for (bad, want) in [
        (json!({"input": "x", "conversation": "conv_1"}), 400),
        (json!({"input": 3}), 400),
        (
            json!({"input": "x", "previous_response_id": "resp_none"}),
            404,
        ),
    ] {
        let (st, v) = s.post("/v1/responses", &bad).await;
        assert_eq!(st, want, "{bad} -> {v}");
    }
}

/// Stored responses: `previous_response_id` continues the conversation exactly as the chat
/// completion of the whole history (the earlier output as the assistant turn, the earlier
/// instructions not carried over), streamed responses are stored too, `GET` returns the stored
/// object, `DELETE` forgets it, `store: false` keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_stored_and_continued() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let first = json!({"instructions": "Be brief.", "input": "Tell me a story",
        "max_output_tokens": 6, "temperature": 0});
    let (st, r1) = s.post("/v1/responses", &first).await;
    assert_eq!(st, 200, "{r1}");
    assert_eq!(r1["store"], true, "{r1}");
    let id1 = r1["id"].as_str().unwrap().to_string();
    let said = r1["output"][0]["content"][0]["text"].as_str().unwrap();
    let (st, got) = s.get(&format!("/v1/responses/{id1}")).await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(serde_json::from_str::<Value>(&got).unwrap(), r1);
    // The continuation equals the chat completion of the whole conversation.
    let next = json!({"previous_response_id": id1, "input": "And then?", "max_output_tokens": 6,
        "temperature": 0});
    let (st, r2) = s.post("/v1/responses", &next).await;
    assert_eq!(st, 200, "{r2}");
    assert_eq!(r2["previous_response_id"], id1.as_str(), "{r2}");
    let (st, chat) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Tell me a story"},
                {"role": "assistant", "content": said}, {"role": "user", "content": "And then?"}],
                "max_tokens": 6, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{chat}");
    assert_eq!(
        r2["output"][0]["content"][0]["text"], chat["choices"][0]["message"]["content"],
        "{r2}"
    );
    assert_eq!(r2["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
    // A streamed continuation of that is stored with its final object.
    let mut third = json!({"previous_response_id": r2["id"], "input": "Why?",
        "max_output_tokens": 4, "temperature": 0, "stream": true});
    let events = response_events(&s, &third).await;
    let last = &events.last().unwrap()["response"];
    let (st, got) = s
        .get(&format!("/v1/responses/{}", last["id"].as_str().unwrap()))
        .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(&serde_json::from_str::<Value>(&got).unwrap(), last);
    // store: false keeps nothing; DELETE forgets a stored one (then 404s).
    third["stream"] = json!(false);
    third["store"] = json!(false);
    let (st, r3) = s.post("/v1/responses", &third).await;
    assert_eq!(st, 200, "{r3}");
    assert_eq!(r3["store"], false, "{r3}");
    let (st, _) = s
        .get(&format!("/v1/responses/{}", r3["id"].as_str().unwrap()))
        .await;
    assert_eq!(st, 404);
    let (st, del) = s.delete(&format!("/v1/responses/{id1}")).await;
    assert_eq!(st, 200, "{del}");
    assert!(del.contains("\"deleted\":true"), "{del}");
    let (st, _) = s.get(&format!("/v1/responses/{id1}")).await;
    assert_eq!(st, 404);
    let (st, _) = s.delete(&format!("/v1/responses/{id1}")).await;
    assert_eq!(st, 404);
    let (st, v) = s.post("/v1/responses", &next).await;
    assert_eq!(st, 404, "{v}");
    // background: queued at once, then polled to the same answer as in the foreground.
    let mut bg = first.clone();
    bg["background"] = json!(true);
    let (st, q) = s.post("/v1/responses", &bg).await;
    assert_eq!(st, 200, "{q}");
    assert_eq!(q["status"], "queued", "{q}");
    let bid = q["id"].as_str().unwrap().to_string();
    let done = poll(&s, &bid, |r| {
        !matches!(r["status"].as_str(), Some("queued" | "in_progress"))
    })
    .await;
    assert_eq!(done["status"], "incomplete", "{done}");
    assert_eq!(
        done["output"][0]["content"][0]["text"], r1["output"][0]["content"][0]["text"],
        "{done}"
    );
    // A completed one cannot be cancelled; a long one can, and stays cancelled.
    let (st, _) = s
        .post(&format!("/v1/responses/{bid}/cancel"), &json!({}))
        .await;
    assert_eq!(st, 400);
    let mut long = bg.clone();
    long["max_output_tokens"] = json!(4000);
    long["input"] = json!("Write a very long story");
    let (st, q2) = s.post("/v1/responses", &long).await;
    assert_eq!(st, 200, "{q2}");
    let lid = q2["id"].as_str().unwrap().to_string();
    let (st, c) = s
        .post(&format!("/v1/responses/{lid}/cancel"), &json!({}))
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["status"], "cancelled", "{c}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, got) = s.get(&format!("/v1/responses/{lid}")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&got).unwrap()["status"],
        "cancelled"
    );
    // Not stored or streamed: 400s.
    for bad in [
        json!({"input": "x", "background": true, "store": false}),
        json!({"input": "x", "background": true, "stream": true}),
    ] {
        let (st, v) = s.post("/v1/responses", &bad).await;
        assert_eq!(st, 400, "{bad} -> {v}");
    }
}

/// Polls `GET /v1/responses/{id}` (up to 30 s) until `done` holds; returns that response.
async fn poll(s: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (st, body) = s.get(&format!("/v1/responses/{id}")).await;
        assert_eq!(st, 200, "{body}");
        let r: Value = serde_json::from_str(&body).unwrap();
        if done(&r) {
            return r;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_priorities_reach_the_scheduler() {
    let m = MadeModel::new("llama", "tiny");
    // Without priority scheduling, --abort-on-priority-when-disabled aborts what sets one.
    let s = Server::start(m.path(), &["--abort-on-priority-when-disabled"]);
    let body = |p: Option<i64>| {
        // (ignore_eos: the default temperature of 1 may draw EOS before the length limit)
        let mut b =
            json!({"text": "Hello", "sampling_params": {"max_new_tokens": 3, "ignore_eos": true}});
        if let Some(p) = p {
            b["priority"] = json!(p);
        }
        b
    };
    let (st, v) = s.post("/generate", &body(None)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["meta_info"]["finish_reason"]["type"], "length", "{v}");
    let (st, v) = s.post("/generate", &body(Some(3))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["meta_info"]["finish_reason"]["type"], "abort", "{v}");
    let msg = v["meta_info"]["finish_reason"]["message"].as_str().unwrap();
    assert!(msg.contains("--enable-priority-scheduling"), "{msg}");
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "priority": 1}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "abort", "{v}");
    drop(s);
    // With it, priorities (any sign, per prompt in a batch) are served.
    let s = Server::start(
        m.path(),
        &[
            "--enable-priority-scheduling",
            "--schedule-low-priority-values-first",
            "--default-priority-value",
            "-1",
            "--priority-scheduling-preemption-threshold",
            "5",
        ],
    );
    let (st, v) = s
        .post(
            "/generate",
            &json!({"text": ["a", "b"], "priority": [-7, 4], "sampling_params": {"max_new_tokens": 2}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let (st, v) = s
        .post(
            "/generate",
            &json!({"text": ["a", "b"], "priority": [1], "sampling_params": {"max_new_tokens": 2}}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
}
