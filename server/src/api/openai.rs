//! OpenAI-compatible `POST /v1/completions` and `POST /v1/chat/completions` (with streaming), the
//! shapes SGLang serves. Unknown fields are ignored, as SGLang's pydantic models do; values out of
//! range are 400s. Chat requests go through the checkpoint's chat template, with their tools and
//! `chat_template_kwargs`; the reply through the configured tool-call and reasoning parsers
//! (`chat_request.rs`, `crate::parsers`). `n > 1` answers `n` choices per prompt, prompt-major
//! (`fanout.rs`); streamed, the choices' chunks interleave, each with its `index`.

use super::chat_request::{message_json, plan_tools, reply_parser, think_end, Message};
use super::driver::Driver;
use super::error::{parse_body, ApiError};
use super::fanout;
use super::generate::{bootstraps, finite, header_rid, OneOrMany};
use super::output::openai_finish_reason;
use super::AppState;
use crate::model::chat_template::{render, Extra};
use crate::model::config::GenerationDefaults;
use crate::model::conv_template;
use crate::parsers::output::{self as reply, parse_reply, Piece};
use crate::sampling::{SamplingParams, SamplingParamsWire, StringOrList};
use crate::scheduler::request::{LogprobSpec, PosLogprobs};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Debug, Deserialize)]
struct OpenAiWire {
    model: Option<String>,
    prompt: Option<Prompt>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    stop: Option<StringOrList>,
    stop_token_ids: Option<Vec<u32>>,
    /// SGLang's extra `stop_regex` (a pattern or a list of them).
    stop_regex: Option<Value>,
    ignore_eos: Option<bool>,
    seed: Option<u64>,
    n: Option<i64>,
    min_tokens: Option<i64>,
    skip_special_tokens: Option<bool>,
    no_stop_trim: Option<bool>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    echo: bool,
    /// Completions: how many top tokens per position (null: no log-probabilities). Chat: a
    /// bool, with the count in `top_logprobs`.
    logprobs: Option<Value>,
    top_logprobs: Option<i64>,
    rid: Option<String>,
    logit_bias: Option<std::collections::HashMap<String, f32>>,
    /// Chat: OpenAI function tools, `tool_choice`, the template's extra variables, and whether the
    /// reasoning is split off (`chat_request.rs`).
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    /// False: a forced `tool_choice` makes one call at most.
    parallel_tool_calls: Option<bool>,
    chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    separate_reasoning: Option<bool>,
    /// Chat, streamed: false sends the reasoning whole once it is over (SGLang's default true
    /// streams it piece by piece).
    stream_reasoning: Option<bool>,
    /// Chat: a final assistant message is continued, not answered (SGLang: the conversation
    /// before it rendered with the generation prompt, its content's tokens appended).
    continue_final_message: Option<bool>,
    /// Chat: SGLang's `reasoning_effort` and `reasoning` (`reasoning_effort.rs`: thinking on or
    /// off through the template's kwargs).
    reasoning_effort: Option<Value>,
    reasoning: Option<Value>,
    /// Chat: SGLang's pre-computed prompt ids; they replace the rendered template (the messages
    /// still decide the tools and the stop strings).
    input_ids: Option<Vec<u32>>,
    /// SGLang's extras: each choice's output ids (`token_ids`; with the prompt's), the prompt's
    /// ids (`prompt_token_ids`, chat) and the `/generate` meta info (`meta_info`, chat). Chat
    /// refuses them streamed, as SGLang does.
    #[serde(default)]
    return_token_ids: bool,
    #[serde(default)]
    return_prompt_token_ids: bool,
    #[serde(default)]
    return_meta_info: bool,
    /// Constrained decoding: SGLang's extra `regex`, `json_schema` and `ebnf` fields, and
    /// OpenAI's `response_format` (`text`, `json_object`, `json_schema`).
    regex: Option<Value>,
    json_schema: Option<Value>,
    ebnf: Option<Value>,
    response_format: Option<Value>,
    /// PD: the fields a PD router adds (one leg of a prefill/decode pair), as on `/generate`.
    bootstrap_host: Option<Value>,
    bootstrap_port: Option<Value>,
    bootstrap_room: Option<Value>,
    /// SGLang's request priority (`--enable-priority-scheduling`).
    priority: Option<i64>,
    /// The last state fed back in each choice's `hidden_states` (`--enable-return-hidden-states`).
    return_hidden_states: Option<bool>,
    /// SGLang's LoRA adapter name (`--enable-lora`; else `model`'s `base:adapter` form).
    lora_path: Option<String>,
    /// SGLang's cache isolation keys, joined (`cache_salt` then `extra_key`): the request reuses
    /// only KV cached under the same key (`cache/ns.rs`).
    cache_salt: Option<Value>,
    extra_key: Option<Value>,
    /// The data-parallel replica to run on (`data_parallel_rank`: SGLang's older name, which
    /// sglang-router's `--dp-aware` sends).
    routed_dp_rank: Option<i64>,
    data_parallel_rank: Option<i64>,
}

/// A chat request's `chat_template_kwargs` (with what its `reasoning_effort` / `reasoning` say
/// about thinking) over `--default-chat-template-kwargs` (the request's keys win).
fn template_kwargs(
    info: &super::ServerInfo,
    w: &mut OpenAiWire,
) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    let on = super::reasoning_effort::thinking(w.reasoning_effort.as_ref(), w.reasoning.as_ref())
        .map_err(ApiError::bad_request)?;
    let own = super::reasoning_effort::apply(w.chat_template_kwargs.take(), on);
    Ok(match &info.default_chat_template_kwargs {
        None => own,
        Some(d) => {
            let mut m = own.unwrap_or_default();
            super::preferred::fill_missing(&mut m, d);
            Some(m)
        }
    })
}

impl OpenAiWire {
    /// `defaults` fill the omitted temperature, top_p, top_k, min_p and repetition_penalty
    /// (the model's, for chat under `--sampling-defaults model`; SGLang's completions take none).
    fn params(
        &mut self,
        default_max: i64,
        defaults: &GenerationDefaults,
    ) -> Result<SamplingParams, ApiError> {
        // A structural tag goes to the parameters as its JSON text (SGLang's conversion).
        let structural = self
            .response_format
            .as_ref()
            .is_some_and(|f| f.get("type").and_then(Value::as_str) == Some("structural_tag"));
        let structural_tag = if structural {
            self.response_format
                .take()
                .map(|f| Value::String(f.to_string()))
        } else {
            None
        };
        let json_schema = match response_format_schema(self.response_format.take())? {
            Some(schema) => {
                if self.json_schema.as_ref().is_some_and(|v| !v.is_null()) {
                    return Err(ApiError::bad_request(
                        "Set either response_format or json_schema, not both.",
                    ));
                }
                Some(Value::String(schema))
            }
            None => self.json_schema.take(),
        };
        SamplingParamsWire {
            regex: self.regex.take(),
            json_schema,
            ebnf: self.ebnf.take(),
            structural_tag,
            max_new_tokens: Some(
                self.max_completion_tokens
                    .or(self.max_tokens)
                    .unwrap_or(default_max),
            ),
            min_new_tokens: self.min_tokens,
            temperature: self.temperature.or(defaults.temperature),
            top_p: self.top_p.or(defaults.top_p),
            // (transformers' `top_k: 0` is "off", as SGLang's -1)
            top_k: self.top_k.or(defaults.top_k.filter(|&k| k > 0)),
            min_p: self.min_p.or(defaults.min_p),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty.or(defaults.repetition_penalty),
            stop: self.stop.take(),
            stop_token_ids: self.stop_token_ids.take(),
            stop_regex: self.stop_regex.take(),
            ignore_eos: self.ignore_eos,
            skip_special_tokens: self.skip_special_tokens,
            spaces_between_special_tokens: None,
            no_stop_trim: self.no_stop_trim,
            seed: self.seed,
            n: self.n,
            logit_bias: self.logit_bias.take(),
            ..SamplingParamsWire::default_wire()
        }
        .validate()
        .map(|p| SamplingParams {
            priority: self.priority,
            return_hidden_states: self.return_hidden_states == Some(true),
            ..p
        })
        .map_err(ApiError::bad_request)
    }

    /// The request's parameters with what only the server resolves: its LoRA adapter, its cache
    /// key and its data-parallel replica; a chat request's omitted sampling fields from
    /// `--sampling-defaults` (`ServerInfo::chat_defaults`).
    fn request_params(
        &mut self,
        st: &AppState,
        default_max: i64,
        chat: bool,
    ) -> Result<SamplingParams, ApiError> {
        let none = GenerationDefaults::default();
        let defaults = if chat { &st.info.chat_defaults } else { &none };
        let mut p = self.params(default_max, defaults)?;
        p.lora = super::lora::for_openai(st, self.lora_path.as_deref(), self.model.as_deref())?;
        p.extra_key = self.cache_key()?;
        p.dp_rank = fanout::dp_rank(st, self.routed_dp_rank, self.data_parallel_rank)?;
        Ok(p)
    }

    /// `cache_salt` + `extra_key` (SGLang joins the non-empty ones in that order); either must
    /// be a string.
    fn cache_key(&self) -> Result<Option<String>, ApiError> {
        let mut key = String::new();
        for (name, v) in [
            ("cache_salt", &self.cache_salt),
            ("extra_key", &self.extra_key),
        ] {
            match v {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => key.push_str(s),
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "{name} must be a string, got {other}."
                    )))
                }
            }
        }
        Ok((!key.is_empty()).then_some(key))
    }
}

/// The JSON schema (as text) that OpenAI's `response_format` asks for: none for `text` (or no
/// format), any object for `json_object`, the given schema for `json_schema` (SGLang's mapping).
fn response_format_schema(f: Option<Value>) -> Result<Option<String>, ApiError> {
    let Some(f) = f.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(r#"{"type": "object"}"#.into())),
        Some("json_schema") => {
            let schema = f
                .get("json_schema")
                .and_then(|j| j.get("schema").or_else(|| j.get("schema_")))
                .filter(|s| !s.is_null())
                .ok_or_else(|| {
                    ApiError::bad_request("response_format json_schema needs json_schema.schema.")
                })?;
            Ok(Some(schema.to_string()))
        }
        _ => Err(ApiError::bad_request(format!(
            "response_format type must be text, json_object, json_schema or structural_tag, got {f}."
        ))),
    }
}

/// The top-token count the request asks for: `None` when it wants no log-probabilities.
fn logprob_count(w: &OpenAiWire) -> Result<Option<usize>, ApiError> {
    let top = w.top_logprobs.unwrap_or(0);
    let n = match &w.logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => top,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "logprobs must be a bool or an integer, got {v}."
            )))
        }
    };
    if !(0..=20).contains(&n) || !(0..=20).contains(&top) {
        return Err(ApiError::bad_request(
            "The number of top log-probabilities must be in [0, 20].",
        ));
    }
    Ok(Some(n as usize))
}

/// The spec for `n` top tokens; with `echo` the whole prompt is scored too.
fn logprob_spec(n: Option<usize>, prompt_len: usize, echo: bool) -> Option<LogprobSpec> {
    n.map(|top_n| LogprobSpec {
        start: if echo { 0 } else { prompt_len },
        top_n,
        token_ids: None,
    })
}

/// The request id: `rid`, else the router's `x-request-id`, without a prefix we add ourselves.
fn client_rid(w: &OpenAiWire, headers: &HeaderMap, prefix: &str) -> Option<String> {
    let r = w.rid.clone().or_else(|| match header_rid(headers) {
        Some(OneOrMany::One(r)) => Some(r),
        _ => None,
    })?;
    Some(r.strip_prefix(prefix).map(str::to_string).unwrap_or(r))
}

fn token_str(st: &AppState, id: u32) -> String {
    st.tokenizer.decode(&[id], false)
}

/// The completions `logprobs` object over the prompt positions reported (echo) and the output
/// tokens `from..to`.
fn completion_logprobs(st: &AppState, d: &Driver, from: usize, to: usize, echo: bool) -> Value {
    if d.logprobs.is_none() {
        return Value::Null;
    }
    let mut rows: Vec<(u32, &PosLogprobs)> = Vec::new();
    if echo && from == 0 {
        rows.extend(d.lp_prompt_ids.iter().copied().zip(&d.out.input_logprobs));
    }
    rows.extend(
        d.out.ids[from..to]
            .iter()
            .copied()
            .zip(&d.out.logprobs[from..to]),
    );
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut offset = 0;
    for (k, (id, p)) in rows.into_iter().enumerate() {
        let t = token_str(st, id);
        offsets.push(offset);
        offset += t.chars().count();
        tokens.push(t);
        lps.push(p.logprob.map(finite));
        let first_prompt = echo && from == 0 && k == 0;
        tops.push(if first_prompt {
            Value::Null
        } else {
            let m: serde_json::Map<String, Value> = p
                .top
                .iter()
                .map(|&(t, lp)| (token_str(st, t), json!(finite(lp))))
                .collect();
            Value::Object(m)
        });
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// The chat `logprobs` object over output tokens `from..to`.
fn chat_logprobs(st: &AppState, d: &Driver, from: usize, to: usize) -> Value {
    if d.logprobs.is_none() {
        return Value::Null;
    }
    let entry = |id: u32, lp: f32| {
        let t = token_str(st, id);
        json!({"token": t, "logprob": finite(lp), "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = d.out.ids[from..to]
        .iter()
        .zip(&d.out.logprobs[from..to])
        .map(|(&id, p)| {
            let mut e = entry(id, p.logprob.unwrap_or(f32::NEG_INFINITY));
            e["top_logprobs"] = p.top.iter().map(|&(t, lp)| entry(t, lp)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A choice's `hidden_states` when asked for (SGLang's OpenAI routes): the last state fed back,
/// or `[]` when only the prompt ran.
fn add_hidden_states(choice: &mut Value, d: &Driver) {
    if d.params.return_hidden_states {
        let (_, fed) = super::generate::split_hidden(d.prompt_tokens, &d.out.hidden);
        choice["hidden_states"] = match fed.last() {
            Some(v) => json!(v),
            None => json!([]),
        };
    }
}

/// SGLang's `matched_stop` of a choice: the stop token id or the stop string (or `stop_regex`
/// pattern) that ended it; null otherwise.
fn matched_stop(d: &Driver) -> Value {
    use crate::scheduler::request::FinishReason;
    match d.out.finish.as_ref().map(|f| &f.reason) {
        Some(FinishReason::StopToken(t)) => json!(t),
        Some(FinishReason::StopStr(s) | FinishReason::StopRegex(s)) => json!(s),
        _ => Value::Null,
    }
}

fn finish_str(d: &Driver) -> Value {
    d.out
        .finish
        .as_ref()
        .map(|f| json!(openai_finish_reason(&f.reason)))
        .unwrap_or(Value::Null)
}

pub async fn completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut w: OpenAiWire = parse_body(&body)?;
    let params = w.request_params(&st, 16, false)?;
    let n_lp = logprob_count(&w)?;
    let rid = client_rid(&w, &headers, "cmpl-");
    // A list of strings is a batch: a PD router then sends one bootstrap entry per prompt.
    let listed = matches!(w.prompt, Some(Prompt::Texts(_)));
    let prompts: Vec<(Vec<u32>, String)> = match w.prompt.take() {
        None => return Err(ApiError::bad_request("`prompt` is required.")),
        Some(Prompt::Text(t)) => vec![(st.encode(&t)?, t)],
        Some(Prompt::Texts(ts)) => ts
            .into_iter()
            .map(|t| Ok((st.encode(&t)?, t)))
            .collect::<Result<_, ApiError>>()?,
        Some(Prompt::Ids(ids)) => {
            let t = st.tokenizer.decode(&ids, false);
            vec![(ids, t)]
        }
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request("`prompt` is empty."));
    }
    let model = w
        .model
        .clone()
        .unwrap_or_else(|| st.info.served_model_name.clone());
    let copies = params.n;
    let many = prompts.len() > 1;
    let boots = bootstraps(
        &w.bootstrap_host,
        &w.bootstrap_port,
        &w.bootstrap_room,
        prompts.len(),
        listed,
    )?;
    let mut subs = Vec::new();
    let mut texts = Vec::new();
    let mut kept_prompts = Vec::new(); // (for `return_token_ids`)
    for (i, ((ids, text), boot)) in prompts.into_iter().zip(boots).enumerate() {
        if w.return_token_ids {
            kept_prompts.push(ids.clone());
        }
        let rid = rid
            .as_ref()
            .map(|r| if many { format!("{r}_{i}") } else { r.clone() });
        subs.push(fanout::Submission {
            logprobs: logprob_spec(n_lp, ids.len(), w.echo),
            ids,
            params: params.clone(),
            rid,
            bootstrap: boot,
        });
        texts.push(text);
    }
    // Choice i answers prompt i / n (prompt-major, as SGLang).
    let drivers = fanout::submit(&st, subs, copies).await?;
    let id = format!("cmpl-{}", drivers[0].rid);
    let created = now_secs();
    let echo = w.echo;
    if w.stream {
        let include_usage = w.stream_options.as_ref().is_some_and(|o| o.include_usage)
            || st.info.stream_default_include_usage;
        let head =
            json!({"id": id, "object": "text_completion", "created": created, "model": model});
        let st2 = st.clone();
        return Ok(sse(drivers, copies, head.clone(), include_usage, move |i, d, delta, first, new| {
            let text = if first && echo {
                format!("{}{delta}", texts[i / copies])
            } else {
                delta
            };
            let lps = completion_logprobs(&st2, d, new.logprobs.start, new.logprobs.end, echo && first);
            let mut c = head.clone();
            c["choices"] = json!([{"index": i, "text": text, "logprobs": lps, "finish_reason": finish_str(d), "matched_stop": matched_stop(d)}]);
            if let Some(p) = kept_prompts.get(i / copies) {
                // `return_token_ids`: the chunk's new output ids, the prompt's with the first.
                c["choices"][0]["token_ids"] = json!(d.out.ids[new.ids]);
                if first {
                    c["choices"][0]["prompt_token_ids"] = json!(p);
                }
            }
            Some(c)
        })
        .into_response());
    }
    let mut choices = Vec::new();
    let mut counts = Vec::new();
    for (i, mut d) in drivers.into_iter().enumerate() {
        let mut text = d.run_to_end().await;
        if let Some(e) = d.refused() {
            return Err(e);
        }
        if echo {
            text = format!("{}{text}", texts[i / copies]);
        }
        counts.push(fanout::counts(&d));
        let lps = completion_logprobs(&st, &d, 0, d.out.logprobs.len(), echo);
        let mut choice = json!({"index": i, "text": text, "logprobs": lps,
            "finish_reason": finish_str(&d), "matched_stop": matched_stop(&d)});
        add_hidden_states(&mut choice, &d);
        if let Some(p) = kept_prompts.get(i / copies) {
            choice["token_ids"] = json!(d.out.ids);
            choice["prompt_token_ids"] = json!(p);
        }
        choices.push(choice);
    }
    let usage = fanout::usage_json(fanout::usage_totals(&counts, copies));
    Ok(Json(
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
        "choices": choices, "usage": usage}),
    )
    .into_response())
}

/// A chat request's prompt ids: its messages rendered by the model's template with the
/// request's tools and template kwargs, and a continued final assistant message's text after it.
fn prompt_ids(
    st: &AppState,
    conv: &[Value],
    continued: Option<&str>,
    extra: Extra,
) -> Result<Vec<u32>, ApiError> {
    let tok = &st.tokenizer;
    let template = tok
        .chat_template
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("The model has no chat template."))?;
    let text = render(
        template,
        conv,
        true,
        tok.bos_token.as_deref(),
        tok.eos_token.as_deref(),
        extra,
    )
    .map_err(ApiError::bad_request)?;
    // A conversation template's prompt is text SGLang tokenises with the special tokens (BOS);
    // a Jinja template writes its own.
    let specials = conv_template::of_marker(template).is_some();
    let mut ids = tok.encode(&text, specials).map_err(ApiError::bad_request)?;
    if let Some(prefix) = continued.filter(|p| !p.is_empty()) {
        ids.extend(tok.encode(prefix, false).map_err(ApiError::bad_request)?);
    }
    Ok(ids)
}

/// The prompt length of a chat completion request (`body`), without running it.
pub(super) fn chat_prompt_len(st: &AppState, body: &[u8]) -> Result<usize, ApiError> {
    let mut w: OpenAiWire = parse_body(body)?;
    let plan = plan_tools(w.tools.take(), w.tool_choice.as_ref(), true)?;
    let conv = w
        .messages
        .take()
        .ok_or_else(|| ApiError::bad_request("`messages` is required."))?
        .into_iter()
        .map(message_json)
        .collect::<Result<Vec<_>, _>>()?;
    let kwargs = template_kwargs(&st.info, &mut w)?;
    let extra = Extra {
        tools: plan.template_tools.as_ref(),
        kwargs: kwargs.as_ref(),
    };
    Ok(prompt_ids(st, &conv, None, extra)?.len())
}

pub async fn chat_completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut w: OpenAiWire = parse_body(&body)?;
    let parallel = w.parallel_tool_calls != Some(false);
    let plan = plan_tools(w.tools.take(), w.tool_choice.as_ref(), parallel)?;
    if plan.known.is_some() {
        // As SGLang: call markers are often special tokens, which the reply must keep.
        w.skip_special_tokens = Some(false);
    }
    if let Some(schema) = &plan.forced {
        // `required` or a named tool: the reply is constrained to calls (SGLang's JSON schema);
        // `regex` or `ebnf` beside it are refused by the parameters' own check.
        if w.json_schema.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request(
                "tool_choice required or a named tool cannot be combined with another constraint.",
            ));
        }
        w.response_format = None;
        w.json_schema = Some(Value::String(schema.to_string()));
    }
    let mut params = w.request_params(&st, st.info.context_length as i64, true)?;
    let n_lp = logprob_count(&w)?;
    let rid = client_rid(&w, &headers, "chatcmpl-");
    let msgs = w
        .messages
        .take()
        .ok_or_else(|| ApiError::bad_request("`messages` is required."))?;
    if msgs.is_empty() {
        return Err(ApiError::bad_request("`messages` is empty."));
    }
    let mut conv = msgs
        .into_iter()
        .map(message_json)
        .collect::<Result<Vec<_>, _>>()?;
    let continued = match conv.last() {
        Some(m) if w.continue_final_message == Some(true) && m["role"] == "assistant" => {
            let prefix = m["content"].as_str().unwrap_or("").to_string();
            conv.pop();
            Some(prefix)
        }
        _ => None,
    };
    let tok = &st.tokenizer;
    let kwargs = template_kwargs(&st.info, &mut w)?;
    let extra = Extra {
        tools: plan.template_tools.as_ref(),
        kwargs: kwargs.as_ref(),
    };
    let ids = match w.input_ids.take() {
        Some(ids) if ids.is_empty() => return Err(ApiError::bad_request("`input_ids` is empty.")),
        Some(ids) => ids,
        None => prompt_ids(&st, &conv, continued.as_deref(), extra)?,
    };
    if w.stream {
        for (asked, name) in [
            (w.return_token_ids, "return_token_ids"),
            (w.return_prompt_token_ids, "return_prompt_token_ids"),
            (w.return_meta_info, "return_meta_info"),
        ] {
            if asked {
                return Err(ApiError::bad_request(format!(
                    "{name} is not supported with streaming on /v1/chat/completions: set stream to false."
                )));
            }
        }
    }
    let prompt_kept = (w.return_prompt_token_ids || w.return_token_ids).then(|| ids.clone());
    // A conversation template's stop strings end its answers too.
    if let Some(c) = tok
        .chat_template
        .as_deref()
        .and_then(conv_template::of_marker)
    {
        for s in c.stops.iter().filter(|s| !s.is_empty()) {
            if !params.stop.iter().any(|x| x == s) {
                params.stop.push(s.to_string());
            }
        }
    }
    let model = w
        .model
        .clone()
        .unwrap_or_else(|| st.info.served_model_name.clone());
    let lp = logprob_spec(n_lp, ids.len(), false);
    let boot = bootstraps(
        &w.bootstrap_host,
        &w.bootstrap_port,
        &w.bootstrap_room,
        1,
        false,
    )?
    .pop()
    .flatten();
    // The end marker's ids where the template forces the reasoning on: a constraint applies
    // after it, and `return_meta_info` counts `reasoning_tokens` up to it (read once for both).
    let forced_end = if params.constraint.is_some() || w.return_meta_info {
        think_end(st.reasoning_parser, kwargs.as_ref(), |t| {
            tok.encode(t, false)
        })?
    } else {
        None
    };
    if params.constraint.is_some() {
        params.think_end = forced_end.clone();
    }
    let copies = params.n;
    // One reply parser per choice (a parser follows one reply).
    let parsers: Vec<_> = (0..copies)
        .map(|_| {
            let p = reply_parser(
                st.tool_call_parser,
                st.reasoning_parser,
                &plan,
                w.separate_reasoning != Some(false),
                kwargs.as_ref(),
            );
            if w.stream_reasoning == Some(false) {
                p.hold_reasoning()
            } else {
                p
            }
        })
        .collect();
    let sub = fanout::Submission {
        ids,
        params,
        logprobs: lp,
        rid,
        bootstrap: boot,
    };
    let drivers = fanout::submit(&st, vec![sub], copies).await?;
    let id = format!("chatcmpl-{}", drivers[0].rid);
    let created = now_secs();
    if w.stream {
        let include_usage = w.stream_options.as_ref().is_some_and(|o| o.include_usage)
            || st.info.stream_default_include_usage;
        let head = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model});
        let st2 = st.clone();
        let parsers: Vec<_> = parsers.into_iter().map(std::sync::Mutex::new).collect();
        return Ok(sse(
            drivers,
            copies,
            head.clone(),
            include_usage,
            move |i, d, delta, first, new| {
                let mut p = parsers[i].lock().unwrap_or_else(|e| e.into_inner());
                let mut piece = p.push(&delta);
                if d.out.finish.is_some() {
                    let Piece {
                        reasoning,
                        content,
                        calls,
                        deltas,
                    } = p.finish();
                    piece.reasoning += &reasoning;
                    piece.content += &content;
                    piece.calls.extend(calls);
                    piece.deltas.extend(deltas);
                } else if piece.is_empty() && !first {
                    return None;
                }
                let delta = reply::delta(&piece, first);
                let finish = reply::finish_reason(finish_str(d), p.has_calls());
                let lps = chat_logprobs(&st2, d, new.logprobs.start, new.logprobs.end);
                let mut c = head.clone();
                c["choices"] = json!([{"index": i, "delta": delta, "logprobs": lps,
                    "finish_reason": finish, "matched_stop": matched_stop(d)}]);
                Some(c)
            },
        )
        .into_response());
    }
    // (`return_meta_info`: the weight version read once for every choice)
    let version = w
        .return_meta_info
        .then(|| st.served.read().expect("served").version.clone());
    let mut choices = Vec::new();
    let mut counts = Vec::new();
    for (i, (mut d, parser)) in drivers.into_iter().zip(parsers).enumerate() {
        let text = d.run_to_end().await;
        if let Some(e) = d.refused() {
            return Err(e);
        }
        counts.push(fanout::counts(&d));
        let lps = chat_logprobs(&st, &d, 0, d.out.logprobs.len());
        let r = parse_reply(parser, &text);
        let finish = reply::finish_reason(finish_str(&d), !r.calls.is_empty());
        let mut choice = json!({"index": i, "message": reply::message(&r), "logprobs": lps,
            "finish_reason": finish, "matched_stop": matched_stop(&d)});
        add_hidden_states(&mut choice, &d);
        if w.return_token_ids {
            choice["token_ids"] = json!(d.out.ids);
        }
        if let Some(p) = &prompt_kept {
            choice["prompt_token_ids"] = json!(p);
        }
        if let Some(version) = &version {
            choice["meta_info"] = super::generate::meta_info(&d, version, forced_end.as_deref());
        }
        choices.push(choice);
    }
    let usage = fanout::usage_json(fanout::usage_totals(&counts, copies));
    Ok(Json(
        json!({"id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": choices, "usage": usage}),
    )
    .into_response())
}

/// What a streamed choice gained since its previous chunk: the ranges of its log-probabilities
/// and of its output ids.
struct Fresh {
    logprobs: std::ops::Range<usize>,
    ids: std::ops::Range<usize>,
}

/// A streamed choice's output: a chunk to send, or its end with its token counts.
enum Item {
    Chunk(Value),
    End(usize, fanout::Counts),
}

/// Streams the drivers (choice `i` is `drivers[i]`, `n` per prompt) as OpenAI chunks built by
/// `chunk(index, driver, delta, is_first, new)`, interleaved as they come; then, once
/// all have finished, an optional usage chunk (`head` with no choices and the usage of all) and
/// one `[DONE]`. Empty deltas (bytes held back) are not sent, nor is a chunk `chunk` declines
/// (`None`: its parsers held the text back); a chunk carries the log-probabilities and ids of the
/// tokens that arrived since its choice's previous chunk sent ([`Fresh`]).
fn sse<F>(
    drivers: Vec<Driver>,
    n: usize,
    head: Value,
    include_usage: bool,
    chunk: F,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>>
where
    F: Fn(usize, &Driver, String, bool, Fresh) -> Option<Value> + Send + Sync + 'static,
{
    use futures::StreamExt;
    let chunk = std::sync::Arc::new(chunk);
    let choices = drivers.len();
    let one = |(i, d): (usize, Driver)| {
        let chunk = chunk.clone();
        futures::stream::unfold(Some((d, true, (0usize, 0usize))), move |state| {
            let chunk = chunk.clone();
            async move {
                let (mut d, mut first, mut sent) = state?;
                loop {
                    let Some(delta) = d.next_chunk().await else {
                        return Some((Item::End(i, fanout::counts(&d)), None));
                    };
                    if delta.is_empty() && d.out.finish.is_none() && !first {
                        continue;
                    }
                    let now = (d.out.logprobs.len(), d.out.ids.len());
                    let new = Fresh {
                        logprobs: sent.0..now.0,
                        ids: sent.1..now.1,
                    };
                    if let Some(c) = chunk(i, &d, delta, first, new) {
                        (first, sent) = (false, now);
                        return Some((Item::Chunk(c), Some((d, first, sent))));
                    }
                }
            }
        })
        .boxed()
    };
    let items = futures::stream::select_all(drivers.into_iter().enumerate().map(one));
    // Phases: 0 = streaming, 2 = [DONE] pending, 3 = over.
    let s = futures::stream::unfold(
        (items, vec![(0, 0, 0); choices], 0u8),
        move |(mut items, mut counts, phase)| {
            let head = head.clone();
            async move {
                match phase {
                    2 => return Some((SseEvent::default().data("[DONE]"), (items, counts, 3))),
                    3 => return None,
                    _ => {}
                }
                loop {
                    match items.next().await {
                        Some(Item::Chunk(c)) => {
                            let ev = SseEvent::default().data(c.to_string());
                            return Some((ev, (items, counts, 0)));
                        }
                        Some(Item::End(i, c)) => counts[i] = c,
                        None if include_usage => {
                            let mut u = head;
                            u["choices"] = json!([]);
                            u["usage"] = fanout::usage_json(fanout::usage_totals(&counts, n));
                            return Some((
                                SseEvent::default().data(u.to_string()),
                                (items, counts, 2),
                            ));
                        }
                        None => {
                            return Some((SseEvent::default().data("[DONE]"), (items, counts, 3)))
                        }
                    }
                }
            }
        },
    );
    Sse::new(s.map(Ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats_map_to_schemas() {
        let f = |v: Value| response_format_schema(Some(v));
        assert_eq!(f(json!({"type": "text"})).unwrap(), None);
        assert_eq!(response_format_schema(None).unwrap(), None);
        assert_eq!(
            f(json!({"type": "json_object"})).unwrap().as_deref(),
            Some(r#"{"type": "object"}"#)
        );
        let s = f(json!({"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "integer"}, "strict": true}}))
        .unwrap()
        .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&s).unwrap(),
            json!({"type": "integer"})
        );
        for bad in [
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            json!({"type": "structural_tag"}),
            json!({"type": "yaml"}),
            json!({}),
        ] {
            assert!(f(bad.clone()).is_err(), "{bad}");
        }
    }
}
