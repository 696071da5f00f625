//! What flows between the HTTP layer and the scheduler thread.
//!
//! A [`Request`] carries its own event channel; the scheduler sends [`Event`]s on it and treats a
//! closed channel as a client disconnect (abort). The HTTP layer never sees pages or batches.

pub use crate::logprobs::{LogprobSpec, PosLogprobs};
use crate::sampling::SamplingParams;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A generation request, already tokenised and validated.
#[derive(Debug)]
pub struct Request {
    pub rid: String,
    pub input_ids: Vec<u32>,
    pub params: SamplingParams,
    /// The log-probabilities to report; `None` reports none.
    pub logprobs: Option<LogprobSpec>,
    pub events: mpsc::UnboundedSender<Event>,
    pub arrival: Instant,
    /// PD bootstrap fields (set by the router), when this request is one leg of a PD pair.
    pub bootstrap: Option<crate::pd::Bootstrap>,
    /// An embedding request (`--is-embedding`): the prompt is run (and cached) and the last
    /// row's hidden state comes back as [`Event::Embedding`]; nothing is generated.
    pub embed: bool,
}

/// Why a request finished (serialised as SGLang's `meta_info.finish_reason`).
#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    /// Hit `max_new_tokens` or the context length.
    Length(usize),
    /// Generated an EOS or stop token.
    StopToken(u32),
    /// Generated text containing a stop string.
    StopStr(String),
    /// Generated text containing a match of this `stop_regex` pattern.
    StopRegex(String),
    /// Aborted (by `/abort_request`, a disconnect, or an error).
    Abort(String),
    /// Refused on arrival, never queued (`--max-queued-requests`: the waiting queue is full).
    /// SGLang's abort with `status_code` 503: a non-streamed request gets a 503 response.
    Refused(String),
}

/// Per-request accounting sent with the final event.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    /// Times the request was retracted for lack of KV memory and recomputed (SGLang's
    /// `num_retractions`).
    pub num_retractions: usize,
}

/// One step of a request's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Log-probabilities of the next prompt positions, in order, starting at
    /// [`LogprobSpec::start`]; all of them arrive before the first token.
    Input(Vec<PosLogprobs>),
    /// A generated token (with its log-probabilities when asked for).
    Token {
        id: u32,
        logprob: Option<Box<PosLogprobs>>,
    },
    /// An embedding request's hidden state of its last prompt token after the final norm (not
    /// pooled further or normalised); [`Event::Done`] follows.
    Embedding(Vec<f32>),
    /// `return_hidden_states`: the final hidden states of the next positions, in order (the
    /// prompt's, then one per output token fed back); they precede the token they led to.
    Hidden(Vec<Vec<f32>>),
    /// The request is over; no event follows.
    Done(Finish),
}

/// Messages to the scheduler thread.
#[derive(Debug)]
pub enum Msg {
    Submit(Box<Request>),
    /// Abort by rid (an empty rid aborts everything).
    Abort(String),
    /// Drop the prefix cache; answers false while requests hold cached pages.
    Flush(oneshot::Sender<bool>),
    /// Empty the L3 store.
    ClearStorage(oneshot::Sender<Result<(), String>>),
    /// Nothing to do but look again (a PD decode fetch finished: its request can start now).
    Wake,
    /// A PD prefill leg's transfer ended: its pages, left in the pool for it, go back.
    PdRelease(u64),
    /// `/pause_generation`: stop running rounds (answers once the mode's work is done).
    Pause(PauseMode, oneshot::Sender<()>),
    /// `/continue_generation`: run rounds again.
    Continue(oneshot::Sender<()>),
    /// `/update_weights_from_disk`: swap in the checkpoint once the requests before it are done.
    UpdateWeights(super::weights::WeightUpdate),
    /// `PUT` / `DELETE /hicache/storage-backend`: attach (Some) or detach (None) the L3.
    L3(
        Option<Box<crate::hicache::Attach>>,
        oneshot::Sender<Result<String, String>>,
    ),
}

/// How `/pause_generation` treats the requests in the scheduler (SGLang's modes). In every mode
/// no round runs until `/continue_generation`, and requests that arrive meanwhile queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// Abort every running and waiting request (SGLang's default).
    Abort,
    /// Running requests keep their KV pages and resume where they stopped.
    InPlace,
    /// Running requests give their pages back (the computed full pages go to the prefix cache)
    /// and go back to the front of the queue, to be recomputed after the pause.
    Retract,
}

impl PauseMode {
    /// The mode `mode` names in a request (`abort`, `in_place`, `retract`).
    pub fn from_name(mode: &str) -> Option<Self> {
        match mode {
            "abort" => Some(Self::Abort),
            "in_place" => Some(Self::InPlace),
            "retract" => Some(Self::Retract),
            _ => None,
        }
    }
}
