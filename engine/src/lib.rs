//! strata-engine: the L3 page store (one process, one device; no networking: the cluster crate,
//! `strata-cluster`, serves it to other processes).
//!
//! An embeddable, log-structured store of immutable pages (`put`, `get`, `exists`, their batched forms,
//! `remove`, `clear`) on a file or block device opened `O_DIRECT`, driven by io_uring (or a pread/pwrite
//! pool, or a simulated device for fault-injection tests). See `docs/format.md` for the bytes on disk
//! and `docs/architecture.md` for the picture.

pub mod config;
pub mod error;
pub mod format;
mod index;
pub mod io;
pub mod log;
mod memtier;
mod store;

pub use config::{IoEngineKind, StoreConfig};
pub use error::{Error, Result};
pub use io::buf::AlignedBuf;
pub use store::{open_readonly, PutOptions, Stats, Store};

/// Alignment of every device offset, length and buffer.
pub const ALIGN: usize = 4096;
/// Longest key in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Shortest value in bytes.
pub const MIN_VALUE_LEN: usize = 1;
/// Longest value in bytes (16 MiB).
pub const MAX_VALUE_LEN: usize = 16 << 20;
