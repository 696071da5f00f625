//! Model loading and the forward pass: configuration, weights, tokenizer, chat template, and the
//! Llama-family transformer over a [`strata_kernels::Backend`].

pub mod chat_source;
pub mod chat_template;
pub mod config;
pub mod conv_template;
pub mod cuda;
pub mod llama;
pub mod lora;
pub mod runner;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use llama::{ForwardBatch, KvBuffers, Model, SeqSlice};
pub use runner::{sample_host, Launch, ModelRunner, Queued, SampleReq, Sampled};
pub use tokenizer::Tokenizer;

use std::path::Path;

/// A start-up error about the model directory; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Bad { path: String, msg: String },
    #[error("kernel error: {0}")]
    Kernel(#[from] strata_kernels::KernelError),
    #[error("CUDA: {0}")]
    Cuda(#[from] strata_kernels::cuda::CudaError),
}

impl ModelError {
    /// True when the device is lost for this process (a sticky CUDA error): nothing more can run.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ModelError::Cuda(e) if e.is_sticky())
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    pub(crate) fn bad(path: &Path, msg: impl Into<String>) -> Self {
        ModelError::Bad {
            path: path.display().to_string(),
            msg: msg.into(),
        }
    }
}
