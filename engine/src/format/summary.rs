//! Sealed-segment summaries: an rkyv archive of every record's index entry, read in place at
//! recovery so that a sealed segment is indexed without touching its records.

use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Deserialize, Serialize};

use super::BLOCK;
use crate::io::buf::round_up;

/// One record of a segment, as the index needs it.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SummaryEntry {
    pub key: Vec<u8>,
    pub offset: u32,
    pub value_len: u32,
    pub crc: u32,
    pub seq: u64,
    pub kind: u8,
    pub depth: u8,
}

/// Every record of one sealed segment.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SegmentSummary {
    pub segment: u32,
    pub epoch: u64,
    pub entries: Vec<SummaryEntry>,
}

/// Upper bound on the padded size of a summary of `n` entries whose keys total `key_bytes`
/// (each key counted rounded up to 8).
pub fn reserve(n: usize, key_bytes: usize) -> usize {
    round_up(64 + n * 56 + key_bytes)
}

/// Key length as counted by [`reserve`].
pub fn key_cost(key_len: usize) -> usize {
    (key_len + 7) & !7
}

impl SegmentSummary {
    /// Serialises the summary; the caller pads it to a multiple of 4096.
    pub fn to_bytes(&self) -> Vec<u8> {
        rkyv::to_bytes::<RkyvError>(self)
            .expect("serialising a summary cannot fail")
            .to_vec()
    }

    /// Validates `bytes` (which must be 8-byte aligned: device buffers are) and returns the entries.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let archived = rkyv::access::<ArchivedSegmentSummary, RkyvError>(bytes).ok()?;
        rkyv::deserialize::<SegmentSummary, RkyvError>(archived).ok()
    }
}

/// Padded length of a summary of `len` bytes.
pub fn padded(len: usize) -> usize {
    round_up(len).max(BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AlignedBuf;

    #[test]
    fn round_trip_within_reserve() {
        for n in [0usize, 1, 7, 300] {
            let entries: Vec<_> = (0..n)
                .map(|i| SummaryEntry {
                    key: vec![b'k'; 1 + i % 128],
                    offset: i as u32 * 8192,
                    value_len: 4096,
                    crc: i as u32,
                    seq: i as u64,
                    kind: 1,
                    depth: 255,
                })
                .collect();
            let keys: usize = entries.iter().map(|e| key_cost(e.key.len())).sum();
            let s = SegmentSummary {
                segment: 1,
                epoch: 2,
                entries,
            };
            let bytes = s.to_bytes();
            assert!(bytes.len() <= reserve(n, keys), "n={n} len={}", bytes.len());
            let mut buf = AlignedBuf::new(bytes.len());
            buf[..bytes.len()].copy_from_slice(&bytes);
            assert_eq!(SegmentSummary::from_bytes(&buf[..bytes.len()]), Some(s));
            let mut bad = AlignedBuf::new(bytes.len());
            assert!(SegmentSummary::from_bytes(&bad[..bytes.len()]).is_none() || n == 0);
            bad[..bytes.len()].copy_from_slice(&bytes);
        }
    }
}
