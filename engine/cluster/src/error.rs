//! The cluster's error type and its numeric result codes.
//!
//! Per-key results cross the wire and the client API as `i32`/`i64` codes that follow Mooncake's
//! numbering where Mooncake has one (`docs/protocol.md`); whole-call failures are [`ClusterError`].

/// Per-key and whole-call result codes (Mooncake's numbering where one exists).
pub mod code {
    pub const OK: i32 = 0;
    /// PUT only: the key already existed; its bytes were kept. Not an error.
    pub const EXISTED: i32 = 1;
    pub const INTERNAL_ERROR: i32 = -1;
    pub const BUFFER_OVERFLOW: i32 = -10;
    pub const SEGMENT_NOT_FOUND: i32 = -101;
    pub const NO_AVAILABLE_HANDLE: i32 = -200;
    pub const INVALID_PARAMS: i32 = -600;
    pub const OBJECT_NOT_FOUND: i32 = -704;
    pub const TRANSFER_FAIL: i32 = -800;
    pub const RPC_FAIL: i32 = -900;
    pub const UNAUTHORIZED: i32 = -1100;
    pub const PROTOCOL_ERROR: i32 = -1101;
    /// The node may not access the client's memory (same-host path); the client falls back to TCP.
    pub const LOCAL_DENIED: i32 = -1102;
    /// The node cannot (or this build does not) serve RDMA; the connection stays usable over TCP.
    pub const RDMA_UNAVAILABLE: i32 = -1103;
}

/// Everything that can fail a whole cluster call.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("refused by peer (code {code}): {message}")]
    Remote { code: i32, message: String },
    #[error("unauthorized: wrong or missing auth token")]
    Unauthorized,
    #[error("engine: {0}")]
    Engine(#[from] strata_engine::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("no store node is alive")]
    NoNodes,
}

impl ClusterError {
    /// The code a per-key result reports for this failure.
    pub fn code(&self) -> i32 {
        match self {
            Self::Io(_) => code::TRANSFER_FAIL,
            Self::Protocol(_) => code::PROTOCOL_ERROR,
            Self::Remote { code, .. } => *code,
            Self::Unauthorized => code::UNAUTHORIZED,
            Self::Engine(strata_engine::Error::Full) => code::NO_AVAILABLE_HANDLE,
            Self::Engine(strata_engine::Error::KeyLen(_) | strata_engine::Error::ValueLen(_)) => {
                code::INVALID_PARAMS
            }
            Self::Engine(strata_engine::Error::BufferTooSmall { .. }) => code::BUFFER_OVERFLOW,
            Self::Engine(_) => code::INTERNAL_ERROR,
            Self::Config(_) => code::INVALID_PARAMS,
            Self::NoNodes => code::SEGMENT_NOT_FOUND,
        }
    }
}

pub type ClusterResult<T> = std::result::Result<T, ClusterError>;
