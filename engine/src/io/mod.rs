//! The I/O layers, bottom up: 4 KiB-aligned buffers ([`buf`], [`iobuf`], the registered `arena`),
//! the `device` (file or block device, `O_DIRECT`, locked), and the engines that move bytes — the
//! [`engine::IoEngine`] trait with `uring`, `psync` and [`sim`] implementations. Public: the
//! buffers, the trait (inspection reads through it) and the simulated disk (fault-injection
//! tests); the rest is the store's.

pub(crate) mod arena;
pub mod buf;
pub mod device;
pub mod engine;
pub mod iobuf;
pub(crate) mod psync;
pub mod sim;
pub(crate) mod uring;

use std::sync::Arc;

use crate::{Error, IoEngineKind, Result};
use device::Device;
use engine::IoEngine;

/// Opens the configured engine on `dev`; `Auto` tries io_uring and falls back to pread/pwrite with one
/// log line saying why.
pub(crate) fn open_engine(
    dev: Arc<Device>,
    kind: IoEngineKind,
    threads: usize,
    depth: u32,
    arena_bytes: usize,
) -> Result<Arc<dyn IoEngine>> {
    match kind {
        IoEngineKind::Psync => Ok(Arc::new(psync::PsyncEngine::new(dev, threads))),
        IoEngineKind::Uring => Ok(Arc::new(
            uring::UringEngine::new(dev, depth, arena_bytes).map_err(Error::Io)?,
        )),
        IoEngineKind::Auto => match uring::UringEngine::new(dev.clone(), depth, arena_bytes) {
            Ok(e) => Ok(Arc::new(e)),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; falling back to the pread/pwrite engine");
                Ok(Arc::new(psync::PsyncEngine::new(dev, threads)))
            }
        },
    }
}
