//! The file backend's object format and directory semantics: round trip, torn and corrupt files
//! (misses, removed), safe names, clear, concurrent writers of one key. Randomised cases print
//! their seed (`STRATA_TEST_SEED` replays one).

use super::*;
use rand::{Rng, SeedableRng};

const OBJ: usize = 4096 + 37;

fn seed() -> u64 {
    let s = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {s}");
    s
}

fn value(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    (0..OBJ).map(|_| rng.random()).collect()
}

fn key(i: usize) -> String {
    format!(
        "tag_org-model_{}_0_{}",
        hex::encode([i as u8; 32]),
        ["k", "v"][i % 2]
    )
}

fn get(b: &FileBackend, k: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; OBJ];
    let ok = b.get_into(&[k.to_string()], &mut [&mut buf[..]]).unwrap()[0];
    ok.then_some(buf)
}

fn put(b: &FileBackend, k: &str, v: &[u8]) -> bool {
    b.put(&[&k.to_string()], &[v], &[0]).unwrap()[0]
}

fn exists(b: &FileBackend, k: &str) -> bool {
    b.exists(&[k.to_string()]).unwrap()[0]
}

#[test]
fn objects_round_trip_and_exist_only_at_their_size() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let dir = tempfile::tempdir().unwrap();
    let b = FileBackend::open(&dir.path().join("l3"), OBJ, Default::default()).unwrap();
    let vals: Vec<Vec<u8>> = (0..6).map(|_| value(&mut rng)).collect();
    let keys: Vec<String> = (0..6).map(key).collect();
    assert_eq!(b.exists(&keys).unwrap(), vec![false; 6]);
    for (k, v) in keys.iter().zip(&vals).take(4) {
        assert!(put(&b, k, v));
    }
    assert_eq!(
        b.exists(&keys).unwrap(),
        [true, true, true, true, false, false]
    );
    for (k, v) in keys.iter().zip(&vals).take(4) {
        assert_eq!(get(&b, k).as_deref(), Some(&v[..]), "{k}");
    }
    assert_eq!(get(&b, &keys[4]), None);
    // The bytes on disk are the documented layout.
    let raw = fs::read(b.path(&keys[0])).unwrap();
    assert_eq!(raw.len(), HEADER + keys[0].len() + OBJ);
    assert_eq!(&raw[..8], b"STRATAKV");
    assert_eq!(&raw[HEADER..HEADER + keys[0].len()], keys[0].as_bytes());
    assert_eq!(&raw[HEADER + keys[0].len()..], &vals[0][..]);
    // Another configuration (another object size) sees no object, and a read of the wrong
    // length leaves the valid file alone.
    let other = FileBackend::open(&dir.path().join("l3"), OBJ + 1, Default::default()).unwrap();
    assert!(!exists(&other, &keys[0]));
    let mut small = vec![0u8; OBJ - 1];
    assert!(
        !other
            .get_into(&[keys[0].clone()], &mut [&mut small[..]])
            .unwrap()[0]
    );
    assert!(b.path(&keys[0]).exists());
    // Overwriting is allowed (the I/O thread skips existing keys; a racing writer may not).
    assert!(put(&b, &keys[0], &vals[5]));
    assert_eq!(get(&b, &keys[0]).as_deref(), Some(&vals[5][..]));
    // Nothing but object files is left behind.
    let names: Vec<String> = fs::read_dir(dir.path().join("l3"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names
        .iter()
        .all(|n| n.ends_with(".skv") && !n.starts_with('.')));
}

#[test]
fn torn_and_corrupt_files_are_misses_and_are_removed() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let dir = tempfile::tempdir().unwrap();
    let b = FileBackend::open(dir.path(), OBJ, Default::default()).unwrap();
    let k = key(3);
    let total = HEADER + k.len() + OBJ;
    for round in 0..24 {
        let v = value(&mut rng);
        assert!(put(&b, &k, &v));
        let path = b.path(&k);
        let mut raw = fs::read(&path).unwrap();
        let what = if round % 2 == 0 {
            // Torn: cut anywhere, header included.
            let cut = rng.random_range(0..total);
            raw.truncate(cut);
            format!("cut at {cut}")
        } else {
            // One flipped bit anywhere: header, key or value.
            let at = rng.random_range(0..total);
            raw[at] ^= 1 << rng.random_range(0..8);
            format!("bit flipped at {at}")
        };
        fs::write(&path, &raw).unwrap();
        // A torn file never passes `exists`; a flipped one has the right size and does.
        assert_eq!(exists(&b, &k), round % 2 == 1, "{what}");
        assert_eq!(get(&b, &k), None, "{what}: wrong bytes returned");
        assert!(!path.exists(), "{what}: the damaged file was not removed");
        // A new write heals it.
        assert!(put(&b, &k, &v));
        assert_eq!(get(&b, &k).as_deref(), Some(&v[..]), "{what}");
    }
    // A file holding another key's object (renamed by hand) is not taken for this key.
    let (k2, v2) = (key(4), value(&mut rng));
    assert!(put(&b, &k2, &v2));
    fs::rename(b.path(&k2), b.path(&k)).unwrap();
    assert_eq!(get(&b, &k), None);
}

#[test]
fn file_names_are_one_safe_component_per_key() {
    let keys = [
        "plain_abc-1.2_0_k".to_string(),
        ".hidden".into(),
        "..".into(),
        "a/b/../c".into(),
        "100%_sure".into(),
        "mödel naïve_0_v".into(),
        "x".repeat(300),
        format!("{}y", "x".repeat(299)),
        "~abc".into(),
    ];
    let stems: Vec<String> = keys.iter().map(|k| file_stem(k)).collect();
    assert_eq!(stems[0], keys[0], "store keys pass through");
    for (k, s) in keys.iter().zip(&stems) {
        assert!(
            !s.contains('/') && !s.starts_with('.') && s.len() <= 200,
            "{k} -> {s}"
        );
        assert!(s.bytes().all(|b| b.is_ascii_graphic()), "{k} -> {s}");
    }
    let mut uniq = stems.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), stems.len(), "{stems:?}");
    // Every such key round-trips.
    let dir = tempfile::tempdir().unwrap();
    let b = FileBackend::open(dir.path(), 8, Default::default()).unwrap();
    for (i, k) in keys.iter().enumerate() {
        let v = [i as u8; 8];
        assert!(b.put(&[k], &[&v[..]], &[0]).unwrap()[0], "{k}");
        let mut got = [0u8; 8];
        assert!(
            b.get_into(std::slice::from_ref(k), &mut [&mut got[..]])
                .unwrap()[0]
        );
        assert_eq!(got, v, "{k}");
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), keys.len());
}

#[test]
fn clear_removes_only_object_and_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let b = FileBackend::open(dir.path(), OBJ, Default::default()).unwrap();
    for i in 0..5 {
        assert!(put(&b, &key(i), &[i as u8; OBJ]));
    }
    fs::write(dir.path().join("notes.txt"), "keep").unwrap();
    fs::write(dir.path().join("abc_model_0_1.bin"), "sglang's").unwrap();
    fs::create_dir(dir.path().join("sub.skv")).unwrap();
    let stale = dir
        .path()
        .join(format!(".{}.skv.tmp.1.00ff", file_stem(&key(9))));
    fs::write(&stale, "half").unwrap();
    b.clear().unwrap();
    let mut left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["abc_model_0_1.bin", "notes.txt", "sub.skv"]);
    assert!(!exists(&b, &key(0)));
}

#[test]
fn a_directory_that_cannot_be_created_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, "x").unwrap();
    let e = FileBackend::open(&file.join("l3"), OBJ, Default::default())
        .err()
        .expect("error");
    assert!(e.contains("cannot create the directory"), "{e}");
    // A directory that vanishes later: writes fail (reported, not fatal), reads miss.
    let b = FileBackend::open(&dir.path().join("gone"), OBJ, Default::default()).unwrap();
    fs::remove_dir(dir.path().join("gone")).unwrap();
    assert!(!put(&b, &key(0), &[1; OBJ]));
    assert_eq!(get(&b, &key(0)), None);
    assert!(b.clear().is_err());
}

/// Writers of one key race (as servers sharing the directory do) while a reader reads: every read
/// returns one writer's complete value or a miss, and no temp file is left.
#[test]
fn concurrent_writers_of_one_key_never_expose_a_partial_object() {
    let s = seed();
    let dir = tempfile::tempdir().unwrap();
    let b =
        std::sync::Arc::new(FileBackend::open(dir.path(), 1 << 16, Default::default()).unwrap());
    let k = key(7);
    let vals: Vec<Vec<u8>> = (0..4)
        .map(|w| {
            let mut r = rand::rngs::StdRng::seed_from_u64(s + w);
            (0..1 << 16).map(|_| r.random()).collect()
        })
        .collect();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let reader = {
        let (b, k, vals, stop) = (b.clone(), k.clone(), vals.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut hits, mut buf) = (0, vec![0u8; 1 << 16]);
            while !stop.load(Ordering::Relaxed) {
                if b.get_into(std::slice::from_ref(&k), &mut [&mut buf[..]])
                    .unwrap()[0]
                {
                    assert!(vals.contains(&buf), "a read returned bytes no writer wrote");
                    hits += 1;
                }
            }
            hits
        })
    };
    let writers: Vec<_> = vals
        .iter()
        .cloned()
        .map(|v| {
            let (b, k) = (b.clone(), k.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert!(b.put(&[&k], &[&v[..]], &[0]).unwrap()[0]);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let hits = reader.join().unwrap();
    println!("{hits} reads hit during the race");
    assert!(vals.contains(&get_sized(&b, &k, 1 << 16)));
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temp files left"
    );
}

fn get_sized(b: &FileBackend, k: &str, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    assert!(b.get_into(&[k.to_string()], &mut [&mut buf[..]]).unwrap()[0]);
    buf
}

#[test]
fn abandoned_temp_files_are_swept_at_open_and_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir
        .path()
        .join(format!(".{}.skv.tmp.1.00aa", file_stem(&key(1))));
    let fresh = dir
        .path()
        .join(format!(".{}.skv.tmp.2.00bb", file_stem(&key(2))));
    fs::write(&old, "half a write").unwrap();
    fs::write(&fresh, "a write in flight").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    fs::write(dir.path().join(".hidden-notes"), "not ours").unwrap();
    let _b = FileBackend::open(dir.path(), OBJ, Default::default()).unwrap();
    assert!(
        !old.exists(),
        "an abandoned temp file older than the limit is removed"
    );
    assert!(
        fresh.exists(),
        "a recent temp file may be another server's write in flight"
    );
    assert!(dir.path().join(".hidden-notes").exists());
}
