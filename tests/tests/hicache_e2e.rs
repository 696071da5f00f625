//! End-to-end tests of the hierarchical cache with real processes: `strata serve` with HiCache
//! against a reference server that recomputes everything, and against a real master + store as L3.
//!
//! Every answer is greedy and compared token for token with the reference; the tier that served a
//! prefix is read from `meta_info.cached_tokens` and the `/metrics` HiCache series. Prompts are
//! random token ids from a seeded generator (the seed is printed).

mod cluster_util;
mod serve_common;

use cluster_util::{free_port, master, seed, store};
use rand::{Rng, SeedableRng};
use serde_json::json;
use serve_common::{MadeModel, Server};
use std::time::{Duration, Instant};

fn prompt(rng: &mut rand::rngs::StdRng, shared: &[u32], extra: usize) -> Vec<u32> {
    let mut p = shared.to_vec();
    p.extend((0..extra).map(|_| rng.random_range(3..500u32)));
    p
}

async fn gen(s: &Server, ids: &[u32], n: usize) -> (Vec<u64>, u64) {
    let (st, v) = s
        .post(
            "/generate",
            &json!({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": true}}),
        )
        .await;
    assert_eq!(st, 200, "generate failed: {v}");
    let out = v["output_ids"]
        .as_array()
        .expect("output_ids")
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    (out, v["meta_info"]["cached_tokens"].as_u64().unwrap_or(0))
}

/// What each L3 test starts from: a scratch directory, a free port for the master and its
/// address, a made model, `n` seeded random prompts of `len` tokens, the reference server's
/// 6-token greedy answers to them, and that server.
async fn setup(n: usize, len: usize) -> Setup {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let port = free_port();
    let model = MadeModel::new("llama", "tiny");
    let refs = reference(&model);
    let prompts: Vec<Vec<u32>> = (0..n).map(|_| prompt(&mut rng, &[], len)).collect();
    let mut want = Vec::new();
    for p in &prompts {
        want.push(gen(&refs, p, 6).await.0);
    }
    let dir = tempfile::tempdir().unwrap();
    (
        dir,
        port,
        format!("127.0.0.1:{port}"),
        model,
        prompts,
        want,
        refs,
    )
}

type Setup = (
    tempfile::TempDir,
    u16,
    String,
    MadeModel,
    Vec<Vec<u32>>,
    Vec<Vec<u64>>,
    Server,
);

fn reference(model: &MadeModel) -> Server {
    Server::start(
        model.path(),
        &["--page-size", "16", "--disable-radix-cache"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_tier_hits_give_identical_greedy_output() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let refs = reference(&model);
    // A device pool of 24 pages forces eviction to the host between turns.
    let hc = Server::start(
        model.path(),
        &[
            "--page-size",
            "16",
            "--max-total-tokens",
            "384",
            "--enable-hierarchical-cache",
            "--hicache-ratio",
            "8",
        ],
    );
    let shared: Vec<u32> = prompt(&mut rng, &[], 96);
    let a = prompt(&mut rng, &shared, 100);
    let b = prompt(&mut rng, &[], 200);
    let (ra, _) = gen(&refs, &a, 8).await;
    let (rb, _) = gen(&refs, &b, 8).await;
    // First turn of `a`: computed, cached on the device and written through to the host.
    assert_eq!(gen(&hc, &a, 8).await.0, ra);
    // L1 hit.
    let (out, cached) = gen(&hc, &a, 8).await;
    assert_eq!(out, ra);
    assert!(cached >= 192, "L1 hit expected, cached {cached}");
    // `b` needs most of the device pool: `a` is evicted to the host...
    assert_eq!(gen(&hc, &b, 8).await.0, rb);
    // ...and comes back from it (L2 hit).
    let before = hc.metric("load_back_tokens_total").await;
    let (out, cached) = gen(&hc, &a, 8).await;
    assert_eq!(out, ra, "L2 load-back changed the output");
    assert!(cached >= 96, "L2 hit expected, cached {cached}");
    assert!(hc.metric("load_back_tokens_total").await > before);
    // 16 concurrent requests sharing a prefix, with eviction going on.
    let prompts: Vec<Vec<u32>> = (0..16)
        .map(|i| prompt(&mut rng, &shared[..if i % 2 == 0 { 96 } else { 48 }], 40))
        .collect();
    let mut want = Vec::new();
    for p in &prompts {
        want.push(gen(&refs, p, 6).await.0);
    }
    let got = futures::future::join_all(prompts.iter().map(|p| gen(&hc, p, 6))).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(&g.0, w, "concurrent request {i}");
    }
    assert!(hc.metric("evicted_tokens_total").await > 0.0);
    hc.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_tier_hits_survive_chunked_prefill_contention() {
    // Follow-up turns of four conversations arrive together at a device pool that holds two of
    // them, with prefills chunked: a turn whose history is in the host pool but finds the device
    // pool held by the others' chunks waits for room instead of recomputing its history (it
    // used to be admitted with the device part only: the 8B multiturn run on the H200 got 0 %
    // hits in its last round).
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let model = MadeModel::new("llama", "tiny");
    let refs = reference(&model);
    let hc = Server::start(
        model.path(),
        &[
            "--page-size",
            "16",
            "--max-total-tokens",
            "384",
            "--chunked-prefill-size",
            "32",
            "--enable-hierarchical-cache",
            "--hicache-ratio",
            "8",
        ],
    );
    let history: Vec<Vec<u32>> = (0..4).map(|_| prompt(&mut rng, &[], 150)).collect();
    for h in &history {
        gen(&hc, h, 1).await;
    }
    let turns: Vec<Vec<u32>> = history.iter().map(|h| prompt(&mut rng, h, 20)).collect();
    let mut want = Vec::new();
    for t in &turns {
        want.push(gen(&refs, t, 6).await.0);
    }
    let got = futures::future::join_all(turns.iter().map(|t| gen(&hc, t, 6))).await;
    for (i, ((out, cached), w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(out, w, "turn {i}");
        assert!(*cached >= 144, "turn {i}: its history (144 tokens in full pages) should come from L1/L2, cached {cached}");
    }
    assert!(hc.metric("load_back_tokens_total").await > 0.0);
    hc.wait_idle().await;
}

/// A HiCache server on the cluster at `master` with `policy`.
fn l3_server(model: &MadeModel, master: &str, policy: &str) -> Server {
    let extra = json!({"master_server_address": master, "prefetch_threshold": 32}).to_string();
    l3_server_with(model, policy, &extra)
}

/// [`l3_server`] with its whole `--hicache-storage-backend-extra-config`.
fn l3_server_with(model: &MadeModel, policy: &str, extra: &str) -> Server {
    Server::start(
        model.path(),
        &[
            "--page-size",
            "16",
            "--enable-hierarchical-cache",
            "--hicache-storage-backend",
            "mooncake",
            "--hicache-storage-prefetch-policy",
            policy,
            "--hicache-storage-backend-extra-config",
            extra,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l3_hits_across_instances_restarts_and_policies() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _m = master(dir.path(), port, &[]);
    let addr = format!("127.0.0.1:{port}");
    let _st = store(&addr, &dir.path().join("dev.strata"), &[]);
    let model = MadeModel::new("llama", "tiny");
    let refs = reference(&model);
    let p = prompt(&mut rng, &[], 300);
    let (want, _) = gen(&refs, &p, 8).await;

    let a = l3_server(&model, &addr, "wait_complete");
    let (out, cached) = gen(&a, &p, 8).await;
    assert_eq!((out, cached), (want.clone(), 0));
    // 300 prompt + 7 computed output tokens = 19 full pages written to the store.
    let backed = a.wait_metric("backuped_tokens_total", 19.0 * 16.0).await;
    assert!(backed >= 19.0 * 16.0, "backuped {backed}");

    // A second, fresh server sharing the master finds the prompt in L3.
    for policy in ["wait_complete", "timeout"] {
        let b = l3_server(&model, &addr, policy);
        let (out, cached) = gen(&b, &p, 8).await;
        assert_eq!(out, want, "{policy}: L3 hit changed the output");
        assert!(cached >= 288, "{policy}: L3 hit expected, cached {cached}");
        assert!(b.metric("prefetched_tokens_total").await >= 288.0);
    }
    // best_effort releases the request as soon as it could run: the output is the same whatever
    // arrived by then.
    let b = l3_server(&model, &addr, "best_effort");
    assert_eq!(gen(&b, &p, 8).await.0, want);
    drop(b);

    // The same server restarted (its L1/L2 are gone) reuses the store.
    drop(a);
    let a = l3_server(&model, &addr, "timeout");
    let (out, cached) = gen(&a, &p, 8).await;
    assert_eq!(out, want);
    assert!(cached >= 288, "after restart: cached {cached}");
    // A continuation of the first answer hits L3 for prompt + answer (multi-turn).
    let mut turn2 = p.clone();
    turn2.extend(want.iter().map(|&t| t as u32));
    turn2.extend((0..40).map(|_| rng.random_range(3..500u32)));
    let (want2, _) = gen(&refs, &turn2, 6).await;
    let c = l3_server(&model, &addr, "wait_complete");
    let (out, cached) = gen(&c, &turn2, 6).await;
    assert_eq!(out, want2);
    assert!(cached >= 304, "turn 2: cached {cached}");

    // Concurrent L3 hits into a device pool too small for all of them at once, each request's
    // own earlier turn still on the device: finished prefetches must not pin device pages while
    // their requests wait for admission (this used to deadlock).
    let firsts: Vec<Vec<u32>> = (0..3).map(|_| prompt(&mut rng, &[], 128)).collect();
    let seconds: Vec<Vec<u32>> = firsts.iter().map(|f| prompt(&mut rng, f, 200)).collect();
    let mut want_s = Vec::new();
    for q in &seconds {
        want_s.push(gen(&refs, q, 4).await.0);
        gen(&c, q, 4).await; // into L3
    }
    c.wait_metric("backuped_tokens_total", 3.0 * 320.0).await;
    let small = Server::start(
        model.path(),
        &[
            "--page-size",
            "16",
            "--max-total-tokens",
            "512",
            "--enable-hierarchical-cache",
            "--hicache-storage-backend",
            "strata",
            "--hicache-storage-prefetch-policy",
            "wait_complete",
            "--hicache-storage-backend-extra-config",
            &json!({"master_server_address": addr, "prefetch_threshold": 32}).to_string(),
        ],
    );
    for f in &firsts {
        gen(&small, f, 1).await; // 8 pages each stay on the device
    }
    let all = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(seconds.iter().map(|q| gen(&small, q, 4))),
    )
    .await
    .expect("concurrent L3 hits into a small device pool hung");
    for (g, w) in all.iter().zip(&want_s) {
        assert_eq!(&g.0, w);
    }
    assert!(small.metric("prefetched_tokens_total").await > 0.0);
    // /clear_hicache_storage_backend empties L3: a fresh server recomputes.
    let (s, body) = c.get("/clear_hicache_storage_backend").await;
    assert_eq!(s, 200, "{body}");
    let d = l3_server(&model, &addr, "wait_complete");
    let (out, cached) = gen(&d, &p, 8).await;
    assert_eq!((out, cached), (want, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l3_faults_never_change_answers() {
    let (dir, port, addr, model, prompts, want, _refs) = setup(3, 200).await;
    // The L3 is down at start: the server serves without it...
    let s = l3_server(&model, &addr, "timeout");
    assert_eq!(gen(&s, &prompts[0], 6).await.0, want[0]);
    // ...and uses it once it comes up.
    let _m = master(dir.path(), port, &[]);
    let mut st = store(&addr, &dir.path().join("dev.strata"), &[]);
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the reconnect interval
    assert_eq!(gen(&s, &prompts[1], 6).await.0, want[1]);
    let backed = s.wait_metric("backuped_tokens_total", 160.0).await;
    assert!(backed >= 160.0, "no backup after the L3 came up: {backed}");
    // A store node killed mid-run: its pages read as misses, answers stay right.
    st.kill9();
    let t = l3_server(&model, &addr, "wait_complete");
    for (p, w) in prompts.iter().zip(&want) {
        assert_eq!(&gen(&t, p, 6).await.0, w);
    }
    assert!(t.metric("prefetched_tokens_total").await == 0.0);
}

/// Bytes flipped in the L3's device file while the store is down: the damaged pages fail their
/// checksum and count as misses (the store drops them at recovery or at read), the pages before
/// them are still used, and the answer stays the reference's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l3_pages_failing_their_checksum_are_misses() {
    let (dir, port, addr, model, prompts, want, _refs) = setup(1, 120).await;
    let dev = dir.path().join("dev.strata");
    // 7 whole pages of 16 leave a token to compute.
    let (p, want) = (prompts[0].clone(), want[0].clone());
    let _m = master(dir.path(), port, &[]);
    let mut st = store(&addr, &dev, &[]);
    let a = l3_server(&model, &addr, "wait_complete");
    assert_eq!(gen(&a, &p, 6).await.0, want);
    let backed = a.wait_metric("backuped_tokens_total", 112.0).await;
    assert!(backed >= 112.0, "server A backed up {backed} tokens");
    drop(a);
    // Puts are acknowledged after their O_DIRECT write: the records are on the device now.
    st.kill9();
    // Flip one value byte of every page record at chain depth >= 2 (docs/format.md: a record
    // header starts "STRATARC" on a 4 KiB boundary, depth hint at byte 15, value after 4 KiB).
    let mut bytes = std::fs::read(&dev).unwrap();
    let mut flipped = 0;
    for off in (0..bytes.len().saturating_sub(8192)).step_by(4096) {
        if &bytes[off..off + 8] == b"STRATARC" && bytes[off + 14] == 1 && bytes[off + 15] >= 2 {
            bytes[off + 4096 + 100] ^= 0x5A;
            flipped += 1;
        }
    }
    assert!(flipped >= 10, "found {flipped} deep page records to damage");
    std::fs::write(&dev, &bytes).unwrap();
    let _st = store(&addr, &dev, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await; // the node rejoins the master
    let b = l3_server(&model, &addr, "wait_complete");
    let (out, cached) = gen(&b, &p, 6).await;
    assert_eq!(out, want, "a damaged L3 page changed the answer");
    assert_eq!(
        cached, 32,
        "pages 0 and 1 are intact, page 2 on are damaged"
    );
}

fn signal(p: &cluster_util::Proc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// The store node dies while a prefetch waits on it (stopped first, so the kill lands mid-query):
/// the request goes on without the L3 long before its prefetch deadline, with the reference's
/// answer; a node that stops answering holds a request no longer than the timeout policy allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l3_node_killed_mid_prefetch_releases_the_request() {
    let (dir, port, addr, model, prompts, want, _refs) = setup(2, 120).await;
    let _m = master(dir.path(), port, &[]);
    let st = store(&addr, &dir.path().join("dev.strata"), &[]);
    let a = l3_server(&model, &addr, "wait_complete");
    for p in &prompts {
        gen(&a, p, 6).await;
    }
    let backed = a.wait_metric("backuped_tokens_total", 224.0).await;
    assert!(backed >= 224.0, "server A backed up {backed} tokens");
    // A node that stops answering: the timeout policy releases the request at its deadline.
    let short = json!({"master_server_address": addr, "prefetch_threshold": 32,
        "prefetch_timeout_base": 0.5, "prefetch_timeout_per_ki_token": 0})
    .to_string();
    let b = l3_server_with(&model, "timeout", &short);
    signal(&st, "-STOP");
    let t = Instant::now();
    let (out, cached) = gen(&b, &prompts[0], 6).await;
    assert_eq!((out, cached), (want[0].clone(), 0));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "held {:?}",
        t.elapsed()
    );
    // The node killed while a wait_complete prefetch is in flight on it.
    let c = l3_server_with(
        &model,
        "wait_complete",
        &json!({"master_server_address": addr, "prefetch_threshold": 32}).to_string(),
    );
    let t = Instant::now();
    let pending = tokio::spawn({
        let (base, p) = (c.base.clone(), prompts[1].clone());
        async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/generate"))
                .json(&json!({"input_ids": p, "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": true}}))
                .send()
                .await
                .expect("send");
            r.json::<serde_json::Value>().await.expect("json")
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut st = st;
    st.kill9();
    let v = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("the request stayed held after the node died")
        .unwrap();
    let out: Vec<u64> = v["output_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(out, want[1], "answer after the node died mid-prefetch");
    // Held until the kill (wait_complete has no deadline), released right after it.
    let held = t.elapsed();
    println!("released {held:?} after the request");
    assert!(
        held >= Duration::from_millis(450),
        "not held by the prefetch: {held:?}"
    );
    c.wait_idle().await;
    b.wait_idle().await;
}

// ---- The file backend (`--hicache-storage-backend file`, SGLang's HiCacheFile) ----

/// A HiCache server whose L3 is the directory `dir` (given as SGLang does, by environment).
fn file_server(model: &MadeModel, dir: &std::path::Path) -> Server {
    file_server_with(model, dir, r#"{"prefetch_threshold": 32}"#)
}

fn file_server_with(model: &MadeModel, dir: &std::path::Path, extra: &str) -> Server {
    Server::file_l3(model.path(), dir, extra)
}

/// The object files (`*.skv`) in `dir`.
fn objects(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".skv"))
        .collect()
}

/// Polls `cond` every 50 ms for up to 20 s (L3 writes finish after the answer); returns it.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > Duration::from_secs(20) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Bytes of the object files in `dir`.
fn object_bytes(dir: &std::path::Path) -> u64 {
    objects(dir)
        .iter()
        .map(|n| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len()))
        .sum()
}

/// SGLang's `max_size` bound (extra config): the directory never holds more than the cap, the
/// least recently used pages go first, answers never change, and a restarted server under the
/// same bound still hits the pages that were kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_l3_size_bound_evicts_the_oldest_pages() {
    let (tmp, _port, _addr, model, prompts, want, _refs) = setup(4, 120).await;
    // One object's file size, from an unbounded server's first page.
    let probe = tmp.path().join("probe");
    let a = file_server(&model, &probe);
    gen(&a, &prompts[0], 6).await;
    assert!(eventually(|| objects(&probe).len() == 14).await);
    let one = object_bytes(&probe) / 14;
    drop(a);
    // A cap of 20 objects (a prompt is 14): writing all four prompts evicts the older ones.
    let cap = 20 * one;
    let dir = tmp.path().join("l3");
    let extra =
        format!(r#"{{"prefetch_threshold": 32, "max_size": "{cap}", "eviction_ratio": 0.8}}"#);
    let b = file_server_with(&model, &dir, &extra);
    for (p, w) in prompts.iter().zip(&want) {
        let (out, _) = gen(&b, p, 6).await;
        assert_eq!(&out, w);
        b.wait_idle().await;
        let bytes = object_bytes(&dir);
        assert!(bytes <= cap, "{bytes} B on disk over the cap of {cap} B");
    }
    // Every prompt's 7 pages backed up (the last ones may still be in flight after the answer).
    let backed = b.wait_metric("backuped_tokens_total", 4.0 * 112.0).await;
    assert!(backed >= 448.0, "backuped {backed}");
    assert!(object_bytes(&dir) <= cap);
    drop(b);
    // A new server under the same bound: the newest prompt's pages are an L3 hit, the oldest
    // prompt's are gone (recomputed); both answers unchanged.
    let c = file_server_with(&model, &dir, &extra);
    let (out, cached) = gen(&c, &prompts[3], 6).await;
    assert_eq!(out, want[3]);
    assert!(cached >= 64, "the newest pages were kept: cached {cached}");
    let (out, cached) = gen(&c, &prompts[0], 6).await;
    assert_eq!(out, want[0]);
    assert_eq!(cached, 0, "the oldest pages were evicted");
    c.wait_idle().await;
    assert!(object_bytes(&dir) <= cap);
}

/// Cross-instance reuse through a shared directory, two servers writing the same keys at once,
/// damaged object files (misses, removed when read, rewritten by the next backup), and clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_l3_hits_across_instances_and_damaged_files_are_misses() {
    let (tmp, _port, _addr, model, prompts, want, _refs) = setup(2, 120).await;
    let dir = tmp.path().join("l3");
    let (p, q) = (prompts[0].clone(), prompts[1].clone());

    let a = file_server(&model, &dir);
    // Growing prefixes of `p` tell which files hold which page (the page chain depends on nothing
    // after a page): a prefix of 16k + 1 tokens plus 5 computed answer tokens ends with k full
    // pages.
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for k in [2usize, 3, 4, 5] {
        gen(&a, &p[..16 * k + 1], 6).await;
        a.wait_metric("backuped_tokens_total", 16.0 * k as f64)
            .await;
        let now = objects(&dir);
        pages.push(now.difference(&seen).cloned().collect());
        seen = now;
    }
    assert_eq!(
        pages[0].len(),
        4,
        "pages 0 and 1 as K and V objects: {:?}",
        pages[0]
    );
    assert!(pages[1..].iter().all(|f| f.len() == 2), "{pages:?}");
    let (out, cached) = gen(&a, &p, 6).await;
    assert_eq!(out, want[0]);
    assert!(cached >= 80, "L1 hit on the prefixes, cached {cached}");
    // 120 prompt + 5 computed output tokens = 7 full pages.
    let backed = a.wait_metric("backuped_tokens_total", 112.0).await;
    assert!(backed >= 112.0, "backuped {backed}");
    assert_eq!(objects(&dir).len(), 14);

    // A second, freshly started server sharing the directory: an L3 hit, the same answer.
    let b = file_server(&model, &dir);
    let (out, cached) = gen(&b, &p, 6).await;
    assert_eq!(
        out, want[0],
        "an L3 hit from the file backend changed the output"
    );
    assert!(
        cached >= 112,
        "cross-instance L3 hit expected, cached {cached}"
    );
    assert!(b.metric("prefetched_tokens_total").await >= 112.0);

    // Both servers compute `q` at once and write the same keys into the directory; a third
    // server reads what they wrote.
    let (ra, rb) = futures::future::join(gen(&a, &q, 6), gen(&b, &q, 6)).await;
    assert_eq!((ra.0, rb.0), (want[1].clone(), want[1].clone()));
    assert!(
        eventually(|| objects(&dir).len() == 28).await,
        "q's 14 objects"
    );
    b.wait_idle().await;
    a.wait_idle().await;
    drop((a, b));
    let c = file_server(&model, &dir);
    let (out, cached) = gen(&c, &q, 6).await;
    assert_eq!(out, want[1], "objects written by two servers at once");
    assert!(cached >= 112, "q: cached {cached}");
    drop(c);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        28,
        "temp files left"
    );

    // Page 2's first object gets a flipped value byte (its size still passes `exists`), page 4's
    // second is torn (cut short).
    let flip = dir.join(&pages[1][0]);
    let mut bytes = std::fs::read(&flip).unwrap();
    let at = bytes.len() - 7;
    bytes[at] ^= 0x5A;
    std::fs::write(&flip, &bytes).unwrap();
    let torn = dir.join(&pages[3][1]);
    let len = std::fs::metadata(&torn).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&torn)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let c = file_server(&model, &dir);
    let (out, cached) = gen(&c, &p, 6).await;
    assert_eq!(out, want[0], "a damaged L3 file changed the answer");
    assert_eq!(cached, 32, "pages 0 and 1 are intact, page 2 is damaged");
    // The damaged files are replaced by the backup of pages 2..7 (the flipped one removed when
    // read, the torn one failing `exists`); the next server hits all of `p`.
    let healed = || {
        std::fs::read(&flip).is_ok_and(|b| b != bytes)
            && std::fs::metadata(&torn).is_ok_and(|m| m.len() == len)
    };
    assert!(eventually(healed).await, "damaged objects not rewritten");
    let d = file_server(&model, &dir);
    let (out, cached) = gen(&d, &p, 6).await;
    assert_eq!(out, want[0]);
    assert!(cached >= 112, "after the rewrite: cached {cached}");

    // Clear removes the objects and nothing else.
    std::fs::write(dir.join("keep.txt"), "not ours").unwrap();
    let (s, body) = d.get("/clear_hicache_storage_backend").await;
    assert_eq!(s, 200, "{body}");
    assert!(objects(&dir).is_empty());
    assert!(dir.join("keep.txt").exists());
    let e = file_server(&model, &dir);
    assert_eq!(gen(&e, &p, 6).await, (want[0].clone(), 0));
}

/// A directory that cannot be created is a clear start-up error (as in SGLang); one that becomes
/// unusable while serving gives one warning, and serving goes on with the reference's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_l3_directory_faults() {
    let (tmp, _port, _addr, model, prompts, want, _refs) = setup(3, 60).await;
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let mut child = std::process::Command::new(serve_common::bin())
        .args(["serve", "--model-path"])
        .arg(model.path())
        .args(["--port", "0", "--enable-hierarchical-cache"])
        .args(["--hicache-storage-backend", "file"])
        .env(
            "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR",
            blocker.join("l3"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "serve did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("cannot create the directory") && err.contains("a-file/l3"),
        "{err}"
    );

    let dir = tmp.path().join("l3");
    let s = file_server(&model, &dir);
    assert_eq!(gen(&s, &prompts[0], 6).await.0, want[0]);
    s.wait_metric("backuped_tokens_total", 64.0).await;
    s.wait_idle().await;
    // The directory is replaced by a file: nothing can be written or read there any more.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "in the way").unwrap();
    for (p, w) in prompts.iter().zip(&want).skip(1) {
        assert_eq!(&gen(&s, p, 6).await.0, w);
    }
    let warning = "cannot write to the L3 directory";
    assert!(eventually(|| s.log_count(warning) > 0).await, "no warning");
    assert_eq!(gen(&s, &prompts[0], 6).await.0, want[0]);
    let (st, _) = s.get("/health").await;
    assert_eq!(st, 200);
    s.wait_idle().await;
    assert_eq!(s.log_count(warning), 1, "one warning for the failed writes");
}

/// `PUT` / `DELETE /hicache/storage-backend`: an L3 attached at runtime to a server started with
/// the host tier only takes its backups and serves hits to a fresh server; detached, nothing more
/// is written; both are refused while a request runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_l3_attaches_and_detaches_at_runtime() {
    let (tmp, _port, _addr, model, prompts, want, _refs) = setup(3, 120).await;
    let dir = tmp.path().join("l3");
    std::fs::create_dir_all(&dir).unwrap();
    let env = [(
        "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR",
        dir.to_str().unwrap(),
    )];
    let s = Server::start_env(
        model.path(),
        &["--page-size", "16", "--enable-hierarchical-cache"],
        &env,
    );
    let (_, v) = s.get("/hicache/storage-backend").await;
    assert!(v.contains("\"hicache_storage_backend\":null"), "{v}");
    // Refused while a request runs.
    let long = json!({"input_ids": prompts[2], "sampling_params": {"temperature": 0,
        "max_new_tokens": 3000, "ignore_eos": true}});
    let attach = json!({"hicache_storage_backend": "file",
        "hicache_storage_backend_extra_config_json": "{\"prefetch_threshold\": 32}",
        "hicache_storage_prefetch_policy": "wait_complete"});
    let (busy, (st, v)) = tokio::join!(s.post("/generate", &long), async {
        // Once the request runs (a fixed sleep raced a fast decode).
        s.wait_metric("num_running_reqs", 1.0).await;
        l3_call(&s, "PUT", Some(&attach)).await
    });
    assert_eq!(busy.0, 200);
    assert_eq!(st, 400, "{v}");
    assert!(v.contains("no request runs"), "{v}");
    // Attached while idle: backups go to the directory.
    let (st, v) = l3_call(&s, "PUT", Some(&attach)).await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s.get("/hicache/storage-backend").await;
    assert!(v.contains("\"hicache_storage_backend\":\"file\""), "{v}");
    assert_eq!(gen(&s, &prompts[0], 6).await.0, want[0]);
    assert!(
        eventually(|| objects(&dir).len() >= 14).await,
        "p0 backed up"
    );
    // The scheduler has taken every write's completion: no L3 transfer is in flight.
    assert!(s.wait_metric("backuped_tokens_total", 112.0).await >= 112.0);
    s.wait_idle().await;
    // Detached: nothing more is written.
    let (st, v) = l3_call(&s, "DELETE", None).await;
    assert_eq!(st, 200, "{v}");
    let before = objects(&dir).len();
    assert_eq!(gen(&s, &prompts[1], 6).await.0, want[1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(objects(&dir).len(), before, "no backup after detaching");
    assert_eq!(
        l3_call(&s, "DELETE", None).await.0,
        400,
        "nothing to detach"
    );
    // A fresh server with the directory as its L3 hits what the attached one wrote.
    drop(s);
    let f = file_server(&model, &dir);
    let (out, cached) = gen(&f, &prompts[0], 6).await;
    assert_eq!(out, want[0]);
    assert!(
        cached >= 112,
        "an L3 hit of the attached server's pages: {cached}"
    );
}

/// A `PUT` (with `body`) or `DELETE` of `/hicache/storage-backend`: (status, text).
async fn l3_call(s: &Server, method: &str, body: Option<&serde_json::Value>) -> (u16, String) {
    let url = s.url("/hicache/storage-backend");
    let req = match body {
        Some(b) => s.client.request(method.parse().unwrap(), url).json(b),
        None => s.client.request(method.parse().unwrap(), url),
    };
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
