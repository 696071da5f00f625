//! Prefix caching over token ids, per cache namespace.

pub mod ns;
pub mod radix;

pub use ns::CacheNs;
pub use radix::{Fresh, NodeId, PrefixMatch, RadixCache, Tier};

#[cfg(test)]
mod radix_tests;
