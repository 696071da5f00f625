//! `strata serve`: the inference server, with `python -m sglang.launch_server`'s flags.
//!
//! The compute backend is chosen by `--device`: `auto` (default) takes CUDA on GPU `--base-gpu-id`
//! when the driver, a GPU and the CUDA libraries are present and the CPU otherwise, logging which and
//! why; `cuda` fails instead of falling back; `cpu` never probes. On CUDA the bf16 model runner
//! serves (`--dtype auto|bfloat16|float16`, CUDA graphs for decode), or the f32 reference backend
//! with `--dtype float32` (docs/gpu.md). `--tp-size` other than 1 is refused until tensor
//! parallelism exists. docs/server.md says how each implemented SGLang flag behaves. Other
//! `sglang.launch_server` flags are accepted and ignored with a warning (`compat.rs`); unknown
//! flags are rejected by clap, naming the flag.

use std::path::PathBuf;
use std::sync::Arc;
use strata_kernels::cuda::{select, BackendKind, CudaBackend, GpuContext};
use strata_server::hicache::{
    apply_extra_config, parse_layout, parse_prefetch_policy, parse_write_policy, storage_backend,
    HiCacheConfig, MemLayout,
};
use strata_server::launch::{
    launch, launch_cpu, launch_with, LaunchError, SchedulePolicy, ServeOptions,
};
use strata_server::model::cuda::{CudaRunner, CudaRunnerOptions};
use strata_server::pd::{parse_mode, Mode, PdConfig};
use strata_server::scheduler::dp::LoadBalance;

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct Args {
    /// Model directory in the Hugging Face layout (config.json, *.safetensors, tokenizer.json).
    #[arg(long, alias = "model")]
    model_path: PathBuf,
    /// Accepted for compatibility; the tokenizer is read from --model-path.
    #[arg(long)]
    tokenizer_path: Option<PathBuf>,
    /// Name reported by /v1/models (default: the model path).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Bind address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// HTTP port (0 = any free port; the log line `listening on http://...` names it).
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Tokens per KV page.
    #[arg(long, default_value_t = 1)]
    page_size: usize,
    /// Most requests decoding at once.
    #[arg(long, default_value_t = 64)]
    max_running_requests: usize,
    /// Prefill tokens per scheduling round; -1 disables chunking. Default as SGLang's by GPU
    /// memory (2048 under 35 GiB, 4096 under 60, 8192 under 160, 16384 above; docs/gpu.md);
    /// 2048 on the CPU.
    #[arg(long, allow_negative_numbers = true)]
    chunked_prefill_size: Option<i64>,
    /// Context length (default: max_position_embeddings of config.json).
    #[arg(long)]
    context_length: Option<usize>,
    /// Fraction of memory for weights + KV cache: of the GPU's memory on CUDA (default 0.88, as
    /// SGLang on large GPUs), of available host memory on the CPU (default 0.5).
    #[arg(long)]
    mem_fraction_static: Option<f64>,
    /// KV cache size in tokens (overrides --mem-fraction-static).
    #[arg(long)]
    max_total_tokens: Option<usize>,
    /// Turn off the prefix (radix) cache: every prompt is computed from scratch.
    #[arg(long)]
    disable_radix_cache: bool,
    /// Turn off overlap scheduling (on a GPU the next batch is built and launched while the
    /// current one runs; docs/server.md).
    #[arg(long)]
    disable_overlap_schedule: bool,
    /// Require `Authorization: Bearer KEY` on every request.
    #[arg(long)]
    api_key: Option<String>,
    /// Largest request body accepted, in bytes (larger bodies get a JSON 413). The default,
    /// 512 MiB as sglang-router's, fits long-context prompts as text or token ids.
    #[arg(long, default_value_t = strata_server::api::DEFAULT_MAX_PAYLOAD)]
    max_payload_size: usize,
    /// Log filter (`tracing` syntax, e.g. info or strata_server=debug; Python's level names such
    /// as warning and critical too); RUST_LOG wins.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// GPU the CUDA backend runs on (the CPU backend ignores it).
    #[arg(long, default_value_t = 0)]
    base_gpu_id: u32,
    /// Data-parallel replicas of the model behind this server (replica i on GPU base-gpu-id +
    /// i * gpu-id-step).
    #[arg(long, alias = "data-parallel-size", default_value_t = 1)]
    dp_size: usize,
    /// Which replica takes a request: auto (round robin; a PD leg by its bootstrap room),
    /// round_robin, follow_bootstrap_room, total_requests, total_tokens.
    #[arg(long, default_value = "auto")]
    load_balance_method: String,
    /// GPU ordinal step between data-parallel replicas.
    #[arg(long, default_value_t = 1)]
    gpu_id_step: usize,
    /// Tensor-parallel degree (only 1 is supported).
    #[arg(long, alias = "tensor-parallel-size", default_value_t = 1)]
    tp_size: u32,
    /// Accepted for compatibility (no remote code is ever run).
    #[arg(long)]
    trust_remote_code: bool,
    /// Weight/compute dtype: auto, bfloat16 or float16 run the bf16 CUDA stack (float16 weights
    /// are rounded to bf16); float32 runs the f32 CUDA reference path, whose greedy output equals
    /// the CPU backend's. The CPU backend computes in f32 whatever is on disk.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// KV cache dtype: auto or bfloat16 (bf16 on the CUDA stack, f32 on the CPU and float32 paths).
    #[arg(long, default_value = "auto")]
    kv_cache_dtype: String,
    /// Largest decode batch replayed from a CUDA graph (default: --max-running-requests, at most
    /// 256; captured at 1, 2, 4, 8, then steps of 8, 16 and 32 up to it).
    #[arg(long, visible_alias = "cuda-graph-max-bs-decode")]
    cuda_graph_max_bs: Option<usize>,
    /// The decode batch sizes captured as CUDA graphs, instead of the default steps (a batch
    /// replays the smallest captured size that holds it; larger batches run eagerly).
    #[arg(long, visible_alias = "cuda-graph-bs-decode", num_args = 1..)]
    cuda_graph_bs: Vec<usize>,
    /// Run every decode step eagerly (no CUDA graphs).
    #[arg(long, visible_alias = "disable-decode-cuda-graph")]
    disable_cuda_graph: bool,
    /// Batch-invariant (deterministic) inference on the bf16 CUDA stack: a request's tokens do
    /// not depend on the batch it ran in, CUDA graphs, or prefix-cache hits (docs/gpu.md).
    /// `STRATA_DETERMINISTIC=1|0` sets it when the flag is absent. The CPU backend and
    /// `--dtype float32` are batch-invariant anyway.
    #[arg(long)]
    enable_deterministic_inference: bool,
    /// Compute device: auto (CUDA when a GPU is usable, else CPU), cuda, or cpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Accepted for compatibility.
    #[arg(long)]
    skip_server_warmup: bool,
    /// Hierarchical KV cache: device pool (L1), host pool (L2) and, with
    /// --hicache-storage-backend, the Strata store (L3).
    #[arg(long, visible_alias = "enable-hicache")]
    enable_hierarchical_cache: bool,
    /// Host pool size as a multiple of the device KV pool.
    #[arg(long, default_value_t = 2.0)]
    hicache_ratio: f64,
    /// Host pool size in GB (overrides --hicache-ratio when > 0).
    #[arg(long, default_value_t = 0.0)]
    hicache_size: f64,
    /// When device pages are copied to the host: write_through, write_through_selective or
    /// write_back.
    #[arg(long, default_value = "write_through")]
    hicache_write_policy: String,
    /// How pages move between device and host on a GPU: kernel (a copy kernel reads the page-locked host pool) or direct (one async memcpy per page and layer; switches page_first to page_first_direct).
    #[arg(long, default_value = "kernel")]
    hicache_io_backend: String,
    /// Host pool layout: page_first, page_first_direct, or layer_first (rewritten to page_first).
    #[arg(long, default_value = "page_first")]
    hicache_mem_layout: String,
    /// L3 backend: strata (alias mooncake), the Strata cluster whose master comes from the extra
    /// config's master_server_address, MOONCAKE_MASTER or STRATA_MASTER; or file, one file per
    /// object in $SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR (default /tmp/hicache).
    #[arg(long)]
    hicache_storage_backend: Option<String>,
    /// When a request waiting on an L3 prefetch may run: best_effort, wait_complete or timeout.
    #[arg(long, default_value = "best_effort")]
    hicache_storage_prefetch_policy: String,
    /// JSON object of backend options: master_server_address, prefetch_threshold (tokens),
    /// prefetch_timeout_base and prefetch_timeout_per_ki_token (seconds), extra_backend_tag.
    #[arg(long)]
    hicache_storage_backend_extra_config: Option<String>,
    /// PD disaggregation role: null (colocated), prefill or decode.
    #[arg(long, default_value = "null")]
    disaggregation_mode: String,
    /// The prefill server's bootstrap port (the decode side's default for requests whose
    /// bootstrap_port is null).
    #[arg(long, default_value_t = 8998)]
    disaggregation_bootstrap_port: u16,
    /// KV transfer backend: strata (aliases mooncake, mooncake_tcp): TCP between the two servers
    /// (or the same-host path).
    #[arg(long, default_value = "strata")]
    disaggregation_transfer_backend: String,
    /// RDMA NICs for the KV transfer (`mlx5_0,mlx5_1`): with the `rdma` build the first that opens
    /// carries the page bytes of TCP connections whose peer accepts; otherwise a warning in the
    /// log says why not and TCP is used.
    #[arg(long)]
    disaggregation_ib_device: Option<String>,
    /// Decode side: write each finished request's KV (prompt and generated tokens) to the L3
    /// given by --hicache-storage-backend, so the next turn's prefill finds it there.
    #[arg(long)]
    disaggregation_decode_enable_offload_kvcache: bool,
    /// Decode side: tokens reserved per request when admitting (accepted; pages are allocated
    /// on demand here).
    #[arg(long)]
    num_reserved_decode_tokens: Option<usize>,
    /// Test only: the fraction of PD transfers this server breaks on purpose (SGLang's
    /// DISAGGREGATION_TEST_FAILURE_PROB), to test that every request still ends cleanly.
    #[arg(
        long,
        env = "DISAGGREGATION_TEST_FAILURE_PROB",
        default_value_t = 0.0,
        hide = true
    )]
    disaggregation_test_failure_prob: f64,
    /// Test only: the decode side waits this many milliseconds after a KV header with pages
    /// arrived, before it copies them; the prefill side after it handed a finished chunk's pages
    /// over as a part (so a test can kill the prefill mid-transfer or between chunks).
    #[arg(long, default_value_t = 0, hide = true)]
    disaggregation_test_stall_ms: u64,
    /// Prefix cache eviction order: lru or lfu.
    #[arg(long, default_value = "lru")]
    radix_eviction_policy: String,
    /// Seed for sampling: requests that sample (temperature > 0) without their own
    /// sampling_seed get seeds drawn from it in the order they reach the scheduler, so the same
    /// requests in the same order give the same outputs; it also seeds --schedule-policy random.
    /// Without it seeds come from the clock.
    #[arg(long, allow_negative_numbers = true)]
    random_seed: Option<i64>,
    /// Streamed output tokens per chunk: the first token at once, then one chunk every N
    /// tokens, the end with whatever is left (SGLang's rule). A request's
    /// sampling_params.stream_interval overrides it.
    #[arg(long, default_value_t = 1)]
    stream_interval: usize,
    /// SGLang's grammar backend: xgrammar, outlines or llguidance all name Strata's own grammar
    /// engine (regex, json_schema, ebnf, structural_tag); none turns constrained decoding off, so
    /// a constrained request is refused (SGLang's abort message, as a 400).
    #[arg(long, default_value = "xgrammar", value_parser = ["xgrammar", "outlines", "llguidance", "none"])]
    grammar_backend: String,
    /// Where a chat request's omitted temperature, top_p, top_k, min_p and repetition_penalty
    /// come from: model (the checkpoint's generation_config.json, then the OpenAI defaults) or
    /// openai (the OpenAI defaults only). Completions always use the OpenAI defaults.
    #[arg(long, default_value = "model", value_parser = ["model", "openai"])]
    sampling_defaults: String,
    /// A JSON object of sampling parameters a /generate request takes for the fields its
    /// sampling_params do not set (reported by /get_model_info).
    #[arg(long)]
    preferred_sampling_params: Option<String>,
    /// A JSON object of chat-template variables every chat request gets under its own
    /// chat_template_kwargs (e.g. '{"enable_thinking": false}').
    #[arg(long)]
    default_chat_template_kwargs: Option<String>,
    /// Streamed OpenAI chat and completion responses end with a usage chunk even when the
    /// request's stream_options do not ask for one.
    #[arg(long)]
    stream_response_default_include_usage: bool,
    /// Streamed /generate lines carry only the text and output ids new since the previous line
    /// (without it, the whole output so far).
    #[arg(long)]
    incremental_streaming_output: bool,
    /// A JSON object of config.json keys that replace the checkpoint's own (e.g.
    /// '{"max_position_embeddings": 65536, "rope_scaling": {...}}'; whole top-level values).
    #[arg(long)]
    json_model_override_args: Option<String>,
    /// Seconds one scheduler round (a forward launched, the previous taken back) may run before
    /// the server logs a hung device and exits (status 70) for a supervisor to restart it;
    /// 0 turns it off.
    #[arg(long, default_value_t = 300.0)]
    watchdog_timeout: f64,
    /// Seconds after which a scheduler round still running is logged as a warning (no exit).
    #[arg(long)]
    soft_watchdog_timeout: Option<f64>,
    /// Test hook: every round that runs a forward sleeps this long first (a hung round for the
    /// watchdog test).
    #[arg(long, default_value_t = 0, hide = true)]
    test_round_stall_ms: u64,
    /// Most requests in one round's prefill (chunks of prompts already started count; decodes
    /// do not); no limit by default.
    #[arg(long)]
    prefill_max_requests: Option<usize>,
    /// Most prompt tokens admitted into one prefill round: with chunking on, admission stops
    /// once they are spent; with --chunked-prefill-size -1 a prompt that does not fit in what is
    /// left waits (the round's first always runs, however long).
    #[arg(long, default_value_t = strata_server::launch::DEFAULT_MAX_PREFILL_TOKENS)]
    max_prefill_tokens: usize,
    /// Order in which waiting requests are admitted: fcfs (arrival), lpm (longest cached prefix
    /// first), dfs-weight (requests sharing a prefix together, largest groups first), random, or
    /// lof (longest max_new_tokens first). lpm and dfs-weight act as fcfs with
    /// --disable-radix-cache.
    #[arg(
        long,
        default_value = "fcfs",
        value_parser = ["lpm", "random", "fcfs", "dfs-weight", "lof"]
    )]
    schedule_policy: String,
    /// The chat template of /v1/chat/completions: a Jinja file (any extension but .json; a .json
    /// file holding {"chat_template": "..."}) replacing tokenizer_config.json's, one of SGLang's
    /// built-in conversation templates by name (chatml, llama-2, vicuna_v1.1, ...), or the name
    /// of one of the checkpoint's named templates. SGLang's conversation-template JSON files are
    /// not implemented (a start-up error).
    #[arg(long)]
    chat_template: Option<String>,
    /// Which of the checkpoint's named chat templates to use (default: the first, as SGLang).
    #[arg(long)]
    hf_chat_template_name: Option<String>,
    /// Most requests waiting to be scheduled: one arriving while this many wait is refused at
    /// once (503, "The request queue is full."). Default: no limit. Ignored with
    /// --disaggregation-mode, as in SGLang.
    #[arg(long, allow_negative_numbers = true)]
    max_queued_requests: Option<usize>,
    /// Admit waiting requests by their `priority` field first (fcfs and lof; higher values
    /// first), and retract a running request for a waiting one that outranks it by more than
    /// --priority-scheduling-preemption-threshold when every running slot is taken.
    #[arg(long)]
    enable_priority_scheduling: bool,
    /// Lower priority values go first.
    #[arg(long)]
    schedule_low_priority_values_first: bool,
    /// The priority of a request that sets none.
    #[arg(long, allow_negative_numbers = true)]
    default_priority_value: Option<i64>,
    /// Without --enable-priority-scheduling, abort requests that set a priority.
    #[arg(long)]
    abort_on_priority_when_disabled: bool,
    /// How far a waiting request must outrank a running one to preempt it.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    priority_scheduling_preemption_threshold: i64,
    /// Priority scheduling orders the queue but never preempts.
    #[arg(long)]
    disable_priority_preemption: bool,
    /// Cut a prompt too long for the context or the KV cache to its first tokens (SGLang's
    /// length: min(context, KV tokens) - 6) instead of refusing it with a 400.
    #[arg(long)]
    allow_auto_truncate: bool,
    /// Log one INFO line per finished request, with what --log-requests-level says.
    #[arg(long)]
    log_requests: bool,
    /// 0: metadata (rid, token counts, finish reason, latency); 1: and the sampling parameters;
    /// 2: and the input and output text cut to 2048 characters; 3: the text in full.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
    log_requests_level: u8,
    /// Search /v1/chat/completions replies for function calls in this format when the request
    /// has tools: qwen25 (qwen), hermes, llama3, mistral, pythonic, deepseekv3, deepseekv31,
    /// kimi_k2, glm45 or qwen3_coder (another name is a start-up error).
    #[arg(long)]
    tool_call_parser: Option<String>,
    /// Split the reasoning off /v1/chat/completions replies (message.reasoning_content):
    /// deepseek-r1, deepseek-v3, qwen3, qwen3-thinking or glm45 (another name is a start-up
    /// error).
    #[arg(long)]
    reasoning_parser: Option<String>,
    /// The weights' version, reported in every /generate answer's meta_info and by
    /// /get_model_info until /update_weights_from_disk or /update_weight_version changes it.
    #[arg(long, default_value = "default")]
    weight_version: String,
    /// Serve the model as an embedding model: /v1/embeddings, /encode and Ollama's /api/embed
    /// answer with the last token's hidden state (L2-normalised); generation routes are a 400.
    /// Implied by a backbone architecture (LlamaModel, MistralModel, Qwen2Model, Qwen3Model).
    #[arg(long)]
    is_embedding: bool,
    /// Let /generate requests ask for `return_hidden_states`: every position's final hidden
    /// state in meta_info.hidden_states (those requests take no cached prefix and decode
    /// without CUDA graphs).
    #[arg(long)]
    enable_return_hidden_states: bool,
    /// Serve LoRA adapters: a request names one in `lora_path` (or an OpenAI request as
    /// `model: "base:adapter"`), /load_lora_adapter and /unload_lora_adapter manage them.
    /// Each adapter caches its own prefixes; on a GPU its decode steps replay CUDA graphs.
    #[arg(long)]
    enable_lora: bool,
    /// Adapters (PEFT directories) loaded at start-up: NAME=PATH, a PATH (named by itself) or
    /// SGLang's JSON {"lora_name", "lora_path"}; implies --enable-lora.
    #[arg(long, num_args = 0..)]
    lora_paths: Vec<String>,
    /// Refuse adapters of a higher rank.
    #[arg(long)]
    max_lora_rank: Option<usize>,
    /// Refuse adapters targeting other projections (q_proj ... down_proj, or all).
    #[arg(long, num_args = 0..)]
    lora_target_modules: Vec<String>,
    /// At most this many adapters loaded at once.
    #[arg(long)]
    max_loaded_loras: Option<usize>,
    /// At most this many distinct adapters in the running batch, the base model counted as one
    /// (default 8).
    #[arg(long)]
    max_loras_per_batch: Option<usize>,
}

/// The GPU of data-parallel replica `i`: the selected one for replica 0, else GPU `base + i ×
/// step` (SGLang's placement).
fn replica_gpu(
    first: &Arc<GpuContext>,
    i: usize,
    base: usize,
    step: usize,
) -> Result<Arc<GpuContext>, LaunchError> {
    if i == 0 {
        return Ok(first.clone());
    }
    let ordinal = base + i * step.max(1);
    GpuContext::new(ordinal).map_err(|e| {
        LaunchError::Config(format!(
            "--dp-size: replica {i} needs GPU {ordinal} (--base-gpu-id {base}, --gpu-id-step {step}): {e}"
        ))
    })
}

/// Builds the PD role from the flags (None when colocated).
fn pd_config(a: &Args) -> anyhow::Result<Option<PdConfig>> {
    let mode = parse_mode(&a.disaggregation_mode).map_err(anyhow::Error::msg)?;
    if !matches!(
        a.disaggregation_transfer_backend.as_str(),
        "strata" | "mooncake" | "mooncake_tcp"
    ) {
        anyhow::bail!(
            "--disaggregation-transfer-backend {}: expected strata, mooncake or mooncake_tcp",
            a.disaggregation_transfer_backend
        );
    }
    if mode == Mode::Null {
        return Ok(None);
    }
    if a.disaggregation_decode_enable_offload_kvcache && mode == Mode::Prefill {
        tracing::warn!(
            "--disaggregation-decode-enable-offload-kvcache applies to the decode side; ignored on prefill"
        );
    }
    if !(0.0..=1.0).contains(&a.disaggregation_test_failure_prob) {
        anyhow::bail!(
            "--disaggregation-test-failure-prob {}: expected a probability in [0, 1]",
            a.disaggregation_test_failure_prob
        );
    }
    let mut c = PdConfig::new(
        mode,
        a.disaggregation_bootstrap_port,
        &a.host,
        a.api_key.as_deref().unwrap_or(""),
    );
    // Opened (or the reason it is not, e.g. a build without the `rdma` feature, logged) when the
    // bootstrap server or the fetcher starts.
    c.ib_devices = a
        .disaggregation_ib_device
        .as_deref()
        .map(strata_cluster::transport::parse_devices)
        .unwrap_or_default();
    c.failure_prob = a.disaggregation_test_failure_prob;
    c.test_stall = std::time::Duration::from_millis(a.disaggregation_test_stall_ms);
    if !c.same_host {
        tracing::info!("STRATA_SAME_HOST=0: PD KV transfers with servers on this host use TCP");
    }
    if c.failure_prob > 0.0 {
        tracing::warn!(
            prob = c.failure_prob,
            "PD test fault injection is on: transfers will fail on purpose"
        );
    }
    Ok(Some(c))
}

/// Builds the HiCache configuration from the flags (None when HiCache is off).
fn hicache_config(a: &Args) -> anyhow::Result<Option<HiCacheConfig>> {
    // Decode offload needs the host pool and the L3 of HiCache, not its tree (decode keeps each
    // request's pages private), so it turns the L3 machinery on by itself, as SGLang's does.
    let offload = a.disaggregation_decode_enable_offload_kvcache
        && a.disaggregation_mode.eq_ignore_ascii_case("decode");
    if offload && a.hicache_storage_backend.is_none() {
        anyhow::bail!(
            "--disaggregation-decode-enable-offload-kvcache needs an L3: add --hicache-storage-backend strata (or mooncake, with the master address) or file"
        );
    }
    if !a.enable_hierarchical_cache && !offload {
        if a.hicache_storage_backend.is_some() {
            tracing::warn!(
                "--hicache-storage-backend is ignored without --enable-hierarchical-cache"
            );
        }
        return Ok(None);
    }
    if a.disable_radix_cache && !offload {
        anyhow::bail!(
            "--enable-hierarchical-cache needs the radix cache; drop --disable-radix-cache"
        );
    }
    if !matches!(a.hicache_io_backend.as_str(), "kernel" | "direct") {
        anyhow::bail!(
            "--hicache-io-backend {}: expected kernel or direct",
            a.hicache_io_backend
        );
    }
    let mut c = HiCacheConfig {
        ratio: a.hicache_ratio,
        size_gb: a.hicache_size,
        write_policy: parse_write_policy(&a.hicache_write_policy).map_err(anyhow::Error::msg)?,
        prefetch_policy: parse_prefetch_policy(&a.hicache_storage_prefetch_policy)
            .map_err(anyhow::Error::msg)?,
        model_name: Some(
            a.served_model_name
                .clone()
                .unwrap_or_else(|| a.model_path.display().to_string()),
        ),
        decode_offload: offload,
        ..HiCacheConfig::default()
    };
    if c.ratio <= 0.0 && c.size_gb <= 0.0 {
        anyhow::bail!("--hicache-ratio must be positive (or set --hicache-size)");
    }
    let extra_master = match &a.hicache_storage_backend_extra_config {
        Some(j) => apply_extra_config(&mut c, j).map_err(anyhow::Error::msg)?,
        None => None,
    };
    c.storage = a
        .hicache_storage_backend
        .as_deref()
        .map(|name| {
            storage_backend(
                name,
                extra_master,
                a.hicache_storage_backend_extra_config.as_deref(),
            )
        })
        .transpose()
        .map_err(anyhow::Error::msg)?;
    c.layout =
        parse_layout(&a.hicache_mem_layout, c.storage.is_some()).map_err(anyhow::Error::msg)?;
    c.direct_io = a.hicache_io_backend == "direct";
    if c.direct_io && c.layout == MemLayout::PageFirst {
        // SGLang does the same: a direct copy moves one contiguous run per page and layer.
        tracing::warn!(
            "--hicache-io-backend direct needs each page's layers contiguous; using --hicache-mem-layout page_first_direct"
        );
        c.layout = MemLayout::PageFirstDirect;
    }
    Ok(Some(c))
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
    if !matches!(a.kv_cache_dtype.as_str(), "auto" | "bfloat16" | "bf16") {
        anyhow::bail!(
            "--kv-cache-dtype {}: expected auto or bfloat16 (fp8 KV caches are not implemented)",
            a.kv_cache_dtype
        );
    }
    if let Some(f) = a.mem_fraction_static {
        if !(f > 0.0 && f <= 1.0) {
            anyhow::bail!("--mem-fraction-static {f}: expected a fraction in (0, 1]");
        }
    }
    if !matches!(a.device.as_str(), "auto" | "cpu" | "cuda") {
        anyhow::bail!("--device {}: expected auto, cuda or cpu", a.device);
    }
    // Checked before the model loads (the launch parses it again).
    strata_server::api::preferred::parse(a.preferred_sampling_params.as_deref())
        .map_err(anyhow::Error::msg)?;
    if a.stream_interval == 0 {
        anyhow::bail!("--stream-interval 0: expected at least 1 (tokens per streamed chunk)");
    }
    if a.max_prefill_tokens == 0 {
        anyhow::bail!("--max-prefill-tokens 0: expected at least 1");
    }
    let schedule_policy: SchedulePolicy = a.schedule_policy.parse().map_err(anyhow::Error::msg)?;
    if a.max_queued_requests == Some(0) {
        tracing::warn!("--max-queued-requests 0: every request is refused (as in SGLang)");
    }
    let mut opts = ServeOptions {
        model_path: a.model_path.clone(),
        served_model_name: a.served_model_name.clone(),
        page_size: a.page_size,
        max_running_requests: a.max_running_requests,
        chunked_prefill_size: chunk_flag(a.chunked_prefill_size, CPU_CHUNKED_PREFILL),
        context_length: a.context_length,
        mem_fraction_static: a.mem_fraction_static.unwrap_or(0.5),
        max_total_tokens: a.max_total_tokens,
        disable_radix_cache: a.disable_radix_cache,
        disable_overlap_schedule: a.disable_overlap_schedule,
        radix_eviction_lfu: match a.radix_eviction_policy.as_str() {
            "lru" => false,
            "lfu" => true,
            p => anyhow::bail!("--radix-eviction-policy {p}: expected lru or lfu"),
        },
        api_key: a.api_key.clone(),
        hicache: hicache_config(&a)?,
        pd: pd_config(&a)?,
        dp_size: a.dp_size,
        load_balance: LoadBalance::parse(&a.load_balance_method).map_err(anyhow::Error::msg)?,
        max_prefill_tokens: a.max_prefill_tokens,
        schedule_policy,
        // Negative seeds (argparse takes any int) name their two's-complement bits.
        random_seed: a.random_seed.map(|s| s as u64),
        stream_interval: a.stream_interval,
        grammar_off: a.grammar_backend == "none",
        model_sampling_defaults: a.sampling_defaults == "model",
        preferred_sampling_params: a.preferred_sampling_params.clone(),
        default_chat_template_kwargs: json_object_flag(
            "--default-chat-template-kwargs",
            a.default_chat_template_kwargs.as_deref(),
        )?,
        stream_default_include_usage: a.stream_response_default_include_usage,
        incremental_streaming_output: a.incremental_streaming_output,
        watchdog: strata_server::scheduler::watchdog::WatchdogConfig {
            hard: Some(a.watchdog_timeout),
            soft: a.soft_watchdog_timeout,
        },
        test_round_stall: std::time::Duration::from_millis(a.test_round_stall_ms),
        prefill_max_requests: a.prefill_max_requests,
        json_model_override_args: json_object_flag(
            "--json-model-override-args",
            a.json_model_override_args.as_deref(),
        )?,
        chat_template: a.chat_template.clone(),
        hf_chat_template_name: a.hf_chat_template_name.clone(),
        max_queued_requests: a.max_queued_requests,
        priority: strata_server::scheduler::policy::Priority {
            enabled: a.enable_priority_scheduling,
            low_first: a.schedule_low_priority_values_first,
            default: a.default_priority_value.unwrap_or(0),
            preempt_threshold: (!a.disable_priority_preemption)
                .then_some(a.priority_scheduling_preemption_threshold),
            abort_when_disabled: a.abort_on_priority_when_disabled,
        },
        allow_auto_truncate: a.allow_auto_truncate,
        log_requests_level: a.log_requests.then_some(a.log_requests_level),
        tool_call_parser: a.tool_call_parser.clone(),
        reasoning_parser: a.reasoning_parser.clone(),
        weight_version: a.weight_version.clone(),
        is_embedding: a.is_embedding,
        enable_return_hidden_states: a.enable_return_hidden_states,
        lora: strata_server::launch::LoraOptions {
            enabled: a.enable_lora,
            paths: a
                .lora_paths
                .iter()
                .map(|p| strata_server::model::lora::parse_lora_path(p))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?,
            max_rank: a.max_lora_rank,
            target_modules: (!a.lora_target_modules.is_empty())
                .then(|| a.lora_target_modules.clone()),
            max_loaded: a.max_loaded_loras,
            max_per_batch: a.max_loras_per_batch,
        },
        server_args: {
            let mut v = serde_json::to_value(&a)?;
            v["api_key"] = serde_json::Value::Null;
            // The resolved budget (the CUDA path below replaces it with its own default).
            v["chunked_prefill_size"] =
                serde_json::json!(chunk_flag(a.chunked_prefill_size, CPU_CHUNKED_PREFILL)
                    .map_or(-1, |n| n as i64));
            v
        },
    };
    let (kind, ctx) = select(a.base_gpu_id as usize, a.device == "cpu");
    let state = match (kind, ctx) {
        (BackendKind::Cuda { .. }, Some(ctx))
            if matches!(a.dtype.as_str(), "float32" | "float") =>
        {
            launch(&opts, |i| {
                let ctx = replica_gpu(&ctx, i, a.base_gpu_id as usize, a.gpu_id_step)?;
                CudaBackend::new(ctx).map_err(|e| LaunchError::Config(e.to_string()))
            })?
        }
        (BackendKind::Cuda { .. }, Some(ctx)) => {
            opts.mem_fraction_static = a.mem_fraction_static.unwrap_or(0.88);
            let (_, total) = ctx.mem_info()?;
            opts.chunked_prefill_size =
                chunk_flag(a.chunked_prefill_size, gpu_chunked_prefill(total));
            opts.server_args["chunked_prefill_size"] =
                serde_json::json!(opts.chunked_prefill_size.map_or(-1, |n| n as i64));
            if matches!(a.dtype.as_str(), "float16" | "half") {
                tracing::info!(
                    "--dtype float16: weights are rounded to bfloat16 (the CUDA kernels are bf16)"
                );
            }
            let max_running = a.max_running_requests.max(1);
            let deterministic =
                strata_kernels::cuda::det::from_env(a.enable_deterministic_inference);
            let graph_bs = if a.disable_cuda_graph {
                Vec::new()
            } else {
                strata_server::model::cuda::graph_sizes(
                    a.cuda_graph_max_bs,
                    &a.cuda_graph_bs,
                    max_running.min(256),
                )
                .map_err(anyhow::Error::msg)?
            };
            launch_with(&opts, |i, dir, cfg, max_positions| {
                let ctx = replica_gpu(&ctx, i, a.base_gpu_id as usize, a.gpu_id_step)?;
                let ro = CudaRunnerOptions {
                    context_length: max_positions,
                    max_prefill_tokens: opts.chunked_prefill_size.unwrap_or(max_positions),
                    max_running_requests: max_running,
                    deterministic,
                    cuda_graph_bs: graph_bs.clone(),
                };
                Ok(CudaRunner::load(ctx, dir, cfg, ro)?)
            })?
        }
        (BackendKind::Cpu { reason }, _) if a.device == "cuda" => {
            anyhow::bail!("--device cuda: {reason}")
        }
        _ => launch_cpu(&opts)?,
    };
    let max_payload = a.max_payload_size;
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
        axum::serve(
            strata_server::api::nodelay_listener(listener),
            strata_server::api::app_with_limit(state, max_payload),
        )
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

/// `--chunked-prefill-size` on the CPU when the flag is not given.
const CPU_CHUNKED_PREFILL: usize = 2048;

/// A flag whose value is a JSON object (anything else stops the start, naming the flag).
fn json_object_flag(
    flag: &str,
    text: Option<&str>,
) -> anyhow::Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let Some(text) = text else {
        return Ok(None);
    };
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(other) => anyhow::bail!("{flag} {text}: expected a JSON object, got {other}"),
        Err(e) => anyhow::bail!("{flag} {text}: {e}"),
    }
}

/// SGLang's `--chunked-prefill-size` default for a GPU of `total` bytes (its server_args tiers
/// by memory): 2048 under 35 GiB, 4096 under 60 GiB, 8192 under 160 GiB (H100, H200), else 16384.
fn gpu_chunked_prefill(total: usize) -> usize {
    let gib = total as f64 / (1u64 << 30) as f64;
    if gib < 35.0 {
        2048
    } else if gib < 60.0 {
        4096
    } else if gib < 160.0 {
        8192
    } else {
        16384
    }
}

/// The chunk budget from the flag: absent = `default`, <= 0 = whole prompts (None).
fn chunk_flag(flag: Option<i64>, default: usize) -> Option<usize> {
    match flag {
        None => Some(default),
        Some(n) if n > 0 => Some(n as usize),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    fn hc(extra: &[&str]) -> anyhow::Result<Option<HiCacheConfig>> {
        let argv = [
            &["serve", "--model-path", "m", "--enable-hierarchical-cache"],
            extra,
        ]
        .concat();
        hicache_config(&Cli::try_parse_from(argv).expect("flags parse").a)
    }

    #[test]
    fn chunked_prefill_default_follows_gpu_memory_like_sglang() {
        let gib = |g: usize| g << 30;
        assert_eq!(gpu_chunked_prefill(gib(24)), 2048);
        assert_eq!(gpu_chunked_prefill(gib(40)), 4096);
        assert_eq!(gpu_chunked_prefill(gib(80)), 8192);
        assert_eq!(gpu_chunked_prefill(140_400_000_000), 8192, "H200");
        assert_eq!(gpu_chunked_prefill(gib(180)), 16384, "B200");
        assert_eq!(chunk_flag(None, 8192), Some(8192));
        assert_eq!(chunk_flag(Some(7), 8192), Some(7));
        assert_eq!(chunk_flag(Some(-1), 8192), None);
        let a = Cli::try_parse_from(["serve", "--model-path", "m"])
            .unwrap()
            .a;
        assert_eq!(a.chunked_prefill_size, None);
        let a = Cli::try_parse_from(["serve", "--model-path", "m", "--chunked-prefill-size", "-1"]);
        assert_eq!(a.unwrap().a.chunked_prefill_size, Some(-1));
    }

    #[test]
    fn direct_io_backend_switches_page_first_to_page_first_direct() {
        let c = hc(&["--hicache-io-backend", "direct"]).unwrap().unwrap();
        assert!(c.direct_io);
        assert_eq!(c.layout, MemLayout::PageFirstDirect);
        let c = hc(&[]).unwrap().unwrap();
        assert!(!c.direct_io, "kernel is the default");
        assert_eq!(c.layout, MemLayout::PageFirst);
        let c = hc(&[
            "--hicache-io-backend",
            "direct",
            "--hicache-mem-layout",
            "page_first_direct",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.layout, MemLayout::PageFirstDirect);
        let e = hc(&["--hicache-io-backend", "dma"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel or direct"), "{e}");
    }

    #[test]
    fn scheduling_flags_parse_with_sglang_defaults_and_choices() {
        let parse = |extra: &[&str]| {
            let argv = [&["serve", "--model-path", "m"], extra].concat();
            Cli::try_parse_from(argv).map(|c| c.a)
        };
        let a = parse(&[]).unwrap();
        assert_eq!(a.random_seed, None);
        assert_eq!(a.stream_interval, 1);
        assert_eq!(a.max_prefill_tokens, 16384);
        assert_eq!(a.schedule_policy, "fcfs");
        let a = parse(&[
            "--random-seed",
            "-3",
            "--stream-interval",
            "4",
            "--max-prefill-tokens",
            "512",
            "--schedule-policy",
            "dfs-weight",
        ])
        .unwrap();
        assert_eq!(a.random_seed, Some(-3));
        assert_eq!((a.stream_interval, a.max_prefill_tokens), (4, 512));
        assert_eq!(
            a.schedule_policy.parse::<SchedulePolicy>(),
            Ok(SchedulePolicy::DfsWeight)
        );
        for p in ["lpm", "random", "fcfs", "lof"] {
            assert!(parse(&["--schedule-policy", p]).is_ok(), "{p}");
        }
        let e = parse(&["--schedule-policy", "sjf"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("sjf") && e.contains("possible values") && e.contains("dfs-weight"),
            "{e}"
        );
    }

    #[test]
    fn request_flags_parse_with_sglang_defaults_and_choices() {
        let parse = |extra: &[&str]| {
            let argv = [&["serve", "--model-path", "m"], extra].concat();
            Cli::try_parse_from(argv).map(|c| c.a)
        };
        let a = parse(&[]).unwrap();
        assert_eq!((a.chat_template, a.hf_chat_template_name), (None, None));
        assert_eq!(a.max_queued_requests, None);
        assert!(!a.allow_auto_truncate && !a.log_requests);
        assert_eq!(a.log_requests_level, 2);
        let a = parse(&[
            "--chat-template",
            "t.jinja",
            "--hf-chat-template-name",
            "tool_use",
            "--max-queued-requests",
            "3",
            "--allow-auto-truncate",
            "--log-requests",
            "--log-requests-level",
            "0",
        ])
        .unwrap();
        assert_eq!(a.chat_template.as_deref(), Some("t.jinja"));
        assert_eq!(a.hf_chat_template_name.as_deref(), Some("tool_use"));
        assert_eq!(a.max_queued_requests, Some(3));
        assert!(a.allow_auto_truncate && a.log_requests);
        assert_eq!(a.log_requests_level, 0);
        let e = parse(&["--log-requests-level", "4"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("4") && e.contains("0..=3"), "{e}");
        assert!(parse(&["--max-queued-requests", "-1"]).is_err());
    }

    #[test]
    fn parser_flags_reach_the_engine_options() {
        let parse = |extra: &[&str]| {
            let argv = [&["serve", "--model-path", "m"], extra].concat();
            Cli::try_parse_from(argv).map(|c| c.a)
        };
        let a = parse(&[]).unwrap();
        assert_eq!((a.tool_call_parser, a.reasoning_parser), (None, None));
        let a = parse(&[
            "--tool-call-parser",
            "llama3",
            "--reasoning-parser",
            "deepseek-r1",
        ])
        .unwrap();
        assert_eq!(a.tool_call_parser.as_deref(), Some("llama3"));
        assert_eq!(a.reasoning_parser.as_deref(), Some("deepseek-r1"));
        // Names are checked by the engine at start-up (the e2e test sees the error).
        assert!(parse(&["--tool-call-parser", "bogus"]).is_ok());
    }

    #[test]
    fn deterministic_inference_is_a_real_flag() {
        let parse = |extra: &[&str]| {
            let argv = [&["serve", "--model-path", "m"], extra].concat();
            Cli::try_parse_from(argv).expect("flags parse").a
        };
        assert!(parse(&["--enable-deterministic-inference"]).enable_deterministic_inference);
        assert!(!parse(&[]).enable_deterministic_inference);
    }
}
