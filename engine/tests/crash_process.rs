//! Process-level crash test: a child process writes and syncs pages and is killed with SIGKILL at a
//! random moment; the store is reopened and every page the child reported as synced must read back
//! byte-identical, while no page returns wrong bytes. Repeated over several rounds on one store.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;
use strata_engine::{IoEngineKind, Store, StoreConfig};

fn cfg(path: &str, kind: IoEngineKind, write_back: u64) -> StoreConfig {
    StoreConfig::new(path)
        .with_write_back(write_back)
        .with_capacity(64 * 1024 + 1024 * (1 << 20))
        .with_segment_size(4 << 20)
        .with_memory(0)
        .with_io_engine(kind)
}

fn len_of(id: u64) -> usize {
    4096 + (id as usize * 48_271) % 40_000
}

fn child(path: &str, start: u64, kind: IoEngineKind) -> ! {
    let wb = std::env::var("STRATA_CRASH_WB").unwrap().parse().unwrap();
    let s = Store::open(cfg(path, kind, wb)).expect("child opens the store");
    let mut id = start;
    // At most 4,000 pages a round (~100 MiB), so four rounds stay well inside the capacity and
    // nothing is evicted; after that the child idles until it is killed.
    while id < start + 4000 {
        let batch: Vec<(Vec<u8>, Vec<u8>)> = (id..id + 4)
            .map(|i| (key(i), value(i, len_of(i))))
            .collect();
        let items: Vec<(&[u8], &[u8])> = batch
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        for r in s.batch_put(&items) {
            r.expect("put");
        }
        id += 4;
        if id % 16 == 0 {
            s.sync().expect("sync");
            println!("synced {id}");
        }
    }
    loop {
        std::thread::park();
    }
}

#[test]
fn sigkill_mid_write() {
    if let Ok(path) = std::env::var("STRATA_CRASH_CHILD") {
        let start = std::env::var("STRATA_CRASH_START")
            .unwrap()
            .parse()
            .unwrap();
        let kind = std::env::var("STRATA_CRASH_ENGINE")
            .unwrap()
            .parse()
            .unwrap();
        child(&path, start, kind);
    }
    // io_uring, pread/pwrite, and io_uring behind a 4 MiB write-back buffer.
    for (engine, wb) in [("uring", 0u64), ("psync", 0), ("uring", 4 << 20)] {
        run_rounds(engine, wb);
    }
}

fn run_rounds(engine: &str, wb: u64) {
    let kind: IoEngineKind = engine.parse().unwrap();
    let seed = seed("sigkill");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store").to_string_lossy().into_owned();
    let mut next = 0u64;
    let mut synced_total = 0u64;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for round in 0..4 {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_mid_write",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STRATA_CRASH_CHILD", &path)
            .env("STRATA_CRASH_START", next.to_string())
            .env("STRATA_CRASH_ENGINE", engine)
            .env("STRATA_CRASH_WB", wb.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = c.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("synced ") {
                    let _ = tx.send(n.parse::<u64>().unwrap());
                }
            }
        });
        // Let it reach at least one sync, then kill at a random moment.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child made progress");
        std::thread::sleep(Duration::from_millis(r.random_range(5..300)));
        c.kill().unwrap();
        c.wait().unwrap();
        let mut synced = first;
        while let Ok(n) = rx.try_recv() {
            synced = n;
        }
        let started = Instant::now();
        let s = Store::open(cfg(&path, kind, wb)).unwrap();
        let recovery = started.elapsed();
        ranges.push((next, synced));
        for id in ranges.iter().flat_map(|&(a, b)| a..b) {
            let got = s.get(&key(id)).unwrap();
            assert!(got.is_some(), "round {round}: synced page {id} lost");
            assert!(
                got.unwrap() == value(id, len_of(id)),
                "round {round}: page {id} wrong bytes"
            );
        }
        let mut extra = 0;
        for id in synced..synced + 400 {
            if let Some(v) = s.get(&key(id)).unwrap() {
                assert!(
                    v == value(id, len_of(id)),
                    "round {round}: unsynced page {id} wrong bytes"
                );
                extra += 1;
            }
        }
        println!("{engine} (write-back {wb}) round {round}: {} synced pages intact, {extra} later pages survived, recovery {recovery:?}", synced - next);
        synced_total += synced - next;
        next = synced + 400;
    }
    assert!(synced_total > 0);
}
