//! The forward-level model-runner interface between the scheduler and a compute stack.
//!
//! The scheduler hands one [`ForwardBatch`] (token ids, positions, KV slots, per-sequence page
//! tables, the rows that need logits) plus one [`SampleReq`] per such row, and gets back one
//! [`Sampled`] token (with its logprob when asked) per row. How logits are made and where they are
//! sampled is the runner's business: the CPU runner ([`Model`] over any f32 [`Backend`]) runs
//! today's per-op forward and samples on the host; the CUDA runner (`super::cuda`) runs the bf16
//! stack with batch metadata uploaded once per forward and decode replayed from CUDA graphs.
//!
//! Sampling semantics are shared: [`sample_host`] is the one definition (penalties, banned tokens,
//! temperature / top-k / top-p / min-p, the caller's uniform draw), so a seed means the same on
//! every runner.

use super::llama::{ForwardBatch, KvBuffers, Model};
use super::{ModelConfig, ModelError};
use crate::kv::{HostKvPool, PageId};
use crate::logprobs::{at_position, LogprobSpec, PosLogprobs};
use crate::sampling::SamplingParams;
use std::path::Path;
use std::sync::Arc;
use strata_kernels::sample_rows::{add_count, Allow, RowMode, RowSpec};
use strata_kernels::sampling::sample;
use strata_kernels::Backend;

/// How to sample one logits row.
#[derive(Debug, Clone, Copy)]
pub struct SampleReq<'a> {
    pub params: &'a SamplingParams,
    /// The tokens generated so far, each once with its count, ascending by token (for the
    /// penalties; the scheduler keeps them per sequence, `Seq::update_counts`).
    pub counts: &'a [(u32, u32)],
    /// Tokens masked to -inf (EOS before `min_new_tokens`).
    pub banned: &'a [u32],
    /// Under a constraint, the only tokens the grammar allows now (None: any).
    pub allow: Option<Allow<'a>>,
    /// The request's uniform draw for this step, in [0, 1).
    pub uniform: f64,
    /// The log-probabilities to return for this row (`None`: none).
    pub logprobs: Option<&'a LogprobSpec>,
    /// A prompt row kept only for its log-probabilities: nothing is sampled, the "sampled" token
    /// is this one (the next prompt token) and its values come from the raw logits.
    pub score: Option<u32>,
    /// An embedding request's last prompt row, or a prompt row kept for its hidden state:
    /// nothing is sampled; the row's hidden state after the final norm comes back in
    /// [`Sampled::embedding`].
    pub embed: bool,
    /// A sampled row whose hidden state also comes back (`return_hidden_states`).
    pub hidden: bool,
    /// One more output token that `counts` does not hold yet: the batch's input token at this
    /// index (under overlap scheduling, fed forward from the forward in flight before the host
    /// knows it). The penalties count it too: the CUDA runner's queued steps read it from the
    /// device, the others from `batch.tokens` once resolved (`with_uncounted_counted`).
    pub uncounted: Option<usize>,
}

impl SampleReq<'_> {
    /// True when the token is the plain argmax of the raw logits (no penalty, bias, ban, mask
    /// or logprob).
    pub fn is_plain_greedy(&self) -> bool {
        self.params.argmax_only()
            && self.banned.is_empty()
            && self.logprobs.is_none()
            && self.from_logits_alone()
    }

    /// True when the token (and its logprobs, when asked) is drawn on the device from the row's
    /// logits, the request's fixed parameters (temperature, top-k/p, min-p, logit bias, bans,
    /// the draw) and the output's counts (penalties; the newest token counted on the device,
    /// `uncounted`): no grammar mask walked on the host, nothing brought back but the token and
    /// its logprob words. A runner may then sample it while the host goes on (overlap
    /// scheduling).
    pub fn from_logits_alone(&self) -> bool {
        self.allow.is_none() && self.score.is_none() && !self.embed && !self.hidden
    }

    /// [`from_logits_alone`](Self::from_logits_alone), or when `grammar`
    /// ([`overlap_grammar_from_env`]) also under a grammar's mask known now (it travels with the
    /// row to the device sampler), and without output penalties or logprobs unless `wide`
    /// ([`overlap_wide_from_env`]): a runner queues such a row.
    pub fn queueable(&self, wide: bool, grammar: bool) -> bool {
        (grammar || self.allow.is_none())
            && self.score.is_none()
            && !self.embed
            && !self.hidden
            && (wide || (!self.params.penalises_output() && self.logprobs.is_none()))
    }
}

/// Whether rows with output penalties or logprobs are queued (and rounds run ahead of them)
/// under overlap scheduling: yes unless `STRATA_OVERLAP_WIDE=0` (an A/B switch kept from the
/// gate before its GPU check; overlap forced by `STRATA_OVERLAP_SCHEDULE=1` always queues them).
pub fn overlap_wide_from_env() -> bool {
    overlap_switch("STRATA_OVERLAP_WIDE")
}

/// An overlap A/B switch: on unless `var` is `0`, and always under forced overlap
/// (`STRATA_OVERLAP_SCHEDULE=1`).
fn overlap_switch(var: &str) -> bool {
    std::env::var("STRATA_OVERLAP_SCHEDULE").as_deref() == Ok("1")
        || std::env::var(var).as_deref() != Ok("0")
}

/// Whether rows under a grammar are queued, and rounds run ahead of them (their forward launched
/// before their masks, `ModelRunner::launch_later`) under overlap scheduling: yes unless
/// `STRATA_OVERLAP_GRAMMAR=0` (an A/B switch kept from the gate before its GPU check; overlap
/// forced by `STRATA_OVERLAP_SCHEDULE=1` always does).
pub fn overlap_grammar_from_env() -> bool {
    overlap_switch("STRATA_OVERLAP_GRAMMAR")
}

/// The GPU sampler's description of `r` (`strata_kernels::sample_rows`, same semantics as
/// [`sample_host`]): plain greedy rows are `Skip` (the runner's argmax already picked them), a
/// scored prompt row is `Fixed`, other greedy rows (penalties, bans or logprobs) `Greedy`, the
/// rest `Sample`.
pub fn gpu_row<'a>(r: &SampleReq<'a>) -> RowSpec<'a> {
    let p = r.params;
    let s = &p.sample;
    let mode = if let Some(t) = r.score {
        RowMode::Fixed(t)
    } else if r.is_plain_greedy() {
        RowMode::Skip
    } else if s.temperature <= 0.0 || s.top_k == Some(1) {
        RowMode::Greedy
    } else {
        RowMode::Sample
    };
    let scored = r.score.is_some();
    RowSpec {
        mode,
        params: *s,
        repetition_penalty: p.repetition_penalty,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
        logit_bias: if scored { &[] } else { &p.logit_bias },
        counts: if scored { &[] } else { r.counts },
        banned: if scored { &[] } else { r.banned },
        allow: if scored { None } else { r.allow },
        uniform: r.uniform,
        logprobs: r
            .logprobs
            .map(|spec| (spec.top_n, spec.token_ids.as_deref().unwrap_or(&[]))),
        uncounted: if scored {
            None
        } else {
            r.uncounted.map(|i| i as u32)
        },
    }
}

/// Calls `f` with `sampling` whose uncounted tokens (`SampleReq::uncounted`) are added to their
/// counts from `batch.tokens` (resolved: the forward they came from was taken back), for a
/// runner that samples with the batch's tokens known on the host.
pub fn with_uncounted_counted<T>(
    batch: &ForwardBatch,
    sampling: &[SampleReq<'_>],
    f: impl FnOnce(&[SampleReq<'_>]) -> T,
) -> T {
    if sampling.iter().all(|r| r.uncounted.is_none()) {
        return f(sampling);
    }
    let counts: Vec<Option<Vec<(u32, u32)>>> = sampling
        .iter()
        .map(|r| r.uncounted.map(|i| add_count(r.counts, batch.tokens[i])))
        .collect();
    let reqs: Vec<SampleReq<'_>> = sampling
        .iter()
        .zip(&counts)
        .map(|(r, c)| match c {
            Some(c) => SampleReq {
                counts: c,
                uncounted: None,
                ..*r
            },
            None => *r,
        })
        .collect();
    f(&reqs)
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// When asked for: log-softmax of the logits after penalties (raw for a scored prompt row).
    pub logprobs: Option<Box<PosLogprobs>>,
    /// An embedding row's hidden state after the final norm (`hidden_size` values; token 0).
    pub embedding: Option<Vec<f32>>,
}

impl Sampled {
    /// A token without an embedding.
    pub fn token(token: u32, logprobs: Option<Box<PosLogprobs>>) -> Self {
        Sampled {
            token,
            logprobs,
            embedding: None,
        }
    }
    /// An embedding row's answer.
    pub fn embedding(hidden: Vec<f32>) -> Self {
        Sampled {
            token: 0,
            logprobs: None,
            embedding: Some(hidden),
        }
    }
}

/// Samples one row on the host (the CPU runner's path, and the CUDA runner's for rows with
/// penalties, masks or logprobs). `logits` is modified by the penalties.
pub fn sample_host(logits: &mut [f32], r: &SampleReq<'_>) -> Sampled {
    if let Some(token) = r.score {
        let logprobs = r
            .logprobs
            .map(|spec| Box::new(at_position(logits, token, spec)));
        return Sampled::token(token, logprobs);
    }
    r.params.apply_penalties(logits, r.counts, r.banned);
    if let Some(a) = &r.allow {
        a.apply(logits);
    }
    let token = sample(logits, &r.params.sample, r.uniform) as u32;
    let logprobs = r
        .logprobs
        .map(|spec| Box::new(at_position(logits, token, spec)));
    Sampled::token(token, logprobs)
}

/// A forward handed to [`ModelRunner::launch`].
#[derive(Debug)]
pub enum Launch {
    /// It ran to the end (the runner queues nothing): the sampled rows.
    Done(Vec<Sampled>),
    /// Queued on the device: [`ModelRunner::collect`] waits for its sampled rows.
    Queued(Queued),
}

/// A forward queued on the device, as the runner that queued it knows it.
#[derive(Debug)]
pub struct Queued {
    /// The runner's slot for its results.
    pub slot: usize,
    /// Sampled rows it returns.
    pub rows: usize,
}

/// A model runner: owns the weights and runs whole batches.
pub trait ModelRunner: Send + 'static {
    /// The paged KV cache this runner reads and writes.
    type Kv: Send;
    /// The model's configuration.
    fn cfg(&self) -> &ModelConfig;
    /// Short name for logs and `/get_server_info` ("cpu", "cuda").
    fn name(&self) -> &'static str;
    /// Bytes of KV cache per token (all layers, K and V).
    fn kv_bytes_per_token(&self) -> usize;
    /// Bytes the KV cache may take under `--mem-fraction-static` when the runner owns device
    /// memory (None: size from host memory, the CPU rule).
    fn kv_budget_bytes(&self, _mem_fraction_static: f64) -> Option<usize> {
        None
    }
    /// Allocates a zeroed paged KV cache of `num_pages` pages of `page_size` tokens.
    fn new_kv(&self, num_pages: usize, page_size: usize) -> Result<Self::Kv, ModelError>;
    /// Bytes of one KV element (the host pool stores pages in the same type).
    fn kv_elem_bytes(&self) -> usize {
        4
    }
    /// Whether [`save_pages`](Self::save_pages) / [`load_pages`](Self::load_pages) work (the
    /// hierarchical cache needs them).
    /// Whether the runner applies LoRA adapters (`SeqSlice::lora`); the API refuses adapter
    /// requests on a runner that does not.
    fn supports_lora(&self) -> bool {
        false
    }

    fn kv_page_io(&self) -> bool {
        false
    }
    /// Copies device pages `dev[i]` into host-pool pages `host_pages[i]` (all layers, K and V),
    /// in the host pool's page-first layout.
    fn save_pages(
        &self,
        _kv: &Self::Kv,
        _dev: &[PageId],
        _host: &HostKvPool,
        _host_pages: &[PageId],
    ) -> Result<(), ModelError> {
        Err(no_page_io(self.name()))
    }
    /// Copies host-pool pages `host_pages[i]` into device pages `dev[i]`.
    fn load_pages(
        &self,
        _kv: &mut Self::Kv,
        _host: &HostKvPool,
        _host_pages: &[PageId],
        _dev: &[PageId],
    ) -> Result<(), ModelError> {
        Err(no_page_io(self.name()))
    }
    /// PD: the pool's pages in this process's memory, when they are there (the CPU runner), so
    /// the transfer threads can send them without a staging copy.
    fn host_spans(&self, _kv: &Self::Kv) -> Option<crate::pd::share::HostSpans> {
        None
    }
    /// PD: the pool as other processes on this host can open it (the CUDA runner's IPC path).
    fn device_kv(&self, _kv: &Self::Kv) -> Option<Arc<dyn crate::pd::share::DeviceKv>> {
        None
    }
    /// Attaches the HiCache host pool: a runner with a faster path for that pool's pages (the
    /// CUDA runner page-locks it and copies on a separate stream, `direct_io` choosing one async
    /// memcpy per run over the copy kernel) sets it up here. Other pools keep the plain path.
    fn attach_host(
        &self,
        _kv: &mut Self::Kv,
        _host: &HostKvPool,
        _direct_io: bool,
    ) -> Result<(), ModelError> {
        Ok(())
    }
    /// Blocks until every queued host <-> device page copy is done (a load may otherwise finish
    /// during the next forward; callers that give host pages away first call this).
    fn finish_host_io(&self, _kv: &mut Self::Kv) -> Result<(), ModelError> {
        Ok(())
    }
    /// Start-up work once the KV cache exists (the CUDA runner captures its decode graphs).
    fn warmup(&mut self, _kv: &mut Self::Kv) -> Result<(), ModelError> {
        Ok(())
    }
    /// Replaces the weights with the checkpoint in `dir` (`/update_weights_from_disk`; same
    /// shapes). An error leaves the served weights as they were.
    fn reload_weights(&mut self, _dir: &Path, _kv: &mut Self::Kv) -> Result<(), ModelError> {
        Err(ModelError::Bad {
            path: _dir.display().to_string(),
            msg: format!(
                "updating weights in place is not available on the {} runner yet",
                self.name()
            ),
        })
    }
    /// Runs `batch` and samples one token per `batch.logit_rows` entry (`sampling` is parallel to
    /// it).
    fn run_batch(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut Self::Kv,
    ) -> Result<Vec<Sampled>, ModelError>;
    /// Whether [`launch`](Self::launch) can return before the forward has run (overlap
    /// scheduling then pays: the scheduler builds the next batch while this one runs).
    fn queues(&self) -> bool {
        false
    }
    /// Starts `batch` and returns without waiting where the runner can (the CUDA runner's graph
    /// replays); `batch.from_prev` may name rows of the previous launch, still queued. The
    /// default runs it to the end.
    fn launch(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut Self::Kv,
    ) -> Result<Launch, ModelError> {
        debug_assert!(batch.from_prev.is_empty(), "nothing was queued");
        self.run_batch(batch, sampling, kv).map(Launch::Done)
    }
    /// Starts `batch`'s forward before its rows' sampling requests are known (overlap for rows
    /// under a grammar, whose masks follow the tokens of the forward in flight): the next call
    /// is [`sample_later`](Self::sample_later) with the same batch and its requests, after the
    /// forward in flight was taken back. Every row is a decode's next token. The default starts
    /// nothing (the whole forward runs in `sample_later`).
    fn launch_later(
        &mut self,
        _batch: &ForwardBatch,
        _kv: &mut Self::Kv,
    ) -> Result<(), ModelError> {
        Ok(())
    }
    /// Samples the rows of the forward [`launch_later`](Self::launch_later) started (queued
    /// after it where the runner can). The default runs the whole batch as
    /// [`launch`](Self::launch).
    fn sample_later(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut Self::Kv,
    ) -> Result<Launch, ModelError> {
        self.launch(batch, sampling, kv)
    }
    /// Waits for a queued forward and returns its sampled rows.
    fn collect(&mut self, q: Queued, _kv: &mut Self::Kv) -> Result<Vec<Sampled>, ModelError> {
        Err(ModelError::Bad {
            path: self.name().into(),
            msg: format!(
                "slot {} was never queued: this runner queues nothing",
                q.slot
            ),
        })
    }
}

/// The per-op forward over a [`Backend`] (the CPU runner; also the f32 CUDA reference path):
/// logits come back to the host and every row is sampled there.
impl<B: Backend> ModelRunner for Model<B> {
    type Kv = KvBuffers<B>;

    fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }
    fn name(&self) -> &'static str {
        self.backend().name()
    }
    fn kv_bytes_per_token(&self) -> usize {
        Model::kv_bytes_per_token(self)
    }
    fn new_kv(&self, num_pages: usize, page_size: usize) -> Result<Self::Kv, ModelError> {
        Model::new_kv(self, num_pages, page_size)
    }
    fn kv_page_io(&self) -> bool {
        true
    }

    fn supports_lora(&self) -> bool {
        true
    }
    fn reload_weights(&mut self, dir: &Path, _kv: &mut Self::Kv) -> Result<(), ModelError> {
        self.reload(dir)
    }
    fn host_spans(&self, kv: &Self::Kv) -> Option<crate::pd::share::HostSpans> {
        let b = self.backend();
        let run = kv.page_size * self.cfg.kv_dim() * 4;
        let base = |bufs: &[B::Buf]| -> Option<Vec<usize>> {
            bufs.iter()
                .map(|buf| b.host_ptr(buf).map(|p| p as usize))
                .collect()
        };
        Some(crate::pd::share::HostSpans {
            k: base(&kv.k)?,
            v: base(&kv.v)?,
            run,
            pages: kv.num_pages,
        })
    }
    fn save_pages(
        &self,
        kv: &Self::Kv,
        dev: &[PageId],
        host: &HostKvPool,
        host_pages: &[PageId],
    ) -> Result<(), ModelError> {
        Ok(crate::kv::pool::save_pages(
            self.backend(),
            kv,
            dev,
            host,
            host_pages,
        )?)
    }
    fn load_pages(
        &self,
        kv: &mut Self::Kv,
        host: &HostKvPool,
        host_pages: &[PageId],
        dev: &[PageId],
    ) -> Result<(), ModelError> {
        Ok(crate::kv::pool::load_pages(
            self.backend(),
            kv,
            host,
            host_pages,
            dev,
        )?)
    }
    fn run_batch(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut Self::Kv,
    ) -> Result<Vec<Sampled>, ModelError> {
        check_sampling(batch, sampling)?;
        with_uncounted_counted(batch, sampling, |s| self.run_counted(batch, s, kv))
    }
}

impl<B: Backend> Model<B> {
    /// [`ModelRunner::run_batch`] once every row's counts are whole.
    fn run_counted(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut KvBuffers<B>,
    ) -> Result<Vec<Sampled>, ModelError> {
        let embed = sampling.iter().any(|r| r.embed || r.hidden);
        let (logits, hidden) = self.forward_rows(batch, kv, embed)?;
        let (vocab, h) = (self.cfg.vocab_size, self.cfg.hidden_size);
        Ok(sampling
            .iter()
            .enumerate()
            .map(|(row, r)| {
                let state = || hidden[row * h..(row + 1) * h].to_vec();
                if r.embed {
                    return Sampled::embedding(state());
                }
                let mut s = sample_host(&mut logits[row * vocab..(row + 1) * vocab].to_vec(), r);
                if r.hidden {
                    s.embedding = Some(state());
                }
                s
            })
            .collect())
    }
}

fn no_page_io(runner: &str) -> ModelError {
    ModelError::Kernel(strata_kernels::KernelError::Device(format!(
        "the {runner} runner cannot copy KV pages to the host yet (hierarchical cache)"
    )))
}

/// Errors unless there is one sampling request per logits row.
pub(crate) fn check_sampling(
    batch: &ForwardBatch,
    sampling: &[SampleReq<'_>],
) -> Result<(), ModelError> {
    if let Some(r) = sampling
        .iter()
        .find(|r| r.uncounted.is_some_and(|i| i >= batch.tokens.len()))
    {
        return Err(ModelError::Kernel(strata_kernels::KernelError::Shape {
            op: "run_batch",
            detail: format!(
                "uncounted token {:?} outside a batch of {} tokens",
                r.uncounted,
                batch.tokens.len()
            ),
        }));
    }
    if batch.logit_rows.len() != sampling.len() {
        return Err(ModelError::Kernel(strata_kernels::KernelError::Shape {
            op: "run_batch",
            detail: format!(
                "{} logit rows but {} sampling requests",
                batch.logit_rows.len(),
                sampling.len()
            ),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParamsWire;

    fn params(json: &str) -> SamplingParams {
        serde_json::from_str::<SamplingParamsWire>(json)
            .unwrap()
            .validate()
            .unwrap()
    }

    fn req<'a>(p: &'a SamplingParams, banned: &'a [u32]) -> SampleReq<'a> {
        SampleReq {
            params: p,
            counts: &[(4, 2), (9, 1)],
            banned,
            allow: None,
            uniform: 0.25,
            logprobs: None,
            score: None,
            embed: false,
            hidden: false,
            uncounted: None,
        }
    }

    /// Which GPU mode each kind of request gets, and what travels with it.
    #[test]
    fn gpu_rows_follow_the_host_semantics() {
        let greedy = params(r#"{"temperature": 0}"#);
        assert_eq!(gpu_row(&req(&greedy, &[])).mode, RowMode::Skip);
        assert_eq!(gpu_row(&req(&greedy, &[2])).mode, RowMode::Greedy);
        let pen = params(r#"{"temperature": 0, "presence_penalty": 0.5}"#);
        assert_eq!(gpu_row(&req(&pen, &[])).mode, RowMode::Greedy);
        let k1 = params(r#"{"temperature": 0.8, "top_k": 1, "logit_bias": {"3": 1}}"#);
        assert_eq!(gpu_row(&req(&k1, &[])).mode, RowMode::Greedy);
        let s = params(r#"{"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2}"#);
        let row = gpu_row(&req(&s, &[7]));
        assert_eq!(row.mode, RowMode::Sample);
        assert_eq!((row.params, row.repetition_penalty), (s.sample, 1.2));
        assert_eq!(
            (row.counts, row.banned, row.uniform),
            (&[(4, 2), (9, 1)][..], &[7][..], 0.25)
        );
        let spec = LogprobSpec {
            start: 0,
            top_n: 3,
            token_ids: Some(vec![1, 2]),
        };
        let mut scored = req(&s, &[7]);
        scored.score = Some(11);
        scored.logprobs = Some(&spec);
        let row = gpu_row(&scored);
        assert_eq!(row.mode, RowMode::Fixed(11));
        assert!(row.counts.is_empty() && row.banned.is_empty() && row.logit_bias.is_empty());
        assert_eq!(row.logprobs, Some((3, &[1u32, 2][..])));
        let mut lp = req(&greedy, &[]);
        lp.logprobs = Some(&spec);
        assert_eq!(gpu_row(&lp).mode, RowMode::Greedy);
        // A grammar's mask: not plain greedy, and it travels (not on a scored row).
        let bits = [0b1001u32];
        let mut masked = req(&greedy, &[]);
        masked.allow = Some(Allow {
            bits: &bits,
            also: &[],
        });
        let row = gpu_row(&masked);
        assert_eq!(row.mode, RowMode::Greedy);
        assert_eq!(row.allow.map(|a| a.bits), Some(&bits[..]));
        // A runner queues it (the mask goes to the device with its row), not a scored row.
        assert!(masked.queueable(false, true) && !masked.from_logits_alone());
        assert!(!masked.queueable(true, false));
        masked.score = Some(2);
        assert!(gpu_row(&masked).allow.is_none());
        assert!(!masked.queueable(true, true));
        // On the host: the mask leaves tokens 0 and 3; the larger logit wins.
        let mut logits = vec![1.0, 9.0, 8.0, 2.0];
        masked.score = None;
        assert_eq!(sample_host(&mut logits, &masked).token, 3);
        assert_eq!(logits[1], f32::NEG_INFINITY);
    }
}
