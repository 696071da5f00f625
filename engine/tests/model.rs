//! Model-based randomised test on the simulated disk: random put / batch put / get / remove / sync /
//! clear / clean reopen / crash-and-reopen sequences with injected read and write errors, checked
//! against a model after every step. The model knows, per key, what must be there, what must not, and
//! which values could legitimately be there; the store may lose unsynced or evicted pages but must
//! never return bytes that were not put under that key.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::*;
use rand::Rng;
use strata_engine::io::sim::{Faults, SimDisk, SimEngine};
use strata_engine::{Store, StoreConfig};

const KEYS: u64 = 48;
const SEG: u64 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Def {
    Present(u32),
    Absent,
    Unknown,
}

#[derive(Debug, Clone)]
struct KeyModel {
    def: Def,
    possible: HashSet<u32>,
    dirty: bool,
    evictable: bool,
    next_gen: u32,
    /// Values whose put reported an error: the write may have landed, and such a record can come back
    /// at the next open until a later record of the key (page or tombstone) is durable.
    ghosts: HashSet<u32>,
    covered: bool,
}

fn val(k: u64, g: u32) -> Vec<u8> {
    let len = 1 + ((k * 7919 + g as u64 * 104_729) % 40_000) as usize;
    value(k * 100_000 + g as u64, len)
}

struct Harness {
    disk: Arc<SimDisk>,
    store: Option<Store>,
    faults: Faults,
    keys: HashMap<u64, KeyModel>,
    reclaims_seen: u64,
    write_back: u64,
}

fn cfg(write_back: u64) -> StoreConfig {
    StoreConfig::new("sim")
        .with_write_back(write_back)
        .with_capacity(64 * 1024 + 24 * SEG)
        .with_segment_size(SEG)
        .with_memory(128 * 1024)
}

impl Harness {
    fn open(&mut self) {
        for m in self.keys.values_mut() {
            if !m.ghosts.is_empty() {
                m.def = Def::Unknown;
            }
        }
        self.disk.set_faults(Faults::default());
        let engine = Arc::new(SimEngine::new(self.disk.clone()));
        self.store = Some(
            Store::open_with_engine(cfg(self.write_back), engine)
                .expect("reopen after crash must succeed"),
        );
        self.disk.set_faults(self.faults);
        self.reclaims_seen = 0;
    }

    fn s(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn note_reclaims(&mut self) {
        let r = self.s().stats().reclaimed_segments;
        if r != self.reclaims_seen {
            self.reclaims_seen = r;
            for m in self.keys.values_mut() {
                m.evictable = true;
            }
        }
    }

    fn check_get(&mut self, k: u64, step: usize) {
        let r = self.s().get(&key(k));
        let m = self.keys.get_mut(&k).unwrap();
        match r {
            Err(_) => {}
            Ok(Some(bytes)) => {
                let g = m
                    .possible
                    .iter()
                    .copied()
                    .find(|&g| val(k, g) == bytes)
                    .unwrap_or_else(|| {
                        panic!(
                            "step {step}: key {k} returned bytes never put ({} bytes)",
                            bytes.len()
                        )
                    });
                match m.def {
                    Def::Present(want) => {
                        assert_eq!(g, want, "step {step}: key {k} returned an older value")
                    }
                    Def::Absent => panic!("step {step}: key {k} was removed but reads back"),
                    Def::Unknown => m.def = Def::Present(g),
                }
            }
            Ok(None) => match m.def {
                Def::Present(g) => {
                    assert!(
                        m.evictable,
                        "step {step}: key {k} (gen {g}) lost without eviction or crash"
                    );
                    m.def = Def::Unknown;
                }
                Def::Absent => {}
                Def::Unknown => {
                    let p: Vec<u32> = m.possible.iter().copied().collect();
                    m.ghosts.extend(p);
                    m.covered = false;
                }
            },
        }
    }

    fn put_result(&mut self, k: u64, g: u32, r: strata_engine::Result<bool>, step: usize) {
        let write_back = self.write_back > 0;
        let m = self.keys.get_mut(&k).unwrap();
        match r {
            Ok(true) => {
                if let Def::Present(old) = m.def {
                    assert!(
                        m.evictable,
                        "step {step}: put of present key {k} (gen {old}) wrote again"
                    );
                }
                m.def = Def::Present(g);
                m.possible.insert(g);
                m.dirty = true;
                m.covered = true;
                // A buffered put can still be lost if its background write fails.
                m.evictable |= write_back;
            }
            Ok(false) => {
                assert_ne!(
                    m.def,
                    Def::Absent,
                    "step {step}: put of absent key {k} reported existing"
                );
            }
            Err(_) => {
                // The write may have landed whole although it reported an error.
                m.def = Def::Unknown;
                m.possible.insert(g);
                m.ghosts.insert(g);
                m.covered = false;
                m.dirty = true;
            }
        }
    }
}

fn run(seed: u64, steps: usize, write_back: u64) {
    let mut r = rng(seed);
    let faults = Faults {
        read_error: 0.02,
        write_error: 0.02,
    };
    let disk = SimDisk::new(64 * 1024 + 24 * SEG, seed, Faults::default());
    let keys = (0..KEYS)
        .map(|k| {
            (
                k,
                KeyModel {
                    def: Def::Absent,
                    possible: HashSet::new(),
                    dirty: false,
                    evictable: false,
                    next_gen: 0,
                    ghosts: HashSet::new(),
                    covered: true,
                },
            )
        })
        .collect();
    let mut h = Harness {
        disk,
        store: None,
        faults,
        keys,
        reclaims_seen: 0,
        write_back,
    };
    h.open();
    for step in 0..steps {
        let k = r.random_range(0..KEYS);
        let op = r.random_range(0..100);
        if std::env::var("STRATA_TRACE").is_ok() {
            eprintln!("step {step} op {op} key {k} model {:?}", h.keys[&k]);
        }
        match op {
            0..=34 => {
                let g = h.keys[&k].next_gen;
                h.keys.get_mut(&k).unwrap().next_gen += 1;
                let res = h.s().put(&key(k), &val(k, g));
                h.put_result(k, g, res, step);
            }
            35..=41 => {
                let ids: Vec<u64> = (0..r.random_range(1..6)).map(|i| (k + i) % KEYS).collect();
                let gens: Vec<u32> = ids
                    .iter()
                    .map(|id| {
                        let m = h.keys.get_mut(id).unwrap();
                        m.next_gen += 1;
                        m.next_gen - 1
                    })
                    .collect();
                let ks: Vec<Vec<u8>> = ids.iter().map(|&id| key(id)).collect();
                let vs: Vec<Vec<u8>> = ids.iter().zip(&gens).map(|(&id, &g)| val(id, g)).collect();
                let items: Vec<(&[u8], &[u8])> = ks
                    .iter()
                    .zip(&vs)
                    .map(|(k, v)| (k.as_slice(), v.as_slice()))
                    .collect();
                let res = h.s().batch_put(&items);
                for ((id, g), r) in ids.iter().zip(gens).zip(res) {
                    h.put_result(*id, g, r, step);
                }
            }
            42..=69 => h.check_get(k, step),
            70..=77 => {
                let res = h.s().remove(&key(k));
                if std::env::var("STRATA_TRACE").is_ok() {
                    eprintln!("  remove -> {res:?}");
                }
                let m = h.keys.get_mut(&k).unwrap();
                match res {
                    Ok(true) => {
                        assert_ne!(m.def, Def::Absent, "step {step}: removed an absent key {k}")
                    }
                    Ok(false) => {
                        if let Def::Present(_) = m.def {
                            assert!(m.evictable, "step {step}: remove missed present key {k}");
                        }
                        // Nothing was written: what may be on the device may come back at reopen.
                        let p: Vec<u32> = m.possible.iter().copied().collect();
                        m.ghosts.extend(p);
                        m.covered = false;
                    }
                    Err(_) => {}
                }
                // A failed tombstone write leaves the old value on the device.
                m.def = if res.is_ok() {
                    Def::Absent
                } else {
                    Def::Unknown
                };
                if matches!(res, Ok(true)) {
                    m.covered = true;
                }
                m.dirty = true;
            }
            78..=85 => {
                if h.s().sync().is_ok() {
                    for m in h.keys.values_mut() {
                        m.dirty = false;
                        if m.covered {
                            m.ghosts.clear();
                        }
                        match m.def {
                            Def::Present(g) => m.possible = HashSet::from([g]),
                            Def::Absent => m.possible.clear(),
                            Def::Unknown => {}
                        }
                        m.possible.extend(m.ghosts.iter().copied());
                    }
                }
            }
            86..=90 => {
                // Crash: whatever was not synced may be lost or torn. `forget` skips the clean-close
                // sealing that dropping would do.
                std::mem::forget(h.store.take());
                h.disk.crash();
                h.open();
                for m in h.keys.values_mut() {
                    if m.dirty {
                        m.def = Def::Unknown;
                    }
                    m.evictable = true;
                    m.dirty = false;
                }
            }
            91..=95 => {
                // Clean stop and reopen (kill -9 equivalent: every returned put is on the device).
                h.store = None;
                h.open();
                for m in h.keys.values_mut() {
                    m.evictable = true;
                }
            }
            96 => {
                let ok = h.s().clear().is_ok();
                for m in h.keys.values_mut() {
                    if ok {
                        m.def = Def::Absent;
                        m.possible.clear();
                        m.dirty = false;
                    } else {
                        m.def = Def::Unknown;
                        m.dirty = true;
                    }
                }
            }
            _ => {
                let ids: Vec<Vec<u8>> = (0..8).map(|i| key((k + i) % KEYS)).collect();
                let refs: Vec<&[u8]> = ids.iter().map(|x| x.as_slice()).collect();
                let n = h.s().batch_exists(&refs);
                assert!(n <= 8);
                for (i, kk) in refs.iter().enumerate() {
                    assert_eq!(
                        h.s().exists(kk),
                        i < n || h.s().exists(kk),
                        "batch_exists prefix"
                    );
                    if i == n {
                        assert!(
                            !h.s().exists(kk),
                            "step {step}: batch_exists stopped at a present key"
                        );
                        break;
                    }
                }
            }
        }
        h.note_reclaims();
        // Invariant: every key reads back consistently with the model.
        if step % 16 == 0 {
            h.disk.set_faults(Faults::default());
            for k in 0..KEYS {
                h.check_get(k, step);
            }
            h.disk.set_faults(h.faults);
        }
    }
}

#[test]
fn model_with_faults_and_crashes() {
    let base = seed("model");
    for i in 0..6u64 {
        // Half the runs buffer puts in a small write-back buffer (so it fills and back-pressures).
        let write_back = if i % 2 == 1 { 96 * 1024 } else { 0 };
        run(base.wrapping_add(i), 1500, write_back);
    }
}
