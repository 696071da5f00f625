//! Start-up: load the model directory, start each replica (`replica.rs`: its runner, KV pool and
//! scheduler thread; `--dp-size` of them), and build the HTTP application state. Used by
//! `strata serve` and by in-process tests.
//!
//! KV sizing, per replica: `--max-total-tokens` when given. Otherwise, on a device runner (CUDA),
//! the runner's budget: `mem_fraction_static × GPU memory − memory in use after weights and
//! workspaces` (as SGLang); on the CPU, `(mem_fraction_static × MemAvailable − weight bytes of
//! every replica) / replicas`. Either is capped at `context_length × max_running_requests` (more
//! could never be used), rounded down to pages.

use crate::api::reqlog::{LogSwitch, RequestLog};
use crate::api::{AppState, ServerInfo};
use crate::hicache::HiCacheConfig;
use crate::model::{Model, ModelConfig, ModelError, ModelRunner, Tokenizer};
use crate::pd::prefill::Registry;
use crate::pd::{Mode, PdConfig};
pub use crate::scheduler::budget::DEFAULT_MAX_PREFILL_TOKENS;
use crate::scheduler::dp::LoadBalance;
pub use crate::scheduler::policy::SchedulePolicy;
use crate::scheduler::{SchedulerConfig, SchedulerHandle};
use crate::stats::Stats;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod replica;
use strata_kernels::{Backend, CpuBackend};

/// Server options (the subset of SGLang's launch flags that shape the engine).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model_path: PathBuf,
    pub served_model_name: Option<String>,
    pub page_size: usize,
    pub max_running_requests: usize,
    pub chunked_prefill_size: Option<usize>,
    pub context_length: Option<usize>,
    pub mem_fraction_static: f64,
    pub max_total_tokens: Option<usize>,
    pub disable_radix_cache: bool,
    /// `--disable-overlap-schedule`.
    pub disable_overlap_schedule: bool,
    /// `--radix-eviction-policy lfu`.
    pub radix_eviction_lfu: bool,
    pub api_key: Option<String>,
    /// The hierarchical cache (`--enable-hierarchical-cache`), or none.
    pub hicache: Option<HiCacheConfig>,
    /// PD disaggregation role (`--disaggregation-mode`), or none.
    pub pd: Option<PdConfig>,
    /// Launch arguments echoed by `/get_server_info`.
    pub server_args: serde_json::Value,
    /// `--max-prefill-tokens` (SGLang's default: [`DEFAULT_MAX_PREFILL_TOKENS`]).
    pub max_prefill_tokens: usize,
    /// `--schedule-policy`.
    pub schedule_policy: SchedulePolicy,
    /// `--random-seed` (`None`: unseeded requests get seeds from the clock).
    pub random_seed: Option<u64>,
    /// `--stream-interval`: streamed output tokens per chunk (at least 1).
    pub stream_interval: usize,
    /// `--grammar-backend none`: constrained requests are refused.
    pub grammar_off: bool,
    /// `--sampling-defaults model` (SGLang's default; false: `openai`): a chat request's omitted
    /// temperature, top_p, top_k, min_p and repetition_penalty come from the checkpoint's
    /// `generation_config.json`.
    pub model_sampling_defaults: bool,
    /// `--preferred-sampling-params`: a JSON object whose fields a `/generate` request's
    /// `sampling_params` get where they do not set them.
    pub preferred_sampling_params: Option<String>,
    /// `--default-chat-template-kwargs`: a JSON object under each chat request's own
    /// `chat_template_kwargs`.
    pub default_chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// `--stream-response-default-include-usage`.
    pub stream_default_include_usage: bool,
    /// `--incremental-streaming-output`.
    pub incremental_streaming_output: bool,
    /// `--json-model-override-args`: config.json keys replaced at every load.
    pub json_model_override_args: Option<serde_json::Map<String, serde_json::Value>>,
    /// `--watchdog-timeout` and `--soft-watchdog-timeout` (seconds; None: off).
    pub watchdog: crate::scheduler::watchdog::WatchdogConfig,
    /// A hidden test flag: every round that runs a forward sleeps this long first.
    pub test_round_stall: std::time::Duration,
    /// `--prefill-max-requests` (None: no limit).
    pub prefill_max_requests: Option<usize>,
    /// `--chat-template`: a Jinja file (or a named template of the checkpoint) replacing
    /// `tokenizer_config.json`'s template (see `model::chat_source`).
    pub chat_template: Option<String>,
    /// `--hf-chat-template-name`: which of the checkpoint's named templates to use.
    pub hf_chat_template_name: Option<String>,
    /// `--max-queued-requests` (`None`: no limit).
    pub max_queued_requests: Option<usize>,
    /// `--enable-priority-scheduling` and its flags.
    pub priority: crate::scheduler::policy::Priority,
    /// `--allow-auto-truncate`: cut a prompt that is too long instead of refusing it.
    pub allow_auto_truncate: bool,
    /// `--log-requests` at `--log-requests-level` (`None`: off).
    pub log_requests_level: Option<u8>,
    /// `--tool-call-parser NAME` (see `parsers::ToolParser::NAMES`).
    pub tool_call_parser: Option<String>,
    /// `--reasoning-parser NAME` (see `parsers::ReasoningParser::NAMES`).
    pub reasoning_parser: Option<String>,
    /// `--weight-version` ("default"): reported in `meta_info` and `/get_model_info`.
    pub weight_version: String,
    /// `--is-embedding`: serve embeddings (`/v1/embeddings`, `/encode`) instead of generating.
    pub is_embedding: bool,
    /// `--enable-return-hidden-states`: `/generate` may report hidden states.
    pub enable_return_hidden_states: bool,
    /// `--enable-lora` and its flags.
    pub lora: LoraOptions,
    /// `--dp-size`: replicas of the model behind the one server (`replica.rs`).
    pub dp_size: usize,
    /// `--load-balance-method`: which replica takes a request.
    pub load_balance: LoadBalance,
}

/// `--enable-lora`, `--lora-paths` and the limits SGLang pairs with them.
#[derive(Debug, Clone, Default)]
pub struct LoraOptions {
    /// `--enable-lora` (implied by `--lora-paths`): requests may name adapters.
    pub enabled: bool,
    /// `--lora-paths`: (name, path) of the adapters loaded at start-up.
    pub paths: Vec<(String, String)>,
    /// `--max-lora-rank`: adapters of a higher rank are refused.
    pub max_rank: Option<usize>,
    /// `--lora-target-modules`: adapters targeting other projections are refused.
    pub target_modules: Option<Vec<String>>,
    /// `--max-loaded-loras`.
    pub max_loaded: Option<usize>,
    /// `--max-loras-per-batch` (SGLang's default 8 when None).
    pub max_per_batch: Option<usize>,
}

impl ServeOptions {
    /// Options for the model at `model_path` with `strata serve`'s CPU defaults (page size 1,
    /// 64 running requests, 2048-token chunks, half the memory, no HiCache, no PD, nothing
    /// logged); callers that embed the server, and the tests, override the fields they need.
    pub fn new(model_path: PathBuf) -> Self {
        ServeOptions {
            model_path,
            served_model_name: None,
            page_size: 1,
            max_running_requests: 64,
            chunked_prefill_size: Some(2048),
            context_length: None,
            mem_fraction_static: 0.5,
            max_total_tokens: None,
            disable_radix_cache: false,
            disable_overlap_schedule: false,
            radix_eviction_lfu: false,
            api_key: None,
            hicache: None,
            pd: None,
            server_args: serde_json::json!({}),
            max_prefill_tokens: DEFAULT_MAX_PREFILL_TOKENS,
            schedule_policy: SchedulePolicy::default(),
            random_seed: None,
            stream_interval: 1,
            grammar_off: false,
            model_sampling_defaults: true,
            preferred_sampling_params: None,
            default_chat_template_kwargs: None,
            stream_default_include_usage: false,
            incremental_streaming_output: false,
            json_model_override_args: None,
            watchdog: Default::default(),
            test_round_stall: std::time::Duration::ZERO,
            prefill_max_requests: None,
            chat_template: None,
            hf_chat_template_name: None,
            max_queued_requests: None,
            priority: Default::default(),
            allow_auto_truncate: false,
            log_requests_level: None,
            tool_call_parser: None,
            reasoning_parser: None,
            weight_version: "default".into(),
            is_embedding: false,
            enable_return_hidden_states: false,
            lora: LoraOptions::default(),
            dp_size: 1,
            load_balance: LoadBalance::default(),
        }
    }
}

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Config(String),
    #[error("cannot start the scheduler thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Loads everything and starts the scheduler on the CPU backend.
pub fn launch_cpu(opts: &ServeOptions) -> Result<AppState, LaunchError> {
    launch(opts, |_| Ok(CpuBackend))
}

/// Loads everything and starts the scheduler of each replica on the backend `backend(replica)`
/// makes (the per-op f32 runner).
pub fn launch<B: Backend>(
    opts: &ServeOptions,
    mut backend: impl FnMut(usize) -> Result<B, LaunchError>,
) -> Result<AppState, LaunchError> {
    launch_with(opts, |replica, dir, _cfg, max_positions| {
        Ok(Model::load(dir, backend(replica)?, max_positions)?)
    })
}

/// Checks the options and reads the model's configuration.
fn prepare(opts: &ServeOptions) -> Result<(ModelConfig, usize), LaunchError> {
    let dir = &opts.model_path;
    if !dir.is_dir() {
        return Err(LaunchError::Config(format!(
            "--model-path {}: not a directory",
            dir.display()
        )));
    }
    if opts.page_size == 0 {
        return Err(LaunchError::Config("--page-size must be at least 1".into()));
    }
    crate::model::config::set_overrides(opts.json_model_override_args.clone());
    let cfg = ModelConfig::load(dir)?;
    let context_length = opts.context_length.unwrap_or(cfg.max_position_embeddings);
    if context_length < 2 {
        return Err(LaunchError::Config(
            "--context-length must be at least 2".into(),
        ));
    }
    Ok((cfg, context_length))
}

/// Loads everything and starts the scheduler of each replica on the runner `load` builds from
/// (replica index, model dir, config, RoPE positions).
pub fn launch_with<R, F>(opts: &ServeOptions, mut load: F) -> Result<AppState, LaunchError>
where
    R: ModelRunner,
    F: FnMut(usize, &Path, &ModelConfig, usize) -> Result<R, LaunchError>,
{
    let dir = &opts.model_path;
    let tool_call_parser = opts
        .tool_call_parser
        .as_deref()
        .map(crate::parsers::ToolParser::from_flag)
        .transpose()
        .map_err(LaunchError::Config)?;
    let reasoning_parser = opts
        .reasoning_parser
        .as_deref()
        .map(crate::parsers::ReasoningParser::from_flag)
        .transpose()
        .map_err(LaunchError::Config)?;
    let (cfg, context_length) = prepare(opts)?;
    let mut tokenizer = Tokenizer::load(dir)?;
    tokenizer.chat_template = crate::model::chat_source::choose(
        opts.chat_template.as_deref(),
        opts.hf_chat_template_name.as_deref(),
        &tokenizer.named_chat_templates,
        tokenizer.chat_template.take(),
    )
    .map_err(LaunchError::Config)?;
    let is_embedding = opts.is_embedding || cfg.embedding_only;
    let dp = opts.dp_size.max(1);
    if opts.pd.is_some() && is_embedding {
        return Err(LaunchError::Config(
            "an embedding model (--is-embedding) cannot take a prefill or decode role: it generates nothing to hand over".into(),
        ));
    }
    let stats = Arc::new(Stats::default());
    let prefill = match &opts.pd {
        Some(c) if c.mode == Mode::Prefill => Some(Registry::start(c.clone(), stats.clone())?),
        _ => None,
    };
    let tokenizer = Arc::new(tokenizer);
    // The decode side keeps each request's pages private (SGLang's chunk cache on decode).
    let radix_cache =
        !opts.disable_radix_cache && opts.pd.as_ref().is_none_or(|c| c.mode != Mode::Decode);
    let shared = replica::Shared {
        opts,
        cfg: &cfg,
        context_length,
        host_kv_budget: {
            let avail = replica::mem_available_bytes().unwrap_or(8 << 30) as f64;
            let weights = (dp * param_count(&cfg) * 4) as f64;
            (opts.mem_fraction_static * avail - weights).max(0.0) / dp as f64
        },
        tokenizer: tokenizer.clone(),
        stats: stats.clone(),
        dp,
        prefill,
        sched: SchedulerConfig {
            page_size: opts.page_size,
            max_running_requests: opts.max_running_requests.max(1),
            chunked_prefill_size: opts.chunked_prefill_size,
            context_length,
            radix_cache,
            eviction_lfu: opts.radix_eviction_lfu,
            max_prefill_tokens: opts.max_prefill_tokens.max(1),
            schedule_policy: opts.schedule_policy,
            random_seed: opts.random_seed,
            max_queued_requests: opts.max_queued_requests,
            priority: opts.priority,
            max_loras_per_batch: opts.lora.max_per_batch.unwrap_or(MAX_LORAS_PER_BATCH),
            overlap_schedule: !opts.disable_overlap_schedule,
            watchdog: opts.watchdog,
            prefill_max_requests: opts.prefill_max_requests.map(|m| m.max(1)),
            test_round_stall: opts.test_round_stall,
        },
    };
    let mut parts = Vec::new();
    for i in 0..dp {
        tracing::info!(path = %dir.display(), arch = cfg.arch.hf_name(), replica = i, "loading weights");
        let t0 = std::time::Instant::now();
        let model = load(i, dir, &cfg, context_length + 1)?;
        tracing::info!(
            params = param_count(&cfg),
            secs = t0.elapsed().as_secs_f64(),
            "weights loaded"
        );
        parts.push(replica::start(&shared, model)?);
    }
    let first = &parts[0];
    let (max_total_tokens, runner, supports_lora) = (
        first.max_total_tokens,
        first.runner.clone(),
        first.supports_lora,
    );
    let pd_registry = shared.prefill.clone();
    let handle = SchedulerHandle::join(
        parts.into_iter().map(|p| p.handle).collect(),
        opts.load_balance,
    );
    let classifier = match &cfg.labels {
        Some(labels) => Some(Arc::new(crate::api::classify::Classifier::load(
            dir,
            labels.clone(),
            cfg.hidden_size,
        )?)),
        None => None,
    };
    let info = ServerInfo {
        model_path: dir.display().to_string(),
        served_model_name: opts
            .served_model_name
            .clone()
            .unwrap_or_else(|| dir.display().to_string()),
        architectures: vec![cfg.architecture.clone()],
        model_type: cfg.model_type.clone(),
        context_length,
        vocab_size: cfg.vocab_size,
        max_total_tokens,
        page_size: opts.page_size,
        backend: runner.clone(),
        is_embedding,
        matryoshka: cfg.matryoshka.clone(),
        hidden_size: cfg.hidden_size,
        server_args: opts.server_args.clone(),
        chat_defaults: if opts.model_sampling_defaults {
            cfg.generation_defaults.clone()
        } else {
            Default::default()
        },
        preferred_sampling_params: crate::api::preferred::parse(
            opts.preferred_sampling_params.as_deref(),
        )
        .map_err(LaunchError::Config)?,
        default_chat_template_kwargs: opts.default_chat_template_kwargs.clone(),
        stream_default_include_usage: opts.stream_default_include_usage,
        incremental_streaming_output: opts.incremental_streaming_output,
    };
    let loras = Arc::new(lora_registry(&opts.lora, &cfg, supports_lora, &runner)?);
    Ok(AppState {
        scheduler: handle,
        tokenizer,
        stats,
        info: Arc::new(info),
        api_key: opts.api_key.as_deref().map(Arc::from),
        pd_registry,
        stream_interval: opts.stream_interval.max(1),
        grammar_off: opts.grammar_off,
        allow_auto_truncate: opts.allow_auto_truncate,
        radix_cache,
        request_log: LogSwitch::new(opts.log_requests_level.map(RequestLog::new)),
        tool_call_parser,
        reasoning_parser,
        grammars: Arc::default(),
        responses: Arc::default(),
        served: Arc::new(std::sync::RwLock::new(crate::api::weights::Served {
            model_path: dir.display().to_string(),
            version: opts.weight_version.clone(),
        })),
        l3_state: Arc::default(),
        classifier,
        sessions: Arc::default(),
        return_hidden_states: opts.enable_return_hidden_states,
        loras,
    })
}

/// SGLang's `--max-loras-per-batch` default.
pub const MAX_LORAS_PER_BATCH: usize = 8;

/// The LoRA registry with `--lora-paths` loaded (a bad adapter is a start-up error, as in
/// SGLang); on a runner that cannot apply adapters, requests naming one are refused.
fn lora_registry(
    o: &LoraOptions,
    cfg: &ModelConfig,
    supports_lora: bool,
    runner: &str,
) -> Result<crate::model::lora::Registry, LaunchError> {
    let mut reg = crate::model::lora::Registry::new(o.enabled || !o.paths.is_empty(), cfg.clone());
    reg.max_rank = o.max_rank;
    reg.targets = o.target_modules.clone();
    reg.max_loaded = o.max_loaded;
    if o.max_per_batch == Some(0) {
        return Err(LaunchError::Config(
            "--max-loras-per-batch must be at least 1 (the base model counts as one)".into(),
        ));
    }
    if reg.enabled && !supports_lora {
        let why = format!(
            "LoRA adapters are not applied by the {runner} runner yet; serve them with --device cpu or --dtype float32."
        );
        tracing::warn!("{why}");
        reg.unsupported = Some(why);
    }
    for (name, path) in &o.paths {
        reg.load(name, Path::new(path))
            .map_err(|e| LaunchError::Config(format!("--lora-paths {name}={path}: {e}")))?;
        tracing::info!(name, path, "LoRA adapter loaded");
    }
    Ok(reg)
}

/// Parameters of a Llama-family checkpoint (matrices, embeddings and LM head).
pub fn param_count(cfg: &ModelConfig) -> usize {
    cfg.num_layers
        * (2 * cfg.hidden_size * cfg.num_heads * cfg.head_dim
            + 2 * cfg.hidden_size * cfg.kv_dim()
            + 3 * cfg.hidden_size * cfg.intermediate_size)
        + 2 * cfg.vocab_size * cfg.hidden_size
}
