//! Cache namespaces: KV computed under one namespace is never reused by a request of another.
//!
//! A request's namespace comes from what changes its KV or who may see it: its LoRA adapter (an
//! adapter's K and V differ from the base model's) and SGLang's `extra_key` (the OpenAI routes'
//! `cache_salt` + `extra_key`: tenants that must not share cached prefixes). The base model
//! without a key is the default namespace (no [`CacheNs`]), whose L3 keys stay SGLang's. Any other
//! namespace is a 32-byte digest; the radix tree gives each its own root and the L3 page hashes
//! chain from it (`hicache/keys.rs`, docs/hicache.md). An adapter enters by the digest of its
//! content (`LoraAdapter::digest`), not its name: the same adapter loaded again, or on another
//! server, finds its pages; another adapter under the same name does not.

use sha2::{Digest, Sha256};

/// A non-default cache namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheNs(pub [u8; 32]);

impl CacheNs {
    /// The namespace of a request with adapter content digest `adapter` and key `extra_key`
    /// (None for the base model without a key, or with an empty one, as SGLang treats it).
    pub fn of(adapter: Option<&[u8; 32]>, extra_key: Option<&str>) -> Option<CacheNs> {
        let key = extra_key.filter(|k| !k.is_empty());
        if adapter.is_none() && key.is_none() {
            return None;
        }
        let mut h = Sha256::new();
        h.update(b"strata-cache-ns/1\0");
        match adapter {
            Some(d) => {
                h.update([1u8]);
                h.update(d);
            }
            None => h.update([0u8]),
        }
        if let Some(k) = key {
            h.update(k.as_bytes());
        }
        Some(CacheNs(h.finalize().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_only_without_adapter_and_key() {
        assert_eq!(CacheNs::of(None, None), None);
        assert_eq!(CacheNs::of(None, Some("")), None);
        let a = [7u8; 32];
        let all = [
            CacheNs::of(Some(&a), None),
            CacheNs::of(Some(&a), Some("t1")),
            CacheNs::of(None, Some("t1")),
            CacheNs::of(None, Some("t2")),
            CacheNs::of(Some(&[8u8; 32]), None),
        ];
        for (i, x) in all.iter().enumerate() {
            assert!(x.is_some());
            for y in &all[i + 1..] {
                assert_ne!(x, y, "namespaces collide");
            }
        }
        assert_eq!(CacheNs::of(Some(&a), Some("t1")), all[1]);
    }
}
