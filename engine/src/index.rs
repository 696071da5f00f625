//! The in-memory index: full key -> location of its live record, sharded by xxh3 of the key.
//!
//! The full key is held (not only a hash), so two keys can never be confused; the record's crc is
//! bound to its key as well, so a read of the wrong location fails its check. Each shard also holds
//! the keys whose put is in flight, so that two concurrent puts of one key write it once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

const SHARDS: usize = 64;

/// Where a live page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub epoch: u64,
    pub offset: u32,
    pub value_len: u32,
    pub crc: u32,
    pub seq: u64,
    pub depth: u8,
}

/// An index entry: the location plus whether the page was read since it was written or relocated
/// (reclaim relocates such pages).
#[derive(Debug)]
pub struct Entry {
    pub loc: Location,
    pub hot: AtomicBool,
}

impl From<Location> for Entry {
    fn from(loc: Location) -> Self {
        Self {
            loc,
            hot: AtomicBool::new(false),
        }
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<[u8]>, Entry>,
    pending: HashSet<Box<[u8]>>,
}

/// Sharded key -> [`Entry`] map.
pub struct Index {
    shards: Vec<RwLock<Shard>>,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }
}

fn shard_of(key: &[u8]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key) % SHARDS as u64) as usize
}

impl Index {
    pub fn get(&self, key: &[u8], mark_hot: bool) -> Option<Location> {
        let s = self.shards[shard_of(key)].read();
        let e = s.map.get(key)?;
        if mark_hot {
            e.hot.store(true, Ordering::Relaxed);
        }
        Some(e.loc)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.shards[shard_of(key)].read().map.contains_key(key)
    }

    pub fn is_hot(&self, key: &[u8]) -> bool {
        let s = self.shards[shard_of(key)].read();
        s.map
            .get(key)
            .is_some_and(|e| e.hot.load(Ordering::Relaxed))
    }

    /// Claims `key` for a put: false when it is already stored or being stored.
    pub fn begin_put(&self, key: &[u8]) -> bool {
        let mut s = self.shards[shard_of(key)].write();
        if s.map.contains_key(key) || s.pending.contains(key) {
            return false;
        }
        s.pending.insert(key.into());
        true
    }

    /// Ends a claimed put, publishing the location when the write succeeded.
    pub fn end_put(&self, key: &[u8], loc: Option<Location>) {
        let mut s = self.shards[shard_of(key)].write();
        s.pending.remove(key);
        if let Some(loc) = loc {
            s.map.insert(key.into(), Entry::from(loc));
        }
    }

    /// Inserts or replaces (recovery and relocation).
    pub fn insert(&self, key: &[u8], loc: Location) {
        self.shards[shard_of(key)]
            .write()
            .map
            .insert(key.into(), Entry::from(loc));
    }

    /// Removes the key; with `only` set, only if it still points at that record (by seq).
    pub fn remove(&self, key: &[u8], only: Option<u64>) -> Option<Location> {
        let mut s = self.shards[shard_of(key)].write();
        match (s.map.get(key), only) {
            (None, _) => None,
            (Some(e), Some(seq)) if e.loc.seq != seq => None,
            _ => s.map.remove(key).map(|e| e.loc),
        }
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.write().map.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map.len()).sum()
    }

    /// Sum of live value bytes.
    pub fn live_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .map
                    .values()
                    .map(|e| e.loc.value_len as u64)
                    .sum::<u64>()
            })
            .sum()
    }
}
