//! `strata up --smoke`: the README's first command end to end — model generation, master, store node,
//! server and router as real processes, one request through the router, then a clean stop (SIGTERM
//! to every child, logs free of colour codes, every address printed); `--pd` (prefill + decode
//! behind the router) giving the same greedy answer. A taken port is refused by name before
//! anything starts.

use std::process::Command;

/// A base port with the 32 ports from it free right now (`up` takes base..base+7; the smoke test's
/// later runs start at base+10 and base+20). Below Linux's ephemeral range (32768+): the stack's own
/// outgoing connections (store to master, ...) take ephemeral ports, and one of them could land on
/// a port `up` is about to bind. Other processes on the machine may hold ports in the range too,
/// so candidates are probed rather than assumed.
fn free_base(offset: u32) -> u16 {
    let start = (std::process::id() + offset) % 12_000;
    (0..375)
        .map(|k| 20_000 + ((start + k * 32) % 12_000) as u16)
        .find(|&b| (b..b + 32).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()))
        .expect("no 32 free ports in 20000..32000")
}

#[test]
fn up_smoke_serves_a_request_through_the_router() {
    let bin = strata_tests::build_strata().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_base(0);
    let out = Command::new(&bin)
        .args(["up", "--smoke", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "strata up failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout
        .split_once("-> ")
        .expect("the answer line")
        .1
        .lines()
        .next()
        .unwrap()
        .trim();
    // Every address, metrics included.
    for want in [
        format!("http://127.0.0.1:{port} "),
        format!("http://127.0.0.1:{}/metrics", port + 7),
        format!("http://127.0.0.1:{}/metrics", port + 1),
        format!("127.0.0.1:{}", port + 2),
        format!("http://127.0.0.1:{}/metadata", port + 3),
        format!("http://127.0.0.1:{}/metrics", port + 4),
    ] {
        assert!(stdout.contains(&want), "{want} missing from:\n{stdout}");
    }
    // Children were stopped with SIGTERM (each logs its own clean stop), and logs written to
    // files carry no ANSI colour codes.
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert!(
        log("store.log").contains("shutting down"),
        "{}",
        log("store.log")
    );
    assert!(
        log("serve.log").contains("server stopped"),
        "{}",
        log("serve.log")
    );
    for name in ["master.log", "store.log", "serve.log", "router.log"] {
        assert!(!log(name).contains('\u{1b}'), "{name} has escape codes");
    }
    // The router's metrics answer on the printed port... while it ran; after the stop every port
    // is free again.
    assert!(std::net::TcpListener::bind(("0.0.0.0", port + 7)).is_ok());
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["meta_info"]["completion_tokens"], 32);
    assert!(
        dir.path().join("store.strata").exists(),
        "the store node made its page store"
    );
    // A second run reuses the model and the store and gives the same greedy answer; the PD
    // deployment (prefill with HiCache + L3, decode, router in PD mode) answers the same too.
    assert_eq!(v["text"], answer(&bin, dir.path(), port + 10, &[])["text"]);
    assert_eq!(
        v["text"],
        answer(&bin, dir.path(), port + 20, &["--pd"])["text"],
        "PD answer differs from colocated"
    );
}

/// Runs `strata up --smoke` with `extra` flags and returns the answer it printed.
fn answer(
    bin: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    extra: &[&str],
) -> serde_json::Value {
    let out = Command::new(bin)
        .args(["up", "--smoke", "--port", &port.to_string()])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.split_once("-> ").expect("the answer line").1;
    serde_json::from_str(json.lines().next().unwrap().trim()).unwrap()
}

#[test]
fn up_refuses_a_taken_port_by_name() {
    let bin = strata_tests::build_strata().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_base(5_000);
    // Hold the router's metrics port (the clash that used to be one WARN line in a log).
    let _held = std::net::TcpListener::bind(("127.0.0.1", port + 7)).unwrap();
    let out = Command::new(&bin)
        .args(["up", "--smoke", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("port {} (router metrics)", port + 7)),
        "{err}"
    );
    assert!(
        !dir.path().join("master.log").exists(),
        "nothing is started before the ports are checked"
    );
}
