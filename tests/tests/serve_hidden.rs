//! `return_hidden_states` on a real `strata serve` (CPU): with `--enable-return-hidden-states`
//! a `/generate` answer's `meta_info.hidden_states` is SGLang's list (the prompt's positions as
//! one list, then one state per output token fed back), each the final hidden state: the LM head
//! on a prompt position's state ranks first the token the input log-probabilities rank first
//! there, and on each later state the next output token; the last prompt state is the embedding
//! server's vector before normalisation. The output is unchanged; prompts chunked across rounds
//! report every position once; without the flag the field is SGLang's 400.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{floats, MadeModel, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hidden_states_are_the_states_the_tokens_come_from() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(
        m.path(),
        &[
            "--enable-return-hidden-states",
            "--chunked-prefill-size",
            "8",
        ],
    );
    let (vocab, hidden) = m.dims();
    let w = s.lm_head(vocab).await;
    let best = |h: &[f64]| {
        (0..vocab)
            .max_by(|&a, &b| {
                let dot = |t: usize| w[t].iter().zip(h).map(|(x, y)| x * y).sum::<f64>();
                dot(a).total_cmp(&dot(b))
            })
            .unwrap() as u64
    };
    let prompt = "The quick brown fox jumps over the lazy dog again and again";
    let sp = json!({"temperature": 0, "max_new_tokens": 5, "ignore_eos": true});
    let (st, v) = s
        .post(
            "/generate",
            &json!({"text": prompt, "sampling_params": sp, "return_hidden_states": true,
                "return_logprob": true, "logprob_start_len": 0, "top_logprobs_num": 1}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let meta = &v["meta_info"];
    let n = meta["prompt_tokens"].as_u64().unwrap() as usize;
    assert!(n > 8, "the prompt spans several 8-token chunks");
    let hs = meta["hidden_states"].as_array().expect("hidden_states");
    let out: Vec<u64> = v["output_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(
        hs.len(),
        1 + out.len() - 1,
        "the prompt's list, then one per output token fed back"
    );
    let rows: Vec<Vec<f64>> = hs[0].as_array().unwrap().iter().map(floats).collect();
    assert_eq!(rows.len(), n);
    assert!(rows.iter().all(|r| r.len() == hidden));
    // Prompt positions: the head's first choice is the input log-probabilities' first choice
    // of the next position.
    let top = meta["input_top_logprobs"].as_array().unwrap();
    for p in 0..n - 1 {
        let want = top[p + 1][0][1].as_u64().unwrap();
        assert_eq!(best(&rows[p]), want, "prompt position {p}");
    }
    // The last prompt position gives the first token, each later state the next one.
    assert_eq!(best(&rows[n - 1]), out[0]);
    for k in 1..out.len() {
        assert_eq!(best(&floats(&hs[k])), out[k], "output state {k}");
    }
    // The same request without hidden states: the same output.
    let (_, plain) = s
        .post("/generate", &json!({"text": prompt, "sampling_params": sp}))
        .await;
    assert_eq!(plain["output_ids"], v["output_ids"]);
    assert!(plain["meta_info"].get("hidden_states").is_none());
    // The last prompt state is the embedding server's vector, normalised.
    let e = Server::start(m.path(), &["--is-embedding"]);
    let (_, emb) = e.post("/v1/embeddings", &json!({"input": prompt})).await;
    let last = &rows[n - 1];
    let norm = last.iter().map(|x| x * x).sum::<f64>().sqrt();
    for (a, b) in last.iter().zip(floats(&emb["data"][0]["embedding"])) {
        assert!((a / norm - b).abs() < 1e-5, "{a} vs {b}");
    }
    // The OpenAI routes answer the last state fed back per choice (SGLang's), `[]` for one token.
    let (st, c) = s
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 5, "temperature": 0, "ignore_eos": true,
                "return_hidden_states": true}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(
        floats(&c["choices"][0]["hidden_states"]),
        floats(&hs[out.len() - 1])
    );
    let (st, c) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                "return_hidden_states": true}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["choices"][0]["hidden_states"], json!([]));
    // Per prompt in a batch.
    let (st, b) = s
        .post(
            "/generate",
            &json!({"text": ["one two", "three four"], "sampling_params": sp,
                "return_hidden_states": [true, false]}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert!(b[0]["meta_info"]["hidden_states"].is_array());
    assert!(b[1]["meta_info"].get("hidden_states").is_none());
    // Without the flag: SGLang's 400.
    let off = Server::start(m.path(), &[]);
    let (st, v) = off
        .post(
            "/generate",
            &json!({"text": "x", "return_hidden_states": true}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = off
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "return_hidden_states": true}),
        )
        .await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--enable-return-hidden-states"));

    // Retracted mid-way (pause in retract mode: recomputed after the pause), each position is
    // still reported once.
    let sp = json!({"temperature": 0, "max_new_tokens": 3000, "ignore_eos": true});
    let body = json!({"text": prompt, "sampling_params": sp, "return_hidden_states": true});
    let url = s.url("/generate");
    let client = s.client.clone();
    let run = tokio::spawn(async move {
        client
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    while s.metric("num_running_reqs").await < 1.0 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let (st, _) = s
        .post("/pause_generation", &json!({"mode": "retract"}))
        .await;
    assert_eq!(st, 200);
    // Retracted: back in the queue while paused.
    assert_eq!(
        s.metric("num_queue_reqs").await,
        1.0,
        "the request was retracted"
    );
    let (st, _) = s.post("/continue_generation", &json!({})).await;
    assert_eq!(st, 200);
    let v = run.await.unwrap();
    let hs = v["meta_info"]["hidden_states"]
        .as_array()
        .expect("hidden_states");
    let out = v["output_ids"].as_array().unwrap();
    assert_eq!(out.len(), 3000);
    assert_eq!(hs[0].as_array().unwrap().len(), n);
    assert_eq!(
        hs.len(),
        out.len(),
        "one list for the prompt and one state per token fed back"
    );
    for k in [1, 1500, 2999] {
        assert_eq!(best(&floats(&hs[k])), out[k].as_u64().unwrap(), "state {k}");
    }
}
