//! The size bound: SGLang's size syntax, the LRU order (writes and reads refresh a file), the cap
//! with its eviction ratio, the free-space bound, refused writes, and the index seeded from the
//! files a server finds at start. Values are random (seed printed).

use super::super::{FileBackend, HEADER};
use super::*;
use crate::hicache::storage::L3Backend;
use rand::{Rng, SeedableRng};

const OBJ: usize = 1000;

fn key(i: usize) -> String {
    format!("model_{i:04}_k")
}

/// Bytes of one object file of `key(i)`.
fn file_bytes() -> u64 {
    (HEADER + key(0).len() + OBJ) as u64
}

fn open(dir: &Path, max_files: f64, min_free: u64) -> FileBackend {
    let limits = FileOptions {
        max_size: (max_files * file_bytes() as f64) as u64,
        min_free,
        ratio: 0.9,
        metadata_ttl: None,
    };
    FileBackend::open(dir, OBJ, limits).unwrap()
}

fn put(b: &FileBackend, i: usize, v: &[u8]) -> bool {
    b.put(&[&key(i)], &[v], &[0]).unwrap()[0]
}

fn get(b: &FileBackend, i: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; OBJ];
    let ok = b.get_into(&[key(i)], &mut [&mut buf[..]]).unwrap()[0];
    ok.then_some(buf)
}

/// (files, bytes) of the object files on disk.
fn on_disk(dir: &Path) -> (usize, u64) {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".skv"))
        .fold((0, 0), |(n, b), e| (n + 1, b + e.metadata().unwrap().len()))
}

fn values(n: usize) -> Vec<Vec<u8>> {
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..OBJ).map(|_| rng.random()).collect())
        .collect()
}

#[test]
fn sizes_read_as_sglang_reads_them() {
    for (s, want) in [
        ("1048576", Some(1048576)),
        (" 4096 ", Some(4096)),
        ("25.6k", Some(25_600)),
        ("2m", Some(2_000_000)),
        ("1g", Some(1_000_000_000)),
        ("1K", Some(1024)),
        ("200G", Some(200 << 30)),
        ("1Gi", Some(1 << 30)),
        ("1GiB", Some(1 << 30)),
        ("64MB", Some(64 << 20)),
        ("2T", Some(2 << 40)),
        ("12parsecs", None),
        ("", None),
        ("G", None),
        ("1Q", None),
    ] {
        assert_eq!(parse_size(s), want, "{s:?}");
    }
}

#[test]
fn extra_config_keys_set_the_bounds_and_bad_values_turn_them_off() {
    let obj = |j: serde_json::Value| j.as_object().unwrap().clone();
    let l = resolve(Some(&obj(serde_json::json!(
        {"max_size": "2G", "min_free_space": 1048576, "eviction_ratio": 0.5}
    ))));
    assert_eq!(
        l,
        FileOptions {
            max_size: 2 << 30,
            min_free: 1 << 20,
            ratio: 0.5,
            metadata_ttl: None,
        }
    );
    assert!(l.enabled());
    let l = resolve(Some(&obj(serde_json::json!(
        {"max_size": "lots", "eviction_ratio": 1.5}
    ))));
    assert_eq!(l.max_size, 0, "not a size: that bound is off");
    assert_eq!(l.ratio, 0.9, "a ratio outside (0, 1] is the default");
}

#[test]
fn the_cap_evicts_the_least_recently_used_files_down_to_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 10.0, 0);
    let vals = values(40);
    for (i, v) in vals.iter().enumerate().take(10) {
        assert!(put(&b, i, v));
    }
    assert_eq!(on_disk(dir.path()), (10, 10 * file_bytes()));
    // Reading 0 and 1 makes them the most recent: the next write evicts down to 90 % of the cap
    // less the new file (8 files), so 2 and 3 go, not them; then the new file makes 9.
    assert_eq!(get(&b, 0).as_ref(), Some(&vals[0]));
    assert_eq!(get(&b, 1).as_ref(), Some(&vals[1]));
    assert!(put(&b, 10, &vals[10]));
    assert_eq!(on_disk(dir.path()).0, 9);
    for i in [2, 3] {
        assert_eq!(get(&b, i), None, "{i} was the least recently used");
    }
    for i in [0, 1, 4, 5, 6, 7, 8, 9, 10] {
        assert_eq!(
            get(&b, i).as_ref(),
            Some(&vals[i]),
            "{i} kept, bytes intact"
        );
    }
    // Many more writes: the directory never passes the cap, and the newest stay readable.
    for (i, v) in vals.iter().enumerate().skip(11) {
        assert!(put(&b, i, v));
        let (files, bytes) = on_disk(dir.path());
        assert!(bytes <= 10 * file_bytes(), "{files} files, {bytes} B");
        assert_eq!(b.indexed_bytes(), bytes);
    }
    for (i, v) in vals.iter().enumerate().skip(37) {
        assert_eq!(get(&b, i).as_ref(), Some(v));
    }
    // Rewriting a key replaces its bytes in the index.
    assert!(put(&b, 39, &vals[0]));
    assert_eq!(b.indexed_bytes(), on_disk(dir.path()).1);
    b.clear().unwrap();
    assert_eq!((b.indexed_bytes(), on_disk(dir.path())), (0, (0, 0)));
}

#[test]
fn writes_the_bounds_cannot_admit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vals = values(3);
    // A cap under one file: every write refused, the directory untouched.
    let b = open(dir.path(), 0.5, 0);
    assert!(!put(&b, 0, &vals[0]));
    assert_eq!(on_disk(dir.path()), (0, 0));
    // A free-space bound the file system cannot meet: the files present are evicted at start
    // trying to meet it (SGLang does the same), and every write is refused.
    let free = FileBackend::open(dir.path(), OBJ, FileOptions::default()).unwrap();
    assert!(put(&free, 1, &vals[1]));
    assert_eq!(get(&free, 1).as_ref(), Some(&vals[1]));
    let b = open(dir.path(), 0.0, u64::MAX / 4);
    assert_eq!(on_disk(dir.path()), (0, 0));
    assert!(!put(&b, 2, &vals[2]));
    assert_eq!(on_disk(dir.path()), (0, 0));
    // A bound the file system meets admits writes.
    let b = open(dir.path(), 0.0, 1);
    assert!(put(&b, 2, &vals[2]));
    assert_eq!(get(&b, 2).as_ref(), Some(&vals[2]));
}

#[test]
fn a_server_indexes_the_files_it_finds_and_evicts_the_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let vals = values(8);
    let unbounded = FileBackend::open(dir.path(), OBJ, FileOptions::default()).unwrap();
    for (i, v) in vals.iter().enumerate() {
        assert!(put(&unbounded, i, v));
        // Modification times one second apart, oldest first.
        let f = std::fs::File::options()
            .write(true)
            .open(
                dir.path()
                    .join(format!("{}.skv", super::super::file_stem(&key(i)))),
            )
            .unwrap();
        let t =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
        f.set_modified(t).unwrap();
    }
    // A cap of five files: at start it evicts down to 90 % of it (four files), oldest first.
    let b = open(dir.path(), 5.0, 0);
    assert_eq!(on_disk(dir.path()).0, 4);
    for i in 0..4 {
        assert_eq!(get(&b, i), None, "{i} was among the oldest");
    }
    for (i, v) in vals.iter().enumerate().skip(4) {
        assert_eq!(get(&b, i).as_ref(), Some(v));
    }
}
