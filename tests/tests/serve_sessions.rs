//! SGLang's sessions on a real `strata serve` (CPU): a request continuing an earlier one of its
//! session runs that request's prompt and output followed by the new input (BOS dropped), so its
//! greedy answer equals a plain request for that concatenation, and the shared history comes
//! from the prefix cache; `drop_previous_output`, `offset`, streamed members, `replace`, and the
//! 400s (unknown session, unknown or unfinished request, a reopened id, after close).

mod serve_common;

use serde_json::{json, Value};
use serve_common::{ids, MadeModel, Server};

async fn tokens(s: &Server, text: &str, special: bool) -> Vec<u64> {
    let (st, v) = s
        .post(
            "/tokenize",
            &json!({"prompt": text, "add_special_tokens": special}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    ids(&v["tokens"])
}

async fn gen(s: &Server, body: Value) -> (u16, Value) {
    let mut body = body;
    body["sampling_params"] = json!({"temperature": 0, "max_new_tokens": 8, "ignore_eos": true});
    s.post("/generate", &body).await
}

/// A plain greedy request for `prompt` ids: its output ids.
async fn plain(s: &Server, prompt: &[u64]) -> Vec<u64> {
    let (st, v) = gen(s, json!({"input_ids": prompt})).await;
    assert_eq!(st, 200, "{v}");
    ids(&v["output_ids"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_requests_continue_prompt_and_output() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let (st, v) = s
        .post("/open_session", &json!({"capacity_of_str_len": 1000}))
        .await;
    assert_eq!(st, 200, "{v}");
    let id = v.as_str().unwrap().to_string();
    let (st, _) = s
        .post(
            "/open_session",
            &json!({"capacity_of_str_len": 1000, "session_id": id}),
        )
        .await;
    assert_eq!(st, 400, "an open id cannot be opened again");

    let p1 = tokens(&s, "Once upon a time", true).await;
    let (st, r1) = gen(
        &s,
        json!({"text": "Once upon a time", "rid": "r1",
        "session_params": {"id": id}}),
    )
    .await;
    assert_eq!(st, 200, "{r1}");
    let o1 = ids(&r1["output_ids"]);
    assert_eq!(
        o1,
        plain(&s, &p1).await,
        "a session's first request is a plain one"
    );

    let p2 = tokens(&s, " and then", false).await;
    let (st, r2) = gen(
        &s,
        json!({"text": " and then", "rid": "r2",
        "session_params": {"id": id, "rid": "r1"}}),
    )
    .await;
    assert_eq!(st, 200, "{r2}");
    let whole: Vec<u64> = [p1.clone(), o1.clone(), p2.clone()].concat();
    assert_eq!(ids(&r2["output_ids"]), plain(&s, &whole).await);
    assert_eq!(r2["meta_info"]["prompt_tokens"], whole.len());
    assert!(
        r2["meta_info"]["cached_tokens"].as_u64().unwrap() >= (p1.len() + o1.len() - 1) as u64,
        "the history comes from the prefix cache: {r2}"
    );

    // drop_previous_output and offset.
    let (_, r) = gen(
        &s,
        json!({"text": " and then", "rid": "r3",
        "session_params": {"id": id, "rid": "r1", "drop_previous_output": true}}),
    )
    .await;
    assert_eq!(
        ids(&r["output_ids"]),
        plain(&s, &[p1.clone(), p2.clone()].concat()).await
    );
    let (_, r) = gen(
        &s,
        json!({"text": " and then", "rid": "r4",
        "session_params": {"id": id, "rid": "r1", "offset": 3}}),
    )
    .await;
    assert_eq!(
        ids(&r["output_ids"]),
        plain(&s, &[&whole[..3], &p2[..]].concat()).await
    );

    // A streamed member records its output too: r6 continues the streamed r5.
    let chunks = s
        .stream(
            "/generate",
            &json!({"text": " again", "rid": "r5", "stream": true,
                "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": true},
                "session_params": {"id": id, "rid": "r2"}}),
        )
        .await;
    let last: Value = serde_json::from_str(
        chunks
            .iter()
            .rev()
            .find(|c| c.as_str() != "[DONE]")
            .unwrap(),
    )
    .unwrap();
    let o5 = ids(&last["output_ids"]);
    let p5 = tokens(&s, " again", false).await;
    let h5: Vec<u64> = [whole.clone(), ids(&r2["output_ids"]), p5].concat();
    assert_eq!(o5, plain(&s, &h5).await, "streamed member");
    let (_, r6) = gen(
        &s,
        json!({"input_ids": [7, 8], "rid": "r6",
        "session_params": {"id": id, "rid": "r5"}}),
    )
    .await;
    assert_eq!(
        ids(&r6["output_ids"]),
        plain(&s, &[h5, o5, vec![7, 8]].concat()).await
    );

    // replace: r2's continuations (r5, r6) are gone.
    let (st, _) = gen(
        &s,
        json!({"text": " x", "rid": "r7",
        "session_params": {"id": id, "rid": "r2", "replace": true}}),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = gen(
        &s,
        json!({"text": " y", "rid": "r8",
        "session_params": {"id": id, "rid": "r5"}}),
    )
    .await;
    assert_eq!(st, 400, "{v}");

    // Errors.
    for (sp, rid) in [
        (json!({"id": "no-such-session"}), "e1"),
        (json!({"id": id, "rid": "unknown"}), "e2"),
        (json!({"id": id}), "r1"),
    ] {
        let (st, v) = gen(&s, json!({"text": "a", "rid": rid, "session_params": sp})).await;
        assert_eq!(st, 400, "{sp}: {v}");
    }
    let (st, v) = gen(
        &s,
        json!({"text": ["a", "b"], "session_params": {"id": id}}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    // A member refused on submission (too long for the context) leaves the session: its rid
    // is free again.
    let long: Vec<u64> = vec![7; 5000];
    let (st, _) = gen(
        &s,
        json!({"input_ids": long, "rid": "big", "session_params": {"id": id}}),
    )
    .await;
    assert_eq!(st, 400);
    let (st, v) = gen(
        &s,
        json!({"text": "a", "rid": "big", "session_params": {"id": id}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = s.post("/close_session", &json!({"session_id": id})).await;
    assert_eq!(st, 200);
    let (st, v) = gen(
        &s,
        json!({"text": "a", "session_params": {"id": id, "rid": "r1"}}),
    )
    .await;
    assert_eq!(st, 400, "closed: {v}");
    // A request without a session id is a plain one.
    let (st, _) = gen(&s, json!({"text": "a", "session_params": {"rid": "r1"}})).await;
    assert_eq!(st, 200);
}
