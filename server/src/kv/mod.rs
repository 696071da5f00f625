//! The KV cache's memory: page accounting with RAII handles ([`page`]) and pools that own the
//! page contents in some memory tier ([`pool`] for the device, [`host`] for the hierarchical
//! cache's host tier).

pub mod host;
pub mod page;
pub mod pool;

pub use host::HostKvPool;
pub use page::{FreeList, Page, PageId};
pub use pool::{DeviceKvPool, KvPool, MemoryTier};
