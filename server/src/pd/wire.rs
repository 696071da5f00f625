//! Bytes of the PD KV transfer (docs/protocol.md, "PD KV transfer"). Little-endian throughout.
//!
//! ```text
//! WANT (decode -> prefill): "SPD1" u64 room  u32 prompt_len  u32 page_size  u32 object_bytes
//!                           u16 token_len  token bytes
//! KV   (prefill -> decode): "SPD1" i32 status  u32 n_tokens  u32 first_token  u32 n_pages
//!                           u32 object_bytes  u32 msg_len  msg bytes (UTF-8, errors only)
//!                           then n_pages x (K object, V object), object_bytes each
//!                           (status 1 = WAITING: a heartbeat, another KV header follows)
//! ACK  (decode -> prefill): u8 1
//! ```

use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 4] = b"SPD1";
/// Status codes of the KV header.
pub const OK: i32 = 0;
/// Heartbeat: the room's prefill has not finished yet; another header follows.
pub const WAITING: i32 = 1;
pub const ERR_REFUSED: i32 = -1;
pub const ERR_MISMATCH: i32 = -2;
pub const ERR_TIMEOUT: i32 = -3;
pub const ERR_FAILED: i32 = -4;

/// The decode side's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub room: u64,
    pub prompt_len: u32,
    pub page_size: u32,
    pub object_bytes: u32,
    pub token: String,
}

/// The prefill side's answer header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvHeader {
    pub status: i32,
    pub n_tokens: u32,
    pub first_token: u32,
    pub n_pages: u32,
    pub object_bytes: u32,
    pub msg: String,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Want {
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let t = self.token.as_bytes();
        let mut b = Vec::with_capacity(30 + t.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.room.to_le_bytes());
        b.extend_from_slice(&self.prompt_len.to_le_bytes());
        b.extend_from_slice(&self.page_size.to_le_bytes());
        b.extend_from_slice(&self.object_bytes.to_le_bytes());
        b.extend_from_slice(&(t.len().min(u16::MAX as usize) as u16).to_le_bytes());
        b.extend_from_slice(&t[..t.len().min(u16::MAX as usize)]);
        w.write_all(&b)
    }

    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut b = [0u8; 26];
        r.read_exact(&mut b)?;
        if &b[..4] != MAGIC {
            return Err(bad("not a PD transfer request"));
        }
        let tl = u16::from_le_bytes([b[24], b[25]]) as usize;
        let mut t = vec![0u8; tl];
        r.read_exact(&mut t)?;
        Ok(Want {
            room: u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")),
            prompt_len: u32_at(&b, 12),
            page_size: u32_at(&b, 16),
            object_bytes: u32_at(&b, 20),
            token: String::from_utf8(t).map_err(|_| bad("token is not UTF-8"))?,
        })
    }
}

impl KvHeader {
    /// An error answer.
    pub fn error(status: i32, msg: impl Into<String>) -> Self {
        KvHeader {
            status,
            n_tokens: 0,
            first_token: 0,
            n_pages: 0,
            object_bytes: 0,
            msg: msg.into(),
        }
    }

    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let m = self.msg.as_bytes();
        let mut b = Vec::with_capacity(28 + m.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.status.to_le_bytes());
        for v in [
            self.n_tokens,
            self.first_token,
            self.n_pages,
            self.object_bytes,
            m.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(m);
        w.write_all(&b)
    }

    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut b = [0u8; 28];
        r.read_exact(&mut b)?;
        if &b[..4] != MAGIC {
            return Err(bad("not a PD transfer answer"));
        }
        let ml = u32_at(&b, 24) as usize;
        if ml > 1 << 16 {
            return Err(bad("PD error message too long"));
        }
        let mut m = vec![0u8; ml];
        r.read_exact(&mut m)?;
        Ok(KvHeader {
            status: i32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            n_tokens: u32_at(&b, 8),
            first_token: u32_at(&b, 12),
            n_pages: u32_at(&b, 16),
            object_bytes: u32_at(&b, 20),
            msg: String::from_utf8_lossy(&m).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let w = Want {
            room: u64::MAX >> 1,
            prompt_len: 300,
            page_size: 16,
            object_bytes: 4096,
            token: "tok".into(),
        };
        let mut b = Vec::new();
        w.write(&mut b).unwrap();
        assert_eq!(Want::read(&mut b.as_slice()).unwrap(), w);
        let h = KvHeader::error(ERR_TIMEOUT, "late");
        let mut b = Vec::new();
        h.write(&mut b).unwrap();
        assert_eq!(KvHeader::read(&mut b.as_slice()).unwrap(), h);
        assert!(Want::read(&mut &b"GET / HTTP/1.1\r\n\r\n......"[..]).is_err());
        assert!(KvHeader::read(&mut &b"SPD1"[..]).is_err());
    }
}
