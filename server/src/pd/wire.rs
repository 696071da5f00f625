//! Bytes of the PD KV transfer (docs/protocol.md, "PD KV transfer"). Little-endian throughout.
//!
//! ```text
//! WANT (decode -> prefill): "SPD1" u64 room  u32 prompt_len  u32 page_size  u32 object_bytes
//!                           u16 token_len  token bytes
//! KV   (prefill -> decode): "SPD2" i32 status  u32 n_tokens  u32 first_token  u32 n_pages
//!                           u32 object_bytes  u32 msg_len  msg bytes (UTF-8, errors only)
//!                           u32 lp_len  lp bytes (the first token's log-probabilities, below)
//!                           then n_pages x (K object, V object), object_bytes each
//!                           (status 1 = WAITING: a heartbeat, another KV header follows)
//! ACK  (decode -> prefill): u8 1
//!
//! lp (empty when not asked for): u8 has_logprob  f32 logprob  u32 n_top  n_top x (u32 id, f32)
//!                                u32 n_ids  n_ids x (u32 id, f32)
//! ```

use crate::logprobs::PosLogprobs;
use std::io::{self, Read, Write};

/// Version 2 added the first token's log-probabilities to the KV header.
pub const MAGIC: &[u8; 4] = b"SPD2";
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
#[derive(Debug, Clone, PartialEq)]
pub struct KvHeader {
    pub status: i32,
    pub n_tokens: u32,
    pub first_token: u32,
    pub n_pages: u32,
    pub object_bytes: u32,
    pub msg: String,
    pub first_logprobs: Option<PosLogprobs>,
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
            first_logprobs: None,
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
        let lp = self
            .first_logprobs
            .as_ref()
            .map(encode_lp)
            .unwrap_or_default();
        b.extend_from_slice(&(lp.len() as u32).to_le_bytes());
        b.extend_from_slice(&lp);
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
        let mut l = [0u8; 4];
        r.read_exact(&mut l)?;
        let ll = u32::from_le_bytes(l) as usize;
        if ll > 1 << 20 {
            return Err(bad("PD log-probabilities too long"));
        }
        let mut lp = vec![0u8; ll];
        r.read_exact(&mut lp)?;
        let first_logprobs = if lp.is_empty() {
            None
        } else {
            Some(decode_lp(&lp).ok_or_else(|| bad("malformed PD log-probabilities"))?)
        };
        Ok(KvHeader {
            status: i32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            n_tokens: u32_at(&b, 8),
            first_token: u32_at(&b, 12),
            n_pages: u32_at(&b, 16),
            object_bytes: u32_at(&b, 20),
            msg: String::from_utf8_lossy(&m).into_owned(),
            first_logprobs,
        })
    }
}

fn encode_lp(p: &PosLogprobs) -> Vec<u8> {
    let mut b = Vec::with_capacity(13 + 8 * (p.top.len() + p.ids.len()));
    b.push(p.logprob.is_some() as u8);
    b.extend_from_slice(&p.logprob.unwrap_or(0.0).to_le_bytes());
    for list in [&p.top, &p.ids] {
        b.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for &(id, v) in list.iter() {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

fn decode_lp(b: &[u8]) -> Option<PosLogprobs> {
    let f32_at = |at: usize| {
        b.get(at..at + 4)
            .map(|s| f32::from_le_bytes(s.try_into().unwrap()))
    };
    let u32_at = |at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
    };
    let has = *b.first()? != 0;
    let logprob = f32_at(1)?;
    let mut at = 5;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let n = u32_at(at)? as usize;
        at += 4;
        if n > (b.len() - at) / 8 {
            return None;
        }
        for _ in 0..n {
            list.push((u32_at(at)?, f32_at(at + 4)?));
            at += 8;
        }
    }
    if at != b.len() {
        return None;
    }
    let [top, ids] = lists;
    Some(PosLogprobs {
        logprob: has.then_some(logprob),
        top,
        ids,
    })
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
        assert!(KvHeader::read(&mut &b"SPD2"[..]).is_err());
        // The first token's log-probabilities ride along; a truncated list is refused.
        let mut h = KvHeader::error(OK, "");
        h.first_logprobs = Some(PosLogprobs {
            logprob: Some(-0.25),
            top: vec![(7, -0.25), (3, -1.5)],
            ids: vec![(11, -9.0)],
        });
        let mut b = Vec::new();
        h.write(&mut b).unwrap();
        assert_eq!(KvHeader::read(&mut b.as_slice()).unwrap(), h);
        let lp = encode_lp(h.first_logprobs.as_ref().unwrap());
        assert!(decode_lp(&lp[..lp.len() - 3]).is_none());
        assert!(decode_lp(&[1, 0, 0]).is_none());
    }
}
