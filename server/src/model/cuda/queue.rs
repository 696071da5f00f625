//! Queued forwards (overlap scheduling): a graph-replayed decode batch whose rows are all drawn
//! from their logits alone (`SampleReq::from_logits_alone`: greedy by the graph's argmax, the
//! others by `sample_rows` queued after the replay, its row table written without a
//! synchronisation) is launched without waiting; its sampled tokens go to a pinned slot by an
//! async copy (`strata_kernels::cuda::readback`) and `collect` waits for that copy only. The
//! next batch may take those tokens as input ids straight from the device
//! (`ForwardBatch::from_prev`).
//! Every other batch runs to the end as before; one that takes ids from a queued forward waits
//! for that forward's tokens first.
//!
//! Invariant: `last` names the previous launch's slot and token buffer only while that launch
//! was queued; every launch replaces it. Two slots, used in turn, suffice: the scheduler keeps
//! at most two launches not taken back, and takes the older back before the next launch.

use super::{CudaKv, CudaRunner};
use crate::model::runner::{Launch, Queued, SampleReq, Sampled};
use crate::model::{ForwardBatch, ModelError, ModelRunner};
use strata_kernels::cuda::readback::Readback;
use strata_kernels::cuda::{CudaError, DTensor};

/// The runner's queued-forward state.
#[derive(Default)]
pub(super) struct Queue {
    readback: Option<Readback>,
    /// The slot the next queued forward uses.
    next: usize,
    /// The previous launch's slot and sampled-token buffer, when it was queued.
    last: Option<(usize, DTensor)>,
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
        let last = self.queue.last.take();
        if !batch.from_prev.is_empty() && last.is_none() {
            return Err(ModelError::Cuda(CudaError::Shape(
                "input tokens named from a forward that was not queued".into(),
            )));
        }
        if sampling.iter().all(SampleReq::from_logits_alone) {
            // (The other path's `run_batch` checks it itself.)
            crate::model::runner::check_sampling(batch, sampling)?;
            let entered = std::time::Instant::now();
            let mut graphs = std::mem::take(&mut self.graphs);
            let run = graphs.try_launch(self, batch, kv, last.as_ref().map(|l| &l.1));
            let queued = match run {
                Ok(Some((gi, launched))) => {
                    // Rows the argmax does not answer are sampled after the replay; they ask
                    // for no logprobs (`from_logits_alone`), so nothing is read back but the
                    // tokens.
                    let (logits, t) = graphs.head(gi);
                    self.queue_sampling(logits, t, sampling)
                        .and_then(|_| t.view(0, t.shape()))
                        .map(|t| Some((t, launched)))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            self.graphs = graphs;
            if let Some((tokens, launched)) = queued? {
                kv.settle()?;
                let n = batch.tokens.len();
                let slot = self.queue.next;
                self.readback()?.queue(slot, &tokens, n)?;
                self.queue.next = 1 - slot;
                self.queue.last = Some((slot, tokens));
                self.count_forward();
                self.counts.1 += 1;
                self.prof.add(entered, launched);
                self.prof.last_return = Some(std::time::Instant::now());
                return Ok(Launch::Queued(Queued { slot, rows: n }));
            }
        }
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
        self.prof.wait += t.elapsed().as_secs_f64();
        Ok(tokens
            .into_iter()
            .map(|t| Sampled::token(t as u32, None))
            .collect())
    }

    fn readback(&mut self) -> Result<&mut Readback, CudaError> {
        if self.queue.readback.is_none() {
            let words = self.graphs.sizes().last().copied().unwrap_or(1);
            self.queue.readback = Some(Readback::new(&self.ctx, 2, words)?);
        }
        Ok(self.queue.readback.as_mut().expect("made above"))
    }
}
