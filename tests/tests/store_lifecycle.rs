//! `strata store` as an operator runs it: SIGTERM seals the open segment (the next `inspect` finds
//! every segment summarised, none to scan) and leaves the membership at once; a `--capacity` the
//! file system cannot hold is refused at start; a token the master refuses ends the process with
//! one clear line instead of retrying forever; `--advertise-port` is the port clients dial (a
//! forwarder in front of the node).

mod cluster_util;

use cluster_util::*;
use std::process::Command;
use std::time::{Duration, Instant};
use strata_cluster::{Client, ClientConfig};

fn client(master: &str) -> Client {
    let mut c = ClientConfig::new(master);
    c.same_host = false;
    c.auth_token = String::new();
    c.refresh = Duration::from_millis(200);
    c.timeout = Duration::from_secs(5);
    Client::connect(c).expect("client connects")
}

/// Runs `strata ARGS` to completion (at most `secs`); returns (exit code, stderr).
fn run_to_exit(args: &[&str], secs: u64) -> (i32, String) {
    let bin = strata_tests::build_strata().unwrap();
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("STRATA_AUTH_TOKEN")
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("strata {args:?} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sigterm_seals_the_open_segment_and_leaves_the_membership() {
    let dir = tempfile::tempdir().unwrap();
    let m = master(dir.path(), free_port(), &[]);
    let rpc = m.get("rpc");
    let dev = dir.path().join("node.strata");
    let mut node = store(&rpc, &dev, &[]);
    let c = client(&rpc);
    assert!(wait_until(Duration::from_secs(10), || {
        let _ = c.refresh();
        c.members().1.len() == 1
    }));
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let vals: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 10_000 + i]).collect();
    for (k, v) in keys.iter().zip(&vals) {
        assert_eq!(c.put_from(k, v), 0);
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "store ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "clean stop exits 0: {status}");
    // Left at once: well before the master's heartbeat timeout (1.5 s) could have removed it.
    let _ = c.refresh();
    assert_eq!(c.members().1.len(), 0, "still a member after SIGTERM");
    let bin = strata_tests::build_strata().unwrap();
    let out = Command::new(bin)
        .args(["inspect", "summary", "--json"])
        .arg(&dev)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["live_pages"], 20, "{v}");
    assert_eq!(v["segments_scanned"], 0, "a segment was left unsealed: {v}");
}

#[test]
fn capacity_beyond_free_space_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("big.strata");
    let (code, err) = run_to_exit(
        &[
            "store",
            "--master",
            "127.0.0.1:1",
            "--device",
            dev.to_str().unwrap(),
            "--capacity",
            "1000000TiB",
        ],
        30,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("does not fit") && err.contains("free"),
        "{err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, no backtrace: {err}"
    );
    assert!(!dev.exists() || std::fs::metadata(&dev).unwrap().len() == 0);
}

#[test]
fn a_refused_auth_token_ends_the_store_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = master(dir.path(), free_port(), &["--auth-token", "right"]);
    let rpc = m.get("rpc");
    let dev = dir.path().join("node.strata");
    for token in ["wrong", ""] {
        let mut args = vec![
            "store",
            "--master",
            &rpc,
            "--device",
            dev.to_str().unwrap(),
            "--capacity",
            "64MiB",
            "--memory",
            "16MiB",
            "--segment-size",
            "8MiB",
            "--log-level",
            "error",
        ];
        if !token.is_empty() {
            args.extend(["--auth-token", token]);
        }
        let (code, err) = run_to_exit(&args, 30);
        assert_ne!(code, 0);
        assert!(err.contains("refused this node's auth token"), "{err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one line, no backtrace: {err}"
        );
    }
}

#[test]
fn master_names_the_port_it_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let state = dir.path().join("m.json");
    let state = state.to_str().unwrap();
    for (flag, other, name) in [
        ("--rpc-port", "--metrics-port", "RPC"),
        ("--metrics-port", "--rpc-port", "metrics"),
    ] {
        let args = [
            "master",
            "--state-file",
            state,
            "--log-level",
            "error",
            other,
            "0",
            flag,
            &port,
        ];
        let (code, err) = run_to_exit(&args, 30);
        assert_ne!(code, 0);
        assert!(
            err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
                && err.contains(name)
                && err.contains(flag),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// A forwarder from a free port to `target`: every connection is copied both ways; returns its
/// port and how many connections it carried.
fn forwarder(target: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for down in l.incoming().map_while(Result::ok) {
            let Ok(up) = TcpStream::connect(&target) else {
                continue;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for (mut a, mut b) in [
                (down.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, down),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (port, n)
}

#[test]
fn clients_dial_the_advertised_port() {
    let dir = tempfile::tempdir().unwrap();
    let m = master(dir.path(), free_port(), &[]);
    let rpc = m.get("rpc");
    let bound = free_port();
    let (advertised, carried) = forwarder(format!("127.0.0.1:{bound}"));
    let node = store(
        &rpc,
        &dir.path().join("node.strata"),
        &[
            "--port",
            &bound.to_string(),
            "--advertise-port",
            &advertised.to_string(),
        ],
    );
    assert_eq!(node.get("addr"), format!("127.0.0.1:{advertised}"));
    let c = client(&rpc);
    assert!(wait_until(Duration::from_secs(10), || {
        let _ = c.refresh();
        c.members().1.len() == 1
    }));
    assert_eq!(c.members().1[0].addr, format!("127.0.0.1:{advertised}"));
    let v = vec![7u8; 5000];
    assert_eq!(c.put_from("k", &v), 0);
    let mut buf = vec![0u8; 8192];
    assert_eq!(c.get_into("k", &mut buf), 5000);
    assert_eq!(&buf[..5000], &v[..]);
    assert!(carried.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
