//! Prefix caching over token ids.

pub mod radix;

pub use radix::{NodeId, PrefixMatch, RadixCache};

#[cfg(test)]
mod radix_tests;
