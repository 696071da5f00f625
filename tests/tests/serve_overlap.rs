//! End-to-end: overlap scheduling through the HTTP API (real processes on a made model). One
//! server runs with `STRATA_OVERLAP_SCHEDULE=1` (rounds run ahead of the forward in flight, the
//! CPU runner's finished forwards held as if queued), the other with
//! `--disable-overlap-schedule`; the same concurrent mix of requests (greedy and seeded, stop
//! strings and stop token ids met mid-stream, length limits of 0 and 1, logprobs, a regex
//! constraint and a seeded, penalised JSON schema, `n = 2`, a logit bias with min_new_tokens, penalties, a streamed one) gets the
//! same answers from both, and the flag shows in
//! `/get_server_info`.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};

/// The parts of a `/generate` answer that must not depend on the schedule.
fn essence(v: &Value) -> Value {
    let one = |r: &Value| {
        json!({
            "text": r["text"],
            "output_ids": r["output_ids"],
            "finish_reason": r["meta_info"]["finish_reason"],
            "completion_tokens": r["meta_info"]["completion_tokens"],
            "output_token_logprobs": r["meta_info"]["output_token_logprobs"],
        })
    };
    match v.as_array() {
        Some(a) => Value::Array(a.iter().map(one).collect()),
        None => one(v),
    }
}

async fn answers(s: &Server, bodies: &[Value]) -> Vec<Value> {
    let posts = bodies.iter().map(|b| s.post("/generate", b));
    futures::future::join_all(posts)
        .await
        .into_iter()
        .zip(bodies)
        .map(|((st, v), b)| {
            assert_eq!(st, 200, "{b}: {v}");
            essence(&v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_scheduling_answers_as_the_synchronous_schedule() {
    let m = MadeModel::new("llama", "tiny");
    let flags = [
        "--chunked-prefill-size",
        "16",
        "--max-running-requests",
        "6",
    ];
    let on = Server::start_env(m.path(), &flags, &[("STRATA_OVERLAP_SCHEDULE", "1")]);
    let mut off_flags = flags.to_vec();
    off_flags.push("--disable-overlap-schedule");
    let off = Server::start(m.path(), &off_flags);

    let (_, info) = off.get("/get_server_info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["disable_overlap_schedule"], true, "{info}");

    // A stop string from the middle of a greedy answer, and a token id from it.
    let base = off.greedy("The quick brown fox jumps over", 24).await;
    let text = base["text"].as_str().unwrap().to_string();
    let stop: String = text
        .chars()
        .skip(text.chars().count() / 2)
        .take(3)
        .collect();
    let stop_id = base["output_ids"][5].clone();
    println!("stop string {stop:?}, stop token {stop_id}");

    let long = "once upon a time there was a small town by the sea where ".repeat(3);
    let mut bodies = Vec::new();
    for (i, n) in [1, 9, 17, 30].into_iter().enumerate() {
        bodies.push(json!({"text": format!("{i} {long}"), "sampling_params":
            {"temperature": 0, "max_new_tokens": n, "ignore_eos": true}}));
    }
    bodies.push(
        json!({"text": "The quick brown fox jumps over", "sampling_params":
        {"temperature": 0, "max_new_tokens": 24, "stop": [stop]}}),
    );
    bodies.push(
        json!({"text": "The quick brown fox jumps over", "sampling_params":
        {"temperature": 0, "max_new_tokens": 24, "stop_token_ids": [stop_id]}}),
    );
    bodies.push(json!({"text": "Seeded", "sampling_params":
        {"temperature": 0.9, "top_p": 0.9, "seed": 17, "max_new_tokens": 20, "ignore_eos": true}}));
    bodies.push(json!({"text": "Zero", "sampling_params": {"max_new_tokens": 0}}));
    bodies.push(
        json!({"text": "Logprobs please", "return_logprob": true, "top_logprobs_num": 2,
        "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": true}}),
    );
    bodies.push(json!({"text": "Digits:", "sampling_params":
        {"temperature": 0, "max_new_tokens": 12, "regex": "[0-9]{3}-[a-z]{2,5}"}}));
    // Grammar rows run ahead too: their forward starts first, their masks come after the
    // token in flight (seeded and penalised, a JSON schema).
    bodies.push(json!({"text": "JSON:", "sampling_params":
        {"temperature": 0.9, "seed": 11, "frequency_penalty": 0.3, "max_new_tokens": 40,
         "json_schema": "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"string\", \"maxLength\": 8}}, \"required\": [\"a\", \"b\"]}"}}));
    bodies.push(json!({"text": "Two copies", "sampling_params":
        {"temperature": 0.8, "seed": 5, "n": 2, "max_new_tokens": 10, "ignore_eos": true}}));
    // Sampled on the device under overlap (no penalty reads the output): a logit bias towards
    // the stop token, held back by min_new_tokens for three tokens.
    bodies.push(json!({"text": "Biased", "sampling_params":
        {"temperature": 1.0, "top_k": 40, "seed": 3, "max_new_tokens": 24, "min_new_tokens": 3,
         "stop_token_ids": [stop_id], "logit_bias": {stop_id.to_string(): 3.0}}}));
    // Penalised rows run ahead too: the token fed forward is counted by the runner.
    bodies.push(json!({"text": "Penalised", "sampling_params":
        {"temperature": 0, "frequency_penalty": 0.7, "max_new_tokens": 14, "ignore_eos": true}}));
    bodies.push(json!({"text": "Penalised and sampled", "sampling_params":
        {"temperature": 0.8, "seed": 9, "presence_penalty": 0.9, "repetition_penalty": 1.4,
         "max_new_tokens": 18, "ignore_eos": true}}));

    let want = answers(&off, &bodies).await;
    let got = answers(&on, &bodies).await;
    for ((b, w), g) in bodies.iter().zip(&want).zip(&got) {
        assert_eq!(w, g, "request {b}");
    }
    // The stops were met mid-stream, with nothing past them.
    for k in [4, 5] {
        assert_ne!(got[k]["finish_reason"]["type"], "length", "{}", got[k]);
        let n = got[k]["completion_tokens"].as_u64().unwrap() as usize;
        assert!(n < 24, "{}", got[k]);
        assert_eq!(got[k]["output_ids"].as_array().unwrap().len(), n);
    }

    // Streamed under overlap: the chunks add up to the answer.
    let body = json!({"text": format!("7 {long}"), "stream": true, "sampling_params":
        {"temperature": 0, "max_new_tokens": 15, "ignore_eos": true}});
    let evs = on.stream("/generate", &body).await;
    let last: Value = evs
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .next_back()
        .expect("chunks");
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let (_, whole) = off.post("/generate", &plain).await;
    assert_eq!(last["text"], whole["text"], "{evs:?}");
}
