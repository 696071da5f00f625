//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_engine::{IoEngineKind, StoreConfig};

/// A seed from `STRATA_SEED` or fresh; printed so a failure can be replayed.
pub fn seed(name: &str) -> u64 {
    let seed = std::env::var("STRATA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{name}: seed {seed} (replay with STRATA_SEED={seed})");
    seed
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Deterministic value bytes for (key id, length).
pub fn value(id: u64, len: usize) -> Vec<u8> {
    let mut r = StdRng::seed_from_u64(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ len as u64);
    let mut v = vec![0u8; len];
    r.fill(&mut v[..]);
    v
}

pub fn key(id: u64) -> Vec<u8> {
    format!("{id:016x}-page-key").into_bytes()
}

/// A small store on a temp file with the given engine.
pub fn small_cfg(path: &std::path::Path, kind: IoEngineKind) -> StoreConfig {
    StoreConfig::new(path)
        .with_capacity(64 * 1024 + 16 * (1 << 20))
        .with_segment_size(1 << 20)
        .with_memory(0)
        .with_io_engine(kind)
        .with_queue_depth(16)
        .with_registered_memory(4 << 20)
}
