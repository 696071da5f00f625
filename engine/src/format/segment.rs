//! Segment header and footer blocks.

use super::{get_u32, get_u64, put_u32, put_u64, BLOCK, VERSION};

pub const HEADER_MAGIC: &[u8; 8] = b"STRATASG";
pub const FOOTER_MAGIC: &[u8; 8] = b"STRATASF";

/// The first block of a segment in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment: u32,
    pub epoch: u64,
    pub store_id: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[0..8].copy_from_slice(HEADER_MAGIC);
        put_u32(&mut b, 8, VERSION);
        put_u32(&mut b, 12, self.segment);
        put_u64(&mut b, 16, self.epoch);
        put_u64(&mut b, 24, self.store_id);
        let crc = crc32c::crc32c(&b[..32]);
        put_u32(&mut b, 32, crc);
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < BLOCK || &b[0..8] != HEADER_MAGIC || get_u32(b, 8) != VERSION {
            return None;
        }
        if crc32c::crc32c(&b[..32]) != get_u32(b, 32) {
            return None;
        }
        Some(Self {
            segment: get_u32(b, 12),
            epoch: get_u64(b, 16),
            store_id: get_u64(b, 24),
        })
    }
}

/// The last block of a sealed segment: where its summary is and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub segment: u32,
    pub epoch: u64,
    pub summary_offset: u32,
    pub summary_len: u32,
    pub entry_count: u32,
    pub summary_crc: u32,
    pub min_seq: u64,
    pub max_seq: u64,
}

impl Footer {
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[0..8].copy_from_slice(FOOTER_MAGIC);
        put_u32(&mut b, 8, VERSION);
        put_u32(&mut b, 12, self.segment);
        put_u64(&mut b, 16, self.epoch);
        put_u32(&mut b, 24, self.summary_offset);
        put_u32(&mut b, 28, self.summary_len);
        put_u32(&mut b, 32, self.entry_count);
        put_u32(&mut b, 36, self.summary_crc);
        put_u64(&mut b, 40, self.min_seq);
        put_u64(&mut b, 48, self.max_seq);
        let crc = crc32c::crc32c(&b[..56]);
        put_u32(&mut b, 56, crc);
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < BLOCK || &b[0..8] != FOOTER_MAGIC || get_u32(b, 8) != VERSION {
            return None;
        }
        if crc32c::crc32c(&b[..56]) != get_u32(b, 56) {
            return None;
        }
        Some(Self {
            segment: get_u32(b, 12),
            epoch: get_u64(b, 16),
            summary_offset: get_u32(b, 24),
            summary_len: get_u32(b, 28),
            entry_count: get_u32(b, 32),
            summary_crc: get_u32(b, 36),
            min_seq: get_u64(b, 40),
            max_seq: get_u64(b, 48),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_footer_round_trip() {
        let h = SegmentHeader {
            segment: 3,
            epoch: 9,
            store_id: 11,
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Some(h));
        let f = Footer {
            segment: 3,
            epoch: 9,
            summary_offset: 8192,
            summary_len: 100,
            entry_count: 2,
            summary_crc: 5,
            min_seq: 1,
            max_seq: 2,
        };
        let mut b = f.encode();
        assert_eq!(Footer::decode(&b), Some(f));
        b[30] ^= 0x10;
        assert_eq!(Footer::decode(&b), None);
    }
}
