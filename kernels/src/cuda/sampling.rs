//! Sampling launchers: penalties, bans, temperature, top-k / top-p / min-p and the draw per
//! logits row on the GPU (`sample_rows`), the log-probabilities a request asks for
//! (`logprob_rows`), with the CPU sampler's semantics (see `crate::sample_rows` for the
//! algorithm, the packing and how the GPU can differ from the CPU).
//!
//! The random draw is an input (the caller's per-request uniform in [0, 1)), so a seed means the
//! same on the GPU as on the CPU. Per step one i32 buffer goes up (rows x 20 words, the penalty
//! entries, the logprob ids, the allow masks; written in stream order, nothing waits) and token
//! ids and the few logprob words come back.

use super::error::{ensure, Result};
use super::launch::{Arg, Dims};
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};
use crate::sample_rows::{
    pack_rows, scale_bits, unpack_logprobs, PackedRows, RowLogprobs, RowMode, RowSpec, ENTRY_WORDS,
    ROW_WORDS,
};

/// Threads per row block of both kernels (the `SAMPLE_THREADS` of sampling.cu).
const THREADS: u32 = 1024;

impl CudaOps {
    /// Queues the sampling of `packed`'s rows of `logits` [B, V] f32 into `tokens` [B] i32 (the
    /// first `packed.rows` <= B rows: a padded CUDA-graph bucket leaves its tail alone; rows in
    /// `Skip` mode keep what `tokens` holds, e.g. `argmax_rows`' pick), applying each row's
    /// penalties and bans to `logits` in place, then (when a row asks) its log-probabilities.
    /// Returns the logprob words on the GPU (None when no row asked); read them with
    /// [`CudaOps::download_logprobs`] after the stream reaches them.
    pub fn sample_rows(
        &self,
        logits: &DTensor,
        packed: &PackedRows,
        tokens: &DTensor,
        pending: Option<&DTensor>,
    ) -> Result<Option<DTensor>> {
        self.ctx.check_device("logits", logits)?;
        self.ctx.check_device("tokens", tokens)?;
        ensure(logits.shape().len() == 2, || {
            "logits must be [batch, vocab]".into()
        })?;
        let (b, v) = (logits.shape()[0], logits.shape()[1]);
        logits.expect("logits", DType::F32, &[b, v])?;
        tokens.expect("tokens", DType::I32, &[b])?;
        ensure(v > 0 && v < i32::MAX as usize, || {
            format!("vocab {v} out of range")
        })?;
        validate(packed, b, v)?;
        let ids = pending.map_or(0, |p| p.numel());
        ensure(
            packed.words[..packed.entries_at()]
                .chunks_exact(ROW_WORDS)
                .all(|h| h[18] < 0 || (h[18] as usize) < ids),
            || format!("an uncounted token's index outside the {ids} device ids"),
        )?;
        if let Some(p) = pending {
            self.ctx.check_device("pending ids", p)?;
            ensure(p.dtype() == DType::I32, || "pending ids must be i32".into())?;
        }
        let b = packed.rows;
        if b == 0 {
            return Ok(None);
        }
        let words = &packed.words;
        // Written stream-ordered, not synchronising: a queued decode step (overlap scheduling)
        // samples without waiting for the forward.
        let buf = self.ctx.alloc(DType::I32, &[words.len()])?;
        self.ctx.write_i32(&buf, words)?;
        let args = [
            Arg::U64(logits.ptr()),
            Arg::I32(v as i32),
            Arg::U64(buf.ptr()),
            Arg::U64(buf.ptr_at(packed.entries_at())?),
            Arg::I32(scale_bits(v)),
            Arg::U64(tokens.ptr()),
            Arg::U64(pending.map_or(0, |p| p.ptr())),
        ];
        self.go(&self.sample, Dims::rows(b, THREADS), &args)?;
        if packed.lp_words == 0 {
            return Ok(None);
        }
        let out = self.ctx.alloc(DType::I32, &[packed.lp_words])?;
        let args = [
            Arg::U64(logits.ptr()),
            Arg::I32(v as i32),
            Arg::U64(buf.ptr()),
            Arg::U64(buf.ptr_at(packed.ids_at())?),
            Arg::U64(tokens.ptr()),
            Arg::U64(out.ptr()),
        ];
        self.go(&self.logprobs, Dims::rows(b, THREADS), &args)?;
        // `buf` is freed stream-ordered after the launches that read it.
        Ok(Some(out))
    }

    /// Downloads and decodes the logprob words `sample_rows` returned (synchronises).
    pub fn download_logprobs(
        &self,
        packed: &PackedRows,
        out: &DTensor,
    ) -> Result<Vec<Option<RowLogprobs>>> {
        let words = self.ctx.download_i32(out)?;
        Ok((0..packed.rows)
            .map(|r| unpack_logprobs(packed, &words, r))
            .collect())
    }

    /// Samples `rows` of `logits` [B, V] f32 (modified in place by the penalties): greedy picks
    /// by `argmax_rows` for `Skip` rows, everything else by `sample_rows`. Returns the tokens and
    /// each row's log-probabilities (synchronises).
    pub fn sample(
        &self,
        logits: &DTensor,
        rows: &[RowSpec<'_>],
    ) -> Result<(Vec<i32>, Vec<Option<RowLogprobs>>)> {
        ensure(logits.shape().len() == 2, || {
            "logits must be [batch, vocab]".into()
        })?;
        let (b, v) = (logits.shape()[0], logits.shape()[1]);
        let tokens = self.ctx.alloc(DType::I32, &[b])?;
        self.argmax_rows(logits, &tokens)?;
        let packed = pack_rows(rows, v);
        let gpu_work = rows
            .iter()
            .any(|r| r.mode != RowMode::Skip || r.logprobs.is_some());
        let lp = if gpu_work {
            self.sample_rows(logits, &packed, &tokens, None)?
        } else {
            None
        };
        let logprobs = match &lp {
            Some(out) => self.download_logprobs(&packed, out)?,
            None => vec![None; b],
        };
        Ok((self.ctx.download_i32(&tokens)?, logprobs))
    }
}

/// The kernels index with the packed offsets and tokens unchecked: check them here.
pub(crate) fn validate(p: &PackedRows, rows: usize, vocab: usize) -> Result<()> {
    ensure(p.rows <= rows && p.lp_at.len() == p.rows, || {
        format!("{} packed rows for {rows} logits rows", p.rows)
    })?;
    let mw = crate::sample_rows::mask_words(vocab);
    ensure(p.words.len() == p.masks_at() + p.masks * mw, || {
        "packed words do not match their counts".into()
    })?;
    let entries = &p.words[p.entries_at()..p.ids_at()];
    ensure(
        entries
            .chunks_exact(ENTRY_WORDS)
            .all(|e| e[0] >= 0 && (e[0] as usize) < vocab),
        || format!("penalty entry outside the vocabulary of {vocab}"),
    )?;
    let ids = &p.words[p.ids_at()..p.masks_at()];
    ensure(ids.iter().all(|&t| t < vocab as i32), || {
        format!("logprob id outside the vocabulary of {vocab}")
    })?;
    for (r, h) in p.words[..p.entries_at()]
        .chunks_exact(ROW_WORDS)
        .enumerate()
    {
        let span =
            |at: i32, n: i32, len: usize| at >= 0 && n >= 0 && (at as usize) + (n as usize) <= len;
        ensure(span(h[8], h[9], p.entries), || {
            format!("row {r}: penalty entries out of range")
        })?;
        let u = f64::from_bits((h[12] as u32 as u64) | ((h[13] as u32 as u64) << 32));
        ensure((0.0..1.0).contains(&u), || {
            format!("row {r}: uniform draw {u} outside [0, 1)")
        })?;
        if h[17] >= 0 {
            // A mask lies whole in the masks area (offsets count from the first entry).
            let at = h[17] as usize + p.entries_at();
            ensure(
                at >= p.masks_at()
                    && (at - p.masks_at()) % mw.max(1) == 0
                    && at + mw <= p.words.len(),
                || format!("row {r}: allow mask out of range"),
            )?;
        } else {
            ensure(h[17] == -1, || {
                format!("row {r}: bad allow mask word {}", h[17])
            })?;
        }
        if (h[0] & 15) == 3 {
            ensure(h[10] >= 0 && (h[10] as usize) < vocab, || {
                format!("row {r}: fixed token {} outside the vocabulary", h[10])
            })?;
        }
        if h[11] >= 0 {
            ensure(span(h[14], h[15], p.ids), || {
                format!("row {r}: logprob ids out of range")
            })?;
            let need = 2 + h[15] as usize + 2 * (h[11] as usize).min(vocab);
            ensure(h[16] >= 0 && h[16] as usize + need <= p.lp_words, || {
                format!("row {r}: logprob output out of range")
            })?;
        }
    }
    Ok(())
}
