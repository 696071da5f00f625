//! The 24-byte frame header: magic, version, opcode, request id and the two section lengths.
//!
//! Invariant: a decoded [`Header`] always satisfies `meta_len <= MAX_META` and
//! `payload_len <= MAX_PAYLOAD`, and names a known opcode.

use crate::error::{ClusterError, ClusterResult};

pub const MAGIC: [u8; 4] = *b"STRT";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// Largest meta section (1 MiB).
pub const MAX_META: u32 = 1 << 20;
/// Largest payload section (1 GiB); clients split larger batches.
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// Operation codes. A response uses `op | 0x80`; [`Op::Error`] is the error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Hello = 0x01,
    Put = 0x10,
    Get = 0x11,
    Exists = 0x12,
    Remove = 0x13,
    Clear = 0x14,
    Stats = 0x15,
    PutLocal = 0x16,
    GetLocal = 0x17,
    RdmaHello = 0x18,
    PutRdma = 0x19,
    GetRdma = 0x1A,
    Register = 0x20,
    Heartbeat = 0x21,
    Members = 0x22,
    Unregister = 0x23,
    Error = 0xFF,
}

impl Op {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Hello,
            0x10 => Self::Put,
            0x11 => Self::Get,
            0x12 => Self::Exists,
            0x13 => Self::Remove,
            0x14 => Self::Clear,
            0x15 => Self::Stats,
            0x16 => Self::PutLocal,
            0x17 => Self::GetLocal,
            0x18 => Self::RdmaHello,
            0x19 => Self::PutRdma,
            0x1A => Self::GetRdma,
            0x20 => Self::Register,
            0x21 => Self::Heartbeat,
            0x22 => Self::Members,
            0x23 => Self::Unregister,
            0xFF => Self::Error,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    /// True for a response frame (opcode byte had 0x80 set, or the error opcode).
    pub response: bool,
    pub request_id: u32,
    pub meta_len: u32,
    pub payload_len: u64,
}

impl Header {
    pub fn request(op: Op, request_id: u32, meta_len: usize, payload_len: u64) -> Self {
        Self {
            op,
            response: false,
            request_id,
            meta_len: meta_len as u32,
            payload_len,
        }
    }

    pub fn response(op: Op, request_id: u32, meta_len: usize, payload_len: u64) -> Self {
        Self {
            response: true,
            ..Self::request(op, request_id, meta_len, payload_len)
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = if self.response && self.op != Op::Error {
            self.op as u8 | 0x80
        } else {
            self.op as u8
        };
        b[8..12].copy_from_slice(&self.request_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.meta_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Decodes and validates a header; every failure is a protocol error that closes the connection.
    pub fn decode(b: &[u8; HEADER_LEN]) -> ClusterResult<Self> {
        let bad = |m: String| Err(ClusterError::Protocol(m));
        if b[0..4] != MAGIC {
            return bad(format!("bad magic {:02x?}", &b[0..4]));
        }
        if b[4] != VERSION {
            return bad(format!("unsupported frame version {}", b[4]));
        }
        let raw = b[5];
        let (op, response) = if raw == Op::Error as u8 {
            (Op::Error, true)
        } else {
            match Op::from_u8(raw & 0x7F) {
                Some(op) => (op, raw & 0x80 != 0),
                None => return bad(format!("unknown opcode {raw:#04x}")),
            }
        };
        if b[6] != 0 || b[7] != 0 {
            return bad("non-zero reserved flags".into());
        }
        let request_id = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        let meta_len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        let payload_len = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        if meta_len > MAX_META {
            return bad(format!(
                "meta section of {meta_len} bytes exceeds {MAX_META}"
            ));
        }
        if payload_len > MAX_PAYLOAD {
            return bad(format!(
                "payload of {payload_len} bytes exceeds {MAX_PAYLOAD}"
            ));
        }
        Ok(Self {
            op,
            response,
            request_id,
            meta_len,
            payload_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = Header::response(Op::Get, 7, 100, 1 << 20);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let e = Header::response(Op::Error, 9, 3, 0);
        assert_eq!(Header::decode(&e.encode()).unwrap(), e);
        for op in [Op::RdmaHello, Op::PutRdma, Op::GetRdma] {
            for h in [
                Header::request(op, 3, 10, 0),
                Header::response(op, 3, 10, 0),
            ] {
                assert_eq!(Header::decode(&h.encode()).unwrap(), h);
            }
        }
    }

    #[test]
    fn rejects_oversized_and_garbage() {
        let mut b = Header::request(Op::Put, 1, 0, 0).encode();
        b[12..16].copy_from_slice(&(MAX_META + 1).to_le_bytes());
        assert!(Header::decode(&b).is_err());
        let mut b = Header::request(Op::Put, 1, 0, 0).encode();
        b[16..24].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(Header::decode(&b).is_err());
        let mut b = Header::request(Op::Put, 1, 0, 0).encode();
        b[5] = 0x42;
        assert!(Header::decode(&b).is_err());
        assert!(Header::decode(b"GET / HTTP/1.1\r\nHost: xx").is_err());
    }
}
