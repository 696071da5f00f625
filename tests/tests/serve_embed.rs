//! Embeddings on a real `strata serve` (CPU): `--is-embedding` serves `/v1/embeddings`,
//! `/encode` and Ollama's `/api/embed` / `/api/embeddings` with the last token's final hidden
//! state, L2-normalised. The vector is checked against the generation server on the same
//! checkpoint: the LM head applied to it ranks the next tokens as the generation server's
//! log-probabilities do (same argmax, log-probability gaps proportional to the logit gaps), so it
//! is the state the logits come from. Also: batch, token-id, base64 and Matryoshka forms agree;
//! a backbone checkpoint (`MistralModel`, tensors without `model.`, no LM head) serves the same
//! vectors without the flag; SGLang's errors on both kinds of server; a one-label head reranks
//! documents (`/v1/rerank`), and so does a generation model with a yes/no reranker template.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{floats, MadeModel, Server};

const PROMPTS: [&str; 3] = [
    "Once upon a time",
    "The weather today is sunny and warm",
    "x",
];

async fn embed(s: &Server, input: Value) -> Vec<Vec<f64>> {
    let (st, v) = s.post("/v1/embeddings", &json!({"input": input})).await;
    assert_eq!(st, 200, "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            assert_eq!(d["object"], "embedding");
            floats(&d["embedding"])
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(d <= tol, "{what}: max |diff| {d} > {tol}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embeddings_are_the_final_hidden_state() {
    let m = MadeModel::new("llama", "tiny");
    let gen = Server::start(m.path(), &[]);
    let emb = Server::start(m.path(), &["--is-embedding"]);
    let (vocab, hidden) = m.dims();
    let w = gen.lm_head(vocab).await;
    assert_eq!((w.len(), w[0].len()), (vocab, hidden));
    let vectors = embed(&emb, json!(PROMPTS)).await;
    for (p, e) in PROMPTS.iter().zip(&vectors) {
        assert_eq!(e.len(), hidden);
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{p}: norm {norm}");
        let logit = |t: usize| w[t].iter().zip(e).map(|(a, b)| a * b).sum::<f64>();
        let (st, g) = gen
            .post(
                "/generate",
                &json!({"text": p, "sampling_params": {"temperature": 0, "max_new_tokens": 1},
                    "return_logprob": true, "top_logprobs_num": 5}),
            )
            .await;
        assert_eq!(st, 200, "{g}");
        let top = g["meta_info"]["output_top_logprobs"][0].as_array().unwrap();
        let (lp, ids): (Vec<f64>, Vec<usize>) = top
            .iter()
            .map(|t| (t[0].as_f64().unwrap(), t[1].as_u64().unwrap() as usize))
            .unzip();
        let best = (0..vocab)
            .max_by(|&a, &b| logit(a).total_cmp(&logit(b)))
            .unwrap();
        assert_eq!(
            best, ids[0],
            "{p}: the head on the embedding picks another token"
        );
        assert_eq!(g["output_ids"][0].as_u64().unwrap() as usize, ids[0]);
        // log p_0 - log p_k = |h| (W_0 - W_k) . e: one scale |h| for every k.
        let scales: Vec<f64> = (1..ids.len())
            .filter(|&k| (logit(ids[0]) - logit(ids[k])).abs() > 1e-4)
            .map(|k| (lp[0] - lp[k]) / (logit(ids[0]) - logit(ids[k])))
            .collect();
        assert!(!scales.is_empty(), "{p}: no logit gaps to compare");
        for s in &scales {
            assert!(
                (s / scales[0] - 1.0).abs() < 1e-3,
                "{p}: gaps not proportional: {scales:?}"
            );
        }
    }
    // One at a time, as token ids, through /encode: the same vectors.
    for (p, e) in PROMPTS.iter().zip(&vectors) {
        assert_close(&embed(&emb, json!(p)).await[0], e, 1e-6, "single");
        let (_, t) = emb.post("/tokenize", &json!({"prompt": p})).await;
        assert_close(&embed(&emb, t["tokens"].clone()).await[0], e, 1e-6, "ids");
        let (st, enc) = emb.post("/encode", &json!({"text": p})).await;
        assert_eq!(st, 200, "{enc}");
        assert_close(&floats(&enc["embedding"]), e, 1e-6, "encode");
        assert_eq!(enc["meta_info"]["prompt_tokens"], t["count"]);
        assert_eq!(enc["meta_info"]["finish_reason"]["type"], "length");
    }
    // A second identical request hits the prefix cache (all but its last token): same vector.
    let again = embed(&emb, json!(PROMPTS[1])).await;
    assert_close(&again[0], &vectors[1], 1e-5, "cached prefix");
}

/// Decodes standard base64 (test side, independent of the server's encoder).
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 {c}"),
    } as u32;
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let n = q
            .iter()
            .map(|&c| if c == b'=' { 0 } else { val(c) })
            .fold(0, |n, v| n << 6 | v);
        out.extend(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedding_routes_forms_and_errors() {
    let m = MadeModel::new("qwen3", "tiny");
    let emb = Server::start(m.path(), &["--is-embedding"]);
    let e = embed(&emb, json!(["hello world", "second input"])).await;
    let (st, v) = emb
        .post(
            "/v1/embeddings",
            &json!({"input": ["hello world"], "encoding_format": "base64", "model": "any"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let raw = unbase64(v["data"][0]["embedding"].as_str().unwrap());
    let decoded: Vec<f64> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    // JSON carries the f32 values in their shortest decimal form: equal as f32.
    assert_close(&decoded, &e[0], 1e-7, "base64");
    assert_eq!(v["usage"]["prompt_tokens"], v["usage"]["total_tokens"]);
    // /encode batches answer a list; Ollama's two routes.
    let (st, enc) = emb
        .post("/encode", &json!({"text": ["hello world", "second input"]}))
        .await;
    assert_eq!(st, 200, "{enc}");
    assert_close(&floats(&enc[1]["embedding"]), &e[1], 1e-6, "encode batch");
    let (st, o) = emb
        .post(
            "/api/embed",
            &json!({"model": "m", "input": ["hello world"]}),
        )
        .await;
    assert_eq!(st, 200, "{o}");
    assert_close(&floats(&o["embeddings"][0]), &e[0], 1e-6, "ollama embed");
    assert!(o["prompt_eval_count"].as_u64().unwrap() > 0);
    let (st, o) = emb
        .post(
            "/api/embeddings",
            &json!({"model": "m", "prompt": "hello world"}),
        )
        .await;
    assert_eq!(st, 200, "{o}");
    assert_close(&floats(&o["embedding"]), &e[0], 1e-6, "ollama embeddings");
    let (st, _) = emb.get("/health_generate").await;
    assert_eq!(st, 200);
    let (_, info) = emb.get("/get_model_info").await;
    assert!(info.contains("\"is_generation\":false"), "{info}");
    // Errors, in SGLang's words where it has them.
    for (body, needle) in [
        (json!({"input": ""}), "empty or whitespace"),
        (json!({"input": []}), "cannot be empty"),
        (json!({"input": ["a", "  "]}), "index 1 cannot be empty"),
        (json!({"input": ["a", 3]}), "must be strings"),
        (json!({"input": [[1, -2]]}), "non-negative"),
        (
            json!({"input": "a", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (json!({"input": "a", "dimensions": 8}), "matryoshka"),
        (json!({"input": [[1, 99999999]]}), "out of the vocabulary"),
    ] {
        let (st, v) = emb.post("/v1/embeddings", &body).await;
        assert_eq!(st, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let (st, v) = emb.post("/encode", &json!({"rid": "x"})).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = emb.post("/api/embed", &json!({"input": ""})).await;
    assert_eq!(st, 400);
    assert!(v["error"].is_string(), "Ollama's error shape: {v}");
    let (st, v) = emb.post("/generate", &json!({"text": "hi"})).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("embedding model"));
    let (st, _) = emb
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(st, 400);
    // Still serving after the errors.
    assert_close(
        &embed(&emb, json!("hello world")).await[0],
        &e[0],
        1e-6,
        "after errors",
    );
    // A generation server refuses embeddings as SGLang does.
    let gen = Server::start(m.path(), &[]);
    let (st, v) = gen.post("/v1/embeddings", &json!({"input": "hi"})).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--is-embedding"));
}

/// Rewrites the made checkpoint in `dir` for another architecture `arch`: the LM head is
/// dropped, tensor names lose their `model.` prefix when `strip` (a backbone), `extra_tensors`
/// (f32) are added, and config.json gets `arch` and the `extra` fields.
fn rewrite(
    dir: &std::path::Path,
    arch: &str,
    strip: bool,
    extra_tensors: &[(&str, Vec<usize>, Vec<f32>)],
    extra: Value,
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut entries: Vec<(&String, &Value)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap());
    let (mut out_header, mut out_data) = (serde_json::Map::new(), Vec::new());
    for (name, v) in entries {
        if name == "lm_head.weight" {
            continue;
        }
        let (a, b) = (
            v["data_offsets"][0].as_u64().unwrap() as usize,
            v["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let start = out_data.len();
        out_data.extend_from_slice(&data[a..b]);
        let mut t = v.clone();
        t["data_offsets"] = json!([start, out_data.len()]);
        let name = if strip {
            name.trim_start_matches("model.")
        } else {
            name
        };
        out_header.insert(name.to_string(), t);
    }
    for (name, shape, values) in extra_tensors {
        let start = out_data.len();
        out_data.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        out_header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, out_data.len()]}),
        );
    }
    let h = serde_json::to_vec(&out_header).unwrap();
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    file.extend(out_data);
    std::fs::write(&path, file).unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["architectures"] = json!([arch]);
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
}

/// `n` head weights uniform in `[-scale / 2, scale / 2)` from a generator seeded with `seed`
/// (printed with `what`).
fn seeded_head(what: &str, seed: u64, n: usize, scale: f32) -> Vec<f32> {
    eprintln!("{what} head seed {seed}");
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_classifier_checkpoint_answers_its_head_on_the_hidden_state() {
    let m = MadeModel::new("llama", "tiny");
    let want = {
        let s = Server::start(m.path(), &["--is-embedding"]);
        embed(&s, json!(PROMPTS)).await
    };
    let hidden = want[0].len();
    // A fixed head of three classes.
    let head = seeded_head("classifier", 7, 3 * hidden, 0.4);
    rewrite(
        m.path(),
        "LlamaForSequenceClassification",
        false,
        &[("score.weight", vec![3, hidden], head.clone())],
        json!({"id2label": {"0": "neg", "1": "neu", "2": "pos"}}),
    );
    let s = Server::start(m.path(), &[]);
    let (st, v) = s.post("/v1/classify", &json!({"input": PROMPTS})).await;
    assert_eq!(st, 200, "{v}");
    let (st, enc) = s.post("/encode", &json!({"text": PROMPTS})).await;
    assert_eq!(st, 200, "{enc}");
    for (i, e) in want.iter().enumerate() {
        // The raw scores are |h| (W . e): one positive scale for every class.
        let raw = floats(&enc[i]["embedding"]);
        let dots: Vec<f64> = head
            .chunks(hidden)
            .map(|w| w.iter().zip(e).map(|(&a, b)| a as f64 * b).sum())
            .collect();
        let scale = raw[0] / dots[0];
        assert!(scale > 0.0, "{raw:?} vs {dots:?}");
        assert_close(
            &raw,
            &dots.iter().map(|d| d * scale).collect::<Vec<_>>(),
            1e-4 * scale.abs(),
            "head",
        );
        let d = &v["data"][i];
        let probs = floats(&d["probs"]);
        let max = raw.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = raw.iter().map(|r| (r - max).exp()).sum();
        let want_p: Vec<f64> = raw.iter().map(|r| (r - max).exp() / z).collect();
        assert_close(&probs, &want_p, 1e-6, "probs");
        let best = (0..3).max_by(|&a, &b| raw[a].total_cmp(&raw[b])).unwrap();
        assert_eq!(d["label"], ["neg", "neu", "pos"][best]);
        assert_eq!(
            (d["index"].clone(), d["num_classes"].clone()),
            (json!(i), json!(3))
        );
    }
    let (_, info) = s.get("/get_model_info").await;
    assert!(
        info.contains("LlamaForSequenceClassification") && info.contains("\"is_generation\":false"),
        "{info}"
    );
    // A model without a head: /v1/classify is a 400.
    let plain = MadeModel::new("llama", "tiny");
    let e = Server::start(plain.path(), &["--is-embedding"]);
    let (st, v) = e.post("/v1/classify", &json!({"input": "a"})).await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backbone_checkpoint_serves_embeddings_and_matryoshka_sizes() {
    let m = MadeModel::new("llama", "tiny");
    let want = {
        let s = Server::start(m.path(), &["--is-embedding"]);
        embed(&s, json!(PROMPTS)).await
    };
    rewrite(
        m.path(),
        "MistralModel",
        true,
        &[],
        json!({"matryoshka_dimensions": [8, 16]}),
    );
    let s = Server::start(m.path(), &[]);
    let got = embed(&s, json!(PROMPTS)).await;
    for (a, b) in got.iter().zip(&want) {
        assert_close(a, b, 1e-6, "backbone");
    }
    let (st, v) = s
        .post(
            "/v1/embeddings",
            &json!({"input": PROMPTS[0], "dimensions": 8}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let cut = floats(&v["data"][0]["embedding"]);
    let head = &want[0][..8];
    let norm: f64 = head.iter().map(|x| x * x).sum::<f64>().sqrt();
    let expect: Vec<f64> = head.iter().map(|x| x / norm).collect();
    assert_close(&cut, &expect, 1e-5, "matryoshka cut");
    for (d, needle) in [(12, "only supports"), (0, "greater than 0")] {
        let (st, v) = s
            .post("/v1/embeddings", &json!({"input": "a", "dimensions": d}))
            .await;
        assert_eq!(st, 400, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embeddings_reuse_l3_pages_across_a_restart() {
    let m = MadeModel::new("llama", "tiny");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l3");
    let long = "The history of the city begins with a small settlement by the river. ".repeat(8);
    let start = |extra: &str| Server::file_l3_with(m.path(), &dir, extra, &["--is-embedding"]);
    let first = {
        let a = start(r#"{"prefetch_threshold": 32}"#);
        let e = embed(&a, json!(long)).await;
        // The prompt's full pages reach the L3 before the server goes.
        assert!(a.wait_metric("backuped_tokens_total", 128.0).await >= 128.0);
        a.wait_idle().await;
        e
    };
    let b = start(r#"{"prefetch_threshold": 32}"#);
    let again = embed(&b, json!(long)).await;
    assert_close(&again[0], &first[0], 1e-5, "after a restart, from the L3");
    assert!(
        b.metric("prefetched_tokens_total").await >= 128.0,
        "the restarted server read the prompt's pages from the L3"
    );
}

/// The reranking tests' query and documents (two about pandas, two not).
const RERANK_QUERY: &str = "Where do pandas live?";
const RERANK_DOCS: [&str; 4] = [
    "Pandas live in the mountain forests of central China.",
    "The stock market closed higher today.",
    "Bamboo is the main food of the giant panda.",
    "hi",
];

/// `/v1/rerank` (SGLang's cross-encoder reranking) on a one-label sequence-classification
/// checkpoint: each document's score is the sigmoid of the head on the pair `[query, document]`
/// as the tokenizer's pair template joins them (BOS query BOS document here), highest first;
/// `top_n` keeps the best; SGLang's 400s for empty inputs; a server without a one-label head
/// refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cross_encoder_reranks_documents_by_its_head() {
    let m = MadeModel::new("llama", "tiny");
    let hidden = m.dims().1;
    let head = seeded_head("cross-encoder", 11, hidden, 0.2);
    rewrite(
        m.path(),
        "LlamaForSequenceClassification",
        false,
        &[("score.weight", vec![1, hidden], head)],
        json!({"num_labels": 1}),
    );
    let s = Server::start(m.path(), &[]);
    let (query, docs) = (RERANK_QUERY, RERANK_DOCS);
    let (st, v) = s
        .post("/v1/rerank", &json!({"query": query, "documents": docs}))
        .await;
    assert_eq!(st, 200, "{v}");
    let out = v.as_array().unwrap();
    assert_eq!(out.len(), docs.len());
    let tokens = |t: &'static str| {
        let s = &s;
        async move {
            let (st, v) = s.post("/tokenize", &json!({"prompt": t})).await;
            assert_eq!(st, 200, "{v}");
            v["tokens"].as_array().unwrap().clone()
        }
    };
    let q = tokens(query).await;
    let mut seen = Vec::new();
    let mut last = f64::MAX;
    for item in out {
        let i = item["index"].as_u64().unwrap() as usize;
        seen.push(i);
        assert_eq!(item["document"], docs[i]);
        let mut pair = q.clone();
        pair.extend(tokens(docs[i]).await);
        let (st, e) = s.post("/encode", &json!({"input_ids": pair})).await;
        assert_eq!(st, 200, "{e}");
        let raw = floats(&e["embedding"])[0];
        let score = item["score"].as_f64().unwrap();
        let want = 1.0 / (1.0 + (-raw).exp());
        assert!(
            (score - want).abs() < 1e-5,
            "doc {i}: {score} vs sigmoid({raw})"
        );
        assert!(score <= last, "not sorted: {v}");
        last = score;
        assert_eq!(item["meta_info"]["prompt_tokens"], pair.len());
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3]);
    let spread = out[0]["score"].as_f64().unwrap() - last;
    assert!(spread > 1e-3, "the head ranks nothing: {v}");
    let (st, top) = s
        .post(
            "/v1/rerank",
            &json!({"query": query, "documents": docs, "top_n": 2}),
        )
        .await;
    assert_eq!(st, 200, "{top}");
    let key = |v: &Value| {
        (
            v["index"].clone(),
            v["score"].clone(),
            v["document"].clone(),
        )
    };
    let top: Vec<_> = top.as_array().unwrap().iter().map(key).collect();
    assert_eq!(top, out[..2].iter().map(key).collect::<Vec<_>>());
    for (body, msg) in [
        (
            json!({"query": "", "documents": ["a"]}),
            "Query cannot be empty",
        ),
        (
            json!({"query": "q", "documents": []}),
            "Documents cannot be empty",
        ),
        (
            json!({"query": "q", "documents": ["a", "  "]}),
            "Each document cannot be empty or whitespace only",
        ),
    ] {
        let (st, v) = s.post("/v1/rerank", &body).await;
        assert_eq!(st, 400, "{v}");
        assert!(v.to_string().contains(msg), "{v}");
    }
    // An embedding model without a one-label head is no cross-encoder.
    let plain = MadeModel::new("llama", "tiny");
    let e = Server::start(plain.path(), &["--is-embedding"]);
    let (st, v) = e
        .post("/v1/rerank", &json!({"query": "q", "documents": ["a"]}))
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("cross-encoder"), "{v}");
}

/// A reranker chat template in the form of Qwen3-Reranker's (SGLang serves it through
/// `--chat-template`): the system turn says the answer is "yes" or "no", the query and the
/// document come as the two messages, `instruct` has a default.
const RERANK_TEMPLATE: &str = concat!(
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query ",
    "and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n",
    "<|im_start|>user\n<Instruct>: {{ instruct | default(\"Find the passages that answer the ",
    "query\") }}\n<Query>: {{ messages[0][\"content\"] }}\n<Document>: {{ messages[1][\"content\"] }}",
    // Jinja drops a template's final newline: the prompt's last one is an expression.
    "<|im_end|>\n<|im_start|>assistant{{ '\\n' }}",
);

/// The prompt RERANK_TEMPLATE renders.
fn rerank_prompt(instruct: &str, query: &str, doc: &str) -> String {
    format!(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query \
         and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n\
         <|im_start|>user\n<Instruct>: {instruct}\n<Query>: {query}\n<Document>: {doc}<|im_end|>\n\
         <|im_start|>assistant\n"
    )
}

/// `/v1/rerank` on a decoder-only yes/no reranker (SGLang's Qwen3-Reranker path): a generation
/// model served with a reranker chat template scores each document as p(yes) / (p(yes) + p(no))
/// of the token after the rendered template, which is `/v1/score`'s softmax of the two labels on
/// that prompt; highest first; `instruct` replaces the template's default; `top_n` and
/// `return_documents: false`; the same template on an `--is-embedding` server is SGLang's 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decoder_only_reranker_scores_yes_against_no() {
    let m = MadeModel::new("llama", "tiny");
    // "yes" and "no" as single tokens (ids past the trained vocabulary, inside the model's 512).
    let tj = m.path().join("tokenizer.json");
    let mut t: Value = serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    for (id, word) in [(500, "yes"), (501, "no")] {
        t["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": id, "content": word,
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false,
            "special": false}));
    }
    std::fs::write(&tj, t.to_string()).unwrap();
    let template = m.path().join("reranker.jinja");
    std::fs::write(&template, RERANK_TEMPLATE).unwrap();
    let tpl = template.to_str().unwrap();
    let s = Server::start(m.path(), &["--chat-template", tpl]);
    let (query, docs) = (RERANK_QUERY, RERANK_DOCS);
    let expect = |instruct: &'static str| {
        let s = &s;
        async move {
            let mut want = Vec::new();
            for d in docs {
                let body = json!({"query": "", "items": [rerank_prompt(instruct, query, d)],
                    "label_token_ids": [500, 501], "apply_softmax": true});
                let (st, v) = s.post("/v1/score", &body).await;
                assert_eq!(st, 200, "{v}");
                want.push(v["scores"][0][0].as_f64().unwrap());
            }
            want
        }
    };
    let check = |v: &Value, want: &[f64]| {
        let out = v.as_array().unwrap();
        assert_eq!(out.len(), docs.len(), "{v}");
        let mut last = f64::MAX;
        let mut seen: Vec<usize> = Vec::new();
        for item in out {
            let i = item["index"].as_u64().unwrap() as usize;
            let score = item["score"].as_f64().unwrap();
            assert!(
                (score - want[i]).abs() < 1e-5,
                "doc {i}: {score} vs {}",
                want[i]
            );
            assert!(score <= last, "not sorted: {v}");
            assert_eq!(item["document"], docs[i]);
            last = score;
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3]);
    };
    let want = expect("Find the passages that answer the query").await;
    assert!(
        want.iter().any(|&w| (w - want[0]).abs() > 1e-7),
        "the documents score alike: {want:?}"
    );
    let (st, first) = s
        .post("/v1/rerank", &json!({"query": query, "documents": docs}))
        .await;
    assert_eq!(st, 200, "{first}");
    check(&first, &want);
    // A request's own instruction is rendered instead of the default.
    let own = expect("Is it about animals?").await;
    assert_ne!(own, want);
    let body = json!({"query": query, "documents": docs, "instruct": "Is it about animals?"});
    let (st, v) = s.post("/v1/rerank", &body).await;
    assert_eq!(st, 200, "{v}");
    check(&v, &own);
    // top_n keeps the best; without documents the entries say null.
    let body = json!({"query": query, "documents": docs, "top_n": 2, "return_documents": false});
    let (st, top) = s.post("/v1/rerank", &body).await;
    assert_eq!(st, 200, "{top}");
    let top = top.as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert!(top.iter().all(|t| t["document"].is_null()));
    assert_eq!(top[0]["index"], first[0]["index"]);
    assert_eq!(top[1]["index"], first[1]["index"]);
    // The template on an embedding server: SGLang's refusal.
    let e = Server::start(m.path(), &["--chat-template", tpl, "--is-embedding"]);
    let (st, v) = e
        .post("/v1/rerank", &json!({"query": "q", "documents": ["a"]}))
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("not in generation mode"), "{v}");
}
