//! End-to-end: parallel sampling (`n > 1`) and streamed batches on `strata serve` (real processes
//! on a made model), in SGLang's shapes. A seeded `n = 3` answers three results, reproducible
//! across identical requests, the first one the `n = 1` answer; greedy `n = 3` answers the greedy
//! text three times. Batches times `n` are prompt-major on `/generate` and in OpenAI's choice
//! indices, usage counting each prompt once and every completion. Streamed, every chunk carries
//! its choice's index, the chunks of an index add up to the non-streamed text, one `[DONE]` ends
//! the stream and the usage chunk sums all choices. `n < 1` is a 400.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};
use std::collections::BTreeMap;

const PROMPT: &str = "Once upon a time there was a";

fn texts(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect()
}

fn choice_texts(v: &Value) -> Vec<String> {
    v["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("no choices: {v}"))
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i, "{v}");
            let t = c.get("text").unwrap_or(&c["message"]["content"]);
            t.as_str().unwrap().to_string()
        })
        .collect()
}

async fn ok(s: &Server, path: &str, body: &Value) -> Value {
    let (st, v) = s.post(path, body).await;
    assert_eq!(st, 200, "{path} {body}: {v}");
    v
}

/// The data payloads of a stream, without its final `[DONE]` (checked to be the only one, last).
async fn events(s: &Server, path: &str, body: &Value) -> Vec<Value> {
    let evs = s.stream(path, body).await;
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"), "{evs:?}");
    assert_eq!(evs.iter().filter(|e| *e == "[DONE]").count(), 1, "{evs:?}");
    evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_copies_are_seeded_reproducible_greedy_identical_and_prompt_major() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let sampled = |n: usize| {
        json!({"text": PROMPT, "sampling_params": {"n": n, "temperature": 1.0, "seed": 7,
            "max_new_tokens": 12, "ignore_eos": true}})
    };
    // Seeded n = 3: three results with their own ids, the same on a second identical request.
    let a = ok(&s, "/generate", &sampled(3)).await;
    let b = ok(&s, "/generate", &sampled(3)).await;
    let (ta, tb) = (texts(&a), texts(&b));
    assert_eq!(ta.len(), 3);
    assert_eq!(ta, tb, "seeded copies must reproduce");
    assert!(ta[0] != ta[1] || ta[1] != ta[2], "copies all alike: {ta:?}");
    let ids: Vec<&str> = a
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["meta_info"]["id"].as_str().unwrap())
        .collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    for r in a.as_array().unwrap() {
        assert_eq!(r["meta_info"]["completion_tokens"], 12, "{r}");
        assert_eq!(r["output_ids"].as_array().unwrap().len(), 12);
    }
    // Copy 0 keeps the given seed: it answers what n = 1 answers.
    let one = ok(&s, "/generate", &sampled(1)).await;
    assert_eq!(one["text"], ta[0].as_str(), "{one}");

    // Greedy n = 3: the greedy text three times.
    let greedy = s.greedy(PROMPT, 12).await;
    let g = json!({"text": PROMPT, "sampling_params": {"n": 3, "temperature": 0, "max_new_tokens": 12}});
    let tg = texts(&ok(&s, "/generate", &g).await);
    assert_eq!(tg, vec![greedy["text"].as_str().unwrap().to_string(); 3]);

    // A batch times n on /generate is prompt-major: [p0, p0, p1, p1].
    let p1 = "The capital of France is";
    let g1 = s.greedy(p1, 12).await;
    let batch = json!({"text": [PROMPT, p1], "sampling_params": {"n": 2, "temperature": 0, "max_new_tokens": 12}});
    let tb = texts(&ok(&s, "/generate", &batch).await);
    let (w0, w1) = (
        greedy["text"].as_str().unwrap().to_string(),
        g1["text"].as_str().unwrap().to_string(),
    );
    assert_eq!(tb, vec![w0.clone(), w0.clone(), w1.clone(), w1.clone()]);

    // OpenAI completions: 2 prompts x n = 2, choices 0..3 prompt-major, usage counting each
    // prompt once and every completion.
    let body = json!({"prompt": [PROMPT, p1], "n": 2, "temperature": 0, "max_tokens": 12});
    let v = ok(&s, "/v1/completions", &body).await;
    assert_eq!(
        choice_texts(&v),
        vec![w0.clone(), w0.clone(), w1.clone(), w1]
    );
    let pt = |r: &Value| r["meta_info"]["prompt_tokens"].as_u64().unwrap();
    let ct = |r: &Value| r["meta_info"]["completion_tokens"].as_u64().unwrap();
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], pt(&greedy) + pt(&g1), "{v}");
    assert_eq!(u["completion_tokens"], 2 * (ct(&greedy) + ct(&g1)), "{v}");
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    // Log-probabilities per choice.
    let body = json!({"prompt": PROMPT, "n": 2, "seed": 1, "max_tokens": 5, "logprobs": 2,
        "ignore_eos": true});
    let v = ok(&s, "/v1/completions", &body).await;
    for c in v["choices"].as_array().unwrap() {
        let lp = &c["logprobs"];
        assert_eq!(lp["tokens"].as_array().unwrap().len(), 5, "{c}");
        let lps = lp["token_logprobs"].as_array().unwrap();
        assert!(
            lps.len() == 5 && lps.iter().all(|l| l.as_f64().unwrap() <= 0.0),
            "{c}"
        );
        let tops = lp["top_logprobs"].as_array().unwrap();
        assert!(
            tops.iter().all(|t| t.as_object().unwrap().len() <= 2),
            "{c}"
        );
    }

    // Chat, seeded n = 2: two choices, reproducible, usage over both.
    let chat = json!({"messages": [{"role": "user", "content": PROMPT}], "n": 2, "seed": 3,
        "temperature": 1.0, "max_tokens": 8, "ignore_eos": true});
    let c1 = ok(&s, "/v1/chat/completions", &chat).await;
    let c2 = ok(&s, "/v1/chat/completions", &chat).await;
    assert_eq!(choice_texts(&c1).len(), 2);
    assert_eq!(choice_texts(&c1), choice_texts(&c2));
    assert_eq!(c1["usage"]["completion_tokens"], 16, "{c1}");

    // The prompt is warmed into the radix cache before its copies: each finds it cached.
    let fresh = "word ".repeat(40);
    let w = json!({"text": fresh, "sampling_params": {"n": 2, "max_new_tokens": 2}});
    for r in ok(&s, "/generate", &w).await.as_array().unwrap() {
        let m = &r["meta_info"];
        let (cached, prompt) = (m["cached_tokens"].as_u64(), m["prompt_tokens"].as_u64());
        assert!(cached.unwrap() > prompt.unwrap() / 2, "{r}");
    }

    // n must be at least 1.
    for (path, body) in [
        (
            "/generate",
            json!({"text": PROMPT, "sampling_params": {"n": 0}}),
        ),
        (
            "/generate",
            json!({"text": PROMPT, "sampling_params": {"n": -1}}),
        ),
        (
            "/generate",
            json!({"text": [PROMPT, p1], "sampling_params": [{"n": 2}, {"n": 1}]}),
        ),
        (
            "/generate",
            json!({"text": [PROMPT, p1], "return_logprob": [true, false], "sampling_params": {"n": 2}}),
        ),
        ("/v1/completions", json!({"prompt": PROMPT, "n": 0})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "n": 0}),
        ),
    ] {
        let (st, v) = s.post(path, &body).await;
        assert_eq!(st, 400, "{path} {body}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_choices_and_batches_add_up_to_the_non_streamed_answers() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);

    // OpenAI completions, seeded n = 2, with the usage chunk.
    let body = json!({"prompt": PROMPT, "n": 2, "seed": 11, "temperature": 1.0, "max_tokens": 10,
        "ignore_eos": true});
    let plain = ok(&s, "/v1/completions", &body).await;
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let evs = events(&s, "/v1/completions", &sb).await;
    let (usage, chunks) = evs.split_last().unwrap();
    let mut cat: BTreeMap<u64, String> = BTreeMap::new();
    for e in chunks {
        let c = &e["choices"].as_array().unwrap()[0];
        *cat.entry(c["index"].as_u64().unwrap()).or_default() += c["text"].as_str().unwrap();
    }
    assert_eq!(
        cat.into_values().collect::<Vec<_>>(),
        choice_texts(&plain),
        "{evs:?}"
    );
    assert_eq!(usage["choices"], json!([]));
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][k], plain["usage"][k], "{usage}");
    }
    assert_eq!(usage["usage"]["completion_tokens"], 20);

    // Chat, seeded n = 2: deltas per index add up to each message.
    let chat = json!({"messages": [{"role": "user", "content": PROMPT}], "n": 2, "seed": 5,
        "temperature": 1.0, "max_tokens": 8, "ignore_eos": true});
    let plain = ok(&s, "/v1/chat/completions", &chat).await;
    let mut sc = chat.clone();
    sc["stream"] = json!(true);
    let mut cat: BTreeMap<u64, String> = BTreeMap::new();
    for e in events(&s, "/v1/chat/completions", &sc).await {
        let c = &e["choices"][0];
        let d = c["delta"]["content"].as_str().unwrap_or("");
        *cat.entry(c["index"].as_u64().unwrap()).or_default() += d;
    }
    assert_eq!(cat.into_values().collect::<Vec<_>>(), choice_texts(&plain));

    // /generate, seeded n = 2: indexed lines of cumulative text, the last of each the answer.
    let g = json!({"text": PROMPT, "sampling_params": {"n": 2, "seed": 9, "temperature": 1.0,
        "max_new_tokens": 10, "ignore_eos": true}});
    let want = texts(&ok(&s, "/generate", &g).await);
    let mut sg = g.clone();
    sg["stream"] = json!(true);
    let mut last: BTreeMap<u64, String> = BTreeMap::new();
    for e in events(&s, "/generate", &sg).await {
        last.insert(
            e["index"].as_u64().expect("index"),
            e["text"].as_str().unwrap().into(),
        );
    }
    assert_eq!(last.into_values().collect::<Vec<_>>(), want);

    // A streamed /generate batch of 3 prompts: interleaved lines tagged with their index.
    let prompts = [PROMPT, "The capital of France is", "1 2 3 4"];
    let batch =
        json!({"text": prompts, "sampling_params": {"temperature": 0, "max_new_tokens": 16}});
    let want = texts(&ok(&s, "/generate", &batch).await);
    let mut sb = batch.clone();
    sb["stream"] = json!(true);
    let mut last: BTreeMap<u64, Value> = BTreeMap::new();
    for e in events(&s, "/generate", &sb).await {
        last.insert(e["index"].as_u64().expect("index"), e);
    }
    assert_eq!(
        last.values()
            .map(|e| e["text"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        want
    );
    assert!(last
        .values()
        .all(|e| e["meta_info"]["finish_reason"].is_object()));
    // OpenAI completions stream several prompts the same way, one index per prompt.
    let body = json!({"prompt": prompts, "temperature": 0, "max_tokens": 16, "stream": true});
    let mut cat: BTreeMap<u64, String> = BTreeMap::new();
    for e in events(&s, "/v1/completions", &body).await {
        let c = &e["choices"][0];
        *cat.entry(c["index"].as_u64().unwrap()).or_default() += c["text"].as_str().unwrap();
    }
    assert_eq!(cat.into_values().collect::<Vec<_>>(), want);
    // A single prompt's stream has no index, as SGLang's.
    let one = json!({"text": PROMPT, "stream": true, "sampling_params": {"max_new_tokens": 2}});
    for e in events(&s, "/generate", &one).await {
        assert!(e.get("index").is_none(), "{e}");
    }
}
