//! The file backend's size bound (SGLang's `LRUFileEvictor`): with `max_size` and/or
//! `min_free_space` set, the server keeps a least-recently-used index of the object files in the
//! directory (seeded at start from the files there, oldest modification first) and removes the
//! oldest before a write would pass the cap (down to `eviction_ratio` of it) or leave the file
//! system with less than `min_free_space` available. A write that cannot be admitted (a value
//! over the cap, nothing left to evict) is skipped: the backup counts as failed, nothing stored is
//! damaged. Without either bound the evictor does nothing and the directory grows until cleared.
//!
//! Servers sharing a directory each bound what they see (their own writes, the files present at
//! their start, and others' files they read); removing another server's file only costs it a
//! miss, the same as any eviction.

use super::meta::MetaCache;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file backend's options: the bounds (extra config `max_size`, `min_free_space`,
/// `eviction_ratio`) and the metadata cache (`enable_metadata_cache`, `metadata_ttl`), else SGLang's
/// `SGLANG_HICACHE_FILE_BACKEND_*` variables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FileOptions {
    /// Most bytes the object files may take (0: no cap).
    pub max_size: u64,
    /// Bytes the file system must keep available after a write (0: not checked).
    pub min_free: u64,
    /// Past the cap, evict down to this fraction of it (0 < ratio <= 1; 0.9).
    pub ratio: f64,
    /// How long an object seen to exist is believed to (seconds; negative: until it is removed
    /// here); None: every `exists` looks at the file (`meta.rs`).
    pub metadata_ttl: Option<f64>,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            max_size: 0,
            min_free: 0,
            ratio: 0.9,
            metadata_ttl: None,
        }
    }
}

impl FileOptions {
    /// Whether any bound is set.
    pub fn enabled(&self) -> bool {
        self.max_size > 0 || self.min_free > 0
    }
}

/// A size as SGLang's `human_readable_int` reads it (`1048576`, `25.6k` = 25,600 with
/// lower-case decimal units, `200G` = 200 GiB with upper-case binary ones), plus `Ki` / `KiB` /
/// `KB` style suffixes (binary, as Strata's other size flags). None: not a size.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok().filter(|n: &f64| n.is_finite())?;
    let power = |c: char| "kmgt".find(c.to_ascii_lowercase()).map(|i| i as u32 + 1);
    let unit = unit.trim();
    let mult: u64 = match unit.chars().collect::<Vec<_>>().as_slice() {
        [] | ['b' | 'B'] => 1,
        // SGLang: lower case decimal, upper case binary.
        [c] if c.is_ascii_lowercase() => 1000u64.pow(power(*c)?),
        [c] => 1u64 << (10 * power(*c)?),
        [c, rest @ ..] => {
            let rest: String = rest.iter().collect::<String>().to_ascii_lowercase();
            if !matches!(rest.as_str(), "i" | "ib" | "b") {
                return None;
            }
            1u64 << (10 * power(*c)?)
        }
    };
    Some((n * mult as f64) as u64)
}

/// The bounds from the extra config's keys, else the environment; a value that is not a size
/// turns that bound off with a warning (SGLang's behaviour), a ratio outside (0, 1] is 0.9.
pub fn resolve(extra: Option<&serde_json::Map<String, serde_json::Value>>) -> FileOptions {
    let get = |key: &str, env: &str| -> Option<String> {
        match extra.and_then(|o| o.get(key)).filter(|v| !v.is_null()) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v) => Some(v.to_string()),
            None => std::env::var(env).ok().filter(|s| !s.trim().is_empty()),
        }
    };
    let size = |key: &str, env: &str| -> u64 {
        let Some(v) = get(key, env) else { return 0 };
        parse_size(&v).unwrap_or_else(|| {
            tracing::warn!("hicache file backend: {key} {v:?} is not a size; that bound is off");
            0
        })
    };
    let ratio = get(
        "eviction_ratio",
        "SGLANG_HICACHE_FILE_BACKEND_EVICTION_RATIO",
    )
    .and_then(|r| r.trim().parse::<f64>().ok())
    .filter(|r| *r > 0.0 && *r <= 1.0)
    .unwrap_or(0.9);
    let cache = get(
        "enable_metadata_cache",
        "SGLANG_HICACHE_FILE_BACKEND_ENABLE_METADATA_CACHE",
    )
    .is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        )
    });
    let ttl = get("metadata_ttl", "SGLANG_HICACHE_FILE_BACKEND_METADATA_TTL")
        .and_then(|t| t.trim().parse::<f64>().ok())
        .unwrap_or(5.0);
    FileOptions {
        max_size: size("max_size", "SGLANG_HICACHE_FILE_BACKEND_MAX_SIZE"),
        min_free: size(
            "min_free_space",
            "SGLANG_HICACHE_FILE_BACKEND_MIN_FREE_SPACE",
        ),
        ratio,
        metadata_ttl: cache.then_some(ttl),
    }
}

/// (total, available) bytes of the file system holding `dir`.
fn fs_stats(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a plain struct the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// The recency index: file stem -> (sequence number, bytes); the lowest sequence is the oldest.
#[derive(Default)]
struct Lru {
    order: BTreeMap<u64, String>,
    entries: HashMap<String, (u64, u64)>,
    /// Reserved writes not yet on disk: never evicted.
    pending: HashSet<String>,
    total: u64,
    next: u64,
}

impl Lru {
    fn insert(&mut self, stem: &str, bytes: u64) {
        self.remove(stem);
        self.next += 1;
        self.order.insert(self.next, stem.to_string());
        self.entries.insert(stem.to_string(), (self.next, bytes));
        self.total += bytes;
    }
    fn remove(&mut self, stem: &str) -> Option<u64> {
        let (seq, bytes) = self.entries.remove(stem)?;
        self.order.remove(&seq);
        self.total -= bytes;
        Some(bytes)
    }
    fn touch(&mut self, stem: &str) -> bool {
        match self.entries.get(stem) {
            Some(&(_, bytes)) => {
                self.insert(stem, bytes);
                true
            }
            None => false,
        }
    }
}

/// Bounds one directory's object files.
pub struct Evictor {
    limits: FileOptions,
    dir: PathBuf,
    ext: &'static str,
    lru: Mutex<Lru>,
    /// Told of every file evicted.
    meta: Option<Arc<MetaCache>>,
}

impl Evictor {
    /// An evictor for `dir`'s files ending in `ext`; with bounds set, it clamps the cap to the
    /// file system's size, indexes the files present and evicts down to the bounds at once.
    pub fn open(
        dir: &Path,
        ext: &'static str,
        mut limits: FileOptions,
        meta: Option<Arc<MetaCache>>,
    ) -> Self {
        if limits.enabled() {
            if let Some((total, _)) = fs_stats(dir) {
                let safe = total.saturating_sub(limits.min_free);
                if limits.max_size > safe {
                    tracing::warn!(
                        "hicache file backend: max_size {} B exceeds the file system; clamped to {safe} B",
                        limits.max_size
                    );
                    limits.max_size = safe;
                }
            }
        }
        let e = Evictor {
            limits,
            dir: dir.to_path_buf(),
            ext,
            lru: Mutex::default(),
            meta,
        };
        if limits.enabled() {
            e.scan();
            let mut lru = e.lru.lock().expect("lru");
            if limits.max_size > 0 && lru.total > limits.max_size {
                e.evict_to_cap(&mut lru, 0);
            }
            e.keep_free(&mut lru, 0);
            tracing::info!(
                cap = limits.max_size,
                min_free = limits.min_free,
                ratio = limits.ratio,
                files = lru.entries.len(),
                bytes = lru.total,
                "hicache: L3 directory bounded (LRU eviction)"
            );
        }
        e
    }

    pub fn limits(&self) -> FileOptions {
        self.limits
    }

    /// Bytes of the files indexed now.
    pub fn total(&self) -> u64 {
        self.lru.lock().expect("lru").total
    }

    fn path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}{}", self.ext))
    }

    /// Seeds the index with the object files present, oldest modification first.
    fn scan(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, String, u64)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stem = name.strip_suffix(self.ext)?.to_string();
                let m = e.metadata().ok().filter(|m| m.is_file())?;
                (!stem.starts_with('.')).then_some((m.modified().ok()?, stem, m.len()))
            })
            .collect();
        files.sort();
        let mut lru = self.lru.lock().expect("lru");
        for (_, stem, bytes) in files {
            lru.insert(&stem, bytes);
        }
    }

    /// Admits a write of `bytes` under `stem`, evicting the oldest files as needed; false: the
    /// write is refused (and nothing was reserved). Call [`Evictor::commit`] or
    /// [`Evictor::abort`] after an admitted write.
    pub fn reserve(&self, stem: &str, bytes: u64) -> bool {
        if !self.limits.enabled() {
            return true;
        }
        if self.limits.max_size > 0 && bytes > self.limits.max_size {
            tracing::debug!("hicache: an L3 object of {bytes} B is over max_size: not written");
            return false;
        }
        let mut lru = self.lru.lock().expect("lru");
        // The old copy of this key (if any) is replaced by the write.
        let old = lru.remove(stem);
        if self.limits.max_size > 0 && lru.total + bytes > self.limits.max_size {
            self.evict_to_cap(&mut lru, bytes);
            if lru.total + bytes > self.limits.max_size {
                if let Some(o) = old {
                    lru.insert(stem, o);
                }
                return false;
            }
        }
        if !self.keep_free(&mut lru, bytes) {
            if let Some(o) = old {
                lru.insert(stem, o);
            }
            return false;
        }
        lru.insert(stem, bytes);
        lru.pending.insert(stem.to_string());
        true
    }

    /// The admitted write of `stem` is on disk.
    pub fn commit(&self, stem: &str) {
        if self.limits.enabled() {
            self.lru.lock().expect("lru").pending.remove(stem);
        }
    }

    /// The admitted write of `stem` failed: its reservation is released.
    pub fn abort(&self, stem: &str) {
        if self.limits.enabled() {
            let mut lru = self.lru.lock().expect("lru");
            lru.pending.remove(stem);
            lru.remove(stem);
        }
    }

    /// `stem` was read: it becomes the most recent (indexed now if another server wrote it).
    pub fn touch(&self, stem: &str) {
        if !self.limits.enabled() || self.lru.lock().expect("lru").touch(stem) {
            return;
        }
        if let Ok(m) = std::fs::metadata(self.path(stem)) {
            self.lru.lock().expect("lru").insert(stem, m.len());
        }
    }

    /// `stem`'s file is gone (removed as damaged).
    pub fn forget(&self, stem: &str) {
        if self.limits.enabled() {
            self.lru.lock().expect("lru").remove(stem);
        }
    }

    /// Every object file was removed.
    pub fn clear(&self) {
        *self.lru.lock().expect("lru") = Lru::default();
    }

    /// Removes the oldest files until `needed` more bytes fit under `ratio` of the cap.
    fn evict_to_cap(&self, lru: &mut Lru, needed: u64) {
        let target =
            ((self.limits.max_size as f64 * self.limits.ratio) as u64).saturating_sub(needed);
        self.evict_while(lru, |lru, _| lru.total > target);
    }

    /// Removes the oldest files until writing `needed` bytes leaves `min_free` available; false
    /// when it cannot.
    fn keep_free(&self, lru: &mut Lru, needed: u64) -> bool {
        if self.limits.min_free == 0 {
            return true;
        }
        let Some((_, free)) = fs_stats(&self.dir) else {
            return true;
        };
        let min = self.limits.min_free;
        self.evict_while(lru, |_, freed| (free + freed).saturating_sub(needed) < min);
        fs_stats(&self.dir).is_none_or(|(_, free)| free.saturating_sub(needed) >= min)
    }

    /// Evicts oldest-first (skipping writes in flight) while `go(lru, bytes freed so far)`.
    fn evict_while(&self, lru: &mut Lru, go: impl Fn(&Lru, u64) -> bool) {
        let mut freed = 0;
        while go(lru, freed) {
            let Some(stem) = lru
                .order
                .values()
                .find(|s| !lru.pending.contains(*s))
                .cloned()
            else {
                break;
            };
            if let Some(m) = &self.meta {
                m.remove(&stem);
            }
            match std::fs::remove_file(self.path(&stem)) {
                Ok(()) => freed += lru.remove(&stem).unwrap_or(0),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    lru.remove(&stem);
                }
                Err(e) => {
                    tracing::warn!("hicache: cannot evict the L3 file {stem}: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
