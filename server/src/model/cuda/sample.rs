//! Sampling a forward's logits rows on the GPU: the rows the forward's argmax does not answer
//! (temperature, top-k/p, min-p, penalties, logit bias, bans, logprobs, scored prompt rows) are
//! packed once (`strata_kernels::sample_rows::pack_rows`) and sampled by `sample_rows` /
//! `logprob_rows` queued on the compute stream, with the semantics of [`sample_host`]. A queued
//! forward (`queue.rs`) reads its results back later; an eager one at once.

use super::CudaRunner;
use crate::model::runner::{gpu_row, sample_host, SampleReq, Sampled};
use strata_kernels::cuda::{CudaError, DTensor};
use strata_kernels::sample_rows::{pack_rows, PackedRows, RowMode, RowSpec};

impl CudaRunner {
    /// Queues the sampling of the logits rows the argmax in `tokens` does not answer (and their
    /// logprobs) on the stream; returns the packed rows and the logprob words to read once the
    /// stream reaches them, None when every row is the argmax's (nothing queued, nothing waits).
    /// `ids` are the forward's input ids on the device, where rows' uncounted tokens are
    /// (`SampleReq::uncounted`; None: no row has one).
    pub(super) fn queue_sampling(
        &self,
        logits: &DTensor,
        tokens: &DTensor,
        sampling: &[SampleReq<'_>],
        ids: Option<&DTensor>,
    ) -> Result<Option<(PackedRows, Option<DTensor>)>, CudaError> {
        let specs = self.row_specs(sampling);
        if !gpu_work(&specs) {
            return Ok(None);
        }
        let packed = pack_rows(&specs, self.cfg.vocab_size);
        let lp = self.ops.sample_rows(logits, &packed, tokens, ids)?;
        Ok(Some((packed, lp)))
    }

    /// True when every row's token is the forward's argmax and none asks for logprobs: nothing
    /// is sampled after the forward ([`CudaRunner::queue_sampling`] queues nothing), so the
    /// argmax the LM head writes is the step's output.
    pub(super) fn argmax_is_final(&self, sampling: &[SampleReq<'_>]) -> bool {
        !gpu_work(&self.row_specs(sampling))
    }

    fn row_specs<'a>(&self, sampling: &[SampleReq<'a>]) -> Vec<RowSpec<'a>> {
        let v = self.cfg.vocab_size;
        sampling
            .iter()
            .map(|r| {
                if samples_on_host(r, v) {
                    RowSpec::plain(RowMode::Skip, r.params.sample, 0.0)
                } else {
                    gpu_row(r)
                }
            })
            .collect()
    }

    /// Samples a finished forward's logits rows on the GPU (the argmax is already in `tokens`)
    /// and brings back one token, and the asked-for logprobs, per sampling request.
    pub(super) fn sample(
        &self,
        logits: &DTensor,
        tokens: &DTensor,
        sampling: &[SampleReq<'_>],
    ) -> Result<Vec<Sampled>, CudaError> {
        let v = self.cfg.vocab_size;
        let queued = self.queue_sampling(logits, tokens, sampling, None)?;
        let picked = self.ctx.download_i32(tokens)?;
        let lps = match &queued {
            Some((packed, Some(out))) => self.ops.download_logprobs(packed, out)?,
            _ => vec![None; sampling.len()],
        };
        sampling
            .iter()
            .zip(picked.iter().zip(lps))
            .enumerate()
            .map(|(r, (req, (&token, lp)))| {
                if samples_on_host(req, v) {
                    let mut row = self.ctx.download_f32_range(logits, r * v, v)?;
                    return Ok(sample_host(&mut row, req));
                }
                let logprobs = match (req.logprobs, lp) {
                    (Some(spec), Some(lp)) => Some(Box::new(crate::logprobs::from_gpu(
                        spec.token_ids.as_deref(),
                        &lp,
                    ))),
                    _ => None,
                };
                Ok(Sampled::token(token as u32, logprobs))
            })
            .collect()
    }
}

/// True when a row needs the GPU sampler (a token other than the argmax, or logprobs).
fn gpu_work(specs: &[RowSpec<'_>]) -> bool {
    specs
        .iter()
        .any(|s| s.mode != RowMode::Skip || s.logprobs.is_some())
}

/// The one row the GPU sampler leaves to the host: a scored prompt row whose token is outside
/// the vocabulary (`at_position` reports -inf for it, which the kernel does not index).
fn samples_on_host(r: &SampleReq<'_>, vocab: usize) -> bool {
    r.score.is_some_and(|t| t as usize >= vocab)
}
