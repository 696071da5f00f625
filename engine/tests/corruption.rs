//! Corruption on a real file: flipped bytes inside records, a truncated open segment, a zeroed summary.
//! Each becomes misses or a rebuilt index — never wrong bytes, never a panic.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};

use common::*;
use strata_engine::format::{segment_offset, BLOCK};
use strata_engine::{IoEngineKind, Store};

const SEG: u64 = 1 << 20;

fn fill(path: &std::path::Path, n: u64) -> Vec<(u64, usize)> {
    let s = Store::open(small_cfg(path, IoEngineKind::Auto)).unwrap();
    let mut out = Vec::new();
    for id in 0..n {
        let len = 4096 + (id as usize * 7919) % 60_000;
        s.put(&key(id), &value(id, len)).unwrap();
        out.push((id, len));
    }
    s.sync().unwrap();
    out
}

fn patch(path: &std::path::Path, off: u64, f: impl FnOnce(&mut [u8])) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; BLOCK];
    file.seek(SeekFrom::Start(off)).unwrap();
    file.read_exact(&mut buf).unwrap();
    f(&mut buf);
    file.seek(SeekFrom::Start(off)).unwrap();
    file.write_all(&buf).unwrap();
    file.sync_all().unwrap();
}

fn check_no_wrong_bytes(path: &std::path::Path, written: &[(u64, usize)]) -> (usize, usize) {
    let s = Store::open(small_cfg(path, IoEngineKind::Auto)).unwrap();
    let (mut hits, mut misses) = (0, 0);
    for &(id, len) in written {
        match s.get(&key(id)).unwrap() {
            Some(v) => {
                assert!(
                    v == value(id, len),
                    "key {id}: wrong bytes after corruption"
                );
                hits += 1;
            }
            None => misses += 1,
        }
    }
    (hits, misses)
}

#[test]
fn flipped_value_bytes_become_misses() {
    let seed = seed("flip");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let written = fill(&path, 60);
    // Flip a byte in the value area of several records of segment 0 (records start at +4096).
    for _ in 0..8 {
        let off = segment_offset(0, SEG)
            + 2 * BLOCK as u64
            + rand::Rng::random_range(&mut r, 0..200) * BLOCK as u64;
        patch(&path, off, |b| {
            b[rand::Rng::random_range(&mut r, 0..BLOCK)] ^= 0xff
        });
    }
    let (hits, misses) = check_no_wrong_bytes(&path, &written);
    assert!(hits > 0 && misses > 0, "hits {hits} misses {misses}");
    // The misses stay misses after a restart (tombstones), and the rest still reads back.
    let (hits2, misses2) = check_no_wrong_bytes(&path, &written);
    assert_eq!((hits2, misses2), (hits, misses));
}

#[test]
fn zeroed_summary_rebuilds_by_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let written = fill(&path, 60);
    // Segment 0 is sealed (60 values of ~34 KiB fill more than one 1 MiB segment): zero its footer.
    patch(&path, segment_offset(0, SEG) + SEG - BLOCK as u64, |b| {
        b.fill(0)
    });
    let (hits, misses) = check_no_wrong_bytes(&path, &written);
    assert_eq!(
        (hits, misses),
        (written.len(), 0),
        "a zeroed summary must be rebuilt by scanning"
    );
}

#[test]
fn truncated_open_segment_loses_only_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let written = fill(&path, 60);
    // Find the open segment: the highest-numbered one with a valid header and no footer. Simulate a
    // torn tail by zeroing its second half.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut last = 0;
    for i in 0..15u32 {
        let mut b = vec![0u8; 8];
        file.seek(SeekFrom::Start(segment_offset(i, SEG))).unwrap();
        file.read_exact(&mut b).unwrap();
        if &b == b"STRATASG" {
            last = i;
        }
    }
    let half = segment_offset(last, SEG) + SEG / 4;
    file.seek(SeekFrom::Start(half)).unwrap();
    file.write_all(&vec![0u8; (SEG / 2) as usize]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let (hits, misses) = check_no_wrong_bytes(&path, &written);
    assert!(hits >= 20 && misses > 0, "hits {hits} misses {misses}");
}

#[test]
fn zeroed_superblock_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    fill(&path, 3);
    patch(&path, 0, |b| b.fill(0xee));
    patch(&path, BLOCK as u64, |b| b.fill(0xee));
    match Store::open(small_cfg(&path, IoEngineKind::Auto)) {
        Err(strata_engine::Error::NotAStore(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a store without a superblock"),
    }
}
