//! `POST /v1/rerank` (SGLang's cross-encoder reranking): a sequence-classification checkpoint of
//! one label served with `--is-embedding` scores each `[query, document]` pair, tokenised as a
//! pair (the tokenizer's pair template) and run as an embedding request; the score is the head's
//! logit through a sigmoid (a one-label cross-encoder's default activation). The answer is
//! SGLang's: a list of `{score, document, index, meta_info}`, highest score first.

use super::embed::{body, embed_all};
use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The request's query and documents, with SGLang's validation messages.
fn read(v: &Value) -> Result<(String, Vec<String>), ApiError> {
    let bad = |m: &str| ApiError::bad_request(m.to_string());
    let query = match v.get("query") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.clone(),
        Some(Value::String(q)) if !q.is_empty() => {
            return Err(bad("Query cannot be empty or whitespace only"))
        }
        _ => return Err(bad("Query cannot be empty")),
    };
    let docs = v
        .get("documents")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad("Documents cannot be empty"))?;
    let docs = docs
        .iter()
        .map(|d| match d.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
            Some(s) if !s.is_empty() => {
                Err(bad("Each document cannot be empty or whitespace only"))
            }
            _ => Err(bad("Each document must be a non-empty string")),
        })
        .collect::<Result<_, _>>()?;
    Ok((query, docs))
}

/// Whether the server has a cross-encoder head: a classifier of exactly one label.
fn check_head(st: &AppState) -> Result<(), ApiError> {
    match st.classifier.as_deref() {
        Some(c) if c.labels.len() == 1 => Ok(()),
        Some(c) => Err(ApiError::bad_request(format!(
            "/v1/rerank needs a cross-encoder: a sequence-classification head of one label, not {}.",
            c.labels.len()
        ))),
        None => Err(ApiError::bad_request(
            "/v1/rerank needs a cross-encoder: a *ForSequenceClassification checkpoint of one \
             label, served with --is-embedding.",
        )),
    }
}

pub async fn rerank(State(st): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let v = body(&bytes)?;
    let (query, docs) = read(&v)?;
    check_head(&st)?;
    let pairs = docs
        .iter()
        .map(|d| st.tokenizer.encode_pair(&query, d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::bad_request)?;
    let done = embed_all(&st, pairs, &v, None).await?;
    let mut ranked: Vec<(f32, usize)> = done
        .iter()
        .enumerate()
        .map(|(i, e)| (sigmoid(e.vector.first().copied().unwrap_or(0.0)), i))
        .collect();
    // Highest first; equal scores keep the documents' order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let top = v
        .get("top_n")
        .and_then(Value::as_u64)
        .map_or(ranked.len(), |n| n as usize);
    let out: Vec<Value> = ranked
        .into_iter()
        .take(top)
        .map(|(score, i)| {
            let e = &done[i];
            json!({"score": score, "document": docs[i], "index": i,
                "meta_info": {"id": e.rid, "prompt_tokens": e.prompt_tokens,
                    "e2e_latency": e.e2e_secs}})
        })
        .collect();
    Ok(Json(Value::Array(out)).into_response())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
