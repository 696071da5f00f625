//! End-to-end: SGLang's token-id extras on the OpenAI routes (real processes on a made model).
//! `return_token_ids` gives each choice its output ids (and the prompt's), equal to what
//! `/generate` gives for the same prompt ids; completions stream them chunk by chunk (the prompt's
//! with the first); chat adds `prompt_token_ids` on its own flag and `/generate`'s `meta_info`
//! under `return_meta_info`, and refuses them streamed (a 400, as SGLang). A chat request's
//! `input_ids` replace its rendered messages.

mod serve_common;

use serde_json::json;
use serve_common::{ids, json_lines, MadeModel, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ids_match_generate_on_chat_and_completions() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let greedy = |p: &[u64]| json!({"input_ids": p, "sampling_params": {"temperature": 0, "max_new_tokens": 10, "ignore_eos": true}});

    // Chat.
    let body = json!({"messages": [{"role": "user", "content": "Tell me about rivers"}],
        "max_tokens": 10, "temperature": 0, "ignore_eos": true,
        "return_token_ids": true, "return_meta_info": true});
    let (st, v) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    let c = &v["choices"][0];
    let (out, prompt) = (ids(&c["token_ids"]), ids(&c["prompt_token_ids"]));
    assert_eq!(out.len(), 10);
    assert_eq!(
        prompt.len() as u64,
        v["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    let (_, g) = s.post("/generate", &greedy(&prompt)).await;
    assert_eq!(
        out,
        ids(&g["output_ids"]),
        "chat ids = /generate on its prompt ids"
    );
    assert_eq!(c["meta_info"]["completion_tokens"], 10, "{c}");
    assert_eq!(c["meta_info"]["finish_reason"]["type"], "length", "{c}");
    let mut only_prompt = body.clone();
    only_prompt["return_token_ids"] = json!(false);
    only_prompt["return_meta_info"] = json!(false);
    only_prompt["return_prompt_token_ids"] = json!(true);
    let (_, v) = s.post("/v1/chat/completions", &only_prompt).await;
    assert_eq!(ids(&v["choices"][0]["prompt_token_ids"]), prompt);
    assert!(v["choices"][0].get("token_ids").is_none(), "{v}");
    // `input_ids` replace the rendered messages: other messages, the same prompt ids, the same
    // answer; an id past the vocabulary is a 400.
    let pre = json!({"messages": [{"role": "user", "content": "something else"}],
        "input_ids": prompt, "max_tokens": 10, "temperature": 0, "ignore_eos": true,
        "return_token_ids": true});
    let (st, v) = s.post("/v1/chat/completions", &pre).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v["choices"][0]["token_ids"]), out);
    assert_eq!(ids(&v["choices"][0]["prompt_token_ids"]), prompt);
    let mut bad = pre.clone();
    bad["input_ids"] = json!([1, 2, 99_999_999]);
    let (st, v) = s.post("/v1/chat/completions", &bad).await;
    assert_eq!(st, 400, "{v}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (st, v) = s.post("/v1/chat/completions", &streamed).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("return_token_ids"));

    // Completions, whole and streamed.
    let body = json!({"prompt": "Rivers run", "max_tokens": 10, "temperature": 0,
        "ignore_eos": true, "return_token_ids": true});
    let (_, v) = s.post("/v1/completions", &body).await;
    let c = &v["choices"][0];
    let (out, prompt) = (ids(&c["token_ids"]), ids(&c["prompt_token_ids"]));
    let (_, g) = s.post("/generate", &greedy(&prompt)).await;
    assert_eq!(out, ids(&g["output_ids"]));
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let chunks = json_lines(&s.stream("/v1/completions", &sb).await);
    let cat: Vec<u64> = chunks
        .iter()
        .flat_map(|c| ids(&c["choices"][0]["token_ids"]))
        .collect();
    assert_eq!(cat, out, "streamed ids add up to the whole");
    assert_eq!(ids(&chunks[0]["choices"][0]["prompt_token_ids"]), prompt);
    assert!(chunks[1..]
        .iter()
        .all(|c| c["choices"][0].get("prompt_token_ids").is_none()));
    // Not asked: no ids.
    let (_, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "Rivers run", "max_tokens": 2}),
        )
        .await;
    assert!(v["choices"][0].get("token_ids").is_none(), "{v}");
}
