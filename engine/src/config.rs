//! Store configuration: `with_*` setters whose docs state the default; [`StoreConfig::validate`]
//! checks the combination before anything touches the device.

use std::path::PathBuf;

use crate::{Error, Result, ALIGN, MAX_VALUE_LEN};

/// Which I/O engine drives the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngineKind {
    /// io_uring when the kernel allows it, otherwise pread/pwrite (with one log line saying why).
    #[default]
    Auto,
    /// io_uring only; opening fails when it cannot be set up.
    Uring,
    /// A pread/pwrite thread pool.
    Psync,
}

impl std::str::FromStr for IoEngineKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "psync" | "pread" => Ok(Self::Psync),
            other => Err(Error::Config(format!(
                "unknown io engine {other:?} (expected auto, uring or psync)"
            ))),
        }
    }
}

/// How the page store is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub capacity: u64,
    pub segment_size: u64,
    pub memory: u64,
    pub io_engine: IoEngineKind,
    pub queue_depth: u32,
    pub io_threads: usize,
    pub create: bool,
    pub direct: bool,
    pub registered_memory: u64,
    pub write_back: u64,
    pub write_combine: u32,
}

impl StoreConfig {
    /// A store at `path` (a file, created if missing, or a block device).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            capacity: 1 << 30,
            segment_size: 64 << 20,
            memory: 64 << 20,
            io_engine: IoEngineKind::Auto,
            queue_depth: 64,
            io_threads: 2,
            create: true,
            direct: true,
            registered_memory: 64 << 20,
            write_back: 0,
            write_combine: 512 << 10,
        }
    }
    /// Device bytes the store may use (superblock included). Default 1 GiB. A block device's own size
    /// caps it.
    pub fn with_capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }
    /// Segment (region) size: the unit of append and reclaim. Default 64 MiB; must be a multiple of
    /// 4 KiB and hold at least one largest value.
    pub fn with_segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }
    /// Most bytes of one combined write: records that follow each other in the log go to the
    /// device as one write of up to this many bytes (a larger single record is written alone).
    /// Default 512 KiB; 0 writes every record on its own.
    pub fn with_write_combine(mut self, bytes: u32) -> Self {
        self.write_combine = bytes;
        self
    }
    /// Bytes of the DRAM tier in front of the log. Default 64 MiB; 0 disables it.
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }
    /// I/O engine. Default [`IoEngineKind::Auto`].
    pub fn with_io_engine(mut self, kind: IoEngineKind) -> Self {
        self.io_engine = kind;
        self
    }
    /// Submission queue depth of each io_uring ring (and the number of buffers each ring registers).
    /// Default 64.
    pub fn with_queue_depth(mut self, depth: u32) -> Self {
        self.queue_depth = depth;
        self
    }
    /// I/O threads (one ring each, or pread/pwrite workers). Default 2.
    pub fn with_io_threads(mut self, n: usize) -> Self {
        self.io_threads = n;
        self
    }
    /// Create (format) the store when the path holds none. Default true.
    pub fn with_create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }
    /// Open the device `O_DIRECT`. Default true; turned off only for file systems that refuse it
    /// (tmpfs), with a log line.
    pub fn with_direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// Bytes of the registered arena that io_uring rings use for `ReadFixed`/`WriteFixed` (rounded
    /// down to a power of two). Default 64 MiB; 0 disables registered buffers.
    pub fn with_registered_memory(mut self, bytes: u64) -> Self {
        self.registered_memory = bytes;
        self
    }

    /// Bytes of the write-back buffer. 0 (the default): a put returns after its `O_DIRECT` write
    /// completed. Above 0: a put returns once buffered in DRAM (readable at once) and a flusher
    /// thread writes it; it is durable after the next `sync`. A full buffer makes puts wait.
    pub fn with_write_back(mut self, bytes: u64) -> Self {
        self.write_back = bytes;
        self
    }

    /// Checks the configuration before the device is touched.
    pub fn validate(&self) -> Result<()> {
        let seg = self.segment_size;
        if seg % ALIGN as u64 != 0 || seg < 256 * 1024 || seg > u32::MAX as u64 {
            return Err(Error::Config(format!(
                "segment size {seg} must be a multiple of 4096 between 256 KiB and 4 GiB"
            )));
        }
        if self.capacity < crate::format::DATA_START + 2 * seg {
            return Err(Error::Config(format!(
                "capacity {} holds fewer than two segments of {seg} bytes",
                self.capacity
            )));
        }
        if self.queue_depth == 0 || self.queue_depth > 4096 {
            return Err(Error::Config("queue depth must be in 1..=4096".into()));
        }
        if self.registered_memory > 1 << 30 {
            return Err(Error::Config(
                "registered memory is limited to 1 GiB (an io_uring buffer's maximum)".into(),
            ));
        }
        if self.io_threads == 0 || self.io_threads > 64 {
            return Err(Error::Config("io threads must be in 1..=64".into()));
        }
        let _ = MAX_VALUE_LEN;
        Ok(())
    }
}
