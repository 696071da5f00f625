//! strata-kernels: compute backends for the inference server.
//!
//! [`Backend`] is the seam between the model code (in `strata-server`) and the hardware: every
//! operation a Llama-family forward pass needs, over opaque buffers of `f32` that live wherever the
//! backend keeps its memory. [`cpu::CpuBackend`] is the reference implementation (plain Rust f32
//! math parallelised with `rayon`). [`cuda`] holds the NVRTC-compiled kernels, cuBLAS GEMMs and the
//! pinned-host <-> GPU page path, checked against the naive f32 ops in [`reference`], and
//! [`cuda::CudaBackend`], the f32 implementation of [`Backend`] on one GPU (see docs/gpu.md).
//! [`emu`] builds host emulations of the CUDA sources, so CPU tests hold the kernels' logic.
//!
//! Invariant shared by every implementation: each output element is computed with a summation order
//! that does not depend on how many other rows are in the batch, so a sequence's logits are bitwise
//! identical whether it runs alone, chunked, or in a batch (the scheduler relies on this for
//! reproducible greedy output).

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod emu;
pub mod reference;
pub mod rope;
pub mod sample_rows;
pub mod sampling;
pub mod seeded;

pub use backend::{AttnSeq, AttnShape, Backend, KernelError};
pub use cpu::CpuBackend;
pub use rope::{RopeScaling, RopeTable};
