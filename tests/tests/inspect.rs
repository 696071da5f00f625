//! `strata inspect` against real stores: summary/list/dump round trips, JSON output, verify reporting
//! corruption with a non-zero exit, and clear refusals (store open elsewhere, not a store, unknown
//! format version).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

use strata_engine::format::{segment_offset, BLOCK};
use strata_engine::{IoEngineKind, Store, StoreConfig};

fn cfg(path: &std::path::Path) -> StoreConfig {
    StoreConfig::new(path)
        .with_capacity(64 * 1024 + 8 * (1 << 20))
        .with_segment_size(1 << 20)
        .with_io_engine(IoEngineKind::Auto)
}

fn inspect(args: &[&str]) -> std::process::Output {
    let bin = strata_tests::build_strata().unwrap();
    Command::new(bin)
        .arg("inspect")
        .args(args)
        .output()
        .unwrap()
}

fn make_store(path: &std::path::Path) {
    let s = Store::open(cfg(path)).unwrap();
    for i in 0..40u32 {
        let v = vec![i as u8; 20_000 + i as usize];
        s.put(format!("page-{i:03}").as_bytes(), &v).unwrap();
    }
    s.remove(b"page-007").unwrap();
    s.sync().unwrap();
}

#[test]
fn summary_list_dump_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    make_store(&path);
    let p = path.to_str().unwrap();

    let out = inspect(&["summary", p, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["live_pages"], 39);
    assert_eq!(j["tombstones"], 1);
    assert_eq!(j["format_version"], 1);

    let out = inspect(&["list", p, "--json", "--prefix", "page-01"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[0]["size"], 20_010);

    let file = dir.path().join("v");
    let out = inspect(&["dump", p, "page-012", "--out", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(std::fs::read(&file).unwrap() == vec![12u8; 20_012]);
    let out = inspect(&["dump", p, "page-007"]);
    assert!(!out.status.success(), "a removed key must not dump");

    let out = inspect(&["verify", p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Corrupt one value byte: verify must fail and name the problem.
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(
        segment_offset(0, 1 << 20) + 2 * BLOCK as u64 + 100,
    ))
    .unwrap();
    f.write_all(&[0xAB; 16]).unwrap();
    f.sync_all().unwrap();
    let out = inspect(&["verify", p, "--json"]);
    assert!(!out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert!(j["problems"][0]["what"]
        .as_str()
        .unwrap()
        .contains("checksum"));
}

#[test]
fn refusals_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    make_store(&path);
    let p = path.to_str().unwrap();

    // Open in another process (here: this one) -> refused.
    let held = Store::open(cfg(&path)).unwrap();
    let out = inspect(&["summary", p]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("open in another process"));
    drop(held);

    // Not a store.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![1u8; 1 << 16]).unwrap();
    let out = inspect(&["summary", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a strata store"));

    // Small non-store files (a README, /dev/null): "not a strata store", in one line, with no
    // backtrace even when RUST_BACKTRACE is set; never the I/O layer's "short transfer".
    let readme = dir.path().join("README.md");
    std::fs::write(&readme, "# hello\n").unwrap();
    for p in [readme.to_str().unwrap(), "/dev/null"] {
        let bin = strata_tests::build_strata().unwrap();
        let out = Command::new(bin)
            .args(["inspect", "summary", p])
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(&format!("{p}: not a strata store")), "{err}");
    }

    // Missing path.
    let out = inspect(&["summary", dir.path().join("nope").to_str().unwrap()]);
    assert!(!out.status.success());

    // Unknown format version: rewrite both superblock copies with version 99 and a valid crc.
    let mut bytes = std::fs::read(&path).unwrap();
    for copy in 0..2 {
        let b = &mut bytes[copy * BLOCK..copy * BLOCK + BLOCK];
        if &b[0..8] == b"STRATASB" {
            b[8..12].copy_from_slice(&99u32.to_le_bytes());
            let crc = crc32c::crc32c(&b[..64]);
            b[64..68].copy_from_slice(&crc.to_le_bytes());
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let out = inspect(&["summary", p]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported format version 99"));
}

#[test]
fn dump_json_and_closed_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    make_store(&path);
    {
        let s = Store::open(cfg(&path)).unwrap();
        s.put(b"big", &vec![7u8; 300_000]).unwrap();
    }
    let p = path.to_str().unwrap();
    // --json: metadata and the value in hex, not raw bytes.
    let out = inspect(&["dump", p, "page-003", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["key"], "page-003");
    assert_eq!(v["value_len"], 20_003);
    assert_eq!(v["value_hex"].as_str().unwrap(), "03".repeat(20_003));
    assert!(v["segment"].is_number() && v["seq"].is_number());
    // A reader that stops early (`| head`) ends the dump quietly: no "Broken pipe" error.
    let bin = strata_tests::build_strata().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' inspect dump '{p}' big | head -c 10 > /dev/null",
            bin.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.to_lowercase().contains("broken pipe"), "{err}");
    assert!(err.trim().is_empty(), "{err}");
}
