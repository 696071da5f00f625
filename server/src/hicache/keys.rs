//! L3 page keys, byte-compatible with SGLang's HiCache storage backends.
//!
//! A page's hash is SHA-256 over the previous page's raw 32-byte digest (absent for the first
//! page) followed by the page's token ids as little-endian u32; it is written as 64 lowercase hex
//! digits. Only full pages get a hash. In a non-default cache namespace (`cache/ns.rs`: a LoRA
//! adapter, an `extra_key`) the first page chains from the namespace's 32 bytes as if they were
//! a previous page's digest; the default namespace's hashes are SGLang's. The Mooncake-style backend stores each page as two objects
//! (MHA models): `[<prefix>_]<hash>_<tp_rank>_k` and `..._v`, where `<prefix>` is
//! `<extra_backend_tag>_<model name with '/' replaced by '-'>` (either part may be absent).
//! docs/hicache.md spells this out byte for byte; `tests/fixtures/hicache_keys.json` holds values
//! computed with Python's hashlib.

use crate::cache::CacheNs;
use sha2::{Digest, Sha256};

/// Raw digest of one page.
pub type PageHash = [u8; 32];

/// Hashes of the full pages of `tokens` in namespace `ns`, chained from the first page.
pub fn page_hashes(ns: Option<CacheNs>, tokens: &[u32], page_size: usize) -> Vec<PageHash> {
    let mut out: Vec<PageHash> = Vec::with_capacity(tokens.len() / page_size);
    for page in tokens.chunks_exact(page_size) {
        let mut h = Sha256::new();
        if let Some(prev) = out.last().or(ns.as_ref().map(|n| &n.0)) {
            h.update(prev);
        }
        for t in page {
            h.update(t.to_le_bytes());
        }
        out.push(h.finalize().into());
    }
    out
}

/// How page hashes become store keys.
#[derive(Debug, Clone)]
pub struct KeyScheme {
    /// `"<tag>_<model>_"`, or empty.
    prefix: String,
    /// `"_<tp_rank>"`.
    suffix: String,
}

impl KeyScheme {
    /// SGLang's Mooncake naming for tensor-parallel rank `tp_rank`.
    pub fn new(extra_backend_tag: Option<&str>, model_name: Option<&str>, tp_rank: usize) -> Self {
        let mut parts = Vec::new();
        if let Some(t) = extra_backend_tag {
            parts.push(t.to_string());
        }
        if let Some(m) = model_name.filter(|m| !m.is_empty()) {
            parts.push(m.split('/').collect::<Vec<_>>().join("-"));
        }
        let prefix = if parts.is_empty() {
            String::new()
        } else {
            format!("{}_", parts.join("_"))
        };
        KeyScheme {
            prefix,
            suffix: format!("_{tp_rank}"),
        }
    }

    /// The K and V object keys of one page.
    pub fn kv_keys(&self, h: &PageHash) -> [String; 2] {
        let base = format!("{}{}{}", self.prefix, hex::encode(h), self.suffix);
        [format!("{base}_k"), format!("{base}_v")]
    }

    /// K and V keys of every page, interleaved (k0, v0, k1, v1, ...).
    pub fn keys(&self, hashes: &[PageHash]) -> Vec<String> {
        hashes.iter().flat_map(|h| self.kv_keys(h)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_every_earlier_page_and_skips_partial_pages() {
        let a = page_hashes(None, &[1, 2, 3, 4, 5], 2);
        assert_eq!(a.len(), 2);
        let b = page_hashes(None, &[9, 2, 3, 4], 2);
        assert_ne!(a[1], b[1], "second page hash must depend on the first page");
        assert_eq!(page_hashes(None, &[1, 2, 3, 4], 2), a);
    }

    #[test]
    fn a_namespace_chains_from_its_digest() {
        let ns = CacheNs::of(None, Some("tenant")).unwrap();
        let base = page_hashes(None, &[1, 2, 3, 4], 2);
        let in_ns = page_hashes(Some(ns), &[1, 2, 3, 4], 2);
        assert_ne!(base[0], in_ns[0]);
        assert_ne!(base[1], in_ns[1]);
        // The first page hashes as if the namespace were the digest of a page before it.
        let mut h = Sha256::new();
        h.update(ns.0);
        h.update(1u32.to_le_bytes());
        h.update(2u32.to_le_bytes());
        let first: PageHash = h.finalize().into();
        assert_eq!(in_ns[0], first);
        let other = CacheNs::of(None, Some("other")).unwrap();
        assert_ne!(page_hashes(Some(other), &[1, 2], 2)[0], in_ns[0]);
    }

    #[test]
    fn key_names_follow_the_mooncake_scheme() {
        let h = [0xabu8; 32];
        let hex = "ab".repeat(32);
        let k = KeyScheme::new(None, None, 0).kv_keys(&h);
        assert_eq!(k, [format!("{hex}_0_k"), format!("{hex}_0_v")]);
        let k = KeyScheme::new(Some("t1"), Some("org/model"), 3).kv_keys(&h);
        assert_eq!(k[1], format!("t1_org-model_{hex}_3_v"));
    }
}

#[cfg(test)]
mod fixture {
    use super::*;

    /// Keys computed with Python's hashlib by scripts/hicache_keys.py.
    #[test]
    fn keys_match_python_hashlib() {
        let cases: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/hicache_keys.json"))
                .expect("fixture json");
        let cases = cases.as_array().expect("array");
        assert!(cases.len() >= 4);
        for c in cases {
            let ps = c["page_size"].as_u64().unwrap() as usize;
            let tokens: Vec<u32> = c["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            let hashes = page_hashes(None, &tokens, ps);
            let hex: Vec<String> = hashes.iter().map(hex::encode).collect();
            let want: Vec<String> = serde_json::from_value(c["hashes"].clone()).unwrap();
            assert_eq!(hex, want, "page size {ps}");
            let scheme = KeyScheme::new(
                c["extra_backend_tag"].as_str(),
                c["model_name"].as_str(),
                c["tp_rank"].as_u64().unwrap() as usize,
            );
            let want: Vec<String> = serde_json::from_value(c["keys"].clone()).unwrap();
            assert_eq!(scheme.keys(&hashes), want);
        }
    }
}
