//! The page store facade. TEMPORARY in-memory body: the API is final, the log-structured
//! implementation replaces this file.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::{Error, Result, StoreConfig, MAX_KEY_LEN, MAX_VALUE_LEN, MIN_VALUE_LEN};

/// Hints attached to a put.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions {
    /// Index of this page within its prefix chain (0 = head). Reclaim prefers to keep heads.
    pub depth: Option<u32>,
}

/// Counters reported by [`Store::stats`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub keys: u64,
    pub live_bytes: u64,
    pub capacity: u64,
    pub puts: u64,
    pub gets: u64,
    pub hits: u64,
    pub corrupt_reads: u64,
}

/// An open page store. `Send + Sync`: share it through an `Arc`.
pub struct Store {
    cfg: StoreConfig,
    map: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::KeyLen(key.len()));
    }
    Ok(())
}

impl Store {
    pub fn open(cfg: StoreConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            map: RwLock::new(HashMap::new()),
        })
    }

    /// Stores `value` under `key`. Returns `true` when stored, `false` when the key already existed
    /// (the stored bytes are kept).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        self.put_with(key, value, PutOptions::default())
    }

    pub fn put_with(&self, key: &[u8], value: &[u8], _opts: PutOptions) -> Result<bool> {
        check_key(key)?;
        if value.len() < MIN_VALUE_LEN || value.len() > MAX_VALUE_LEN {
            return Err(Error::ValueLen(value.len()));
        }
        let mut m = self.map.write();
        if m.contains_key(key) {
            return Ok(false);
        }
        m.insert(key.to_vec(), value.to_vec());
        Ok(true)
    }

    pub fn batch_put(&self, items: &[(&[u8], &[u8])]) -> Vec<Result<bool>> {
        items.iter().map(|(k, v)| self.put(k, v)).collect()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        Ok(self.map.read().get(key).cloned())
    }

    /// Reads the value into `buf` (4 KiB-aligned buffers take the zero-copy path). Returns the value
    /// length, or `None` on a miss.
    pub fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<usize>> {
        check_key(key)?;
        let m = self.map.read();
        let Some(v) = m.get(key) else { return Ok(None) };
        if buf.len() < v.len() {
            return Err(Error::BufferTooSmall {
                have: buf.len(),
                need: v.len(),
            });
        }
        buf[..v.len()].copy_from_slice(v);
        Ok(Some(v.len()))
    }

    pub fn batch_get(&self, keys: &[&[u8]]) -> Vec<Result<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    pub fn batch_get_into(
        &self,
        keys: &[&[u8]],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<Option<usize>>> {
        keys.iter()
            .zip(bufs.iter_mut())
            .map(|(k, b)| self.get_into(k, b))
            .collect()
    }

    pub fn exists(&self, key: &[u8]) -> bool {
        self.map.read().contains_key(key)
    }

    /// Length of the value stored under `key`.
    pub fn value_len(&self, key: &[u8]) -> Option<usize> {
        self.map.read().get(key).map(Vec::len)
    }

    /// How many keys hit consecutively from the start.
    pub fn batch_exists(&self, keys: &[&[u8]]) -> usize {
        keys.iter().take_while(|k| self.exists(k)).count()
    }

    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        Ok(self.map.write().remove(key).is_some())
    }

    pub fn clear(&self) -> Result<()> {
        self.map.write().clear();
        Ok(())
    }

    /// Makes every completed put survive a power cut.
    pub fn sync(&self) -> Result<()> {
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        let m = self.map.read();
        Stats {
            keys: m.len() as u64,
            live_bytes: m.values().map(|v| v.len() as u64).sum(),
            capacity: self.cfg.capacity,
            ..Stats::default()
        }
    }
}
