//! SGLang routes that `strata serve` cannot honour (weight updates, LoRA, profiling,
//! other model kinds (rerank), other API families...): each answers, whatever its method,
//! a 501 JSON error that names the route and says it is not supported, instead of a bare 404.

use super::error::ApiError;
use axum::http::{Method, Uri};
use axum::routing::any;
use axum::Router;

/// The routes, as SGLang 0.5.23 spells them (axum's `{param}` for path parameters).
pub const ROUTES: &[&str] = &[
    // Profiling and tracing.
    "/start_profile",
    "/stop_profile",
    "/set_trace_level",
    "/freeze_gc",
    "/slow_down",
    "/start_expert_distribution_record",
    "/stop_expert_distribution_record",
    "/dump_expert_distribution_record",
    // Runtime state and weights.
    "/set_internal_state",
    "/update_weights_from_tensor",
    "/update_weights_from_distributed",
    "/update_weights_from_ipc",
    "/init_weights_update_group",
    "/destroy_weights_update_group",
    "/init_weights_send_group_for_remote_instance",
    "/send_weights_to_remote_instance",
    "/get_remote_instance_transfer_engine_info",
    "/remote_instance_transfer_engine_info",
    "/begin_weight_update",
    "/end_weight_update",
    "/weights_checker",
    "/release_memory_occupation",
    "/resume_memory_occupation",
    "/pd_role_switch",
    "/get_hicache_l3_cache_layout",
    // LoRA from tensors in the request (adapters load from disk: `lora.rs`).
    "/load_lora_adapter_from_tensors",
    // Retrieval corpora.
    "/add_external_corpus",
    "/remove_external_corpus",
    "/list_external_corpora",
    // Other model kinds and API families.
    "/vertex_generate",
    "/v1/decisions",
    "/v1/audio/transcriptions",
    "/v1/systemone",
];

/// The error of `method path` (the path as requested).
pub fn error(method: &Method, path: &str) -> ApiError {
    ApiError::not_supported(format!(
        "{method} {path}: this SGLang route is not supported by strata serve."
    ))
}

/// `router` with every route of [`ROUTES`] answering [`error`].
pub fn add<S: Clone + Send + Sync + 'static>(mut router: Router<S>) -> Router<S> {
    for &route in ROUTES {
        router = router.route(
            route,
            any(|m: Method, uri: Uri| async move { error(&m, uri.path()) }),
        );
    }
    router
}
