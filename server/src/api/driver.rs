//! Submitting a tokenised request to the scheduler and following its events, shared by every
//! generation endpoint. Records TTFT, inter-token latency and end-to-end latency.
//!
//! Dropping a [`Driver`] drops the event receiver, which the scheduler sees as a disconnect and
//! answers by aborting the request and freeing its pages.
//!
//! Streaming goes by [`Driver::next_chunk`]: with a stream interval `k` (`--stream-interval`, or
//! the request's `sampling_params.stream_interval`) a chunk is due when the output holds `n`
//! tokens with `n % k == 1` (`k` > 1: the first token at once, then every `k` tokens, as SGLang's
//! scheduler decides) or at the end, which carries whatever is left with the finish reason.

use super::error::ApiError;
use super::output::Output;
use super::reqlog::Finished;
use super::AppState;
use crate::sampling::SamplingParams;
use crate::scheduler::request::{Event, FinishReason, LogprobSpec, Request};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

static NEXT_RID: AtomicU64 = AtomicU64::new(1);

/// What runs with a request's output ids when it ends.
pub type OnFinish = Box<dyn FnOnce(&[u32]) + Send>;

/// A request in flight.
pub struct Driver {
    pub rid: String,
    pub params: SamplingParams,
    pub prompt_tokens: usize,
    /// The log-probabilities asked for, and the prompt tokens from its start on.
    pub logprobs: Option<LogprobSpec>,
    pub lp_prompt_ids: Vec<u32>,
    pub out: Output,
    pub arrival: Instant,
    rx: mpsc::UnboundedReceiver<Event>,
    state: AppState,
    last_token_at: Option<Instant>,
    /// Output tokens per streamed chunk (at least 1).
    stream_interval: usize,
    /// The prompt, kept for a `--log-requests` line that shows it (else empty).
    logged_input: Vec<u32>,
    /// Called with the output ids when the request ends (a session records them).
    pub on_finish: Option<OnFinish>,
}

/// A fresh request id (hex, like SGLang's uuid-based ids).
pub fn new_rid() -> String {
    let n = NEXT_RID.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:016x}{:016x}",
        t as u64,
        crate::seeded::SplitMix64(n).next_u64()
    )
}

impl Driver {
    /// Validates sizes against the model and the pool, then queues the request.
    pub fn submit(
        state: &AppState,
        input_ids: Vec<u32>,
        params: SamplingParams,
        logprobs: Option<LogprobSpec>,
        rid: Option<String>,
    ) -> Result<Driver, ApiError> {
        Self::submit_pd(state, input_ids, params, logprobs, rid, None)
    }

    /// Queues an embedding request (`--is-embedding`): the prompt is run, nothing generated;
    /// its answer arrives in `out.embedding` before the finish.
    pub fn submit_embed(
        state: &AppState,
        input_ids: Vec<u32>,
        rid: Option<String>,
    ) -> Result<Driver, ApiError> {
        let params = SamplingParams {
            max_new_tokens: 0,
            ..SamplingParams::default()
        };
        Self::queue(state, input_ids, params, None, rid, None, true)
    }

    /// [`submit`](Self::submit) for one leg of a PD pair; a prefill server claims the room (a
    /// room already in use is a 400).
    pub fn submit_pd(
        state: &AppState,
        input_ids: Vec<u32>,
        params: SamplingParams,
        logprobs: Option<LogprobSpec>,
        rid: Option<String>,
        bootstrap: Option<crate::pd::Bootstrap>,
    ) -> Result<Driver, ApiError> {
        if state.info.is_embedding {
            return Err(ApiError::bad_request(
                "This model is served as an embedding model (--is-embedding): it does not \
                 generate. Use /v1/embeddings or /encode.",
            ));
        }
        Self::queue(state, input_ids, params, logprobs, rid, bootstrap, false)
    }

    /// Validates and queues a generation (`embed` false) or embedding request.
    fn queue(
        state: &AppState,
        input_ids: Vec<u32>,
        mut params: SamplingParams,
        logprobs: Option<LogprobSpec>,
        rid: Option<String>,
        bootstrap: Option<crate::pd::Bootstrap>,
        embed: bool,
    ) -> Result<Driver, ApiError> {
        let ctx = state.info.context_length;
        if params.return_hidden_states && !state.return_hidden_states {
            return Err(ApiError::bad_request(
                "The server is not configured to return the hidden states. Please set \
                 `--enable-return-hidden-states` to enable this feature.",
            ));
        }
        if params.return_hidden_states && bootstrap.is_some() {
            return Err(ApiError::bad_request(
                "return_hidden_states is not supported on a PD leg (the prompt runs on the \
                 prefill server).",
            ));
        }
        if input_ids.is_empty() {
            return Err(ApiError::bad_request("The input is empty."));
        }
        if let Some(&bad) = input_ids
            .iter()
            .find(|&&t| t as usize >= state.info.vocab_size)
        {
            return Err(ApiError::bad_request(format!(
                "Token id {bad} is out of the vocabulary (size {}).",
                state.info.vocab_size
            )));
        }
        let mut input_ids = input_ids;
        let mut logprobs = logprobs;
        if fit_input(
            &mut input_ids,
            ctx,
            state.info.max_total_tokens,
            state.allow_auto_truncate,
        )? {
            // Prompt positions past the cut no longer exist.
            if let Some(l) = &mut logprobs {
                l.start = l.start.min(input_ids.len());
            }
        }
        if let Some(l) = &logprobs {
            if l.start > input_ids.len() {
                return Err(ApiError::bad_request(format!(
                    "logprob_start_len ({}) is larger than the input ({} tokens).",
                    l.start,
                    input_ids.len()
                )));
            }
        }
        params.max_new_tokens = params.max_new_tokens.min(ctx - input_ids.len());
        if params.constraint.is_some() && state.grammar_off {
            return Err(ApiError::bad_request(
                "Grammar-based generation (json_schema, regex, ebnf, structural_tag) is not \
                 supported when the server is launched with --grammar-backend none",
            ));
        }
        if let Some(c) = &params.constraint {
            let g = off_the_runtime(|| state.grammars().compile(c));
            params.grammar = Some(crate::sampling::GrammarRef(
                g.map_err(ApiError::bad_request)?,
            ));
        }
        if !params.stop_regex.is_empty() {
            let r = off_the_runtime(|| state.grammars().stop_regex(&params.stop_regex));
            params.stop_regex_compiled = Some(crate::sampling::StopRegexRef(
                r.map_err(ApiError::bad_request)?,
            ));
        }
        let rid = rid.unwrap_or_else(new_rid);
        let (tx, rx) = mpsc::unbounded_channel();
        let arrival = Instant::now();
        let prompt_tokens = input_ids.len();
        let want_lp = logprobs.is_some();
        let logged_input = match state.request_log.get() {
            Some(l) if l.wants_input() => input_ids.clone(),
            _ => Vec::new(),
        };
        let lp_prompt_ids = logprobs
            .as_ref()
            .map(|l| input_ids[l.start..].to_vec())
            .unwrap_or_default();
        if let (Some(reg), Some(b)) = (&state.pd_registry, &bootstrap) {
            if b.is_real() && !reg.claim(b.room) {
                return Err(ApiError::bad_request(format!(
                    "Duplicate bootstrap_room {}: another request is using it.",
                    b.room
                )));
            }
        }
        let req = Request {
            embed,
            bootstrap,
            rid: rid.clone(),
            input_ids,
            params: params.clone(),
            logprobs: logprobs.clone(),
            events: tx,
            arrival,
        };
        if !state.scheduler.submit(req) {
            return Err(ApiError::unavailable("The scheduler has stopped."));
        }
        let stream_interval = params
            .stream_interval
            .unwrap_or(state.stream_interval)
            .max(1);
        Ok(Driver {
            rid,
            params,
            prompt_tokens,
            logprobs,
            lp_prompt_ids,
            out: Output::new(want_lp),
            arrival,
            rx,
            state: state.clone(),
            last_token_at: None,
            stream_interval,
            logged_input,
            on_finish: None,
        })
    }

    /// Waits for the next token or the end; returns the text delta it allows, or `None` once
    /// finished. Input log-probabilities are gathered on the way.
    pub async fn next(&mut self) -> Option<String> {
        if self.out.finish.is_some() {
            return None;
        }
        let ev = loop {
            match self.rx.recv().await {
                Some(ev @ Event::Input(_)) => {
                    self.out.push(ev, &self.state.tokenizer, &self.params);
                }
                Some(ev) => break ev,
                None => {
                    break Event::Done(crate::scheduler::request::Finish {
                        reason: FinishReason::Abort("The scheduler dropped the request.".into()),
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: self.out.ids.len(),
                        cached_tokens: 0,
                        num_retractions: 0,
                    })
                }
            }
        };
        let now = Instant::now();
        let stats = &self.state.stats;
        match &ev {
            Event::Token { .. } => {
                match self.last_token_at {
                    None => stats.ttft.observe((now - self.arrival).as_secs_f64()),
                    Some(t) => stats.itl.observe((now - t).as_secs_f64()),
                }
                self.last_token_at = Some(now);
            }
            Event::Done(_) => stats.e2e.observe((now - self.arrival).as_secs_f64()),
            Event::Input(_) | Event::Embedding(_) | Event::Hidden(_) => {}
        }
        let delta = self.out.push(ev, &self.state.tokenizer, &self.params);
        if self.out.finish.is_some() {
            if let Some(f) = self.on_finish.take() {
                f(&self.out.ids);
            }
        }
        if let (Some(log), Some(f)) = (self.state.request_log.get(), &self.out.finish) {
            let tok = &self.state.tokenizer;
            log.log(
                tok,
                &Finished {
                    rid: &self.rid,
                    finish: f,
                    e2e_secs: (now - self.arrival).as_secs_f64(),
                    params: &self.params,
                    input_ids: &self.logged_input,
                    output_text: &|| self.out.final_text(tok, &self.params),
                },
            );
        }
        Some(delta)
    }

    /// The error response of a request the scheduler refused on arrival (`--max-queued-requests`:
    /// SGLang answers a non-streamed request with 503 and the message), once it has finished.
    pub fn refused(&self) -> Option<ApiError> {
        match &self.out.finish.as_ref()?.reason {
            FinishReason::Refused(m) => Some(ApiError::unavailable(m.clone())),
            _ => None,
        }
    }

    /// Waits for the next streamed chunk (see the module header); returns its text delta, or
    /// `None` once finished. A chunk ends after the token that makes it due or with the finish.
    pub async fn next_chunk(&mut self) -> Option<String> {
        let mut delta = self.next().await?;
        while self.out.finish.is_none() && !chunk_due(self.out.ids.len(), self.stream_interval) {
            match self.next().await {
                Some(d) => delta.push_str(&d),
                None => break,
            }
        }
        Some(delta)
    }

    /// Runs to completion; returns the final text.
    pub async fn run_to_end(&mut self) -> String {
        // Only the final text is wanted: skip the per-token decodes.
        self.out.quiet = true;
        while self.next().await.is_some() {}
        self.out.final_text(&self.state.tokenizer, &self.params)
    }
}

impl Drop for Driver {
    /// A request dropped before its end (a client gone) still reports what it produced.
    fn drop(&mut self) {
        if let Some(f) = self.on_finish.take() {
            f(&self.out.ids);
        }
    }
}

/// Checks that a prompt fits the context (`ctx` tokens, one left to generate) and the KV pool
/// (`kv_tokens`). One that does not is a 400, or with `--allow-auto-truncate` (`truncate`) keeps
/// its first tokens, as SGLang keeps them: as many as SGLang's scheduler admits,
/// `min(ctx - 1, kv_tokens - 1) - 5` (at least 1). Returns whether it cut.
pub fn fit_input(
    ids: &mut Vec<u32>,
    ctx: usize,
    kv_tokens: usize,
    truncate: bool,
) -> Result<bool, ApiError> {
    let n = ids.len();
    if n < ctx && n < kv_tokens {
        return Ok(false);
    }
    if truncate {
        let keep = ctx.min(kv_tokens).saturating_sub(1 + 5).max(1);
        tracing::warn!(
            "The input ({n} tokens) is longer than the model's context length ({ctx} tokens) or the KV cache ({kv_tokens} tokens). Truncating the input to {keep} tokens."
        );
        ids.truncate(keep);
        return Ok(true);
    }
    Err(ApiError::bad_request(if n >= ctx {
        format!("The input ({n} tokens) is longer than the model's context length ({ctx} tokens).")
    } else {
        format!("The input ({n} tokens) does not fit in the KV cache ({kv_tokens} tokens).")
    }))
}

/// Whether a stream with interval `k` sends a chunk when the output holds `n` tokens (SGLang's
/// rule: every token for `k` = 1; else at 1, k + 1, 2k + 1, ...).
fn chunk_due(n: usize, k: usize) -> bool {
    k <= 1 || n % k == 1
}

/// Runs `f` (compiling a large schema or many patterns can take a while): on the server's
/// multi-thread runtime the worker hands its other tasks over meanwhile.
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::{chunk_due, fit_input};

    #[test]
    fn a_prompt_too_long_is_refused_or_keeps_its_head() {
        let fit = |n: u32, ctx, kv, t| {
            let mut ids: Vec<u32> = (0..n).collect();
            fit_input(&mut ids, ctx, kv, t).map(|cut| (cut, ids))
        };
        // Fits: untouched, with or without the flag.
        assert_eq!(
            fit(63, 64, 1000, false).unwrap(),
            (false, (0..63).collect())
        );
        assert_eq!(fit(63, 64, 1000, true).unwrap(), (false, (0..63).collect()));
        let e = fit(64, 64, 1000, false).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("context length (64 tokens)"),
            "{}",
            e.message
        );
        let e = fit(40, 64, 40, false).unwrap_err();
        assert!(e.message.contains("KV cache (40 tokens)"), "{}", e.message);
        // Cut: the head, SGLang's max_req_input_len of min(ctx, kv) - 1 - 5 tokens.
        assert_eq!(fit(100, 64, 1000, true).unwrap(), (true, (0..58).collect()));
        assert_eq!(fit(100, 64, 40, true).unwrap(), (true, (0..34).collect()));
        assert_eq!(fit(100, 4, 1000, true).unwrap(), (true, vec![0]));
    }

    #[test]
    fn chunks_are_due_at_the_first_token_then_every_k() {
        let due = |k| (1..=12).filter(|&n| chunk_due(n, k)).collect::<Vec<_>>();
        assert_eq!(due(1), (1..=12).collect::<Vec<_>>());
        assert_eq!(due(4), [1, 5, 9]);
        assert_eq!(due(5), [1, 6, 11]);
    }
}
