//! Prefix caching over token ids.

pub mod radix;

pub use radix::{Fresh, NodeId, PrefixMatch, RadixCache, Tier};

#[cfg(test)]
mod radix_tests;
