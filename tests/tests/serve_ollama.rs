//! End-to-end: Ollama's API on `strata serve` (a real process on a made model): `/api/chat`
//! answers what the chat completion of the same conversation answers (text, counts, `length`),
//! streamed as newline-delimited JSON whose pieces add up to it; `/api/generate` is the one-turn
//! chat of its prompt, or with `raw` the completion of the prompt as is; options map onto the
//! sampling parameters; `format: "json"` answers JSON; an empty request answers `load`;
//! `/api/tags`, `/api/show`, `/api/ps`, `/api/version` and `/` describe the served model; errors
//! come in Ollama's shape.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};

/// The NDJSON lines of a streamed POST (status 200, content type checked).
async fn lines(s: &Server, path: &str, body: &Value) -> Vec<Value> {
    let r = s.client.post(s.url(path)).json(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ct, "application/x-ndjson");
    let text = r.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_chat_and_generate_match_the_openai_routes() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let conv = json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story"}]);
    let (st, c) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": conv, "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    let text = c["choices"][0]["message"]["content"].as_str().unwrap();

    // Whole.
    let req = json!({"model": "tiny:latest", "messages": conv, "stream": false,
        "options": {"num_predict": 8, "temperature": 0, "num_ctx": 4096}, "keep_alive": "5m"});
    let (st, r) = s.post("/api/chat", &req).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["model"], "tiny:latest", "{r}");
    assert_eq!(r["message"]["role"], "assistant", "{r}");
    assert_eq!(r["message"]["content"], text, "{r}");
    assert_eq!(r["done"], true, "{r}");
    assert_eq!(r["done_reason"], "length", "{r}");
    assert_eq!(r["eval_count"], 8, "{r}");
    assert_eq!(r["prompt_eval_count"], c["usage"]["prompt_tokens"], "{r}");
    assert!(r["total_duration"].as_u64().unwrap() > 0, "{r}");
    let created = r["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 30, "{created}");

    // Streamed by default: the pieces add up, the last line closes with the counts.
    let mut sreq = req.clone();
    sreq.as_object_mut().unwrap().remove("stream");
    let ls = lines(&s, "/api/chat", &sreq).await;
    let (last, pieces) = ls.split_last().unwrap();
    assert!(pieces.len() >= 2, "{ls:?}");
    let joined: String = pieces
        .iter()
        .map(|l| {
            assert_eq!(l["done"], false, "{l}");
            l["message"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(joined, text);
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["done_reason"], "length", "{last}");
    assert_eq!(last["eval_count"], 8, "{last}");
    assert_eq!(last["message"]["content"], "", "{last}");
    let total = last["total_duration"].as_u64().unwrap();
    let split =
        last["prompt_eval_duration"].as_u64().unwrap() + last["eval_duration"].as_u64().unwrap();
    assert_eq!(total, split, "{last}");

    // /api/generate: the one-turn chat of system + prompt.
    let greq = json!({"model": "tiny", "system": "Be brief.", "prompt": "Tell me a story",
        "stream": false, "options": {"num_predict": 8, "temperature": 0}});
    let (st, g) = s.post("/api/generate", &greq).await;
    assert_eq!(st, 200, "{g}");
    assert_eq!(g["response"], text, "{g}");
    assert_eq!(g["done_reason"], "length", "{g}");
    let mut gs = greq.clone();
    gs["stream"] = json!(true);
    let gl = lines(&s, "/api/generate", &gs).await;
    let joined: String = gl.iter().map(|l| l["response"].as_str().unwrap()).collect();
    assert_eq!(joined, text);
    assert_eq!(gl.last().unwrap()["done"], true);

    // raw: the completion of the prompt as is; a stop string from it cuts it there.
    let (st, cmpl) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{cmpl}");
    let ctext = cmpl["choices"][0]["text"].as_str().unwrap();
    let raw = json!({"prompt": "Once upon a time", "raw": true, "stream": false,
        "options": {"num_predict": 8, "temperature": 0}});
    let (st, g) = s.post("/api/generate", &raw).await;
    assert_eq!(st, 200, "{g}");
    assert_eq!(g["response"], ctext, "{g}");
    let chars: Vec<char> = ctext.chars().collect();
    let stop: String = chars[2..4].iter().collect();
    let mut cut = raw.clone();
    cut["options"]["stop"] = json!([stop]);
    let (st, g) = s.post("/api/generate", &cut).await;
    assert_eq!(st, 200, "{g}");
    assert_eq!(g["done_reason"], "stop", "{g}");
    let got = g["response"].as_str().unwrap();
    assert!(
        ctext.starts_with(got) && got.len() < ctext.len(),
        "{got:?} vs {ctext:?}"
    );

    // format "json": constrained to a JSON value.
    let j = json!({"messages": [{"role": "user", "content": "Give me JSON"}], "stream": false,
        "format": "json", "options": {"num_predict": 48, "temperature": 0}});
    let (st, r) = s.post("/api/chat", &j).await;
    assert_eq!(st, 200, "{r}");
    if r["done_reason"] == "stop" {
        let content = r["message"]["content"].as_str().unwrap();
        serde_json::from_str::<Value>(content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
    }

    // An empty conversation or prompt only loads the model.
    for (path, body) in [
        (
            "/api/chat",
            json!({"model": "tiny", "messages": [], "stream": false}),
        ),
        ("/api/generate", json!({"model": "tiny", "stream": false})),
    ] {
        let (st, r) = s.post(path, &body).await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["done"], true, "{r}");
        assert_eq!(r["done_reason"], "load", "{r}");
    }
    let l = lines(&s, "/api/generate", &json!({"model": "tiny", "prompt": ""})).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["done_reason"], "load");

    // Errors in Ollama's shape.
    for (path, bad) in [
        (
            "/api/chat",
            json!({"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}),
        ),
        ("/api/chat", json!({"messages": "x"})),
        (
            "/api/chat",
            json!({"messages": [{"role": "user", "content": "x"}], "format": 3}),
        ),
        ("/api/generate", json!({"prompt": "x", "options": "hot"})),
    ] {
        let (st, e) = s.post(path, &bad).await;
        assert_eq!(st, 400, "{bad} -> {e}");
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let (st, e) = s.post_raw("/api/chat", "{not json").await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"].is_string(), "{e}");
    let (st, e) = s.post("/api/pull", &json!({"model": "llama3.2"})).await;
    assert_eq!(st, 501, "{e}");
    assert!(e["error"].as_str().unwrap().contains("/api/pull"), "{e}");
    // The server keeps serving.
    let (st, _) = s.post("/api/chat", &req).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_listing_describes_the_served_model() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &["--served-model-name", "tiny-llama"]);
    let (st, body) = s.get("/").await;
    assert_eq!((st, body.as_str()), (200, "Ollama is running"));
    let head = s.client.head(s.url("/")).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    let (st, v) = s.get("/api/version").await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert!(v["version"].is_string(), "{v}");

    let (st, t) = s.get("/api/tags").await;
    assert_eq!(st, 200);
    let t: Value = serde_json::from_str(&t).unwrap();
    let e = &t["models"][0];
    assert_eq!(e["name"], "tiny-llama", "{t}");
    assert_eq!(e["model"], "tiny-llama", "{t}");
    assert!(e["size"].as_u64().unwrap() > 0, "{t}");
    assert_eq!(e["digest"].as_str().unwrap().len(), 64, "{t}");
    assert_eq!(e["details"]["format"], "safetensors", "{t}");
    assert_eq!(e["details"]["family"], "llama", "{t}");

    let (st, p) = s.get("/api/ps").await;
    assert_eq!(st, 200);
    let p: Value = serde_json::from_str(&p).unwrap();
    assert_eq!(p["models"][0]["digest"], e["digest"], "{p}");

    let (st, show) = s.post("/api/show", &json!({"model": "tiny-llama"})).await;
    assert_eq!(st, 200, "{show}");
    let info = &show["model_info"];
    assert_eq!(info["general.architecture"], "llama", "{show}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(m.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        info["llama.block_count"], cfg["num_hidden_layers"],
        "{show}"
    );
    assert_eq!(info["llama.embedding_length"], cfg["hidden_size"], "{show}");
    assert_eq!(
        info["llama.attention.head_count_kv"], cfg["num_key_value_heads"],
        "{show}"
    );
    assert!(
        info["general.parameter_count"].as_u64().unwrap() > 0,
        "{show}"
    );
    assert_eq!(show["capabilities"], json!(["completion"]), "{show}");
    assert!(show["template"].is_string(), "{show}");
    let (st, e) = s.post_raw("/api/show", "{").await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"].is_string(), "{e}");
}
