//! Sampling launcher: per-row parameters go up with the call, token ids come back.
//!
//! The random draw is an input (one uniform in [0, 1) per row), so the GPU result is a pure
//! function of logits, parameters and draws and can be compared with the CPU reference.

use super::error::{ensure, Result};
use super::launch::{Arg, Dims};
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};

/// Per-request sampling parameters (the OpenAI / SGLang knobs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 (or >= vocab) disables top-k.
    pub top_k: i32,
    /// 1 disables top-p.
    pub top_p: f32,
    /// 0 disables min-p.
    pub min_p: f32,
}

impl SamplingParams {
    /// Greedy decoding.
    pub const GREEDY: SamplingParams = SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
}

impl CudaOps {
    /// Samples one token per row of logits [B, V] f32. `probs` is a [B, V] f32 scratch tensor.
    /// Returns the tokens (synchronises the compute stream).
    pub fn sample(
        &self,
        logits: &DTensor,
        probs: &DTensor,
        params: &[SamplingParams],
        uniforms: &[f32],
    ) -> Result<Vec<i32>> {
        let out = self.sample_async(logits, probs, params, uniforms)?;
        self.ctx.download_i32(&out)
    }

    /// Like [`CudaOps::sample`] but leaves the tokens on the GPU ([B] i32).
    pub fn sample_async(
        &self,
        logits: &DTensor,
        probs: &DTensor,
        params: &[SamplingParams],
        uniforms: &[f32],
    ) -> Result<DTensor> {
        self.ctx.check_device("logits", logits)?;
        self.ctx.check_device("probs", probs)?;
        ensure(logits.shape().len() == 2, || {
            "logits must be [batch, vocab]".into()
        })?;
        let (b, v) = (logits.shape()[0], logits.shape()[1]);
        logits.expect("logits", DType::F32, &[b, v])?;
        probs.expect("probs", DType::F32, &[b, v])?;
        ensure(params.len() == b && uniforms.len() == b, || {
            format!("{b} rows need {b} params and draws")
        })?;
        ensure(uniforms.iter().all(|u| (0.0..1.0).contains(u)), || {
            "uniform draws must lie in [0, 1)".into()
        })?;
        ensure(
            params
                .iter()
                .all(|p| p.top_p > 0.0 && p.min_p >= 0.0 && p.min_p <= 1.0),
            || "top_p must be > 0 and min_p in [0, 1]".into(),
        )?;
        let temp: Vec<f32> = params.iter().map(|p| p.temperature).collect();
        let top_k: Vec<i32> = params.iter().map(|p| p.top_k).collect();
        let top_p: Vec<f32> = params.iter().map(|p| p.top_p).collect();
        let min_p: Vec<f32> = params.iter().map(|p| p.min_p).collect();
        let temp = self.ctx.upload_f32(&[b], &temp)?;
        let top_k = self.ctx.upload_i32(&[b], &top_k)?;
        let top_p = self.ctx.upload_f32(&[b], &top_p)?;
        let min_p = self.ctx.upload_f32(&[b], &min_p)?;
        let unif = self.ctx.upload_f32(&[b], uniforms)?;
        let out = self.ctx.alloc(DType::I32, &[b])?;
        let args = [
            Arg::U64(logits.ptr()),
            Arg::U64(probs.ptr()),
            Arg::I32(v as i32),
            Arg::U64(temp.ptr()),
            Arg::U64(top_k.ptr()),
            Arg::U64(top_p.ptr()),
            Arg::U64(min_p.ptr()),
            Arg::U64(unif.ptr()),
            Arg::U64(out.ptr()),
        ];
        self.go(&self.sample, Dims::rows(b, 1024), &args)?;
        // The parameter tensors are freed stream-ordered after the launch that reads them.
        Ok(out)
    }
}
