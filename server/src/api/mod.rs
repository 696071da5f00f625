//! The HTTP API (axum), shaped like `sglang.launch_server`.
//!
//! The handlers only tokenise, validate and follow a request's events through [`driver::Driver`];
//! they know nothing about batching or KV pages (the scheduler thread owns those). Build the
//! router with [`app`]; every error leaves through [`error::ApiError`].

pub mod chat_request;
pub mod classify;
pub mod control;
pub mod driver;
pub mod embed;
pub mod error;
pub mod fanout;
pub mod generate;
pub mod info;
pub mod logprob_lists;
pub mod lora;
pub mod messages;
pub mod metrics;
pub mod ollama;
pub mod ollama_info;
pub mod openai;
pub mod output;
pub mod parse;
pub mod preferred;
pub mod reasoning_effort;
pub mod relay;
pub mod reqlog;
pub mod rerank;
pub mod responses;
pub mod responses_bg;
pub mod responses_store;
pub mod score;
pub mod sessions;
pub mod tokenize;
pub mod unsupported;
pub mod weights;

use crate::model::Tokenizer;
use crate::scheduler::SchedulerHandle;
use crate::stats::Stats;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use std::sync::Arc;

/// Static facts about the served model and the server's limits.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub model_path: String,
    pub served_model_name: String,
    pub architectures: Vec<String>,
    pub model_type: String,
    pub context_length: usize,
    pub vocab_size: usize,
    pub max_total_tokens: usize,
    pub page_size: usize,
    pub backend: String,
    /// `--is-embedding` (or an embedding architecture): the embedding routes serve, the
    /// generation routes answer 400.
    pub is_embedding: bool,
    /// Output sizes `dimensions` may ask for (config.json's `matryoshka_dimensions`; None: any up
    /// to the hidden size when `is_matryoshka`, else the parameter is refused, as in SGLang).
    pub matryoshka: Option<Option<Vec<usize>>>,
    /// The model's hidden size (an embedding's length).
    pub hidden_size: usize,
    /// The launch arguments, reported by `/get_server_info`.
    pub server_args: serde_json::Value,
    /// What fills a chat request's omitted sampling fields (`--sampling-defaults`).
    pub chat_defaults: crate::model::config::GenerationDefaults,
    /// `--preferred-sampling-params` (`preferred.rs`).
    pub preferred_sampling_params: Option<preferred::Preferred>,
    /// `--default-chat-template-kwargs`: under each chat request's own `chat_template_kwargs`.
    pub default_chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// `--stream-response-default-include-usage`: streamed OpenAI responses end with a usage
    /// chunk even without `stream_options.include_usage`.
    pub stream_default_include_usage: bool,
    /// `--incremental-streaming-output`: a streamed `/generate` line carries only its new text
    /// and ids.
    pub incremental_streaming_output: bool,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub scheduler: SchedulerHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub stats: Arc<Stats>,
    pub info: Arc<ServerInfo>,
    pub api_key: Option<Arc<str>>,
    /// The PD bootstrap registry of a prefill server.
    pub pd_registry: Option<Arc<crate::pd::prefill::Registry>>,
    /// `--stream-interval`: output tokens per streamed chunk (a request's
    /// `sampling_params.stream_interval` overrides it).
    pub stream_interval: usize,
    /// `--allow-auto-truncate`: a prompt too long for the context (or the KV pool) keeps its
    /// head instead of being refused (see [`driver::fit_input`]).
    pub allow_auto_truncate: bool,
    /// The radix cache is on (`n > 1` then warms each prompt's prefix before its copies).
    pub radix_cache: bool,
    /// `--log-requests`, switched at runtime by `/configure_logging`.
    pub request_log: reqlog::LogSwitch,
    /// `--tool-call-parser` (`None`: replies are not searched for calls).
    pub tool_call_parser: Option<crate::parsers::ToolParser>,
    /// `--reasoning-parser` (`None`: the reasoning stays in the content).
    pub reasoning_parser: Option<crate::parsers::ReasoningParser>,
    /// Constrained decoding's compiler, built on the first constrained request.
    pub grammars: Arc<std::sync::OnceLock<crate::grammar::Compiler>>,
    /// `--grammar-backend none`: constrained requests are refused.
    pub grammar_off: bool,
    /// The Responses API's stored responses.
    pub responses: Arc<responses_store::ResponseStore>,
    /// The served checkpoint's path and weight version (`/update_weights_from_disk`).
    pub served: Arc<std::sync::RwLock<weights::Served>>,
    /// The L3 set by `PUT` / `DELETE /hicache/storage-backend` (None: as launched).
    pub l3_state: Arc<std::sync::RwLock<Option<serde_json::Value>>>,
    /// A sequence-classification checkpoint's head (embeddings are then its class scores).
    pub classifier: Option<Arc<classify::Classifier>>,
    /// SGLang's sessions (`/open_session`, `session_params`).
    pub sessions: Arc<sessions::Sessions>,
    /// `--enable-return-hidden-states`: requests may ask for `return_hidden_states`.
    pub return_hidden_states: bool,
    /// The LoRA adapters requests may name (`--enable-lora`, `/load_lora_adapter`).
    pub loras: Arc<crate::model::lora::Registry>,
}

impl AppState {
    /// The grammar compiler over the model's logit rows (token bytes read on the first call).
    pub fn grammars(&self) -> &crate::grammar::Compiler {
        self.grammars.get_or_init(|| {
            crate::grammar::Compiler::new(self.tokenizer.token_bytes(self.info.vocab_size))
        })
    }

    /// Tokenises a prompt with the tokenizer's special tokens (BOS), as SGLang does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode(text, true)
            .map_err(ApiError::bad_request)
    }
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        // `Authorization: Bearer KEY`, or Anthropic clients' `x-api-key: KEY`.
        let h = req.headers();
        let ok = h
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
            .is_some_and(|v| v == &**key);
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint.")
}

/// The default request body limit: 512 MiB, sglang-router's, so that whatever the router
/// forwards a worker accepts (a 1M-token prompt is a few MB as text or token ids).
pub const DEFAULT_MAX_PAYLOAD: usize = 512 << 20;

/// The listener `strata serve` serves on: every accepted connection has TCP_NODELAY set, as
/// uvicorn's asyncio sockets have under SGLang, so each streamed token's chunk leaves at once
/// (with Nagle's algorithm a chunk waits for the client's acknowledgement of the previous one and
/// tokens arrive in bursts: a 1 ms decode step showed a median ITL of 0.01 ms).
pub fn nodelay_listener(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn nodelay(tcp: &mut tokio::net::TcpStream) {
        let _ = tcp.set_nodelay(true);
    }
    listener.tap_io(nodelay as fn(&mut tokio::net::TcpStream))
}

/// The server's router with the default body limit.
pub fn app(state: AppState) -> Router {
    app_with_limit(state, DEFAULT_MAX_PAYLOAD)
}

/// The server's router; bodies over `max_payload` bytes get a JSON 413. Every route, the probes
/// included, is behind `--api-key` when one is set (the `auth` layer covers the whole router).
pub fn app_with_limit(state: AppState, max_payload: usize) -> Router {
    let router = Router::new()
        .route(
            "/generate",
            post(generate::generate).put(generate::generate),
        )
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route(
            "/v1/responses/{response_id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route(
            "/v1/responses/{response_id}/cancel",
            post(responses_bg::cancel),
        )
        // SageMaker's chat completions, as SGLang maps it.
        .route("/invocations", post(openai::chat_completions))
        .route("/v1/embeddings", post(embed::embeddings))
        .route("/encode", post(embed::encode))
        .route("/v1/score", post(score::score))
        .route("/v1/classify", post(classify::classify))
        .route("/v1/rerank", post(rerank::rerank))
        .route("/open_session", post(sessions::open_session))
        .route("/close_session", post(sessions::close_session))
        .route("/classify", post(classify::classify))
        .route("/api/embed", post(embed::ollama_embed))
        .route("/api/embeddings", post(embed::ollama_embeddings))
        .route("/v1/models", get(info::models))
        .route("/load_lora_adapter", post(lora::load_lora_adapter))
        .route("/unload_lora_adapter", post(lora::unload_lora_adapter))
        .route("/v1/models/{*model}", get(control::retrieve_model))
        .route("/health", get(info::health))
        .route("/health_generate", get(info::health_generate))
        .route("/ping", get(control::ping))
        .route("/ready", get(control::ready))
        .route("/get_model_info", get(info::model_info))
        .route("/model_info", get(info::model_info))
        .route("/get_server_info", get(info::server_info))
        .route("/get_load", get(info::get_load))
        .route("/server_info", get(info::server_info))
        .route(
            "/flush_cache",
            get(info::flush_cache).post(info::flush_cache),
        )
        .route(
            "/clear_hicache_storage_backend",
            get(info::clear_hicache_storage).post(info::clear_hicache_storage),
        )
        .route(
            "/hicache/storage-backend/clear",
            post(info::clear_hicache_storage),
        )
        .route(
            "/hicache/storage-backend",
            get(control::hicache_backend)
                .put(control::hicache_attach_detach)
                .delete(control::hicache_attach_detach),
        )
        .route("/abort_request", post(info::abort_request))
        .route("/pause_generation", post(control::pause_generation))
        .route("/continue_generation", post(control::continue_generation))
        .route(
            "/configure_logging",
            get(control::configure_logging).post(control::configure_logging),
        )
        .route("/separate_reasoning", post(parse::separate_reasoning))
        .route("/parse_function_call", post(parse::parse_function_call))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/v1/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/v1/detokenize", post(tokenize::detokenize))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/update_weights_from_disk",
            post(weights::update_weights_from_disk),
        )
        .route(
            "/update_weight_version",
            post(weights::update_weight_version),
        )
        .route("/get_weight_version", get(weights::get_weight_version))
        .route(
            "/get_weights_by_name",
            get(weights::get_weights_by_name).post(weights::get_weights_by_name),
        );
    unsupported::add(ollama_info::add(router))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::max(max_payload))
        .layer(axum::middleware::map_response(move |r: Response| {
            error::json_rejections(r, max_payload)
        }))
        .with_state(state)
}

#[cfg(test)]
mod listener_tests {
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        use axum::serve::Listener;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut l = super::nodelay_listener(l);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (io, _) = l.accept().await;
        assert!(io.nodelay().unwrap(), "accepted stream without TCP_NODELAY");
        drop(client);
    }
}
