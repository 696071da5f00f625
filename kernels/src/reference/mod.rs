//! Naive CPU reference implementations of every CUDA op, in f32 (f64 where a sum or a softmax
//! decides a discrete choice), written for clarity, not speed.
//!
//! They define the semantics the kernels are checked against: same layouts, same rounding points
//! (bf16 values are passed in already rounded, outputs are compared with a relative tolerance).
//! Sampling has no separate reference: the GPU sampler is checked against the CPU sampler itself
//! (`crate::sampling::sample` after the server's penalties; `crate::sample_rows::agreement`).

mod attention;
mod ops;

pub use attention::{paged_attention, paged_attention_rows, RefSeq};
pub use ops::{
    embedding, linear, rel_err, rmsnorm, rope, rope_inv_freq, round_bf16, silu_mul, Llama3Scaling,
};
