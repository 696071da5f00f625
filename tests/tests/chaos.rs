//! `strata chaos`, the short form CI runs: the whole deployment (master, three stores, two HiCache
//! servers, a router, and a prefill/decode pair behind a PD router) under load for 20 s while every
//! fault kind is injected, with a fixed seed.
//! It must end without a single violation (wrong answer, wrong bytes, hung request, unexpected
//! exit, failed recovery, resources off their baseline), having injected every kind at least
//! once, except disk-full where the environment cannot mount a file system (then the report must
//! say why instead of counting it).

use std::process::Command;

#[test]
fn chaos_short_run_has_no_violations_and_injects_every_fault_kind() {
    let bin = strata_tests::build_strata().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let seed = std::env::var("STRATA_TEST_SEED").unwrap_or_else(|_| "17".into());
    eprintln!("seed = {seed} (replay with STRATA_TEST_SEED={seed})");
    let out = Command::new(bin)
        .args([
            "chaos",
            "--pd",
            "--duration",
            "20s",
            "--seed",
            &seed,
            "--data-dir",
        ])
        .arg(dir.path().join("run"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Keep the run's folder (every role's log, events.log) for the post-mortem.
        let kept = dir.keep();
        panic!(
            "chaos failed (logs kept in {}):\n{stdout}\n{stderr}",
            kept.display()
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["passed"], true, "{v}");
    for (kind, n) in v["violations"].as_object().unwrap() {
        assert_eq!(n, 0, "{kind}: {v}");
    }
    for kind in ["kill", "pause", "disk-full", "net", "corrupt"] {
        let injected = v["faults"][kind].as_u64().unwrap_or(0);
        let why = v["not_injected"][kind].as_str();
        assert!(
            injected > 0 || (kind == "disk-full" && why.is_some_and(|w| !w.is_empty())),
            "{kind} was never injected: {v}"
        );
    }
    // Load really ran, answers were checked, and the report says so.
    assert!(v["ops"]["generate_ok"].as_u64().unwrap() > 50, "{v}");
    assert!(v["ops"]["store_get_hit"].as_u64().unwrap() > 50, "{v}");
    // The L3 served prefixes back (HiCache prefetch) during the run.
    assert!(
        v["ops"]["hicache_prefetched_tokens"].as_u64().unwrap() > 0,
        "{v}"
    );
    for line in [
        "generate",
        "store",
        "faults",
        "violations",
        "recovery",
        "PASS",
    ] {
        assert!(
            stdout.contains(line),
            "{line} missing from the report:\n{stdout}"
        );
    }
}
