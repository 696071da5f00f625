//! `strata serve`: the inference server, with `python -m sglang.launch_server`'s flags.
//!
//! The compute backend is chosen by `--device`: `auto` (default) takes CUDA on GPU `--base-gpu-id`
//! when the driver, a GPU and the CUDA libraries are present and the CPU otherwise, logging which and
//! why; `cuda` fails instead of falling back; `cpu` never probes. `--tp-size` other than 1 is refused
//! until tensor parallelism exists. Unknown flags are rejected by clap, naming
//! the flag.

use std::path::PathBuf;
use strata_kernels::cuda::{select, BackendKind, CudaBackend};
use strata_server::launch::{launch, launch_cpu, ServeOptions};

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct Args {
    /// Model directory in the Hugging Face layout (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model_path: PathBuf,
    /// Accepted for compatibility; the tokenizer is read from --model-path.
    #[arg(long)]
    tokenizer_path: Option<PathBuf>,
    /// Name reported by /v1/models (default: the model path).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Tokens per KV page.
    #[arg(long, default_value_t = 1)]
    page_size: usize,
    /// Most requests decoding at once.
    #[arg(long, default_value_t = 64)]
    max_running_requests: usize,
    /// Prefill tokens per scheduling round; -1 disables chunking.
    #[arg(long, default_value_t = 2048, allow_negative_numbers = true)]
    chunked_prefill_size: i64,
    /// Context length (default: max_position_embeddings of config.json).
    #[arg(long)]
    context_length: Option<usize>,
    /// Fraction of available memory for weights + KV cache.
    #[arg(long, default_value_t = 0.5)]
    mem_fraction_static: f64,
    /// KV cache size in tokens (overrides --mem-fraction-static).
    #[arg(long)]
    max_total_tokens: Option<usize>,
    #[arg(long)]
    disable_radix_cache: bool,
    /// Require `Authorization: Bearer KEY` on every request.
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long, default_value = "info")]
    log_level: String,
    /// GPU the CUDA backend runs on (the CPU backend ignores it).
    #[arg(long, default_value_t = 0)]
    base_gpu_id: u32,
    /// Tensor-parallel degree (only 1 is supported).
    #[arg(long, default_value_t = 1)]
    tp_size: u32,
    /// Accepted for compatibility (no remote code is ever run).
    #[arg(long)]
    trust_remote_code: bool,
    /// Weight dtype: auto or float32 (the CPU backend computes in f32 whatever is on disk).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Compute device: auto (CUDA when a GPU is usable, else CPU), cuda, or cpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Accepted for compatibility.
    #[arg(long)]
    skip_server_warmup: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    super::logging::init(&a.log_level);
    if a.tp_size != 1 {
        anyhow::bail!(
            "--tp-size {}: tensor parallelism is not implemented yet; use --tp-size 1",
            a.tp_size
        );
    }
    if !matches!(
        a.dtype.as_str(),
        "auto" | "float32" | "float" | "bfloat16" | "float16" | "half"
    ) {
        anyhow::bail!(
            "--dtype {}: expected auto, float32, bfloat16 or float16",
            a.dtype
        );
    }
    if !matches!(a.device.as_str(), "auto" | "cpu" | "cuda") {
        anyhow::bail!("--device {}: expected auto, cuda or cpu", a.device);
    }
    let opts = ServeOptions {
        model_path: a.model_path.clone(),
        served_model_name: a.served_model_name.clone(),
        page_size: a.page_size,
        max_running_requests: a.max_running_requests,
        chunked_prefill_size: (a.chunked_prefill_size > 0)
            .then_some(a.chunked_prefill_size as usize),
        context_length: a.context_length,
        mem_fraction_static: a.mem_fraction_static,
        max_total_tokens: a.max_total_tokens,
        disable_radix_cache: a.disable_radix_cache,
        api_key: a.api_key.clone(),
        server_args: {
            let mut v = serde_json::to_value(&a)?;
            v["api_key"] = serde_json::Value::Null;
            v
        },
    };
    let (kind, ctx) = select(a.base_gpu_id as usize, a.device == "cpu");
    let state = match (kind, ctx) {
        (BackendKind::Cuda { .. }, Some(ctx)) => launch(&opts, CudaBackend::new(ctx)?)?,
        (BackendKind::Cpu { reason }, _) if a.device == "cuda" => {
            anyhow::bail!("--device cuda: {reason}")
        }
        _ => launch_cpu(&opts)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        tracing::info!("The server is fired up and ready to roll!");
        axum::serve(listener, strata_server::api::app(state))
            .with_graceful_shutdown(shutdown())
            .await?;
        tracing::info!("server stopped");
        anyhow::Ok(())
    })
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
