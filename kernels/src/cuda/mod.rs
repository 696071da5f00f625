//! The CUDA backend: NVRTC-compiled kernels (`kernels/cuda/*.cu`), cuBLAS GEMMs, pinned host
//! memory and the KV page path between GPU and host.
//!
//! Nothing here needs a CUDA toolkit at build time: cudarc loads libcuda, libnvrtc and libcublas
//! at run time, and every entry point probes for them first, so a machine without a GPU gets a
//! clean error (and `select` chooses the CPU backend) instead of a panic.
//!
//! Shape of the API: [`GpuContext`] (one GPU, a compute stream and a copy stream) ->
//! [`CudaOps`] (typed launchers for the model ops), [`Gemm`] (cuBLAS), [`PageMover`] +
//! [`PinnedBuf`] (the GPU direct path). [`CudaBackend`] implements the server's compute trait in
//! f32 on its own kernels (`backend_f32.cu`, see docs/gpu.md). [`llama`] composes the bf16 ops
//! into a Llama layer stack for the benchmarks.

pub mod attention;
pub mod backend;
mod capture;
pub mod det;
pub mod device;
pub mod error;
mod f32k;
pub mod gemm;
pub mod gemm_det;
mod gemm_head;
pub mod gemm_lt;
pub mod gemm_rows;
pub mod gemm_tail;
pub mod gemm_wg;
pub mod host_copy;
pub mod info;
pub mod ipc;
pub mod launch;
pub mod llama;
pub mod lora;
pub mod lt_table;
pub mod nvrtc;
pub mod ops;
pub mod peer_copy;
pub mod pinned;
mod plan_tables;
pub mod readback;
pub mod sampling;
pub mod select;
pub mod tensor;
pub mod transfer;

pub use attention::{
    decode_dmma, decode_on_mma, prefill_kernel, set_decode_attn, set_decode_dmma,
    set_prefill_kernel, AttnKernel, AttnPlan, AttnSeq, AttnShape, DecodeRow, PlanOpts,
    PrefillKernel, QRope, WgForm, DECODE2_VARIANTS, WG_NAME, WG_NAMES, WG_S_NAME,
};
pub use backend::{CudaBackend, CudaBuf};
pub use device::GpuContext;
pub use error::{CudaError, Result};
pub use gemm::{Fusion, Gemm, GemmPath, QkvInput, GEMV_T1_PIPE_MIN_IN, NORM_IN_QKV};
pub use gemm_head::{head_and_pick, PickOut};
pub use gemm_rows::RowsMode;
pub use gemm_tail::PostNorm;
pub use host_copy::{HostIo, HostKvCopy, HostKvGeometry, HostRegion};
pub use info::{gpu_inventory, GpuInfo};
pub use ipc::{ipc_handle, IpcMapping};
pub use lora::{lora_ref, LORA_REF_I32S};
pub use ops::CudaOps;
pub use peer_copy::PeerCopy;
pub use pinned::PinnedBuf;
pub use select::{select, BackendKind};
pub use tensor::{DTensor, DType};
pub use transfer::{LayerEvents, PageLayout, PageMover, PagePairs};

#[cfg(test)]
mod tests;
