//! `POST /generate`, SGLang's native endpoint: `text` or `input_ids` (single or batch),
//! `sampling_params`, `stream`, `return_logprob`, `rid`.
//!
//! Streaming sends SSE events whose `text` is cumulative (SGLang's default), ending with
//! `data: [DONE]`; the last event before it carries `meta_info.finish_reason`. Batches are
//! answered as a JSON array in input order (not streamed).

use super::driver::Driver;
use super::error::{parse_body, ApiError};
use super::output::finish_reason_json;
use super::AppState;
use crate::sampling::{SamplingParams, SamplingParamsWire};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateWire {
    text: Option<OneOrMany<String>>,
    input_ids: Option<OneOrMany<Vec<u32>>>,
    sampling_params: Option<Value>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    return_logprob: bool,
    rid: Option<OneOrMany<String>>,
    // Accepted for compatibility; they do not change the output here.
    #[allow(dead_code)]
    logprob_start_len: Option<Value>,
    #[allow(dead_code)]
    top_logprobs_num: Option<Value>,
    #[allow(dead_code)]
    return_text_in_logprobs: Option<Value>,
    #[allow(dead_code)]
    log_metrics: Option<Value>,
    #[allow(dead_code)]
    lora_path: Option<Value>,
    #[allow(dead_code)]
    data_parallel_rank: Option<Value>,
}

/// Parses `sampling_params` (an object, a list of objects, or absent) for `n` prompts.
pub fn sampling_params_for(v: Option<Value>, n: usize) -> Result<Vec<SamplingParams>, ApiError> {
    let one = |v: Value| -> Result<SamplingParams, ApiError> {
        let w: SamplingParamsWire = serde_json::from_value(v)
            .map_err(|e| ApiError::bad_request(format!("Invalid sampling_params: {e}")))?;
        w.validate().map_err(ApiError::bad_request)
    };
    match v {
        None | Some(Value::Null) => Ok(vec![SamplingParams::default(); n]),
        Some(Value::Array(a)) => {
            if a.len() != n {
                return Err(ApiError::bad_request(format!(
                    "sampling_params has {} entries for {n} prompts.",
                    a.len()
                )));
            }
            a.into_iter().map(one).collect()
        }
        Some(v) => {
            let p = one(v)?;
            Ok(vec![p; n])
        }
    }
}

pub async fn generate(State(st): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let w: GenerateWire = parse_body(&body)?;
    let (prompts, batch): (Vec<Vec<u32>>, bool) = match (w.text, w.input_ids) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::bad_request(
                "Either text or input_ids should be provided.",
            ));
        }
        (Some(OneOrMany::One(t)), None) => (vec![st.encode(&t)?], false),
        (Some(OneOrMany::Many(ts)), None) => (
            ts.iter().map(|t| st.encode(t)).collect::<Result<_, _>>()?,
            true,
        ),
        (None, Some(OneOrMany::One(ids))) => (vec![ids], false),
        (None, Some(OneOrMany::Many(ids))) => (ids, true),
    };
    if batch && prompts.is_empty() {
        return Err(ApiError::bad_request("The batch is empty."));
    }
    let params = sampling_params_for(w.sampling_params, prompts.len())?;
    let rids: Vec<Option<String>> = match w.rid {
        None => vec![None; prompts.len()],
        Some(OneOrMany::One(r)) if !batch => vec![Some(r)],
        Some(OneOrMany::Many(r)) if r.len() == prompts.len() => r.into_iter().map(Some).collect(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "rid must match the shape of the input.",
            ))
        }
    };
    if w.stream && batch {
        return Err(ApiError::bad_request(
            "Streaming a batch is not supported; send the prompts separately.",
        ));
    }
    let mut drivers = Vec::new();
    for ((ids, p), rid) in prompts.into_iter().zip(params).zip(rids) {
        drivers.push(Driver::submit(&st, ids, p, w.return_logprob, rid)?);
    }
    if w.stream {
        let d = drivers.pop().expect("one prompt");
        return Ok(stream(d, w.return_logprob).into_response());
    }
    let mut results = Vec::new();
    for mut d in drivers {
        let text = d.run_to_end().await;
        results.push(result_json(&d, text, w.return_logprob));
    }
    Ok(if batch {
        Json(Value::Array(results))
    } else {
        Json(results.pop().expect("one"))
    }
    .into_response())
}

fn result_json(d: &Driver, text: String, logprob: bool) -> Value {
    let f = d.out.finish.as_ref();
    let mut meta = json!({
        "id": d.rid,
        "finish_reason": f.map(|f| finish_reason_json(&f.reason)),
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.out.ids.len(),
        "cached_tokens": f.map(|f| f.cached_tokens).unwrap_or(0),
        "e2e_latency": d.arrival.elapsed().as_secs_f64(),
    });
    if logprob {
        let lp: Vec<Value> = d
            .out
            .ids
            .iter()
            .zip(&d.out.logprobs)
            .map(|(id, lp)| json!([lp, id, null]))
            .collect();
        meta["output_token_logprobs"] = Value::Array(lp);
    }
    json!({"text": text, "output_ids": d.out.ids, "meta_info": meta})
}

fn stream(
    d: Driver,
    logprob: bool,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let s = futures::stream::unfold(
        (d, String::new(), false),
        move |(mut d, mut text, done)| async move {
            if done {
                return None;
            }
            match d.next().await {
                Some(delta) => {
                    text.push_str(&delta);
                    let ev = SseEvent::default()
                        .data(result_json(&d, text.clone(), logprob).to_string());
                    Some((Ok(ev), (d, text, false)))
                }
                None => Some((Ok(SseEvent::default().data("[DONE]")), (d, text, true))),
            }
        },
    );
    Sse::new(s)
}
