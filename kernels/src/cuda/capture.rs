//! CUDA-graph capture: one path for the server's decode graphs and `gpu bench`'s model
//! (`LlamaModel::capture`).

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::error::{CudaError, Result};
use super::ops::CudaOps;

impl CudaOps {
    /// Captures `forward`'s launches on this context's stream into an instantiated graph. The
    /// capture is ended whether or not `forward` fails (its error first, then the capture's).
    pub fn capture_graph(&self, forward: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
        let stream = self.context().stream();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let run = forward();
        let g = stream.end_capture(CUgraphInstantiate_flags(0));
        run?;
        g?.ok_or_else(|| CudaError::Shape("empty graph captured".into()))
    }
}
