//! `strata router` in front of real `strata serve` workers forwards the routes sglang-router
//! 0.3.2 forwards beyond generation (and a few more the workers serve): `/v1/embeddings`,
//! `/v1/classify`, `/v1/rerank` (and `/rerank`), `/v1/responses` with its stored objects found on
//! whichever worker holds them, `/v1/score` and `/v1/messages`. Answers equal the workers' own.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Router, Server};
use std::time::{Duration, Instant};

/// A round-robin router in front of `workers`, once it reports ready (every worker healthy).
async fn start_router(workers: &[&Server]) -> Router {
    let mut args = vec!["--worker-urls"];
    args.extend(workers.iter().map(|w| w.base.as_str()));
    args.extend(["--policy", "round_robin"]);
    let r = Router::start(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if call("GET", format!("{}/readiness", r.base), None).await.0 == 200 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("router did not become ready");
}

async fn call(method: &str, url: String, body: Option<&Value>) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut req = c.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_router_forwards_embedding_scoring_and_responses_routes() {
    let m = MadeModel::new("llama", "tiny");
    let e1 = Server::start(m.path(), &["--is-embedding"]);
    let e2 = Server::start(m.path(), &["--is-embedding"]);
    let r = start_router(&[&e1, &e2]).await;
    let body = json!({"input": ["hello world", "second"], "model": "m"});
    let (_, direct) = e1.post("/v1/embeddings", &body).await;
    for _ in 0..2 {
        // Round robin: both workers answer, with the same vectors.
        let (st, v) = call("POST", format!("{}/v1/embeddings", r.base), Some(&body)).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["data"], direct["data"]);
    }
    // Worker errors pass through (a model without a classification head).
    let (st, v) = call(
        "POST",
        format!("{}/v1/classify", r.base),
        Some(&json!({"input": "a"})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("classification"));
    // The worker's rerank refusal (no cross-encoder head) passes through on both paths.
    for path in ["/v1/rerank", "/rerank"] {
        let (st, v) = call(
            "POST",
            format!("{}{path}", r.base),
            Some(&json!({"query": "q", "documents": ["a"]})),
        )
        .await;
        assert_eq!(st, 400, "{path}: {v}");
        assert!(v.to_string().contains("cross-encoder"), "{path}: {v}");
    }
    drop(r);

    let g1 = Server::start(m.path(), &[]);
    let g2 = Server::start(m.path(), &[]);
    let r = start_router(&[&g1, &g2]).await;
    let score = json!({"query": "Is it? ", "items": ["yes", "no"], "label_token_ids": [5, 9]});
    let (_, want) = g1.post("/v1/score", &score).await;
    let (st, v) = call("POST", format!("{}/v1/score", r.base), Some(&score)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["scores"], want["scores"]);
    // The tokenizer routes answer as a worker's.
    let tok = json!({"model": "m", "prompt": "hello world"});
    let (_, t) = g1.post("/v1/tokenize", &tok).await;
    for path in ["/v1/tokenize", "/tokenize"] {
        let (st, v) = call("POST", format!("{}{path}", r.base), Some(&tok)).await;
        assert_eq!(
            (st, v["tokens"].clone()),
            (200, t["tokens"].clone()),
            "{path}"
        );
    }
    let detok = json!({"model": "m", "tokens": t["tokens"]});
    let (st, v) = call("POST", format!("{}/v1/detokenize", r.base), Some(&detok)).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["text"].as_str().unwrap().contains("hello world"), "{v}");
    let msg =
        json!({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]});
    let (st, v) = call("POST", format!("{}/v1/messages", r.base), Some(&msg)).await;
    assert_eq!((st, v["type"].clone()), (200, json!("message")), "{v}");
    // Stored responses are found on whichever worker holds them.
    let mut ids = Vec::new();
    for i in 0..2 {
        let req = json!({"input": format!("hello {i}"), "max_output_tokens": 4, "temperature": 0});
        let (st, v) = call("POST", format!("{}/v1/responses", r.base), Some(&req)).await;
        assert_eq!(st, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let held = |s: &Server, id: &str| {
        let url = s.url(&format!("/v1/responses/{id}"));
        async move { call("GET", url, None).await.0 == 200 }
    };
    assert!(
        held(&g1, &ids[0]).await != held(&g2, &ids[0]).await,
        "one worker holds each"
    );
    for id in &ids {
        let (st, v) = call("GET", format!("{}/v1/responses/{id}", r.base), None).await;
        assert_eq!((st, v["id"].clone()), (200, json!(id)), "{v}");
    }
    let (st, _) = call(
        "DELETE",
        format!("{}/v1/responses/{}", r.base, ids[1]),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = call("GET", format!("{}/v1/responses/{}", r.base, ids[1]), None).await;
    assert_eq!(st, 404, "deleted: {v}");
    let (st, _) = call("GET", format!("{}/v1/responses/resp_nope", r.base), None).await;
    assert_eq!(st, 404);

    // Conversations live in the router; a response in one sees its items and joins it.
    let (st, c) = call(
        "POST",
        format!("{}/v1/conversations", r.base),
        Some(&json!({
        "metadata": {"topic": "demo"},
        "items": [{"type": "message", "role": "user", "content": "Hello there"}]})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    let cid = c["id"].as_str().unwrap().to_string();
    assert!(
        cid.starts_with("conv_") && c["object"] == "conversation",
        "{c}"
    );
    assert_eq!(c["metadata"]["topic"], "demo");
    let items = |q: &str| {
        call(
            "GET",
            format!("{}/v1/conversations/{cid}/items{q}", r.base),
            None,
        )
    };
    let (_, l) = items("?order=asc").await;
    assert_eq!(l["data"].as_array().unwrap().len(), 1, "{l}");
    let req = json!({"input": "How are you?", "conversation": cid, "max_output_tokens": 6,
        "temperature": 0});
    let (st, v) = call("POST", format!("{}/v1/responses", r.base), Some(&req)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["conversation"]["id"], cid.as_str());
    let history = json!({"input": [
        {"type": "message", "role": "user", "content": "Hello there"},
        {"type": "message", "role": "user", "content": "How are you?"}],
        "max_output_tokens": 6, "temperature": 0});
    let (_, want) = g1.post("/v1/responses", &history).await;
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        want["output"][0]["content"][0]["text"]
    );
    let (_, l) = items("?order=asc").await;
    let data = l["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "hello, the question, the answer: {l}");
    assert_eq!(data[1]["content"], "How are you?");
    assert_eq!(data[2]["role"], "assistant");
    // Pages: newest first by default, `after` continues.
    let (_, p1) = items("?limit=1").await;
    assert_eq!(
        (p1["data"][0]["id"].clone(), p1["has_more"].clone()),
        (data[2]["id"].clone(), json!(true))
    );
    let (_, p2) = items(&format!(
        "?limit=5&after={}",
        data[2]["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(p2["data"].as_array().unwrap().len(), 2);
    // Items one by one, metadata, deletion.
    let item = data[0]["id"].as_str().unwrap();
    let (st, i) = call(
        "GET",
        format!("{}/v1/conversations/{cid}/items/{item}", r.base),
        None,
    )
    .await;
    assert_eq!((st, i["content"].clone()), (200, json!("Hello there")));
    let (st, _) = call(
        "DELETE",
        format!("{}/v1/conversations/{cid}/items/{item}", r.base),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(items("").await.1["data"].as_array().unwrap().len(), 2);
    let (st, u) = call(
        "POST",
        format!("{}/v1/conversations/{cid}", r.base),
        Some(&json!({"metadata": {"topic": "x"}})),
    )
    .await;
    assert_eq!((st, u["metadata"]["topic"].clone()), (200, json!("x")));
    let streamed = json!({"input": "hi", "conversation": {"id": cid}, "stream": true});
    let (st, _) = call("POST", format!("{}/v1/responses", r.base), Some(&streamed)).await;
    assert_eq!(st, 400, "a streamed response in a conversation");
    let (st, d) = call("DELETE", format!("{}/v1/conversations/{cid}", r.base), None).await;
    assert_eq!((st, d["deleted"].clone()), (200, json!(true)));
    let (st, _) = call("GET", format!("{}/v1/conversations/{cid}", r.base), None).await;
    assert_eq!(st, 404);
    let (st, _) = call("POST", format!("{}/v1/responses", r.base), Some(&req)).await;
    assert_eq!(st, 404, "a response in a deleted conversation");
}
