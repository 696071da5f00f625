//! The engine's one error type.

use std::path::PathBuf;

/// Everything that can go wrong inside the page store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{path}: {source}")]
    IoAt {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("key length {0} is outside 1..={max}", max = crate::MAX_KEY_LEN)]
    KeyLen(usize),
    #[error("value length {0} is outside {min}..={max}", min = crate::MIN_VALUE_LEN, max = crate::MAX_VALUE_LEN)]
    ValueLen(usize),
    #[error("buffer of {have} bytes is too small for a value of {need} bytes")]
    BufferTooSmall { have: usize, need: usize },
    #[error("{0} is not a strata store (no valid superblock)")]
    NotAStore(PathBuf),
    #[error("{path}: unsupported format version {found} (this build reads version {supported})")]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{0} is open in another process (lock held)")]
    Locked(PathBuf),
    #[error("store is full: no segment can be reclaimed")]
    Full,
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
