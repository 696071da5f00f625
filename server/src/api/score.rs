//! `POST /v1/score` (SGLang's decoder-only scoring, the way Qwen3-Reranker-style rerankers and
//! LLM judges are served): for each item, the probability that the token after `query + item`
//! (or `item + query` with `item_first`) is each of `label_token_ids`, in that order.
//!
//! Text prompts are the two strings joined and tokenised with BOS; token-id prompts are the two
//! lists joined. Each prompt runs as a greedy one-token request whose first output position
//! reports the label tokens' log-probabilities (one log-softmax over the whole vocabulary, as
//! SGLang's `token_ids_logprob`); all items are queued together so they batch, and items sharing
//! the query share its cached prefix. A score is `exp(logprob)`, or with `apply_softmax` the
//! softmax of the label tokens' log-probabilities (so each item's scores sum to 1).

use super::driver::Driver;
use super::error::ApiError;
use super::AppState;
use crate::logprobs::LogprobSpec;
use crate::sampling::SamplingParams;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

/// A query or an item: text, or token ids.
enum Part {
    Text(String),
    Ids(Vec<u32>),
}

fn part(v: &Value, what: &str) -> Result<Part, ApiError> {
    match v {
        Value::String(s) => Ok(Part::Text(s.clone())),
        Value::Array(a) => a
            .iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&t| t <= u32::MAX as u64)
                    .map(|t| t as u32)
            })
            .collect::<Option<Vec<u32>>>()
            .map(Part::Ids)
            .ok_or_else(|| {
                ApiError::bad_request(format!("{what} must contain only non-negative integers"))
            }),
        _ => Err(ApiError::bad_request(format!(
            "{what} must be a string or a list of token ids"
        ))),
    }
}

/// The scores of one item from its label tokens' log-probabilities.
pub fn scores(logprobs: &[f32], apply_softmax: bool) -> Vec<f64> {
    if apply_softmax {
        softmax(logprobs)
    } else {
        logprobs.iter().map(|&x| (x as f64).exp()).collect()
    }
}

/// The softmax of `x` in f64 (all zeros when every value is -inf).
pub fn softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    if max == f64::NEG_INFINITY {
        return vec![0.0; x.len()];
    }
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// One prompt's label tokens' log-probabilities at the position after it.
pub struct Labelled {
    pub logprobs: Vec<f32>,
    pub prompt_tokens: usize,
    pub rid: String,
}

/// Runs each prompt as a greedy one-token request reporting `labels`' log-probabilities at its
/// first output position, all queued together (so they batch and share cached prefixes).
pub async fn label_logprobs(
    st: &AppState,
    prompts: Vec<Vec<u32>>,
    labels: &[u32],
) -> Result<Vec<Labelled>, ApiError> {
    let mut params = SamplingParams {
        max_new_tokens: 1,
        ..SamplingParams::default()
    };
    params.sample.temperature = 0.0;
    let mut drivers = Vec::with_capacity(prompts.len());
    for ids in prompts {
        let spec = LogprobSpec {
            start: ids.len(),
            top_n: 0,
            token_ids: Some(labels.to_vec()),
        };
        drivers.push(Driver::submit(st, ids, params.clone(), Some(spec), None)?);
    }
    let mut out = Vec::with_capacity(drivers.len());
    for mut d in drivers {
        d.run_to_end().await;
        if let Some(e) = d.refused() {
            return Err(e);
        }
        let Some(pos) = d.out.logprobs.first() else {
            return Err(ApiError::unavailable(format!(
                "The scoring request {} ended without a result.",
                d.rid
            )));
        };
        out.push(Labelled {
            logprobs: pos.ids.iter().map(|&(_, lp)| lp).collect(),
            prompt_tokens: d.prompt_tokens,
            rid: d.rid.clone(),
        });
    }
    Ok(out)
}

pub async fn score(State(st): State<AppState>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))?;
    let labels: Vec<u32> = match v.get("label_token_ids") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "label_token_ids is required for generation (CausalLM) models.",
            ))
        }
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::bad_request(
                "label_token_ids cannot be empty. At least one token ID is required.",
            ))
        }
        Some(l) => match part(l, "label_token_ids")? {
            Part::Ids(ids) => ids,
            Part::Text(_) => {
                return Err(ApiError::bad_request(
                    "label_token_ids must be a list of integers",
                ))
            }
        },
    };
    if let Some(&t) = labels.iter().find(|&&t| t as usize >= st.info.vocab_size) {
        return Err(ApiError::bad_request(format!(
            "Token ID {t} is out of vocabulary (vocab size: {})",
            st.info.vocab_size
        )));
    }
    let flag = |k: &str| -> Result<bool, ApiError> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::bad_request(format!("{k} must be a boolean"))),
        }
    };
    let (apply_softmax, item_first) = (flag("apply_softmax")?, flag("item_first")?);
    let items: Vec<Part> = match v.get("items") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("items must be provided")),
        // One string item or one token-id list (a list of numbers) is a single item.
        Some(i @ Value::String(_)) => vec![part(i, "items")?],
        Some(Value::Array(a)) if a.first().is_some_and(Value::is_number) => {
            vec![part(&v["items"], "items")?]
        }
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(k, i)| part(i, &format!("items[{k}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "items must be a string, a list of strings or a list of token id lists",
            ))
        }
    };
    let query = part(v.get("query").unwrap_or(&json!("")), "query")?;
    let model = v.get("model").cloned().unwrap_or(json!("default"));
    let mut prompts = Vec::with_capacity(items.len());
    for item in &items {
        let (a, b) = if item_first {
            (item, &query)
        } else {
            (&query, item)
        };
        prompts.push(match (a, b) {
            (Part::Text(a), Part::Text(b)) => st.encode(&format!("{a}{b}"))?,
            (Part::Ids(a), Part::Ids(b)) => [a.as_slice(), b].concat(),
            _ => {
                return Err(ApiError::bad_request(
                    "query and items must both be text (str) or both be tokens (list[int])",
                ))
            }
        });
    }
    let (mut all, mut prompt_tokens) = (Vec::new(), 0);
    for l in label_logprobs(&st, prompts, &labels).await? {
        all.push(scores(&l.logprobs, apply_softmax));
        prompt_tokens += l.prompt_tokens;
    }
    Ok(Json(json!({
        "scores": all,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
            "completion_tokens": 0},
        "object": "scoring",
    })))
}

#[cfg(test)]
mod tests {
    use super::scores;

    #[test]
    fn scores_are_probabilities_or_their_softmax() {
        let lp = [(0.5f32).ln(), (0.25f32).ln(), f32::NEG_INFINITY];
        let p = scores(&lp, false);
        assert!((p[0] - 0.5).abs() < 1e-7 && (p[1] - 0.25).abs() < 1e-7 && p[2] == 0.0);
        let s = scores(&lp, true);
        assert!((s[0] - 2.0 / 3.0).abs() < 1e-7 && (s[1] - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(s[2], 0.0);
        assert_eq!(scores(&[f32::NEG_INFINITY; 2], true), vec![0.0, 0.0]);
    }
}
