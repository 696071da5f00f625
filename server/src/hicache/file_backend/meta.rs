//! The file backend's metadata cache (SGLang's `enable_metadata_cache` / `metadata_ttl`): objects
//! seen to exist (at the right size) are believed to for `metadata_ttl` seconds (negative: until
//! removed here), so `exists` over a slow or remote file system costs a lookup instead of a `stat`
//! per object. Filled by lookups that find an object, reads and writes (SGLang also scans the
//! directory at start); emptied of what this server removes (damaged files, evictions, clear) and
//! of objects a read finds gone. Another server's removal is seen once the entry expires or a read
//! misses; until then a prefetch of it stops there like at any miss.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct MetaCache {
    /// None: entries never expire.
    ttl: Option<Duration>,
    seen: Mutex<HashMap<String, Instant>>,
}

impl MetaCache {
    /// A cache whose entries live `ttl_secs` (negative: forever).
    pub fn new(ttl_secs: f64) -> Self {
        MetaCache {
            ttl: (ttl_secs >= 0.0).then(|| Duration::from_secs_f64(ttl_secs)),
            seen: Mutex::default(),
        }
    }

    /// Whether `stem` was seen to exist recently enough.
    pub fn fresh(&self, stem: &str) -> bool {
        let mut seen = self.seen.lock().expect("meta cache");
        match (seen.get(stem), self.ttl) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(t), Some(ttl)) if t.elapsed() <= ttl => true,
            (Some(_), Some(_)) => {
                seen.remove(stem);
                false
            }
        }
    }

    pub fn add(&self, stem: &str) {
        self.seen
            .lock()
            .expect("meta cache")
            .insert(stem.to_string(), Instant::now());
    }

    pub fn remove(&self, stem: &str) {
        self.seen.lock().expect("meta cache").remove(stem);
    }

    pub fn clear(&self) {
        self.seen.lock().expect("meta cache").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::evict::{resolve, FileOptions};
    use super::super::FileBackend;
    use crate::hicache::storage::L3Backend;

    const OBJ: usize = 64;

    fn backend(dir: &std::path::Path, ttl: Option<f64>) -> FileBackend {
        let limits = FileOptions {
            metadata_ttl: ttl,
            ..FileOptions::default()
        };
        FileBackend::open(dir, OBJ, limits).unwrap()
    }

    fn exists(b: &FileBackend, k: &str) -> bool {
        b.exists(&[k.to_string()]).unwrap()[0]
    }

    /// Removes every object file behind the backend's back (another server's eviction).
    fn remove_all(dir: &std::path::Path) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
    }

    #[test]
    fn seen_objects_exist_until_their_ttl_or_a_missed_read() {
        let (k, v) = ("model_00ab_0_k".to_string(), vec![7u8; OBJ]);
        for (ttl, cached) in [
            (None, false),
            (Some(60.0), true),
            (Some(-1.0), true),
            (Some(0.0), false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let b = backend(dir.path(), ttl);
            assert!(b.put(&[&k], &[&v], &[0]).unwrap()[0]);
            assert!(exists(&b, &k));
            remove_all(dir.path());
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert_eq!(exists(&b, &k), cached, "ttl {ttl:?}");
            // A read that finds the file gone is a miss and forgets the object.
            let mut buf = [0u8; OBJ];
            assert!(
                !b.get_into(std::slice::from_ref(&k), &mut [&mut buf[..]])
                    .unwrap()[0]
            );
            assert!(!exists(&b, &k), "ttl {ttl:?}");
        }
    }

    #[test]
    fn the_extra_config_turns_the_cache_on() {
        let obj = |j: serde_json::Value| j.as_object().unwrap().clone();
        let on = resolve(Some(&obj(
            serde_json::json!({"enable_metadata_cache": true}),
        )));
        assert_eq!(on.metadata_ttl, Some(5.0), "SGLang's default TTL");
        let forever = resolve(Some(&obj(
            serde_json::json!({"enable_metadata_cache": "true", "metadata_ttl": -1}),
        )));
        assert_eq!(forever.metadata_ttl, Some(-1.0));
        let off = resolve(Some(&obj(serde_json::json!({"metadata_ttl": 3}))));
        assert_eq!(off.metadata_ttl, None);
    }
}
