//! The superblock: store identity, geometry and `clear_seq`, in two alternating copies.

use super::{get_u32, get_u64, put_u32, put_u64, BLOCK, VERSION};

pub const MAGIC: &[u8; 8] = b"STRATASB";
const CRC_AT: usize = 64;

/// The decoded superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub store_id: u64,
    pub capacity: u64,
    pub segment_size: u64,
    pub segment_count: u32,
    pub clear_seq: u64,
}

/// Outcome of decoding one copy.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Valid(Superblock),
    /// Right magic and crc, another format version.
    OtherVersion(u32),
    Invalid,
}

impl Superblock {
    /// Device offset of the copy this generation is written to.
    pub fn offset(&self) -> u64 {
        (self.generation % 2) * BLOCK as u64
    }

    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[0..8].copy_from_slice(MAGIC);
        put_u32(&mut b, 8, VERSION);
        put_u32(&mut b, 12, 0);
        put_u64(&mut b, 16, self.generation);
        put_u64(&mut b, 24, self.store_id);
        put_u64(&mut b, 32, self.capacity);
        put_u64(&mut b, 40, self.segment_size);
        put_u32(&mut b, 48, self.segment_count);
        put_u64(&mut b, 56, self.clear_seq);
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        put_u32(&mut b, CRC_AT, crc);
        b
    }

    pub fn decode(b: &[u8]) -> Decoded {
        if b.len() < BLOCK || &b[0..8] != MAGIC {
            return Decoded::Invalid;
        }
        if crc32c::crc32c(&b[..CRC_AT]) != get_u32(b, CRC_AT) {
            return Decoded::Invalid;
        }
        let version = get_u32(b, 8);
        if version != VERSION {
            return Decoded::OtherVersion(version);
        }
        Decoded::Valid(Self {
            generation: get_u64(b, 16),
            store_id: get_u64(b, 24),
            capacity: get_u64(b, 32),
            segment_size: get_u64(b, 40),
            segment_count: get_u32(b, 48),
            clear_seq: get_u64(b, 56),
        })
    }

    /// Picks the newest valid copy of two. `Err(version)` when only other-version copies exist.
    pub fn pick(a: &[u8], b: &[u8]) -> Result<Option<Self>, u32> {
        let (da, db) = (Self::decode(a), Self::decode(b));
        match (&da, &db) {
            (Decoded::Valid(x), Decoded::Valid(y)) => {
                Ok(Some(if x.generation >= y.generation { *x } else { *y }))
            }
            (Decoded::Valid(x), _) | (_, Decoded::Valid(x)) => Ok(Some(*x)),
            (Decoded::OtherVersion(v), _) | (_, Decoded::OtherVersion(v)) => Err(*v),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(generation: u64) -> Superblock {
        Superblock {
            generation,
            store_id: 7,
            capacity: 1 << 30,
            segment_size: 1 << 20,
            segment_count: 1000,
            clear_seq: 3,
        }
    }

    #[test]
    fn round_trip_and_pick_newest() {
        let a = sb(4).encode();
        let b = sb(5).encode();
        assert_eq!(Superblock::decode(&a), Decoded::Valid(sb(4)));
        assert_eq!(Superblock::pick(&a, &b), Ok(Some(sb(5))));
        let mut torn = b;
        torn[20] ^= 1;
        assert_eq!(Superblock::pick(&a, &torn), Ok(Some(sb(4))));
        assert_eq!(Superblock::pick(&[0; BLOCK], &[0; BLOCK]), Ok(None));
    }

    #[test]
    fn other_version_is_reported() {
        let mut b = sb(1).encode();
        put_u32(&mut b, 8, 99);
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        put_u32(&mut b, CRC_AT, crc);
        assert_eq!(Superblock::pick(&b, &[0; BLOCK]), Err(99));
    }
}
