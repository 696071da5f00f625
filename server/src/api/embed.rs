//! Embeddings, served when the model is an embedding model (`--is-embedding`, or a backbone
//! architecture such as `MistralModel`): OpenAI's `POST /v1/embeddings`, SGLang's `POST /encode`
//! and Ollama's `POST /api/embed` and legacy `POST /api/embeddings`.
//!
//! Each input runs as a prompt-only request through the scheduler (batched, chunked, prefix
//! cached and HiCache-backed like any prompt); its answer is the last token's hidden state after
//! the final norm (SGLang's `LAST` pooling), cut to `dimensions` when asked (Matryoshka models
//! only, as in SGLang) and L2-normalised; a classification checkpoint answers its class scores
//! instead (`classify.rs`). On a server launched for generation these routes answer SGLang's 400
//! ("does not appear to be an embedding model").

use super::driver::Driver;
use super::error::ApiError;
use super::ollama::ollama_error;
use super::AppState;
use crate::scheduler::request::FinishReason;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::Instant;

/// One finished input.
pub(super) struct Embedded {
    pub rid: String,
    pub vector: Vec<f32>,
    pub prompt_tokens: usize,
    pub e2e_secs: f64,
}

/// The inputs of a request: texts (tokenised here, with BOS) or token ids.
pub(super) fn prompts(st: &AppState, v: &Value, field: &str) -> Result<Vec<Vec<u32>>, ApiError> {
    let empty = || ApiError::bad_request("Input cannot be empty");
    let ids = |x: &Value, i: usize| -> Result<Vec<u32>, ApiError> {
        let a = x
            .as_array()
            .ok_or_else(|| ApiError::bad_request(format!("Input at index {i} must be a list")))?;
        if a.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Input at index {i} cannot be empty"
            )));
        }
        a.iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&t| t <= u32::MAX as u64)
                    .map(|t| t as u32)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "Input at index {i} must contain only non-negative integers"
                        ))
                    })
            })
            .collect()
    };
    let text = |s: &str, i: Option<usize>| -> Result<Vec<u32>, ApiError> {
        if s.trim().is_empty() {
            return Err(ApiError::bad_request(match i {
                Some(i) => format!("Input at index {i} cannot be empty or whitespace only"),
                None => "Input cannot be empty or whitespace only".into(),
            }));
        }
        st.encode(s)
    };
    match v {
        Value::String(s) => Ok(vec![text(s, None)?]),
        Value::Array(a) if a.is_empty() => Err(empty()),
        Value::Array(a) => match &a[0] {
            Value::String(_) => a
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::String(s) => text(s, Some(i)),
                    _ => Err(ApiError::bad_request(
                        "All items in input list must be strings",
                    )),
                })
                .collect(),
            Value::Number(_) => Ok(vec![ids(v, 0)?]),
            Value::Array(_) => a.iter().enumerate().map(|(i, x)| ids(x, i)).collect(),
            Value::Object(_) => Err(ApiError::bad_request(
                "Multimodal embedding inputs (text with images or video) need a vision model; \
                 strata serve has none.",
            )),
            _ => Err(ApiError::bad_request(format!(
                "`{field}` must be a string, a list of strings, a list of token ids or a list \
                 of token id lists"
            ))),
        },
        Value::Null => Err(empty()),
        _ => Err(ApiError::bad_request(format!(
            "`{field}` must be a string, a list of strings, a list of token ids or a list of \
             token id lists"
        ))),
    }
}

/// Checks `dimensions` against the model (SGLang's rules for Matryoshka embeddings).
fn check_dimensions(st: &AppState, dims: Option<&Value>) -> Result<Option<usize>, ApiError> {
    let Some(d) = dims.filter(|d| !d.is_null()) else {
        return Ok(None);
    };
    let d = d
        .as_i64()
        .ok_or_else(|| ApiError::bad_request("`dimensions` must be an integer"))?;
    let model = &st.info.served_model_name;
    let Some(sizes) = &st.info.matryoshka else {
        return Err(ApiError::bad_request(format!(
            "Model '{model}' does not support matryoshka representation (config.json has \
             neither is_matryoshka nor matryoshka_dimensions); changing the output dimensions \
             would give poor embeddings."
        )));
    };
    if d < 1 {
        return Err(ApiError::bad_request(
            "Requested dimensions must be greater than 0",
        ));
    }
    let d = d as usize;
    if let Some(sizes) = sizes.as_ref().filter(|s| !s.contains(&d)) {
        return Err(ApiError::bad_request(format!(
            "Model '{model}' only supports {sizes:?} matryoshka dimensions; other output \
             dimensions would give poor embeddings."
        )));
    }
    if d > st.info.hidden_size {
        return Err(ApiError::bad_request(format!(
            "Provided dimensions are greater than max embedding dimension: {}",
            st.info.hidden_size
        )));
    }
    Ok(Some(d))
}

/// The pooled embedding of a hidden state: the first `dims` values, L2-normalised.
pub fn pool(mut hidden: Vec<f32>, dims: Option<usize>) -> Vec<f32> {
    if let Some(d) = dims {
        hidden.truncate(d);
    }
    let norm = hidden
        .iter()
        .map(|&x| x as f64 * x as f64)
        .sum::<f64>()
        .sqrt();
    let scale = 1.0 / norm.max(1e-12);
    hidden.iter().map(|&x| (x as f64 * scale) as f32).collect()
}

/// Runs every prompt (all queued first, so they batch) and gathers their pooled embeddings;
/// `req` is the request body (its `rid`, one or one per prompt, names them).
pub(super) async fn embed_all(
    st: &AppState,
    prompts: Vec<Vec<u32>>,
    req: &Value,
    dims: Option<usize>,
) -> Result<Vec<Embedded>, ApiError> {
    let rids = rids(req, prompts.len());
    if !st.info.is_embedding {
        return Err(ApiError::bad_request(
            "This model does not appear to be an embedding model by default. Please add \
             `--is-embedding` when launching the server or try another model.",
        ));
    }
    let mut drivers = Vec::with_capacity(prompts.len());
    let mut rids = rids.into_iter();
    for ids in prompts {
        drivers.push(Driver::submit_embed(st, ids, rids.next().flatten())?);
    }
    let mut out = Vec::with_capacity(drivers.len());
    for mut d in drivers {
        d.run_to_end().await;
        if let Some(e) = d.refused() {
            return Err(e);
        }
        let finish = d.out.finish.as_ref();
        let Some(hidden) = d.out.embedding.take() else {
            let why = match finish.map(|f| &f.reason) {
                Some(FinishReason::Abort(m)) => m.clone(),
                _ => "no embedding came back".into(),
            };
            return Err(ApiError::unavailable(format!(
                "The embedding request {} failed: {why}",
                d.rid
            )));
        };
        let vector = match &st.classifier {
            Some(c) => c.scores(&hidden),
            None => pool(hidden, dims),
        };
        out.push(Embedded {
            rid: d.rid.clone(),
            vector,
            prompt_tokens: d.prompt_tokens,
            e2e_secs: d.arrival.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}

/// The prompt tokens of a request's inputs.
pub(super) fn prompt_tokens(done: &[Embedded]) -> usize {
    done.iter().map(|e| e.prompt_tokens).sum()
}

pub(super) fn body(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    }
    Ok(v)
}

/// The request ids a request names (`rid`: one string or one per input).
fn rids(v: &Value, n: usize) -> Vec<Option<String>> {
    match v.get("rid") {
        Some(Value::String(s)) if n == 1 => vec![Some(s.clone())],
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
        _ => vec![None; n],
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(st): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let v = body(&bytes)?;
    let input = v
        .get("input")
        .ok_or_else(|| ApiError::bad_request("Input cannot be empty"))?;
    let base64 = match v.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format {other:?}: expected \"float\" or \"base64\""
            )))
        }
    };
    let dims = check_dimensions(&st, v.get("dimensions"))?;
    let prompts = prompts(&st, input, "input")?;
    let done = embed_all(&st, prompts, &v, dims).await?;
    let tokens = prompt_tokens(&done);
    let data: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = if base64 {
                json!(base64_f32(&e.vector))
            } else {
                json!(e.vector)
            };
            json!({"object": "embedding", "embedding": embedding, "index": i})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": st.info.served_model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }))
    .into_response())
}

/// `POST /encode`: SGLang's native route (`text` or `input_ids`, one or a batch).
pub async fn encode(State(st): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let v = body(&bytes)?;
    if v.get("image_data").is_some_and(|x| !x.is_null()) {
        return Err(ApiError::bad_request(
            "image_data needs a vision model; strata serve has none.",
        ));
    }
    let (input, field) = match (v.get("text"), v.get("input_ids")) {
        (Some(t), None) | (Some(t), Some(Value::Null)) if !t.is_null() => (t, "text"),
        (None | Some(Value::Null), Some(ids)) if !ids.is_null() => (ids, "input_ids"),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "Either text or input_ids should be provided, not both.",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "Either text or input_ids should be provided.",
            ))
        }
    };
    // A batch is a list of texts or a list of id lists; one text or one id list is single.
    let single = match input {
        Value::String(_) => true,
        Value::Array(a) => a.first().is_some_and(Value::is_number),
        _ => true,
    };
    let dims = check_dimensions(&st, v.get("dimensions"))?;
    let prompts = prompts(&st, input, field)?;
    let done = embed_all(&st, prompts, &v, dims).await?;
    let version = st.served.read().expect("served").version.clone();
    let items: Vec<Value> = done
        .into_iter()
        .map(|e| {
            json!({
                "embedding": e.vector,
                "meta_info": {
                    "id": e.rid,
                    "finish_reason": {"type": "length", "length": 0},
                    "prompt_tokens": e.prompt_tokens,
                    "weight_version": version,
                    "e2e_latency": e.e2e_secs,
                },
            })
        })
        .collect();
    Ok(if single {
        Json(items.into_iter().next().expect("one input")).into_response()
    } else {
        Json(items).into_response()
    })
}

/// `POST /api/embed` (Ollama): `input` one text or a list; `truncate` (default true) cuts an
/// input longer than the context instead of failing; `dimensions` as on `/v1/embeddings`.
pub async fn ollama_embed(State(st): State<AppState>, bytes: Bytes) -> Response {
    let start = Instant::now();
    let run = async {
        let v = body(&bytes)?;
        let dims = check_dimensions(&st, v.get("dimensions"))?;
        let input = v.get("input").unwrap_or(&Value::Null);
        let mut prompts = prompts(&st, input, "input")?;
        if v.get("truncate").and_then(Value::as_bool) != Some(false) {
            // As `--allow-auto-truncate` cuts a prompt (SGLang's length).
            let (ctx, kv) = (st.info.context_length, st.info.max_total_tokens);
            for p in &mut prompts {
                super::driver::fit_input(p, ctx, kv, true)?;
            }
        }
        let done = embed_all(&st, prompts, &v, dims).await?;
        let tokens = prompt_tokens(&done);
        let vectors: Vec<&Vec<f32>> = done.iter().map(|e| &e.vector).collect();
        Ok::<_, ApiError>(Json(json!({
            "model": v.get("model").cloned().unwrap_or(json!(st.info.served_model_name)),
            "embeddings": vectors,
            "total_duration": start.elapsed().as_nanos() as u64,
            "load_duration": 0,
            "prompt_eval_count": tokens,
        })))
    };
    match run.await {
        Ok(j) => j.into_response(),
        Err(e) => ollama_error(e),
    }
}

/// `POST /api/embeddings` (Ollama's older route): one `prompt`, answered `{"embedding": [...]}`.
pub async fn ollama_embeddings(State(st): State<AppState>, bytes: Bytes) -> Response {
    let run = async {
        let v = body(&bytes)?;
        let prompt = v.get("prompt").unwrap_or(&Value::Null);
        if !prompt.is_string() {
            return Err(ApiError::bad_request("`prompt` must be a string"));
        }
        let prompts = prompts(&st, prompt, "prompt")?;
        let done = embed_all(&st, prompts, &v, None).await?;
        Ok(Json(json!({"embedding": done[0].vector})))
    };
    match run.await {
        Ok(j) => j.into_response(),
        Err(e) => ollama_error(e),
    }
}

/// Little-endian f32 bytes in standard base64 with padding (OpenAI's `encoding_format:
/// "base64"`, which its Python client asks for by default and decodes with numpy).
pub fn base64_f32(v: &[f32]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        // 1.0f32 = 00 00 80 3f; 2.0 = 00 00 00 40.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(base64_f32(&[]), "");
        // Three bytes to four characters without padding: 12 bytes -> 16 characters.
        assert_eq!(base64_f32(&[0.0, 0.0, 0.0]), "A".repeat(16));
    }

    #[test]
    fn pooling_cuts_then_normalises() {
        let v = pool(vec![3.0, 4.0, 12.0], None);
        let n: f32 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-6);
        assert!((v[0] - 3.0 / 13.0).abs() < 1e-6);
        assert_eq!(pool(vec![3.0, 4.0, 12.0], Some(2)), vec![0.6, 0.8]);
        // A zero vector stays zero (no division by zero).
        assert_eq!(pool(vec![0.0, 0.0], None), vec![0.0, 0.0]);
    }
}
