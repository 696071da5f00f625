//! `POST /generate`, SGLang's native endpoint: `text` or `input_ids` (single or batch),
//! `sampling_params`, `stream`, `rid` (else the `x-request-id` header), and the log-probability
//! fields `return_logprob`, `logprob_start_len`, `top_logprobs_num`, `token_ids_logprob`,
//! `return_text_in_logprobs` with SGLang's `meta_info` shapes (`[logprob, token_id, text]`).
//!
//! Streaming sends SSE events whose `text` is cumulative (SGLang's default), ending with
//! `data: [DONE]`; each result's last event carries `meta_info.finish_reason`. Batches are
//! answered as a JSON array in input order; streamed, their results' events interleave as they
//! come, each tagged with the result's `index`. `sampling_params.n > 1` answers each prompt `n`
//! times (prompt-major, a single prompt becoming a batch, `fanout.rs`).

use super::driver::Driver;
use super::error::{parse_body, ApiError};
use super::fanout;
use super::logprob_lists::LogprobLists;
use super::output::finish_reason_json;
use super::AppState;
use crate::model::Tokenizer;
use crate::pd::Bootstrap;
use crate::sampling::{SamplingParams, SamplingParamsWire};
use crate::scheduler::request::LogprobSpec;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// One value per prompt: a single value applies to all, a list must match the batch.
    fn per_prompt(v: Option<Self>, n: usize, what: &str) -> Result<Vec<Option<T>>, ApiError> {
        match v {
            None => Ok(vec![None; n]),
            Some(OneOrMany::One(x)) => Ok(vec![Some(x); n]),
            Some(OneOrMany::Many(xs)) if xs.len() == n => Ok(xs.into_iter().map(Some).collect()),
            Some(OneOrMany::Many(xs)) => Err(ApiError::bad_request(format!(
                "{what} has {} entries for {n} prompts.",
                xs.len()
            ))),
        }
    }
}

/// SGLang's `GenerateReqInput`. The fields Strata acts on are named; every other field (SGLang
/// has many: multimodal inputs, LoRA, routing hints, and
/// whatever a newer client adds) is accepted and ignored, with a debug log when it carries a
/// value, as SGLang ignores fields it does not know.
#[derive(Debug, Deserialize)]
struct GenerateWire {
    text: Option<OneOrMany<String>>,
    input_ids: Option<OneOrMany<Vec<u32>>>,
    sampling_params: Option<Value>,
    stream: Option<bool>,
    return_logprob: Option<OneOrMany<bool>>,
    logprob_start_len: Option<OneOrMany<i64>>,
    top_logprobs_num: Option<OneOrMany<i64>>,
    token_ids_logprob: Option<OneOrMany<Vec<u32>>>,
    return_text_in_logprobs: Option<bool>,
    rid: Option<OneOrMany<String>>,
    bootstrap_host: Option<Value>,
    bootstrap_port: Option<Value>,
    bootstrap_room: Option<Value>,
    /// SGLang's request priority (`--enable-priority-scheduling`): one for all, or per prompt.
    priority: Option<OneOrMany<i64>>,
    /// Continue a request of an open session (`sessions.rs`).
    session_params: Option<Value>,
    /// Report every position's final hidden state (`--enable-return-hidden-states`).
    return_hidden_states: Option<OneOrMany<bool>>,
    /// The reply reasons from its start (SGLang's `require_reasoning`): with a
    /// `--reasoning-parser`, `meta_info.reasoning_tokens` counts up to its end marker (any value
    /// but `true` is false: SGLang does not validate the field).
    require_reasoning: Option<Value>,
    /// The LoRA adapter of each prompt (`--enable-lora`): a name for all, or a list of names
    /// and nulls.
    lora_path: Option<Value>,
    /// The data-parallel replica to run on (`data_parallel_rank`: SGLang's older name).
    routed_dp_rank: Option<i64>,
    data_parallel_rank: Option<i64>,
    /// SGLang's cache isolation key: one for all, or one per prompt (`cache/ns.rs`).
    extra_key: Option<OneOrMany<Option<String>>>,
    #[serde(flatten)]
    ignored: serde_json::Map<String, Value>,
}

/// The PD bootstrap fields of each prompt (a batch carries lists). A request without a room is
/// not a PD leg.
pub(super) fn bootstraps(
    host: &Option<Value>,
    port: &Option<Value>,
    room: &Option<Value>,
    n: usize,
    batch: bool,
) -> Result<Vec<Option<Bootstrap>>, ApiError> {
    let at = |v: &Option<Value>, i: usize| -> Value {
        match v {
            Some(Value::Array(a)) if batch => a.get(i).cloned().unwrap_or(Value::Null),
            Some(v) => v.clone(),
            None => Value::Null,
        }
    };
    (0..n)
        .map(|i| {
            let r = at(room, i);
            if r.is_null() {
                return Ok(None);
            }
            let room = r.as_u64().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "bootstrap_room must be a non-negative integer, got {r}."
                ))
            })?;
            let host = at(host, i).as_str().unwrap_or("127.0.0.1").to_string();
            let port = match at(port, i) {
                Value::Null => None,
                p => Some(
                    p.as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| {
                            ApiError::bad_request(format!("bootstrap_port {p} is not a port."))
                        })?,
                ),
            };
            Ok(Some(Bootstrap { host, port, room }))
        })
        .collect()
}

/// A value that asks for nothing: absent, null, false, zero, empty.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.iter().all(is_unset),
        Value::Object(o) => o.is_empty(),
    }
}

/// The log-probability part of a request, before it is resolved against one prompt.
#[derive(Debug, Clone, Default)]
pub struct LogprobArgs {
    /// SGLang's `logprob_start_len`: negative means "output tokens only".
    pub start: Option<i64>,
    pub top_n: Option<i64>,
    pub token_ids: Option<Vec<u32>>,
}

impl LogprobArgs {
    /// Resolves against a prompt of `len` tokens that will generate `max_new_tokens`. The
    /// default start reports only the last prompt token (with no value), as SGLang does, or no
    /// prompt position at all when nothing is generated.
    pub fn resolve(&self, len: usize, max_new_tokens: usize) -> Result<LogprobSpec, ApiError> {
        let start = match self.start {
            Some(s) if s >= 0 => s as usize,
            _ if max_new_tokens == 0 => len,
            _ => len.saturating_sub(1),
        };
        let top_n = self.top_n.unwrap_or(0);
        if top_n < 0 {
            return Err(ApiError::bad_request(format!(
                "top_logprobs_num must be at least 0, got {top_n}."
            )));
        }
        Ok(LogprobSpec {
            start,
            top_n: top_n as usize,
            token_ids: self.token_ids.clone(),
        })
    }
}

/// Parses `sampling_params` (an object, a list of objects, or absent) for `n` prompts, each
/// with the `--preferred-sampling-params` fields it does not set.
pub fn sampling_params_for(
    v: Option<Value>,
    n: usize,
    preferred: Option<&super::preferred::Preferred>,
) -> Result<Vec<SamplingParams>, ApiError> {
    let one = |v: Value| -> Result<SamplingParams, ApiError> {
        let w: SamplingParamsWire = serde_json::from_value(v)
            .map_err(|e| ApiError::bad_request(format!("Invalid sampling_params: {e}")))?;
        w.validate().map_err(ApiError::bad_request)
    };
    let v = match (preferred, v) {
        (Some(p), Some(Value::Array(a))) => {
            Some(Value::Array(a.into_iter().map(|x| p.fill(x)).collect()))
        }
        (Some(p), v) => Some(p.fill(v.unwrap_or(Value::Null))),
        (None, v) => v,
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

pub async fn generate(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let w: GenerateWire = parse_body(&body)?;
    for (k, v) in &w.ignored {
        if !is_unset(v) {
            tracing::debug!(field = %k, "ignoring a /generate field Strata does not act on");
        }
    }
    let (mut prompts, batch): (Vec<Vec<u32>>, bool) = match (w.text, w.input_ids) {
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
    let n = prompts.len();
    if batch && n == 0 {
        return Err(ApiError::bad_request("The batch is empty."));
    }
    let params = sampling_params_for(
        w.sampling_params,
        n,
        st.info.preferred_sampling_params.as_ref(),
    )?;
    // A batch given one rid (or an x-request-id header) numbers its items after it, as SGLang
    // does; a single request takes it as is.
    let mut rids: Vec<Option<String>> = match w.rid.or_else(|| header_rid(&headers)) {
        None => vec![None; n],
        Some(OneOrMany::One(r)) if !batch => vec![Some(r)],
        Some(OneOrMany::One(r)) => (0..n).map(|i| Some(format!("{r}_{i}"))).collect(),
        Some(OneOrMany::Many(r)) if r.len() == n => r.into_iter().map(Some).collect(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "rid must match the shape of the input.",
            ))
        }
    };
    let stream = w.stream.unwrap_or(false);
    let copies = fanout::common_n(&params)?;
    if copies > 1 {
        // SGLang: per-prompt lists cannot be copied along with their prompts.
        let listed = [
            matches!(w.return_logprob, Some(OneOrMany::Many(_))),
            matches!(w.logprob_start_len, Some(OneOrMany::Many(_))),
            matches!(w.top_logprobs_num, Some(OneOrMany::Many(_))),
            matches!(w.token_ids_logprob, Some(OneOrMany::Many(_))),
        ];
        let names = [
            "return_logprob",
            "logprob_start_len",
            "top_logprobs_num",
            "token_ids_logprob",
        ];
        if let Some(k) = listed.iter().position(|&l| l) {
            return Err(ApiError::bad_request(format!(
                "Cannot use list {} with parallel_sample_num > 1",
                names[k]
            )));
        }
    }
    let session = super::sessions::begin(
        &st,
        w.session_params,
        batch || copies > 1,
        &mut prompts,
        &mut rids,
    )?;
    let want = OneOrMany::per_prompt(w.return_logprob, n, "return_logprob")?;
    let starts = OneOrMany::per_prompt(w.logprob_start_len, n, "logprob_start_len")?;
    let tops = OneOrMany::per_prompt(w.top_logprobs_num, n, "top_logprobs_num")?;
    let id_lists = match w.token_ids_logprob {
        // One list of ids applies to every prompt.
        Some(OneOrMany::One(ids)) => vec![Some(ids); n],
        other => OneOrMany::per_prompt(other, n, "token_ids_logprob")?,
    };
    let priorities = OneOrMany::per_prompt(w.priority, n, "priority")?;
    let hidden = OneOrMany::per_prompt(w.return_hidden_states, n, "return_hidden_states")?;
    let loras = super::lora::per_prompt(&st, &w.lora_path, n)?;
    let extra_keys = OneOrMany::per_prompt(w.extra_key, n, "extra_key")?;
    let dp_rank = fanout::dp_rank(&st, w.routed_dp_rank, w.data_parallel_rank)?.or_else(|| {
        session
            .as_ref()
            .and_then(|m| fanout::session_rank(&st, &m.0))
    });
    let text_in_lp = w.return_text_in_logprobs.unwrap_or(false);
    let boots = bootstraps(
        &w.bootstrap_host,
        &w.bootstrap_port,
        &w.bootstrap_room,
        n,
        batch,
    )?;
    let mut subs = Vec::new();
    for (i, ((ids, mut p), rid)) in prompts.into_iter().zip(params).zip(rids).enumerate() {
        p.priority = priorities[i];
        p.return_hidden_states = hidden[i] == Some(true);
        p.lora = loras[i].clone();
        p.extra_key = extra_keys[i].clone().flatten();
        p.dp_rank = dp_rank;
        let lp = match want[i] {
            Some(true) => Some(
                LogprobArgs {
                    start: starts[i],
                    top_n: tops[i],
                    token_ids: id_lists[i].clone(),
                }
                .resolve(ids.len(), p.max_new_tokens)?,
            ),
            _ => None,
        };
        subs.push(fanout::Submission {
            ids,
            params: p,
            logprobs: lp,
            rid,
            bootstrap: boots[i].clone(),
        });
    }
    let drivers =
        super::sessions::submitted(&st, session, fanout::submit(&st, subs, copies).await)?;
    // n > 1 makes a single prompt a batch, as SGLang: a list of results, indexed stream lines.
    let listed = batch || copies > 1;
    let think_end = match st.reasoning_parser {
        Some(k) if w.require_reasoning == Some(Value::Bool(true)) => {
            super::chat_request::end_marker(k, |t| st.tokenizer.encode(t, false))?
        }
        _ => None,
    };
    let render = Render {
        text_in_lp,
        tokenizer: st.tokenizer.clone(),
        weight_version: st.served.read().expect("served").version.clone(),
        think_end,
    };
    if stream {
        let incremental = st.info.incremental_streaming_output;
        return Ok(stream_response(drivers, render, listed, incremental).into_response());
    }
    let mut results = Vec::new();
    for mut d in drivers {
        let text = d.run_to_end().await;
        if let Some(e) = d.refused() {
            return Err(e);
        }
        results.push(render.result_json(&d, text));
    }
    Ok(if listed {
        Json(Value::Array(results))
    } else {
        Json(results.pop().expect("one"))
    }
    .into_response())
}

/// The request id a client or router sent in `x-request-id`.
pub fn header_rid(headers: &HeaderMap) -> Option<OneOrMany<String>> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(|v| OneOrMany::One(v.to_string()))
}

/// How a result is rendered.
struct Render {
    text_in_lp: bool,
    tokenizer: Arc<Tokenizer>,
    /// The weight version when the request arrived (SGLang's `meta_info.weight_version`).
    weight_version: String,
    /// The reasoning end marker's ids where the reply reasons from its start ([`meta_info`]).
    think_end: Option<Arc<[u32]>>,
}

impl Render {
    /// The tokenizer when log-probability entries carry their token's text.
    fn lp_text(&self) -> Option<&Tokenizer> {
        self.text_in_lp.then_some(&*self.tokenizer)
    }

    /// A result answered whole.
    fn result_json(&self, d: &Driver, text: String) -> Value {
        let mut line = self.result_base(d, text, &d.out.ids);
        LogprobLists::insert_all(d, self.lp_text(), &mut line["meta_info"]);
        line
    }

    /// A result without its log-probability lists, showing `text` and output `ids` (the whole
    /// output, or a streamed line's new part).
    fn result_base(&self, d: &Driver, text: String, ids: &[u32]) -> Value {
        let f = d.out.finish.as_ref();
        let mut meta = meta_info(d, &self.weight_version, self.think_end.as_deref());
        if f.is_some() && d.params.return_hidden_states {
            meta["hidden_states"] = hidden_states_json(d.prompt_tokens, &d.out.hidden);
        }
        json!({"text": text, "output_ids": ids, "meta_info": meta})
    }
}

/// A result's `meta_info` without its log-probabilities and hidden states (also what an OpenAI
/// choice carries under `return_meta_info`). `think_end`: the reasoning end marker's ids where
/// the reply reasons from its start ([`reasoning_tokens`]).
pub(super) fn meta_info(d: &Driver, weight_version: &str, think_end: Option<&[u32]>) -> Value {
    let f = d.out.finish.as_ref();
    json!({
        "id": d.rid,
        "finish_reason": f.map(|f| finish_reason_json(&f.reason)),
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.out.ids.len(),
        "cached_tokens": f.map(|f| f.cached_tokens).unwrap_or(0),
        "e2e_latency": d.arrival.elapsed().as_secs_f64(),
        "weight_version": weight_version,
        "num_retractions": f.map(|f| f.num_retractions).unwrap_or(0),
        "reasoning_tokens": reasoning_tokens(&d.out.ids, think_end),
    })
}

/// SGLang's `reasoning_tokens`: where the reply reasons from its start (a reasoning parser and
/// `require_reasoning`, or a chat whose reasoning the template forces on), its tokens up to and
/// including the first end marker (all of them while it is not out yet); otherwise 0 (SGLang's
/// parsers here never count a reply that opens its reasoning itself).
fn reasoning_tokens(ids: &[u32], think_end: Option<&[u32]>) -> usize {
    match think_end {
        Some(end) if !end.is_empty() => ids
            .windows(end.len())
            .position(|w| w == end)
            .map_or(ids.len(), |at| at + end.len()),
        _ => 0,
    }
}

/// SGLang's `meta_info.hidden_states`: the prompt's positions as one list, then one state per
/// output token fed back (the last output token is never run, so it has none).
fn hidden_states_json(prompt: usize, states: &[Vec<f32>]) -> Value {
    let (head, fed) = split_hidden(prompt, states);
    let mut out = vec![json!(head)];
    out.extend(fed.iter().map(|v| json!(v)));
    Value::Array(out)
}

/// A request's hidden states split into its prompt's and those of the output tokens fed back.
pub(super) fn split_hidden(prompt: usize, states: &[Vec<f32>]) -> (&[Vec<f32>], &[Vec<f32>]) {
    states.split_at(prompt.min(states.len()))
}

/// JSON has no -inf: a token with no probability reports the lowest finite value, as a client
/// doing `exp` expects ~0.
pub fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

/// Streams every driver's chunks as they come, interleaved; with `indexed` each line carries
/// `index`, the result's position in the batch (SGLang tags a batch's lines so), and one
/// `[DONE]` ends the stream once all have finished. A line's `text` and `output_ids` are the
/// whole output so far, or with `incremental` (`--incremental-streaming-output`) only what is
/// new since the result's previous line, as are its output-side log-probability lists.
fn stream_response(
    drivers: Vec<Driver>,
    render: Render,
    indexed: bool,
    incremental: bool,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    use futures::StreamExt;
    let render = Arc::new(render);
    let one = move |(i, d): (usize, Driver)| {
        let render = render.clone();
        let lists = LogprobLists::new(&d);
        let start = (d, String::new(), 0, lists);
        futures::stream::unfold(start, move |(mut d, mut text, sent, mut lists)| {
            let render = render.clone();
            async move {
                let delta = d.next_chunk().await?;
                let ids = d.out.ids.len();
                let (shown, from) = if incremental {
                    (delta, sent.min(ids))
                } else {
                    text.push_str(&delta);
                    (text.clone(), 0)
                };
                let mut line = render.result_base(&d, shown, &d.out.ids[from..]);
                if indexed {
                    line["index"] = json!(i);
                }
                // Each line repeats the log-probability lists from their start (SGLang's
                // format; incremental lines: the output-side ones from `from`): their entries
                // are serialized once and copied (`logprob_lists.rs`).
                let data = match lists.as_mut() {
                    Some(l) => {
                        l.update(&d, render.lp_text());
                        l.line_text(&line, from)
                    }
                    None => line.to_string(),
                };
                let ev = SseEvent::default().data(data);
                Some((Ok(ev), (d, text, ids, lists)))
            }
        })
        .boxed()
    };
    let lines = futures::stream::select_all(drivers.into_iter().enumerate().map(one));
    let done = futures::stream::once(async { Ok(SseEvent::default().data("[DONE]")) });
    Sse::new(lines.chain(done))
}

#[cfg(test)]
mod tests {
    use super::reasoning_tokens;

    #[test]
    fn reasoning_tokens_count_to_the_first_end_marker() {
        let end = [7u32, 8];
        // Up to and including the first end marker; all while it is not out; none unasked.
        assert_eq!(reasoning_tokens(&[1, 2, 7, 8, 3, 7, 8], Some(&end)), 4);
        assert_eq!(reasoning_tokens(&[7, 8], Some(&end)), 2);
        assert_eq!(reasoning_tokens(&[1, 7, 2, 8], Some(&end)), 4);
        assert_eq!(reasoning_tokens(&[1, 2, 7], Some(&end)), 3);
        assert_eq!(reasoning_tokens(&[], Some(&end)), 0);
        assert_eq!(reasoning_tokens(&[1, 7, 8], None), 0);
        assert_eq!(reasoning_tokens(&[1, 7, 8], Some(&[])), 0);
    }
}
