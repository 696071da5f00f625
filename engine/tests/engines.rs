//! The same suite against the io_uring and the pread/pwrite engines on a real file (O_DIRECT):
//! round trips, reopen, remove/clear durability, the capacity bound, and corruption on disk.

mod common;

use common::*;
use strata_engine::{AlignedBuf, IoEngineKind, PutOptions, Store};

const KINDS: [IoEngineKind; 2] = [IoEngineKind::Uring, IoEngineKind::Psync];

#[test]
fn round_trip_and_reopen() {
    let mut pools: Vec<AlignedBuf> = Vec::new();
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let sizes = [1usize, 4096, 5000, 65536, 200_000];
        pools.push(AlignedBuf::new(1 << 20));
        {
            let s = Store::open(small_cfg(&path, kind)).unwrap();
            for (i, &n) in sizes.iter().enumerate() {
                assert!(s.put(&key(i as u64), &value(i as u64, n)).unwrap());
            }
            // A second put of an existing key succeeds and keeps the first bytes.
            assert!(!s.put(&key(0), &value(99, 7)).unwrap());
            for (i, &n) in sizes.iter().enumerate() {
                assert_eq!(
                    s.get(&key(i as u64)).unwrap().unwrap(),
                    value(i as u64, n),
                    "{kind:?}"
                );
            }
            // Zero-copy read into an aligned buffer, then into a registered one (ReadFixed on io_uring).
            let mut buf = AlignedBuf::new(200_000);
            assert_eq!(s.get_into(&key(4), &mut buf).unwrap(), Some(200_000));
            assert!(buf[..200_000] == value(4, 200_000)[..]);
            // SAFETY: `pool` is declared before `s` in this scope's drop order (it lives in the
            // outer `pools`), so it outlives the store.
            let pool = pools.last_mut().unwrap();
            let reg = unsafe { s.register_buffer(pool.as_mut_ptr(), pool.len()) }.unwrap();
            assert_eq!(reg, kind == IoEngineKind::Uring);
            assert_eq!(
                s.get_into(&key(4), &mut pool[4096..4096 + 200_704])
                    .unwrap(),
                Some(200_000)
            );
            assert!(pool[4096..4096 + 200_000] == value(4, 200_000)[..]);
            let keys: Vec<Vec<u8>> = (0..7).map(key).collect();
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            assert_eq!(s.batch_exists(&refs), 5);
            assert!(s.remove(&key(1)).unwrap());
            assert!(!s.remove(&key(1)).unwrap());
            assert_eq!(s.batch_exists(&refs), 1);
            assert_eq!(
                s.stats().io_engine,
                if kind == IoEngineKind::Uring {
                    "io_uring"
                } else {
                    "psync"
                }
            );
        }
        let s = Store::open(small_cfg(&path, kind)).unwrap();
        assert_eq!(s.get(&key(0)).unwrap().unwrap(), value(0, 1));
        assert_eq!(s.get(&key(1)).unwrap(), None, "remove survives reopen");
        for i in 2..5u64 {
            assert_eq!(
                s.get(&key(i)).unwrap().unwrap(),
                value(i, sizes[i as usize])
            );
        }
        // Keys 0, 2, 3 and 4 were live (1 was removed).
        assert_eq!(
            s.clear().unwrap(),
            4,
            "clear answers how many keys it removed"
        );
        assert_eq!(s.get(&key(2)).unwrap(), None);
        assert!(s.put(&key(7), &value(7, 9000)).unwrap());
        drop(s);
        let s = Store::open(small_cfg(&path, kind)).unwrap();
        assert_eq!(s.get(&key(2)).unwrap(), None, "clear survives reopen");
        assert_eq!(s.get(&key(7)).unwrap().unwrap(), value(7, 9000));
    }
}

#[test]
fn bad_input_is_refused_without_losing_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let s = Store::open(small_cfg(&path, IoEngineKind::Auto)).unwrap();
    s.put(b"k", b"v").unwrap();
    assert!(s.put(b"", b"v").is_err());
    assert!(s.put(&[b'x'; 129], b"v").is_err());
    assert!(s.put(b"k2", b"").is_err());
    assert!(s.put(b"k3", &vec![0u8; s.max_value_len() + 1]).is_err());
    let mut small = [0u8; 0];
    assert!(s.get_into(b"k", &mut small).is_err());
    assert_eq!(s.get(b"k").unwrap().unwrap(), b"v");
    // A second process (here: a second open) is refused while the store is open.
    match Store::open(small_cfg(&path, IoEngineKind::Auto)) {
        Err(strata_engine::Error::Locked(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second open succeeded"),
    }
    drop(s);
    // A file that is not a store is refused, not formatted.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![7u8; 1 << 20]).unwrap();
    assert!(matches!(
        Store::open(small_cfg(&junk, IoEngineKind::Auto)),
        Err(strata_engine::Error::NotAStore(_))
    ));
    assert!(
        std::fs::read(&junk).unwrap() == vec![7u8; 1 << 20],
        "junk file changed"
    );
}

#[test]
fn capacity_bound_keeps_newest() {
    for kind in KINDS {
        let seed = seed("capacity");
        let mut r = rng(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let cfg = small_cfg(&path, kind);
        let cap = cfg.capacity;
        let s = Store::open(cfg).unwrap();
        let mut written = Vec::new();
        let mut total = 0u64;
        let mut id = 0u64;
        while total < 3 * cap {
            let n = rand::Rng::random_range(&mut r, 4096..100_000);
            s.put(&key(id), &value(id, n)).unwrap();
            written.push((id, n));
            total += n as u64;
            id += 1;
            let on_disk = std::fs::metadata(&path).unwrap().len();
            assert!(on_disk <= cap, "file grew to {on_disk} > {cap}");
        }
        let st = s.stats();
        assert!(st.reclaimed_segments > 0);
        assert!(st.live_bytes <= cap);
        // The newest pages are all readable, byte-exact; nothing returns wrong bytes.
        for &(id, n) in written.iter().rev().take(20) {
            assert_eq!(
                s.get(&key(id)).unwrap().unwrap(),
                value(id, n),
                "newest page {id} lost"
            );
        }
        for &(id, n) in &written {
            if let Some(v) = s.get(&key(id)).unwrap() {
                assert_eq!(v, value(id, n));
            }
        }
    }
}

#[test]
fn write_back_buffers_reads_and_persists() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        // A buffer smaller than what is written, so puts also wait for the flusher.
        let cfg = || small_cfg(&path, kind).with_write_back(256 * 1024);
        {
            let s = Store::open(cfg()).unwrap();
            for id in 0..120u64 {
                assert!(s.put(&key(id), &value(id, 10_000 + id as usize)).unwrap());
                // Readable as soon as put returns, whether buffered or written.
                assert!(s.get(&key(id)).unwrap().unwrap() == value(id, 10_000 + id as usize));
                assert!(!s.put(&key(id), b"other").unwrap(), "a buffered key exists");
            }
            let keys: Vec<Vec<u8>> = (0..121).map(key).collect();
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            assert_eq!(s.batch_exists(&refs), 120);
            assert!(s.remove(&key(5)).unwrap());
            s.sync().unwrap();
            assert_eq!(s.stats().write_back_bytes, 0, "sync drains the buffer");
        }
        let s = Store::open(cfg()).unwrap();
        for id in 0..120u64 {
            let got = s.get(&key(id)).unwrap();
            if id == 5 {
                assert!(got.is_none());
            } else {
                assert!(
                    got.unwrap() == value(id, 10_000 + id as usize),
                    "{kind:?}: page {id}"
                );
            }
        }
    }
}

#[test]
fn shared_value_puts_with_and_without_write_back() {
    for write_back in [0u64, 256 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let cfg = || small_cfg(&path, IoEngineKind::Auto).with_write_back(write_back);
        {
            let s = Store::open(cfg()).unwrap();
            assert_eq!(s.has_write_back(), write_back > 0);
            let keys: Vec<Vec<u8>> = (0..40u64).map(key).collect();
            let items: Vec<(&[u8], std::sync::Arc<[u8]>)> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_slice(), value(i as u64, 5_000 + i * 97).into()))
                .collect();
            let rs = s.batch_put_shared(&items, PutOptions { depth: Some(0) });
            assert!(rs.iter().all(|r| matches!(r, Ok(true))), "{rs:?}");
            // A second put of an existing key keeps the stored bytes; bad input is refused.
            let again = [(
                keys[3].as_slice(),
                std::sync::Arc::<[u8]>::from(&b"other"[..]),
            )];
            assert!(matches!(
                s.batch_put_shared(&again, PutOptions::default())[0],
                Ok(false)
            ));
            let empty = [(keys[0].as_slice(), std::sync::Arc::<[u8]>::from(&b""[..]))];
            assert!(s.batch_put_shared(&empty, PutOptions::default())[0].is_err());
            for (i, k) in keys.iter().enumerate() {
                assert!(s.get(k).unwrap().unwrap() == value(i as u64, 5_000 + i * 97));
            }
            s.sync().unwrap();
        }
        let s = Store::open(cfg()).unwrap();
        for i in 0..40u64 {
            let got = s.get(&key(i)).unwrap().unwrap();
            assert!(
                got == value(i, 5_000 + i as usize * 97),
                "wb {write_back}: page {i}"
            );
        }
    }
}
