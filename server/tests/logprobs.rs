//! Log-probabilities through the HTTP app (in-process) against log-softmax of reference logits:
//! the prompt and the greedy output are run once through a fresh paged forward pass that returns
//! every row, and `/generate`, `/v1/completions` and `/v1/chat/completions` must report the same
//! numbers (|Δ| <= 1e-4) in SGLang's and OpenAI's shapes. Also: a prompt served from the prefix
//! cache still gets its input log-probabilities, and `max_new_tokens: 0` scores without generating.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use strata_kernels::CpuBackend;
use strata_make_model::{make_model, DType, MakeModel, Size};
use strata_server::api::app;
use strata_server::launch::{launch_cpu, ServeOptions};
use strata_server::model::{Arch, ForwardBatch, Model, SeqSlice};
use tower::ServiceExt;

const TOL: f64 = 1e-4;

fn opts(dir: &std::path::Path) -> ServeOptions {
    ServeOptions {
        page_size: 4,
        max_running_requests: 8,
        // Small chunks: the prompt's rows arrive over several rounds.
        chunked_prefill_size: Some(7),
        context_length: Some(256),
        max_total_tokens: Some(1024),
        ..ServeOptions::new(dir.to_path_buf())
    }
}

async fn post(router: &axum::Router, path: &str, body: Value) -> Value {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    v
}

/// Log-softmax of every position's logits for `ids`, one sequence in one pass.
fn reference(model: &Model<CpuBackend>, ids: &[u32]) -> Vec<Vec<f64>> {
    let ps = 4;
    let pages = ids.len().div_ceil(ps);
    let mut kv = model.new_kv(pages + 1, ps).unwrap();
    let batch = ForwardBatch {
        tokens: ids.to_vec(),
        positions: (0..ids.len() as u32).collect(),
        slots: (0..ids.len() as u32).collect(),
        seqs: vec![SeqSlice {
            q_start: 0,
            q_len: ids.len(),
            kv_len: ids.len(),
            pages: std::sync::Arc::new((0..pages as u32).collect()),
            decode: false,
            lora: None,
        }],
        logit_rows: (0..ids.len()).collect(),
        from_prev: Vec::new(),
    };
    let l = model.forward(&batch, &mut kv).unwrap();
    l.chunks(model.cfg.vocab_size)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            row.iter().map(|&v| v as f64 - lse).collect()
        })
        .collect()
}

fn close(got: &Value, want: f64, what: &str) {
    let g = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {got} is not a number"));
    assert!((g - want).abs() <= TOL, "{what}: got {g}, want {want}");
}

/// The `n` best (token, logprob) of a reference row, ties to the smaller id.
fn top(row: &[f64], n: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx[..n].iter().map(|&i| (i as u32, row[i])).collect()
}

fn check_top(got: &Value, row: &[f64], n: usize, what: &str) {
    let got = got.as_array().unwrap_or_else(|| panic!("{what}: {got}"));
    assert_eq!(got.len(), n, "{what}");
    for (g, (id, lp)) in got.iter().zip(top(row, n)) {
        // Near-ties may swap order within the tolerance; the value is what must match.
        close(&g[0], lp, what);
        let gid = g[1].as_u64().unwrap() as usize;
        close(&json!(row[gid]), lp, &format!("{what} id {gid} vs {id}"));
    }
}

#[tokio::test]
async fn logprobs_match_log_softmax_of_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    make_model(
        &MakeModel {
            arch: Arch::Llama,
            size: Size::Tiny,
            seed: 11,
            dtype: DType::F32,
        },
        dir.path(),
    )
    .unwrap();
    let model = Model::load(dir.path(), CpuBackend, 256).unwrap();
    let router = app(launch_cpu(&opts(dir.path())).unwrap());
    let prompt: Vec<u32> = (0..19).map(|i| (i * 37 + 5) % 200 + 3).collect();
    let l = prompt.len();
    let v = post(
        &router,
        "/generate",
        json!({"input_ids": prompt, "return_logprob": true, "logprob_start_len": 0,
            "top_logprobs_num": 3, "token_ids_logprob": [5, 9], "return_text_in_logprobs": true,
            "sampling_params": {"temperature": 0, "max_new_tokens": 4, "ignore_eos": true}}),
    )
    .await;
    let out: Vec<u32> = v["output_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(out.len(), 4);
    let all: Vec<u32> = prompt.iter().chain(&out).copied().collect();
    let r = reference(&model, &all);
    let m = &v["meta_info"];
    // Input: element 0 is [null, first id, text]; element k scores prompt[k] from row k-1.
    let inp = m["input_token_logprobs"].as_array().unwrap();
    assert_eq!(inp.len(), l);
    assert_eq!(inp[0][0], Value::Null);
    assert_eq!(inp[0][1], prompt[0]);
    assert!(inp[0][2].is_string(), "text asked for: {}", inp[0]);
    for k in 1..l {
        assert_eq!(inp[k][1], prompt[k]);
        close(
            &inp[k][0],
            r[k - 1][prompt[k] as usize],
            &format!("input {k}"),
        );
        check_top(
            &m["input_top_logprobs"][k],
            &r[k - 1],
            3,
            &format!("input top {k}"),
        );
        let ids = &m["input_token_ids_logprobs"][k];
        assert_eq!(ids[0][1], 5);
        close(&ids[0][0], r[k - 1][5], "input id 5");
        close(&ids[1][0], r[k - 1][9], "input id 9");
    }
    assert_eq!(m["input_top_logprobs"][0], Value::Null);
    assert_eq!(m["input_token_ids_logprobs"][0], Value::Null);
    // Output: token j comes from row l-1+j and, being greedy, is the top-1 there.
    let o = m["output_token_logprobs"].as_array().unwrap();
    assert_eq!(o.len(), 4);
    for j in 0..4 {
        let row = &r[l - 1 + j];
        assert_eq!(o[j][1], out[j]);
        close(&o[j][0], row[out[j] as usize], &format!("output {j}"));
        check_top(
            &m["output_top_logprobs"][j],
            row,
            3,
            &format!("output top {j}"),
        );
        close(
            &m["output_top_logprobs"][j][0][0],
            row[out[j] as usize],
            "greedy is top-1",
        );
        close(
            &m["output_token_ids_logprobs"][j][1][0],
            row[9],
            "output id 9",
        );
    }

    // The same prompt again is served from the prefix cache, yet scores from position 5 on.
    let v2 = post(
        &router,
        "/generate",
        json!({"input_ids": prompt, "return_logprob": true, "logprob_start_len": 5,
            "sampling_params": {"temperature": 0, "max_new_tokens": 2, "ignore_eos": true}}),
    )
    .await;
    let inp2 = v2["meta_info"]["input_token_logprobs"].as_array().unwrap();
    assert_eq!(inp2.len(), l - 5);
    assert_eq!(inp2[0], json!([null, prompt[5], null]));
    for k in 1..l - 5 {
        close(
            &inp2[k][0],
            r[k + 4][prompt[k + 5] as usize],
            &format!("cached input {k}"),
        );
    }
    assert!(v2["meta_info"].get("input_top_logprobs").is_none());
    // Default start: output tokens plus the last prompt token without a value.
    let v3 = post(
        &router,
        "/generate",
        json!({"input_ids": prompt, "return_logprob": true,
            "sampling_params": {"temperature": 0, "max_new_tokens": 1}}),
    )
    .await;
    assert_eq!(
        v3["meta_info"]["input_token_logprobs"],
        json!([[null, prompt[l - 1], null]])
    );
    close(
        &v3["meta_info"]["output_token_logprobs"][0][0],
        r[l - 1][out[0] as usize],
        "default output",
    );

    // max_new_tokens 0: nothing generated, the prompt is scored.
    let v0 = post(
        &router,
        "/generate",
        json!({"input_ids": prompt, "return_logprob": true, "logprob_start_len": 0,
            "sampling_params": {"max_new_tokens": 0}}),
    )
    .await;
    assert_eq!(v0["output_ids"], json!([]), "{v0}");
    assert_eq!(v0["text"], "");
    assert_eq!(v0["meta_info"]["completion_tokens"], 0);
    assert_eq!(
        v0["meta_info"]["finish_reason"],
        json!({"type": "length", "length": 0})
    );
    assert_eq!(v0["meta_info"]["output_token_logprobs"], json!([]));
    let inp0 = v0["meta_info"]["input_token_logprobs"].as_array().unwrap();
    assert_eq!(inp0.len(), l);
    close(
        &inp0[l - 1][0],
        r[l - 2][prompt[l - 1] as usize],
        "scored last",
    );

    // OpenAI completions: `logprobs: 2` with echo scores the prompt too (first position null).
    let c = post(
        &router,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": true,
            "ignore_eos": true}),
    )
    .await;
    let lp = &c["choices"][0]["logprobs"];
    let lps = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), l + 3, "{lp}");
    assert_eq!(lps[0], Value::Null);
    assert_eq!(lp["top_logprobs"][0], Value::Null);
    close(&lps[1], r[0][prompt[1] as usize], "completions prompt 1");
    for j in 0..3 {
        close(
            &lps[l + j],
            r[l - 1 + j][out[j] as usize],
            "completions output",
        );
        let tops = lp["top_logprobs"][l + j].as_object().unwrap();
        assert!(!tops.is_empty() && tops.len() <= 2, "{tops:?}");
    }
    assert_eq!(lp["tokens"].as_array().unwrap().len(), l + 3);
    assert_eq!(lp["text_offset"][0], 0);
    // Without echo: output tokens only.
    let c = post(
        &router,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "logprobs": 0}),
    )
    .await;
    let lp = &c["choices"][0]["logprobs"];
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 2);
    close(
        &lp["token_logprobs"][0],
        r[l - 1][out[0] as usize],
        "completions",
    );
    // No logprobs asked: null, as OpenAI answers.
    let c = post(
        &router,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 1}),
    )
    .await;
    assert_eq!(c["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn chat_logprobs_have_openai_shape_and_streaming_splits_them() {
    let dir = tempfile::tempdir().unwrap();
    make_model(
        &MakeModel {
            arch: Arch::Qwen3,
            size: Size::Tiny,
            seed: 4,
            dtype: DType::F32,
        },
        dir.path(),
    )
    .unwrap();
    let router = app(launch_cpu(&opts(dir.path())).unwrap());
    let body = json!({"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5,
        "temperature": 0, "logprobs": true, "top_logprobs": 2});
    let v = post(&router, "/v1/chat/completions", body.clone()).await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(content.len(), n);
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        assert!(e["token"].is_string() && e["bytes"].is_array());
        let tops = e["top_logprobs"].as_array().unwrap();
        assert_eq!(tops.len(), 2);
        // Greedy: the chosen token is the most likely one.
        assert!((tops[0]["logprob"].as_f64().unwrap() - lp).abs() <= TOL);
        assert!(tops[0]["logprob"].as_f64() >= tops[1]["logprob"].as_f64());
    }
    // Streaming: the chunks' logprobs together are the same list.
    let mut sbody = body;
    sbody["stream"] = json!(true);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(sbody.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let mut streamed = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let c: Value = serde_json::from_str(line).unwrap();
        if let Some(xs) = c["choices"][0]["logprobs"]["content"].as_array() {
            streamed.extend(xs.iter().cloned());
        }
    }
    assert_eq!(&streamed, content);
    // Out-of-range counts are 400s.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})
                .to_string(),
        ))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}
