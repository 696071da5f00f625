//! LoRA adapters on a real `strata serve` (CPU): a request naming an adapter answers as a server
//! on the checkpoint with that adapter merged into its weights does (greedy ids equal, logprobs
//! within f32 rounding), on `/generate` (one name, or a list with nulls in a batch), on the
//! OpenAI routes (`lora_path`, `model: "base:adapter"`); a prefix cached by base-model requests
//! is not used for an adapter's request (nor the other way round), while an adapter's own
//! requests reuse its cached prefixes, in the device tier and through a shared L3 directory
//! across servers (the same adapter under another name included); `/load_lora_adapter` and
//! `/unload_lora_adapter` change what `/v1/models` lists and what requests may name; unknown
//! adapters, a server without `--enable-lora` and bad adapter directories are clear errors.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{bin, MadeModel, Server};
use std::path::Path;
use std::process::Command;

fn make(args: &[&str], out: &Path) {
    let st = Command::new(bin())
        .args(["make-model", "--out"])
        .arg(out)
        .args(args)
        .status()
        .expect("run make-model");
    assert!(st.success(), "make-model {args:?} failed");
}

const PROMPTS: [&str; 3] = [
    "Once upon a time",
    "The weather today is",
    "In the beginning there was",
];

async fn gen(s: &Server, text: &str, lora: Option<&str>) -> Value {
    let mut body = json!({"text": text, "return_logprob": true,
        "sampling_params": {"temperature": 0, "max_new_tokens": 12, "ignore_eos": true}});
    if let Some(l) = lora {
        body["lora_path"] = json!(l);
    }
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    v
}

fn ids(v: &Value) -> Vec<u64> {
    v["output_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn logprobs(v: &Value) -> Vec<f64> {
    v["meta_info"]["output_token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adapters_answer_as_their_merged_checkpoints() {
    let m = MadeModel::new("llama", "tiny");
    let dir = tempfile::tempdir().unwrap();
    let model = m.path().to_str().unwrap().to_string();
    let (a1, a2, merged) = (
        dir.path().join("a1"),
        dir.path().join("a2"),
        dir.path().join("m1"),
    );
    make(
        &["--lora-for", &model, "--lora-rank", "4", "--seed", "1"],
        &a1,
    );
    make(
        &["--lora-for", &model, "--lora-rank", "8", "--seed", "2"],
        &a2,
    );
    make(
        &["--lora-for", &model, "--merge-lora", a1.to_str().unwrap()],
        &merged,
    );
    let lora_arg = format!("a1={}", a1.display());
    let s = Server::start(m.path(), &["--enable-lora", "--lora-paths", &lora_arg]);
    let want = Server::start(&merged, &[]);

    // Base-model requests first: their prefixes are cached, and must not serve the adapter.
    let mut base = Vec::new();
    for p in PROMPTS {
        base.push(gen(&s, p, None).await);
    }
    for (p, b) in PROMPTS.iter().zip(&base) {
        let got = gen(&s, p, Some("a1")).await;
        let w = gen(&want, p, None).await;
        assert_eq!(ids(&got), ids(&w), "{p}: adapter vs merged checkpoint");
        for (x, y) in logprobs(&got).iter().zip(logprobs(&w)) {
            assert!((x - y).abs() < 1e-3, "{p}: logprob {x} vs {y}");
        }
        // Not the base model's cached prompt: at most the first token, which the adapter's
        // earlier prompts share.
        let cached = |v: &Value| v["meta_info"]["cached_tokens"].as_u64().unwrap();
        assert!(cached(&got) <= 1, "{got}");
        assert_ne!(ids(&got), ids(b), "{p}: the adapter changed nothing");
        // The adapter's own prefix cache: the same prompt again reuses its pages.
        let again = gen(&s, p, Some("a1")).await;
        let prompt_tokens = got["meta_info"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(
            cached(&again),
            prompt_tokens - 1,
            "{p}: the adapter's prefix was not reused: {again}"
        );
        assert_eq!(ids(&again), ids(&w), "{p}: adapter from its cache");
        for (x, y) in logprobs(&again).iter().zip(logprobs(&w)) {
            assert!((x - y).abs() < 1e-3, "{p}: cached logprob {x} vs {y}");
        }
        // The base model again: its own cache, unchanged answers.
        assert_eq!(
            ids(&gen(&s, p, None).await),
            ids(b),
            "{p}: base after the adapter"
        );
    }
    // The adapter named by its path, too.
    let by_path = gen(&s, PROMPTS[0], Some(a1.to_str().unwrap())).await;
    assert_eq!(ids(&by_path), ids(&gen(&want, PROMPTS[0], None).await));

    // A batch mixing the adapter and the base model.
    let body = json!({"text": PROMPTS, "lora_path": ["a1", null, "a1"],
        "sampling_params": {"temperature": 0, "max_new_tokens": 12, "ignore_eos": true}});
    let (st, v) = s.post("/generate", &body).await;
    assert_eq!(st, 200, "{v}");
    let outs = v.as_array().unwrap();
    assert_eq!(ids(&outs[0]), ids(&gen(&want, PROMPTS[0], None).await));
    assert_eq!(ids(&outs[1]), ids(&base[1]));
    assert_eq!(ids(&outs[2]), ids(&gen(&want, PROMPTS[2], None).await));
    let (st, v) = s
        .post("/generate", &json!({"text": PROMPTS, "lora_path": ["a1"]}))
        .await;
    assert_eq!(st, 400, "{v}");

    // OpenAI routes: `lora_path`, and the `base:adapter` model name.
    let chat = |model: &str, lora: Option<&str>| {
        let mut b = json!({"model": model, "messages": [{"role": "user", "content": "Tell me a story"}],
            "temperature": 0, "max_tokens": 10});
        if let Some(l) = lora {
            b["lora_path"] = json!(l);
        }
        b
    };
    let text = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (_, w) = want.post("/v1/chat/completions", &chat("x", None)).await;
    for body in [chat("x", Some("a1")), chat("base:a1", None)] {
        let (st, v) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(text(&v), text(&w), "{body}");
    }
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"model": "base:a1", "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0}),
        )
        .await;
    let (_, w) = want
        .post(
            "/v1/completions",
            &json!({"prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], w["choices"][0]["text"]);

    // Loading and unloading.
    let listed = |v: String| -> Vec<String> {
        let v: Value = serde_json::from_str(&v).unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, models) = s.get("/v1/models").await;
    assert_eq!(listed(models)[1..], ["a1".to_string()]);
    let (st, v) = s
        .post(
            "/load_lora_adapter",
            &json!({"lora_name": "a2", "lora_path": a2}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["loaded_adapters"]["a2"], a2.to_str().unwrap());
    let (_, models) = s.get("/v1/models").await;
    assert_eq!(listed(models)[1..], ["a1".to_string(), "a2".to_string()]);
    let two = gen(&s, PROMPTS[0], Some("a2")).await;
    assert_ne!(ids(&two), ids(&gen(&s, PROMPTS[0], Some("a1")).await));
    let (st, v) = s
        .post(
            "/load_lora_adapter",
            &json!({"lora_name": "a2", "lora_path": a2}),
        )
        .await;
    assert_eq!((st, v["success"].clone()), (400, json!(false)), "{v}");
    let (st, v) = s
        .post("/unload_lora_adapter", &json!({"lora_name": "a2"}))
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s
        .post("/generate", &json!({"text": "hi", "lora_path": "a2"}))
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or(&v.to_string())
            .contains("a2"),
        "{v}"
    );
    let (st, _) = s
        .post("/unload_lora_adapter", &json!({"lora_name": "a2"}))
        .await;
    assert_eq!(st, 400);
    let (st, v) = s
        .post(
            "/load_lora_adapter",
            &json!({"lora_name": "bad", "lora_path": dir.path().join("none")}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error_message"]
            .as_str()
            .unwrap()
            .contains("adapter_config.json"),
        "{v}"
    );
    // The server kept serving through all of it.
    assert_eq!(ids(&gen(&s, PROMPTS[0], None).await), ids(&base[0]));

    // Without --enable-lora, naming an adapter is a 400 (not the base model's answer).
    let (st, v) = want
        .post("/generate", &json!({"text": "hi", "lora_path": "a1"}))
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("--enable-lora"), "{v}");
}

#[test]
fn bad_lora_paths_stop_the_start() {
    let m = MadeModel::new("llama", "tiny");
    let out = Command::new(bin())
        .args(["serve", "--model-path"])
        .arg(m.path())
        .args(["--port", "1", "--lora-paths", "x=/nonexistent/adapter"])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--lora-paths x=/nonexistent/adapter"), "{err}");
    let out = Command::new(bin())
        .args(["serve", "--model-path"])
        .arg(m.path())
        .args(["--port", "1", "--enable-lora", "--max-loras-per-batch", "0"])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-loras-per-batch must be at least 1"),
        "{err}"
    );
}

/// An adapter's pages go to the L3 under its own namespace: a fresh server that loads the same
/// adapter (under another name) reads them and answers as the merged checkpoint; the base
/// model and another adapter find none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adapter_pages_come_back_from_the_l3_only_for_that_adapter() {
    let m = MadeModel::new("llama", "tiny");
    let dir = tempfile::tempdir().unwrap();
    let model = m.path().to_str().unwrap().to_string();
    let (a1, a2, merged, l3) = (
        dir.path().join("a1"),
        dir.path().join("a2"),
        dir.path().join("m1"),
        dir.path().join("l3"),
    );
    make(&["--lora-for", &model, "--seed", "1"], &a1);
    make(&["--lora-for", &model, "--seed", "2"], &a2);
    make(
        &["--lora-for", &model, "--merge-lora", a1.to_str().unwrap()],
        &merged,
    );
    let want = Server::start(&merged, &[]);
    let prompt = "The history of the river valley begins with the first settlers who came \
        from the mountains in the north, bringing seeds, tools and stories of older lands.";
    let w = gen(&want, prompt, None).await;

    let lora = |name: &str, path: &Path| format!("{name}={}", path.display());
    let (x1, x2) = (lora("first", &a1), lora("second", &a2));
    let flags = ["--lora-paths", x1.as_str(), "--lora-paths", x2.as_str()];
    let extra = r#"{"prefetch_threshold": 16}"#;
    let a = Server::file_l3_with(m.path(), &l3, extra, &flags);
    let got = gen(&a, prompt, Some("first")).await;
    assert_eq!(ids(&got), ids(&w));
    let prompt_tokens = got["meta_info"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens >= 33, "prompt too short: {prompt_tokens}");
    a.wait_metric("backuped_tokens_total", 32.0).await;
    a.wait_idle().await;
    drop(a);

    // Another server, the same adapter under another name: an L3 hit, the merged answer.
    let renamed = lora("again", &a1);
    let flags = [
        "--lora-paths",
        renamed.as_str(),
        "--lora-paths",
        x2.as_str(),
    ];
    let b = Server::file_l3_with(m.path(), &l3, extra, &flags);
    let got = gen(&b, prompt, Some("again")).await;
    assert!(
        got["meta_info"]["cached_tokens"].as_u64().unwrap() >= 32,
        "the adapter's pages did not come back from the L3: {got}"
    );
    assert_eq!(ids(&got), ids(&w), "adapter answer from L3 pages");
    for (x, y) in logprobs(&got).iter().zip(logprobs(&w)) {
        assert!((x - y).abs() < 1e-3, "logprob from L3 pages {x} vs {y}");
    }
    // Neither the base model nor another adapter reads them.
    for lora in [None, Some("second")] {
        let v = gen(&b, prompt, lora).await;
        assert_eq!(v["meta_info"]["cached_tokens"], 0, "{lora:?}: {v}");
    }
}
