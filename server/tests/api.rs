//! The axum app in-process (`tower::ServiceExt::oneshot`, no socket): error shapes, a generation,
//! and a bf16 checkpoint loading through the same path.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use strata_make_model::{make_model, DType, MakeModel, Size};
use strata_server::api::app;
use strata_server::launch::{launch_cpu, ServeOptions};
use strata_server::model::Arch;
use tower::ServiceExt;

fn opts(dir: &std::path::Path) -> ServeOptions {
    ServeOptions {
        hicache: None,
        pd: None,
        model_path: dir.to_path_buf(),
        served_model_name: None,
        page_size: 4,
        max_running_requests: 8,
        chunked_prefill_size: Some(64),
        context_length: Some(256),
        mem_fraction_static: 0.5,
        max_total_tokens: Some(1024),
        disable_radix_cache: false,
        radix_eviction_lfu: false,
        api_key: None,
        server_args: json!({}),
        max_prefill_tokens: strata_server::launch::DEFAULT_MAX_PREFILL_TOKENS,
        schedule_policy: Default::default(),
        random_seed: None,
        stream_interval: 1,
        chat_template: None,
        hf_chat_template_name: None,
        max_queued_requests: None,
        allow_auto_truncate: false,
        log_requests_level: None,
        tool_call_parser: None,
        reasoning_parser: None,
    }
}

async fn call(router: &axum::Router, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn errors_are_openai_shaped_and_generation_works() {
    let dir = tempfile::tempdir().unwrap();
    make_model(
        &MakeModel {
            arch: Arch::Qwen3,
            size: Size::Tiny,
            seed: 3,
            dtype: DType::F32,
        },
        dir.path(),
    )
    .unwrap();
    let router = app(launch_cpu(&opts(dir.path())).unwrap());
    let (st, v) = call(&router, "POST", "/generate", "{\"text\": ").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // sglang-router's shape, the same as `strata router` answers with.
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["code"], 400);
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let (st, v) = call(
        &router,
        "POST",
        "/generate",
        r#"{"text": "hello", "sampling_params": {"temperature": 0, "max_new_tokens": 5}}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["meta_info"]["completion_tokens"], 5);
    assert_eq!(v["output_ids"].as_array().unwrap().len(), 5);
    let (st, _) = call(&router, "GET", "/health", "").await;
    assert_eq!(st, StatusCode::OK);
    // Over the body limit: a JSON 413 that names the flag, not axum's plain text.
    let small = strata_server::api::app_with_limit(launch_cpu(&opts(dir.path())).unwrap(), 1000);
    let body = serde_json::json!({"text": "x".repeat(5000)}).to_string();
    let (st, v) = call(&small, "POST", "/generate", &body).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["code"], 413, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-payload-size"));
}

#[tokio::test]
async fn bf16_checkpoint_loads_and_tracks_f32_greedy_start() {
    let f32_dir = tempfile::tempdir().unwrap();
    let bf16_dir = tempfile::tempdir().unwrap();
    for (d, dtype) in [(&f32_dir, DType::F32), (&bf16_dir, DType::BF16)] {
        make_model(
            &MakeModel {
                arch: Arch::Llama,
                size: Size::Tiny,
                seed: 5,
                dtype,
            },
            d.path(),
        )
        .unwrap();
    }
    let bytes = |d: &tempfile::TempDir| {
        std::fs::metadata(d.path().join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(
        bytes(&bf16_dir) * 2 <= bytes(&f32_dir) + 4096,
        "bf16 file is not half the size"
    );
    let body = r#"{"text": "Let me tell you a long story ", "sampling_params": {"temperature": 0, "max_new_tokens": 2}}"#;
    let a = app(launch_cpu(&opts(f32_dir.path())).unwrap());
    let b = app(launch_cpu(&opts(bf16_dir.path())).unwrap());
    let (sa, va) = call(&a, "POST", "/generate", body).await;
    let (sb, vb) = call(&b, "POST", "/generate", body).await;
    assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK));
    // Rounding the weights to bf16 must not change the first greedy token of this prompt.
    assert_eq!(va["output_ids"][0], vb["output_ids"][0], "{va} vs {vb}");
}
