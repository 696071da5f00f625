//! Record header blocks: one 4 KiB block in front of every value (and alone for a tombstone).

use super::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64, BLOCK, VERSION};
use crate::io::buf::round_up;
use crate::MAX_KEY_LEN;

pub const MAGIC: &[u8; 8] = b"STRATARC";
const KEY_AT: usize = 48;
const CRC_AT: usize = KEY_AT + MAX_KEY_LEN;

/// What a record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Page = 1,
    Tombstone = 2,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Page),
            2 => Some(Self::Tombstone),
            _ => None,
        }
    }
}

/// Depth hint meaning "unknown".
pub const DEPTH_UNKNOWN: u8 = 255;

/// The decoded header block of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: Vec<u8>,
    pub kind: Kind,
    pub depth: u8,
    pub value_len: u32,
    pub crc: u32,
    pub seq: u64,
    pub epoch: u64,
    pub segment: u32,
}

impl RecordHeader {
    /// Bytes the record occupies on disk: header block plus the value padded to 4 KiB.
    pub fn disk_len(value_len: u32) -> u64 {
        (BLOCK + round_up(value_len as usize)) as u64
    }

    /// Writes the header into the first 4 KiB of `b` (the rest of the block must already be zero).
    pub fn encode_into(&self, b: &mut [u8]) {
        debug_assert!(!self.key.is_empty() && self.key.len() <= MAX_KEY_LEN);
        let b = &mut b[..BLOCK];
        b[0..8].copy_from_slice(MAGIC);
        put_u32(b, 8, VERSION);
        put_u16(b, 12, self.key.len() as u16);
        b[14] = self.kind as u8;
        b[15] = self.depth;
        put_u32(b, 16, self.value_len);
        put_u32(b, 20, self.crc);
        put_u64(b, 24, self.seq);
        put_u64(b, 32, self.epoch);
        put_u32(b, 40, self.segment);
        put_u32(b, 44, 0);
        b[KEY_AT..KEY_AT + MAX_KEY_LEN].fill(0);
        b[KEY_AT..KEY_AT + self.key.len()].copy_from_slice(&self.key);
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        put_u32(b, CRC_AT, crc);
    }

    /// Decodes a header block; `None` unless magic, version, crc and field ranges are all valid.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < BLOCK || &b[0..8] != MAGIC || get_u32(b, 8) != VERSION {
            return None;
        }
        if crc32c::crc32c(&b[..CRC_AT]) != get_u32(b, CRC_AT) {
            return None;
        }
        let key_len = get_u16(b, 12) as usize;
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return None;
        }
        let kind = Kind::from_u8(b[14])?;
        let value_len = get_u32(b, 16);
        if value_len as usize > crate::MAX_VALUE_LEN {
            return None;
        }
        Some(Self {
            key: b[KEY_AT..KEY_AT + key_len].to_vec(),
            kind,
            depth: b[15],
            value_len,
            crc: get_u32(b, 20),
            seq: get_u64(b, 24),
            epoch: get_u64(b, 32),
            segment: get_u32(b, 40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_byte_is_rejected() {
        let h = RecordHeader {
            key: b"abc".to_vec(),
            kind: Kind::Page,
            depth: 2,
            value_len: 5000,
            crc: 77,
            seq: 42,
            epoch: 3,
            segment: 1,
        };
        let mut b = vec![0u8; BLOCK];
        h.encode_into(&mut b);
        assert_eq!(RecordHeader::decode(&b), Some(h));
        assert_eq!(RecordHeader::disk_len(5000), 4096 + 8192);
        for i in 0..CRC_AT + 4 {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert_eq!(RecordHeader::decode(&c), None, "flip at {i}");
        }
    }
}
