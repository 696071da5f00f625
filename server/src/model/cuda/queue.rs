//! Queued forwards (overlap scheduling): a graph-replayed decode batch whose rows are all drawn
//! from their logits (`SampleReq::queueable`: greedy by the graph's argmax, the others by
//! `sample_rows` queued after the replay, a grammar's mask in its row table, written without a
//! synchronisation) is launched without waiting; its sampled tokens (and the logprob words of
//! rows that ask for them) go to pinned slots by async copies
//! (`strata_kernels::cuda::readback`), or, where a lean one-row graph's head stores its pick
//! into the slot itself (graph.rs), by no work after the replay, and `collect` waits for those
//! only. The next batch
//! may take those tokens as input ids straight from the device (`ForwardBatch::from_prev`).
//! Every other batch runs to the end as before; one that takes ids from a queued forward waits
//! for that forward's tokens first.
//!
//! A batch with rows under a grammar starts in two calls (`launch_forward_only`, then
//! `sample_launched` once the scheduler knows the masks, which follow the tokens of the forward
//! in flight): its graph replay is queued first and its sampler after the masks, so the forward
//! runs while the host takes the previous tokens back and walks the grammars (SGLang's delayed
//! sampling). A batch that cannot replay a graph runs whole in the second call.
//!
//! Invariant: `last` names the previous launch's slot and token buffer only while that launch
//! was queued; every launch replaces it. Two slots, used in turn, suffice: the scheduler keeps
//! at most two launches not taken back, and takes the older back before the next launch.

use super::{CudaKv, CudaRunner};
use crate::logprobs::from_gpu;
use crate::model::runner::{Launch, Queued, SampleReq, Sampled};
use crate::model::{ForwardBatch, ModelError, ModelRunner};
use strata_kernels::cuda::readback::Readback;
use strata_kernels::cuda::{CudaError, DTensor};
use strata_kernels::sample_rows::{unpack_logprobs, PackedRows};

/// The runner's queued-forward state.
#[derive(Default)]
pub(super) struct Queue {
    readback: Option<Readback>,
    /// The slot the next queued forward uses.
    next: usize,
    /// The previous launch's slot and sampled-token buffer, when it was queued.
    last: Option<(usize, DTensor)>,
    /// Per slot: the logprob words of its queued forward, when a row asked for them.
    lp: [LpSlot; 2],
    /// A forward started by `launch_forward_only` whose rows are not sampled yet.
    later: Option<Later>,
}

/// What `launch_forward_only` started.
enum Later {
    /// A graph replay (its index), queued; the host's entry and launch times for the profile.
    Graph(usize, std::time::Instant, std::time::Instant),
    /// Nothing: the batch runs whole once its requests come.
    Whole,
}

/// One slot's logprob readback (grown to the largest forward's words) and what it holds.
#[derive(Default)]
struct LpSlot {
    readback: Option<Readback>,
    /// The packed rows whose logprob words are in flight, and each row's asked-for token ids.
    queued: Option<(PackedRows, Vec<Option<Vec<u32>>>)>,
}

impl CudaRunner {
    /// [`crate::model::ModelRunner::launch`]: queued when the batch replays a graph and every
    /// row is drawn from its logits alone, else run to the end.
    pub(super) fn launch_batch(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut CudaKv,
    ) -> Result<Launch, ModelError> {
        let last = self.take_last(batch)?;
        if sampling
            .iter()
            .all(|r| r.queueable(self.overlap_wide, self.overlap_grammar))
        {
            // (The other path's `run_batch` checks it itself.)
            crate::model::runner::check_sampling(batch, sampling)?;
            let entered = std::time::Instant::now();
            // Every row takes the argmax: a lean graph's head may store it into the slot, and
            // nothing is sampled after the replay.
            let argmax_final = self.graphs.lean() && self.argmax_is_final(sampling);
            let host = if argmax_final {
                let (slot, rb) = (self.queue.next, self.readback()?);
                rb.claim(slot)?;
                Some(rb.slot_device_ptr(slot))
            } else {
                None
            };
            let mut graphs = std::mem::take(&mut self.graphs);
            let run = graphs.try_launch(self, batch, kv, last.as_ref().map(|l| &l.1), host);
            let queued = match run {
                Ok(Some((gi, launched, stored))) => {
                    // Rows the argmax does not answer are sampled after the replay (a
                    // penalised row's newest token counted from the replay's input ids); the
                    // logprob words of rows that ask for them are read back with the tokens.
                    let (logits, t, ids) = graphs.head(gi);
                    let sampled = if argmax_final {
                        Ok(None) // (what queue_sampling would find again)
                    } else {
                        self.queue_sampling(logits, t, sampling, Some(ids))
                    };
                    sampled
                        .and_then(|q| Ok((q, t.view(0, t.shape())?)))
                        .map(|(q, t)| Some((t, q, launched, stored)))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            self.graphs = graphs;
            if let Some((tokens, sampled, launched, stored)) = queued? {
                let times = (entered, launched);
                return self.queued(batch, sampling, kv, (tokens, stored), sampled, times);
            }
        }
        self.launch_whole(batch, sampling, kv, last)
    }

    /// The previous launch's slot and tokens, when it was queued (every launch replaces it); an
    /// error when `batch` names input ids of a forward that was not.
    fn take_last(&mut self, batch: &ForwardBatch) -> Result<Option<(usize, DTensor)>, ModelError> {
        let last = self.queue.last.take();
        if !batch.from_prev.is_empty() && last.is_none() {
            return Err(ModelError::Cuda(CudaError::Shape(
                "input tokens named from a forward that was not queued".into(),
            )));
        }
        Ok(last)
    }

    /// The tail of a queued launch: its tokens (and logprob words) read back into the next slot
    /// (`stored`: the graph's head stored the tokens there itself; only the event is recorded).
    fn queued(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut CudaKv,
        (tokens, stored): (DTensor, bool),
        sampled: Option<(PackedRows, Option<DTensor>)>,
        (entered, launched): (std::time::Instant, std::time::Instant),
    ) -> Result<Launch, ModelError> {
        kv.settle()?;
        let n = batch.tokens.len();
        let slot = self.queue.next;
        if stored {
            self.readback()?.mark(slot)?;
        } else {
            self.readback()?.queue(slot, &tokens, n)?;
        }
        self.queue_logprobs(slot, sampled, sampling)?;
        self.queue.next = 1 - slot;
        self.queue.last = Some((slot, tokens));
        self.count_forward();
        self.counts.1 += 1;
        self.prof.add(entered, launched);
        self.prof.last_return = Some(std::time::Instant::now());
        Ok(Launch::Queued(Queued { slot, rows: n }))
    }

    /// [`crate::model::ModelRunner::launch_later`]: queues the batch's graph replay (its input
    /// ids from the forward in flight where it names them); the rows are sampled by
    /// [`sample_launched`](Self::sample_launched), the next call. A batch no graph replays is
    /// left to run whole then.
    pub(super) fn launch_forward_only(
        &mut self,
        batch: &ForwardBatch,
        kv: &mut CudaKv,
    ) -> Result<(), ModelError> {
        let last = self.take_last(batch)?;
        let entered = std::time::Instant::now();
        let mut graphs = std::mem::take(&mut self.graphs);
        let run = graphs.try_launch(self, batch, kv, last.as_ref().map(|l| &l.1), None);
        self.graphs = graphs;
        self.queue.later = Some(match run? {
            Some((gi, launched, _)) => Later::Graph(gi, entered, launched),
            None => {
                self.queue.last = last;
                Later::Whole
            }
        });
        Ok(())
    }

    /// [`crate::model::ModelRunner::sample_later`]: queues the sampler of the forward
    /// [`launch_forward_only`](Self::launch_forward_only) replayed (or runs the batch whole).
    pub(super) fn sample_launched(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut CudaKv,
    ) -> Result<Launch, ModelError> {
        match self.queue.later.take() {
            Some(Later::Graph(gi, entered, launched)) => {
                crate::model::runner::check_sampling(batch, sampling)?;
                let (logits, t, ids) = self.graphs.head(gi);
                let sampled = self.queue_sampling(logits, t, sampling, Some(ids))?;
                let tokens = t.view(0, t.shape())?;
                self.queued(
                    batch,
                    sampling,
                    kv,
                    (tokens, false),
                    sampled,
                    (entered, launched),
                )
            }
            Some(Later::Whole) => self.launch_batch(batch, sampling, kv),
            None => Err(ModelError::Cuda(CudaError::Shape(
                "rows sampled later without a forward launched for them".into(),
            ))),
        }
    }

    /// Runs `batch` to the end (its input ids from the queued forward `last` where it names
    /// them).
    fn launch_whole(
        &mut self,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &mut CudaKv,
        last: Option<(usize, DTensor)>,
    ) -> Result<Launch, ModelError> {
        let resolved;
        let batch = match &last {
            Some((slot, _)) if !batch.from_prev.is_empty() => {
                // The ids come from the queued forward: wait for its tokens.
                let rb = self.readback()?;
                let prev = rb.wait(*slot, rb.words())?;
                let mut b = batch.clone();
                for &(j, r) in &batch.from_prev {
                    b.tokens[j] = prev[r] as u32;
                }
                b.from_prev.clear();
                resolved = b;
                &resolved
            }
            _ => batch,
        };
        Ok(Launch::Done(self.run_batch(batch, sampling, kv)?))
    }

    /// [`crate::model::ModelRunner::collect`]: waits for a queued forward's tokens.
    pub(super) fn collect_batch(&mut self, q: Queued) -> Result<Vec<Sampled>, ModelError> {
        let t = std::time::Instant::now();
        let tokens = self.readback()?.wait(q.slot, q.rows)?;
        let lp = &mut self.queue.lp[q.slot];
        let logprobs: Vec<_> = match (lp.queued.take(), &lp.readback) {
            (Some((packed, ids)), Some(rb)) => {
                let words = rb.wait(0, packed.lp_words)?;
                ids.iter()
                    .enumerate()
                    .map(|(r, ids)| {
                        let row = unpack_logprobs(&packed, &words, r)?;
                        Some(Box::new(from_gpu(ids.as_deref(), &row)))
                    })
                    .collect()
            }
            _ => vec![None; tokens.len()],
        };
        self.prof.wait += t.elapsed().as_secs_f64();
        Ok(tokens
            .into_iter()
            .zip(logprobs)
            .map(|(t, lp)| Sampled::token(t as u32, lp))
            .collect())
    }

    /// Queues the copy of a queued forward's logprob words (when a row asked for them) into
    /// `slot`'s readback, grown first when too small (the slot's previous words were taken
    /// back before the slot came round again).
    fn queue_logprobs(
        &mut self,
        slot: usize,
        sampled: Option<(PackedRows, Option<DTensor>)>,
        sampling: &[SampleReq<'_>],
    ) -> Result<(), CudaError> {
        let lp = &mut self.queue.lp[slot];
        lp.queued = None;
        let Some((packed, Some(out))) = sampled else {
            return Ok(());
        };
        let n = packed.lp_words;
        if lp.readback.as_ref().is_none_or(|rb| rb.words() < n) {
            if let Some(old) = &lp.readback {
                old.sync_all()?; // (no copy may land in a freed buffer)
            }
            lp.readback = Some(Readback::new(&self.ctx, 1, n.next_power_of_two())?);
        }
        lp.readback
            .as_mut()
            .expect("made above")
            .queue(0, &out, n)?;
        let ids = sampling
            .iter()
            .map(|r| r.logprobs.and_then(|s| s.token_ids.clone()))
            .collect();
        lp.queued = Some((packed, ids));
        Ok(())
    }

    fn readback(&mut self) -> Result<&mut Readback, CudaError> {
        if self.queue.readback.is_none() {
            let words = self.graphs.sizes().last().copied().unwrap_or(1);
            self.queue.readback = Some(Readback::new(&self.ctx, 2, words)?);
        }
        Ok(self.queue.readback.as_mut().expect("made above"))
    }
}
