//! A directory as the HiCache L3 (`--hicache-storage-backend file`, SGLang's `HiCacheFile`):
//! one file per object, named from its key, with a small header whose crc32c binds the bytes to
//! the key. docs/format.md ("HiCache file backend objects") specifies every byte.
//!
//! Writes go to a uniquely named temp file that is renamed into place, so readers and concurrent
//! writers of the same key (servers sharing the directory) only ever see complete files; a torn
//! or damaged file is a miss (and is removed), never wrong bytes. No fsync: the L3 is a cache and
//! every read is checked (docs/format.md says what survives what). An optional size bound evicts
//! the least recently used files ([`evict`]).

pub mod evict;
pub mod meta;

use super::storage::L3Backend;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Bytes before the key.
pub const HEADER: usize = 32;
const MAGIC: &[u8; 8] = b"STRATAKV";
const VERSION: u32 = 1;
/// Longest key accepted.
pub const MAX_KEY: usize = 4096;
/// Longest escaped name kept as is; longer keys are named by their SHA-256.
const MAX_NAME: usize = 200;
/// Object file extension (SGLang's raw files are `.bin`: the two never read each other's).
const EXT: &str = ".skv";
const TMP: &str = ".skv.tmp.";
/// Age past which a temp file is an abandoned write (swept when a server opens the directory).
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);

/// The file name stem of `key`: bytes outside `[A-Za-z0-9_.-]` (and a leading '.') as `%XX`; a
/// stem over [`MAX_NAME`] bytes becomes `~<sha256 hex of key>`.
pub fn file_stem(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.len() > MAX_NAME {
        s = format!("~{}", hex::encode(Sha256::digest(key.as_bytes())));
    }
    s
}

/// The header and key of an object file holding `value` under `key`.
pub fn encode_head(key: &str, value: &[u8]) -> Vec<u8> {
    let k = key.as_bytes();
    let mut h = Vec::with_capacity(HEADER + k.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(k.len() as u32).to_le_bytes());
    h.extend_from_slice(&(value.len() as u64).to_le_bytes());
    h.extend_from_slice(&crc32c::crc32c_append(crc32c::crc32c(k), value).to_le_bytes());
    let hcrc = crc32c::crc32c_append(crc32c::crc32c(&h[..28]), k);
    h.extend_from_slice(&hcrc.to_le_bytes());
    h.extend_from_slice(k);
    h
}

/// Why a read found no value.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    /// No file.
    Absent,
    /// A valid object of another value length (another configuration's): left alone.
    OtherLength(u64),
    /// Torn or corrupt (the reason): removed.
    Damaged(&'static str),
    /// The file could not be read.
    Io(ErrorKind),
}

/// Reads the object `key` from the open file `f` into `dst` (which must be exactly its value
/// length), checking every field of the header and the value crc.
pub fn read_object(f: &mut File, key: &str, dst: &mut [u8]) -> Result<(), Miss> {
    let k = key.as_bytes();
    let size = f.metadata().map_err(|e| Miss::Io(e.kind()))?.len();
    let mut head = vec![0u8; HEADER + k.len()];
    if size < head.len() as u64 {
        return Err(Miss::Damaged("shorter than its header"));
    }
    f.read_exact(&mut head).map_err(|e| Miss::Io(e.kind()))?;
    let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().expect("4 bytes"));
    if &head[..8] != MAGIC || u32_at(8) != VERSION {
        return Err(Miss::Damaged("bad magic or version"));
    }
    let hcrc = crc32c::crc32c_append(crc32c::crc32c(&head[..28]), &head[HEADER..]);
    if u32_at(12) as usize != k.len() || hcrc != u32_at(28) {
        return Err(Miss::Damaged("bad header crc"));
    }
    if &head[HEADER..] != k {
        return Err(Miss::Damaged("another key"));
    }
    let v = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    if size != (HEADER + k.len()) as u64 + v {
        return Err(Miss::Damaged("size differs from its header (torn)"));
    }
    if v != dst.len() as u64 {
        return Err(Miss::OtherLength(v));
    }
    f.read_exact(dst).map_err(|e| Miss::Io(e.kind()))?;
    if crc32c::crc32c_append(crc32c::crc32c(k), dst) != u32_at(24) {
        return Err(Miss::Damaged("bad value crc"));
    }
    Ok(())
}

/// Objects in one directory.
pub struct FileBackend {
    dir: PathBuf,
    /// The size of every value (the host pool's object size); `exists` checks file sizes by it.
    object_bytes: usize,
    /// A write failure was reported (one warning per process; the rest are debug lines).
    warned: AtomicBool,
    /// The size bound (inert without one).
    evict: evict::Evictor,
    /// Objects recently seen to exist (`enable_metadata_cache`).
    meta: Option<Arc<meta::MetaCache>>,
}

impl FileBackend {
    /// Opens (creating it if needed) the directory `dir`. A directory that cannot be created is
    /// an error (SGLang's start-up fails too); one that exists but cannot be written is a
    /// warning: the server reads what others wrote and skips its own backups.
    pub fn open(
        dir: &Path,
        object_bytes: usize,
        limits: evict::FileOptions,
    ) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| {
            format!(
                "--hicache-storage-backend file: cannot create the directory {} ({e}); set SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR to a writable directory",
                dir.display()
            )
        })?;
        let meta = limits
            .metadata_ttl
            .map(|t| Arc::new(meta::MetaCache::new(t)));
        let b = FileBackend {
            dir: dir.to_path_buf(),
            object_bytes,
            warned: AtomicBool::new(false),
            evict: evict::Evictor::open(dir, EXT, limits, meta.clone()),
            meta,
        };
        let probe = b.temp_path("probe");
        match OpenOptions::new().write(true).create_new(true).open(&probe) {
            Ok(_) => drop(fs::remove_file(&probe)),
            Err(e) => b.warn_write(&e),
        }
        let swept = b.sweep_stale_temps(STALE_TEMP);
        tracing::info!(dir = %dir.display(), swept, "hicache: L3 is a file directory");
        Ok(b)
    }

    /// Removes temp files of writes that never finished (a server killed mid-write) once they are
    /// older than `age`; a live writer's temp file exists for milliseconds, so servers sharing the
    /// directory never lose one in flight. Returns how many were removed.
    fn sweep_stale_temps(&self, age: std::time::Duration) -> usize {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        rd.flatten()
            .filter(|e| {
                let name = e.file_name();
                name.to_str()
                    .is_some_and(|n| n.starts_with('.') && n.contains(TMP))
            })
            .filter(|e| {
                e.metadata().is_ok_and(|m| {
                    m.is_file()
                        && m.modified()
                            .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age))
                })
            })
            .filter(|e| fs::remove_file(e.path()).is_ok())
            .count()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}{EXT}", file_stem(key)))
    }

    fn temp_path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!(
            ".{stem}{TMP}{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    fn warn_write(&self, e: &std::io::Error) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = %self.dir.display(),
                "hicache: cannot write to the L3 directory, serving without backups to it: {e}"
            );
        } else {
            tracing::debug!(dir = %self.dir.display(), "hicache: L3 file write failed: {e}");
        }
    }

    /// Reads one object; removes the file when it is damaged.
    fn get_one(&self, key: &str, dst: &mut [u8]) -> bool {
        let path = self.path(key);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(_) => {
                if let Some(m) = &self.meta {
                    m.remove(&file_stem(key));
                }
                return false;
            }
        };
        match read_object(&mut f, key, dst) {
            Ok(()) => {
                let stem = file_stem(key);
                self.evict.touch(&stem);
                if let Some(m) = &self.meta {
                    m.add(&stem);
                }
                true
            }
            Err(Miss::Damaged(why)) => {
                tracing::warn!(path = %path.display(), "hicache: L3 object damaged ({why}): a miss, removed");
                // Remove it only if it is still the file that was read (a writer may have
                // renamed a good one into place since).
                let ino = f.metadata().map(|m| m.ino()).ok();
                if ino.is_some() && fs::metadata(&path).map(|m| m.ino()).ok() == ino {
                    let _ = fs::remove_file(&path);
                    self.evict.forget(&file_stem(key));
                    if let Some(m) = &self.meta {
                        m.remove(&file_stem(key));
                    }
                }
                false
            }
            Err(_) => false,
        }
    }

    /// Writes one object; Ok(false) when the size bound refused it.
    fn put_one(&self, key: &str, value: &[u8]) -> std::io::Result<bool> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "key length out of range",
            ));
        }
        let stem = file_stem(key);
        if !self
            .evict
            .reserve(&stem, (HEADER + key.len() + value.len()) as u64)
        {
            return Ok(false);
        }
        let tmp = self.temp_path(&stem);
        let r = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&encode_head(key, value))?;
                f.write_all(value)?;
                fs::rename(&tmp, self.dir.join(format!("{stem}{EXT}")))
            });
        match r {
            Ok(()) => {
                self.evict.commit(&stem);
                if let Some(m) = &self.meta {
                    m.add(&stem);
                }
            }
            Err(_) => {
                let _ = fs::remove_file(&tmp);
                self.evict.abort(&stem);
            }
        }
        r.map(|()| true)
    }

    /// The size bound in force.
    pub fn limits(&self) -> evict::FileOptions {
        self.evict.limits()
    }

    /// Bytes of the object files the size bound indexes (0 without a bound).
    pub fn indexed_bytes(&self) -> u64 {
        self.evict.total()
    }
}

impl L3Backend for FileBackend {
    fn exists(&self, keys: &[String]) -> Option<Vec<bool>> {
        Some(
            keys.iter()
                .map(|k| {
                    let stem = file_stem(k);
                    if self.meta.as_ref().is_some_and(|m| m.fresh(&stem)) {
                        return true;
                    }
                    let want = (HEADER + k.len() + self.object_bytes) as u64;
                    let ok =
                        fs::metadata(self.path(k)).is_ok_and(|m| m.is_file() && m.len() == want);
                    if let (true, Some(m)) = (ok, &self.meta) {
                        m.add(&stem);
                    }
                    ok
                })
                .collect(),
        )
    }

    fn get_into(&self, keys: &[String], dst: &mut [&mut [u8]]) -> Option<Vec<bool>> {
        Some(
            keys.iter()
                .zip(dst.iter_mut())
                .map(|(k, d)| self.get_one(k, d))
                .collect(),
        )
    }

    fn put(&self, keys: &[&String], vals: &[&[u8]], _depths: &[u32]) -> Option<Vec<bool>> {
        Some(
            keys.iter()
                .zip(vals)
                .map(|(k, v)| match self.put_one(k, v) {
                    Ok(written) => written,
                    Err(e) => {
                        self.warn_write(&e);
                        false
                    }
                })
                .collect(),
        )
    }

    fn clear(&self) -> Result<(), String> {
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?;
        let mut removed = 0usize;
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = if let Some(rest) = name.strip_prefix('.') {
                rest.contains(TMP)
            } else {
                name.ends_with(EXT)
            };
            if !ours || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {name}: {e}")),
            }
        }
        self.evict.clear();
        if let Some(m) = &self.meta {
            m.clear();
        }
        tracing::info!(dir = %self.dir.display(), removed, "hicache: L3 directory cleared");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
