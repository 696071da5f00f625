//! The KV cache's memory: page accounting with RAII handles ([`page`]) and pools that own the
//! page contents in some memory tier ([`pool`]).

pub mod page;
pub mod pool;

pub use page::{FreeList, Page, PageId};
pub use pool::{DeviceKvPool, KvPool, MemoryTier};
