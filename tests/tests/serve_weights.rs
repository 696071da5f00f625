//! SGLang's weight routes on a real `strata serve` (CPU): `/update_weights_from_disk` swaps in
//! another checkpoint of the same shapes (greedy answers then equal a server started on it; a
//! request running during the update finishes on the old weights; the prefix cache is dropped),
//! a checkpoint of other shapes or none at all is a 400 with the weights unchanged, and the
//! weight version travels through `/update_weight_version`, `/get_weight_version`,
//! `/get_model_info` and every answer's `meta_info`. `/get_weights_by_name` reads the served
//! checkpoint's tensors.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};

const PROMPTS: [&str; 3] = ["Once upon a time", "The weather today", "In the beginning"];

async fn answers(s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    for p in PROMPTS {
        out.push(s.greedy(p, 8).await["output_ids"].clone());
    }
    out
}

async fn long(s: &Server) -> Value {
    let body = json!({"text": "A long story", "sampling_params": {"temperature": 0,
        "max_new_tokens": 150, "ignore_eos": true}});
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn weights(s: &Server, name: &str) -> (u16, Value) {
    s.post(
        "/get_weights_by_name",
        &json!({"name": name, "truncate_size": 2}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_update_from_disk_and_versions_travel() {
    let a = MadeModel::with_seed("llama", "tiny", 0);
    let b = MadeModel::with_seed("llama", "tiny", 1);
    let other = MadeModel::with_seed("llama", "small", 0);
    let q = "model.layers.0.self_attn.q_proj.weight";
    let (want_b, long_b, q_b) = {
        let r = Server::start(b.path(), &[]);
        (answers(&r).await, long(&r).await, weights(&r, q).await.1)
    };
    let s = Server::start(a.path(), &["--weight-version", "v0"]);
    let want_a = answers(&s).await;
    assert_ne!(want_a, want_b, "the two checkpoints answer differently");
    let long_a = long(&s).await;
    assert_eq!(long_a["meta_info"]["weight_version"], "v0");
    let (st, q_a) = weights(&s, q).await;
    assert_eq!(st, 200, "{q_a}");
    assert_eq!(q_a.as_array().unwrap().len(), 2, "truncated to two rows");
    assert_ne!(q_a, q_b);

    // An update while a long request runs: that request finishes on the old weights.
    let path_b = b.path().to_str().unwrap();
    let update = json!({"model_path": path_b, "weight_version": "v1"});
    let (running, (st, v)) = tokio::join!(long(&s), async {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        s.post("/update_weights_from_disk", &update).await
    });
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["num_paused_requests"], 0);
    assert_eq!(
        running["output_ids"], long_a["output_ids"],
        "ran on the old weights"
    );
    assert_eq!(running["meta_info"]["weight_version"], "v0");

    // Now the answers are the new checkpoint's, from a flushed cache, under the new version.
    let again = long(&s).await;
    assert_eq!(again["output_ids"], long_b["output_ids"]);
    assert_eq!(
        again["meta_info"]["cached_tokens"], 0,
        "the cache was flushed"
    );
    assert_eq!(again["meta_info"]["weight_version"], "v1");
    assert_eq!(answers(&s).await, want_b);
    assert_eq!(weights(&s, q).await.1, q_b);
    let (_, info) = s.get("/get_model_info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        (info["model_path"].as_str(), info["weight_version"].as_str()),
        (Some(path_b), Some("v1"))
    );

    // Other shapes, or no checkpoint: a 400 and the weights stay.
    for path in [other.path().to_str().unwrap(), "/nonexistent/checkpoint"] {
        let (st, v) = s
            .post("/update_weights_from_disk", &json!({"model_path": path}))
            .await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["success"], false);
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("Failed to update weights"),
            "{v}"
        );
    }
    assert_eq!(answers(&s).await, want_b);
    let (st, v) = s.post("/update_weights_from_disk", &json!({})).await;
    assert_eq!(st, 400, "model_path is required: {v}");

    // The version alone.
    let (st, v) = s
        .post("/update_weight_version", &json!({"new_version": "v2"}))
        .await;
    assert_eq!((st, &v["new_version"]), (200, &json!("v2")), "{v}");
    let (_, v) = s.get("/get_weight_version").await;
    assert_eq!(
        serde_json::from_str::<Value>(&v).unwrap()["weight_version"],
        "v2"
    );
    assert_eq!(s.greedy("x", 1).await["meta_info"]["weight_version"], "v2");
    let (st, v) = weights(&s, "model.no_such_tensor").await;
    assert_eq!(st, 400, "{v}");
    // Back to the first checkpoint: its answers again.
    let (st, v) = s
        .post(
            "/update_weights_from_disk",
            &json!({"model_path": a.path().to_str().unwrap(), "abort_all_requests": true}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(answers(&s).await, want_a);
}

/// With HiCache over a file L3, pages written under the old weights are never read back after
/// an update: the answer is the new checkpoint's, computed, not an L3 hit of the old pages; and
/// the new weights' pages land under new keys that a second update to the same checkpoint hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_moves_the_l3_keys_to_the_new_weights() {
    let a = MadeModel::with_seed("llama", "tiny", 0);
    let b = MadeModel::with_seed("llama", "tiny", 1);
    let l3 = tempfile::tempdir().unwrap();
    let start = || Server::file_l3(a.path(), l3.path(), r#"{"prefetch_threshold": 16}"#);
    let want_b = ids_gen(&Server::start(b.path(), &[])).await["output_ids"].clone();
    let objects = || std::fs::read_dir(l3.path()).unwrap().count();
    let s = start();
    ids_gen(&s).await;
    // 6 full pages (96 tokens) backed up, as K and V objects.
    assert!(s.wait_metric("backuped_tokens_total", 96.0).await >= 96.0);
    let old = objects();
    assert_eq!(old, 12, "the old weights' pages are in the L3");
    let update = json!({"model_path": b.path().to_str().unwrap(), "weight_version": "b1"});
    let (st, v) = s.post("/update_weights_from_disk", &update).await;
    assert_eq!(st, 200, "{v}");
    let after = ids_gen(&s).await;
    assert_eq!(after["output_ids"], want_b, "computed on the new weights");
    assert_eq!(
        after["meta_info"]["cached_tokens"], 0,
        "no page of the old weights came back"
    );
    assert!(s.wait_metric("backuped_tokens_total", 192.0).await >= 192.0);
    assert_eq!(objects(), 2 * old, "the new pages went to new keys");
    // Another server updated to the same checkpoint and version hits them.
    drop(s);
    let s2 = start();
    let (st, v) = s2.post("/update_weights_from_disk", &update).await;
    assert_eq!(st, 200, "{v}");
    let again = ids_gen(&s2).await;
    assert_eq!(again["output_ids"], want_b);
    assert!(
        again["meta_info"]["cached_tokens"].as_u64().unwrap() >= 64,
        "an L3 hit of the new keys: {again}"
    );
}

/// A greedy answer of 6 tokens to a fixed 100-token prompt.
async fn ids_gen(s: &Server) -> Value {
    let ids: Vec<u32> = (0..100).map(|i| 3 + (i * 7) % 400).collect();
    let body = json!({"input_ids": ids, "sampling_params": {"temperature": 0,
        "max_new_tokens": 6, "ignore_eos": true}});
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    v
}
