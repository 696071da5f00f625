//! Property tests of the decoders (run in CI by `cargo test`): arbitrary bytes never panic or
//! over-allocate, and everything the encoders write decodes back to the same values.

use proptest::prelude::*;

use super::codec::{self, GetItem, PutItem};
use super::{Header, Hello, Members, Register, HEADER_LEN};
use crate::transport::rdma::plan;
use crate::transport::rdma::wire::{self, Endpoint, RdmaHello};

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..=128)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), plen in any::<u64>()) {
        if bytes.len() >= HEADER_LEN {
            let _ = Header::decode(bytes[..HEADER_LEN].try_into().unwrap());
        }
        let _ = Hello::decode(&bytes);
        let _ = codec::decode_put(&bytes, plen);
        let _ = codec::decode_get(&bytes);
        let _ = codec::decode_put_local(&bytes);
        let _ = codec::decode_put_rdma(&bytes);
        let _ = RdmaHello::decode(&bytes);
        let _ = codec::decode_get_local(&bytes);
        let _ = codec::decode_keys(&bytes);
        let _ = codec::decode_codes(&bytes, 3);
        let _ = codec::decode_flags(&bytes, 3);
        let _ = codec::decode_lens(&bytes, &[10, 1 << 20], Some(plen));
        let _ = codec::decode_error(&bytes);
        let _ = Register::decode(&bytes);
        let _ = Members::decode(&bytes);
    }

    #[test]
    fn header_fields_mutated_stay_checked(op in any::<u8>(), meta in any::<u32>(), plen in any::<u64>()) {
        let mut b = Header::request(super::Op::Put, 1, 0, 0).encode();
        b[5] = op;
        b[12..16].copy_from_slice(&meta.to_le_bytes());
        b[16..24].copy_from_slice(&plen.to_le_bytes());
        if let Ok(h) = Header::decode(&b) {
            prop_assert!(h.meta_len <= super::MAX_META);
            prop_assert!(h.payload_len <= super::MAX_PAYLOAD);
        }
    }

    #[test]
    fn put_roundtrip(items in proptest::collection::vec((key(), 1u32..=(16 << 20), proptest::option::of(0u32..1000)), 0..40)) {
        let puts: Vec<PutItem> = items.iter().map(|(k, l, d)| PutItem { key: k, len: *l, depth: *d }).collect();
        let total = puts.iter().map(|p| u64::from(p.len)).sum();
        let meta = codec::encode_put(&puts);
        prop_assert_eq!(codec::decode_put(&meta, total).unwrap(), puts.clone());
        prop_assert!(codec::decode_put(&meta, total + 1).is_err());
        if !meta.is_empty() {
            prop_assert!(codec::decode_put(&meta[..meta.len() - 1], total).is_err());
        }
    }

    #[test]
    fn get_roundtrip(items in proptest::collection::vec((key(), any::<u32>()), 0..40)) {
        let gets: Vec<GetItem> = items.iter().map(|(k, m)| GetItem { key: k, max_len: *m }).collect();
        let meta = codec::encode_get(&gets);
        prop_assert_eq!(codec::decode_get(&meta).unwrap(), gets);
    }

    #[test]
    fn lens_checked_against_buffers(lens in proptest::collection::vec(-1000i64..100_000, 0..20)) {
        let caps: Vec<usize> = lens.iter().map(|_| 50_000).collect();
        let total: u64 = lens.iter().filter(|&&l| l >= 0).map(|&l| l as u64).sum();
        let r = codec::decode_lens(&codec::encode_lens(&lens), &caps, Some(total));
        prop_assert_eq!(r.is_ok(), lens.iter().all(|&l| l <= 50_000));
    }

    #[test]
    fn put_rdma_roundtrip(items in proptest::collection::vec((key(), 1u32..=(16 << 20), proptest::option::of(0u32..1000)), 0..40)) {
        let puts: Vec<PutItem> = items.iter().map(|(k, l, d)| PutItem { key: k, len: *l, depth: *d }).collect();
        let meta = codec::encode_put(&puts);
        prop_assert_eq!(codec::decode_put_rdma(&meta).unwrap(), puts.clone());
        if !meta.is_empty() {
            prop_assert!(codec::decode_put_rdma(&meta[..meta.len() - 1]).is_err());
        }
    }

    #[test]
    fn rdma_hello_roundtrip(qp in 0u32..=wire::QPN_MASK, lid in any::<u16>(), gid in proptest::option::of(any::<[u8; 16]>()),
                            chunk_pages in 1u32..=(wire::MAX_CHUNK / wire::MIN_CHUNK), depth in 1u32..=wire::MAX_DEPTH) {
        let h = RdmaHello { endpoint: Endpoint { qp_num: qp, lid, gid }, chunk: chunk_pages * wire::MIN_CHUNK, depth };
        let b = h.encode();
        prop_assert_eq!(RdmaHello::decode(&b).unwrap(), h);
        for cut in 0..b.len() {
            prop_assert!(RdmaHello::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn rdma_plan_covers_every_byte_once(lens in proptest::collection::vec(0usize..20_000, 0..30), chunk in 1usize..9000) {
        let p = plan::plan(&lens, chunk).unwrap();
        let mut next: Vec<usize> = vec![0; lens.len()];
        for (i, c) in p.iter().enumerate() {
            prop_assert!(c.len <= chunk && c.len > 0);
            prop_assert!(i + 1 == p.len() || c.len == chunk);
            prop_assert_eq!(c.spans.iter().map(|s| s.len).sum::<usize>(), c.len);
            for s in &c.spans {
                prop_assert_eq!(s.off, next[s.item]);
                next[s.item] += s.len;
            }
        }
        prop_assert_eq!(next, lens);
    }
}
