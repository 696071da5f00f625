//! `POST /v1/rerank` (SGLang's reranking), for both kinds of reranker SGLang serves:
//! - a cross-encoder: a sequence-classification checkpoint of one label served with
//!   `--is-embedding` scores each `[query, document]` pair, tokenised as a pair (the tokenizer's
//!   pair template) and run as an embedding request; the score is the head's logit through a
//!   sigmoid (a one-label cross-encoder's default activation);
//! - a decoder-only yes/no reranker (Qwen3-Reranker): a generation model whose chat template is
//!   a reranker's (SGLang's test: it says the answer can only be "yes" or "no"; e.g. SGLang's
//!   `qwen3_reranker.jinja` through `--chat-template`) renders the template for each document
//!   (`messages` = the query and the document as two user turns, `instruct` when the request
//!   gives one) and scores the token after it: p(yes) / (p(yes) + p(no)), each from one softmax
//!   over the whole vocabulary (`/v1/score`'s label log-probabilities).
//!
//! The answer is SGLang's: a list of `{score, document, index, meta_info}`, highest score first
//! (equal scores in document order), `top_n` (when above 0) keeping the best,
//! `return_documents: false` leaving `document` null.

use super::embed::{body, embed_all};
use super::error::ApiError;
use super::score::label_logprobs;
use super::AppState;
use crate::model::chat_template::{render, Extra};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

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
            "/v1/rerank needs a cross-encoder (a *ForSequenceClassification checkpoint of one \
             label, served with --is-embedding) or a decoder-only yes/no reranker (a generation \
             model served with a reranker chat template, e.g. --chat-template \
             qwen3_reranker.jinja).",
        )),
    }
}

/// SGLang's test for a decoder-only (yes/no) reranker's chat template.
pub fn is_reranker_template(template: &str) -> bool {
    let t = template.to_lowercase();
    t.contains("answer can only be \"yes\" or \"no\"")
        || (t.contains("answer can only be") && t.contains("\"yes\"") && t.contains("\"no\""))
}

/// One document's score and its request's facts.
struct Scored {
    score: f64,
    meta: Value,
}

pub async fn rerank(State(st): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let v = body(&bytes)?;
    let (query, docs) = read(&v)?;
    let template = st
        .tokenizer
        .chat_template
        .as_deref()
        .filter(|t| is_reranker_template(t));
    let scored = match template {
        Some(_) if st.info.is_embedding => {
            return Err(ApiError::bad_request(
                "Detected Qwen3 reranker chat template, but the server is not in generation \
                 mode. Please relaunch without --is-embedding for Qwen3-Reranker models.",
            ))
        }
        Some(t) => decoder_scores(&st, t, &query, &docs, &v).await?,
        None => cross_encoder_scores(&st, &query, &docs, &v).await?,
    };
    let mut ranked: Vec<(usize, Scored)> = scored.into_iter().enumerate().collect();
    // Highest first; equal scores keep the documents' order.
    ranked.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
    if let Some(n) = v.get("top_n").and_then(Value::as_u64).filter(|&n| n > 0) {
        ranked.truncate(n as usize);
    }
    let with_docs = v
        .get("return_documents")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let out: Vec<Value> = ranked
        .into_iter()
        .map(|(i, s)| {
            let doc = if with_docs {
                json!(docs[i])
            } else {
                Value::Null
            };
            json!({"score": s.score, "document": doc, "index": i, "meta_info": s.meta})
        })
        .collect();
    Ok(Json(Value::Array(out)).into_response())
}

async fn cross_encoder_scores(
    st: &AppState,
    query: &str,
    docs: &[String],
    v: &Value,
) -> Result<Vec<Scored>, ApiError> {
    check_head(st)?;
    let pairs = docs
        .iter()
        .map(|d| st.tokenizer.encode_pair(query, d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::bad_request)?;
    let done = embed_all(st, pairs, v, None).await?;
    Ok(done
        .iter()
        .map(|e| Scored {
            score: sigmoid(e.vector.first().copied().unwrap_or(0.0)) as f64,
            meta: json!({"id": e.rid, "prompt_tokens": e.prompt_tokens,
                "e2e_latency": e.e2e_secs}),
        })
        .collect())
}

/// The yes/no reranker's scores: each document's rendered prompt, its next token's p(yes) and
/// p(no) from one request each (queued together: the documents batch and share the prompt's
/// cached prefix).
async fn decoder_scores(
    st: &AppState,
    template: &str,
    query: &str,
    docs: &[String],
    v: &Value,
) -> Result<Vec<Scored>, ApiError> {
    let labels = yes_no_ids(st)?;
    // The template's own default instruction unless the request names one.
    let mut kwargs = Map::new();
    if let Some(i) = v.get("instruct").and_then(Value::as_str) {
        if !i.is_empty() {
            kwargs.insert("instruct".into(), json!(i));
        }
    }
    let tok = &st.tokenizer;
    let prompts = docs
        .iter()
        .map(|d| {
            let turns = [
                json!({"role": "user", "content": query}),
                json!({"role": "user", "content": d}),
            ];
            let extra = Extra {
                tools: None,
                kwargs: Some(&kwargs),
            };
            let text = render(
                template,
                &turns,
                false,
                tok.bos_token.as_deref(),
                tok.eos_token.as_deref(),
                extra,
            )
            .map_err(ApiError::bad_request)?;
            st.encode(&text)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(label_logprobs(st, prompts, &labels)
        .await?
        .into_iter()
        .map(|l| {
            let (yes, no) = ((l.logprobs[0] as f64).exp(), (l.logprobs[1] as f64).exp());
            Scored {
                score: if yes + no > 0.0 {
                    yes / (yes + no)
                } else {
                    0.0
                },
                meta: json!({"id": l.rid, "prompt_tokens": l.prompt_tokens}),
            }
        })
        .collect())
}

/// The "yes" and "no" label tokens as SGLang finds them: each word's encoding when both are one
/// token, else the vocabulary's entries for them, else Qwen3's ids (9693, 2152) where the
/// vocabulary holds them.
fn yes_no_ids(st: &AppState) -> Result<[u32; 2], ApiError> {
    let tok = &st.tokenizer;
    let one = |w: &str| match tok.encode(w, false) {
        Ok(ids) if ids.len() == 1 => Some(ids[0]),
        _ => None,
    };
    let ids = match (one("yes"), one("no")) {
        (Some(y), Some(n)) => [y, n],
        _ => match (tok.token_to_id("yes"), tok.token_to_id("no")) {
            (Some(y), Some(n)) => [y, n],
            _ => [9693, 2152],
        },
    };
    if ids.iter().any(|&t| t as usize >= st.info.vocab_size) {
        return Err(ApiError::bad_request(
            "The reranker chat template scores \"yes\" against \"no\", but the tokenizer has no \
             single token for them.",
        ));
    }
    Ok(ids)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
