//! SGLang's tokenizer routes: `POST /v1/tokenize` (and `/tokenize`) turns a prompt or a list of
//! prompts into token ids with the served model's tokenizer, `POST /v1/detokenize` (and
//! `/detokenize`) turns ids or lists of ids back into text. A single input gives a single answer,
//! a list gives a list; `max_model_len` is the served context length.

use super::error::{parse_body, ApiError};
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// One prompt or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeWire {
    /// Accepted and unused (one model is served), as SGLang.
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    prompt: OneOrMany<String>,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    #[serde(default)]
    #[allow(dead_code)]
    rid: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeWire {
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    tokens: IdLists,
    #[serde(default = "yes")]
    skip_special_tokens: bool,
    #[serde(default)]
    #[allow(dead_code)]
    rid: Option<Value>,
}

/// `[int]` or `[[int]]` (`[]` reads as the first).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdLists {
    Flat(Vec<i64>),
    Nested(Vec<Vec<i64>>),
}

fn yes() -> bool {
    true
}

/// `POST /v1/tokenize {"prompt": str | [str], "add_special_tokens"?}` →
/// `{"tokens", "count", "max_model_len"}`.
pub async fn tokenize(State(st): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let w: TokenizeWire = parse_body(&body)?;
    let encode = |text: &str| {
        st.tokenizer
            .encode(text, w.add_special_tokens)
            .map_err(|e| ApiError::bad_request(format!("The prompt cannot be tokenized: {e}")))
    };
    let (tokens, count) = match &w.prompt {
        OneOrMany::One(p) => {
            let ids = encode(p)?;
            (json!(ids), json!(ids.len()))
        }
        OneOrMany::Many(ps) => {
            let ids = ps
                .iter()
                .map(|p| encode(p))
                .collect::<Result<Vec<_>, _>>()?;
            let counts: Vec<usize> = ids.iter().map(Vec::len).collect();
            (json!(ids), json!(counts))
        }
    };
    Ok(Json(
        json!({"tokens": tokens, "count": count, "max_model_len": st.info.context_length}),
    ))
}

/// The ids of one list, each checked against the vocabulary.
fn checked_ids(ids: &[i64], vocab: usize) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .map(|&t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Token id {t} is outside the vocabulary (0..{vocab})."
                    ))
                })
        })
        .collect()
}

/// `POST /v1/detokenize {"tokens": [int] | [[int]], "skip_special_tokens"?}` → `{"text"}` (a
/// string, or a list for a list of lists; `[]` is `""`).
pub async fn detokenize(State(st): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let w: DetokenizeWire = parse_body(&body)?;
    let vocab = st.tokenizer.vocab_size();
    let decode = |ids: &[i64]| -> Result<String, ApiError> {
        Ok(st
            .tokenizer
            .decode(&checked_ids(ids, vocab)?, w.skip_special_tokens))
    };
    let text = match &w.tokens {
        IdLists::Flat(ids) => json!(decode(ids)?),
        IdLists::Nested(lists) => json!(lists
            .iter()
            .map(|ids| decode(ids))
            .collect::<Result<Vec<_>, _>>()?),
    };
    Ok(Json(json!({ "text": text })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_outside_the_vocabulary_are_refused() {
        assert_eq!(checked_ids(&[0, 5, 9], 10).unwrap(), vec![0, 5, 9]);
        assert!(checked_ids(&[10], 10).is_err());
        assert!(checked_ids(&[-1], 10).is_err());
        assert!(checked_ids(&[i64::MAX], 10).is_err());
    }

    #[test]
    fn flat_nested_and_empty_lists_parse() {
        let w: DetokenizeWire = serde_json::from_str(r#"{"tokens": []}"#).unwrap();
        assert!(matches!(w.tokens, IdLists::Flat(v) if v.is_empty()));
        let w: DetokenizeWire = serde_json::from_str(r#"{"tokens": [[1], []]}"#).unwrap();
        assert!(matches!(w.tokens, IdLists::Nested(v) if v == vec![vec![1], vec![]]));
        assert!(serde_json::from_str::<DetokenizeWire>(r#"{"tokens": [1, [2]]}"#).is_err());
        let w: TokenizeWire = serde_json::from_str(r#"{"prompt": ["a", "b"]}"#).unwrap();
        assert!(matches!(w.prompt, OneOrMany::Many(v) if v.len() == 2));
        assert!(w.add_special_tokens);
    }
}
