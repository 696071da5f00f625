//! Bytes of the PD KV transfer (docs/protocol.md, "PD KV transfer"). Little-endian throughout.
//!
//! ```text
//! WANT (decode -> prefill): "SPD3" u64 room  u32 prompt_len  u32 page_size  u32 object_bytes
//!                           u8 flags (CAN_READ)  u16 token_len  token bytes
//!                           then, when flags has PUSH: u32 dest_len  dest bytes (a dev block:
//!                           the decode's own pool and the request's pool pages there)
//! KV   (prefill -> decode): "SPD3" i32 status  u32 n_tokens  u32 first_token  u32 n_pages
//!                           u32 object_bytes  u32 flags (IN_PLACE)  u32 msg_len  msg bytes
//!                           u32 lp_len  lp bytes (the first token's log-probabilities, below)
//!                           u32 n_ranges  n_ranges x (u64 address, u64 length)
//!                           then, unless IN_PLACE, n_pages x (K object, V object)
//!                           (status 1 = WAITING: a heartbeat, another KV header follows;
//!                            status 2 = PARTIAL: the next n_pages pages, another header follows,
//!                            the final one then carries the rest)
//!                           then, when flags has DEVICE_INFO or ON_DEVICE: u32 dev_len  dev bytes
//! ACK  (decode -> prefill): u8 1 received, 0 refused, 2 send the pages on the socket after all
//! RDMA (either way, before a WANT on TCP): "SPDR" u8 kind (1 OFFER, 2 ACCEPT, 3 DECLINE)
//!                           u16 body_len  body (OFFER / ACCEPT: the store cluster's rdma_hello;
//!                           DECLINE: the reason, UTF-8)
//!
//! dev: 64-byte CUDA IPC handle of the prefill's GPU KV pool  u64 pool_pages  u32 layers
//!      u64 chunk_bytes (one page of one layer's K or V)  u32 n_ids  n_ids x u32 pool page
//!
//! lp (empty when not asked for): u8 has_logprob  f32 logprob  u32 n_top  n_top x (u32 id, f32)
//!                                u32 n_ids  n_ids x (u32 id, f32)
//! ```

use crate::logprobs::PosLogprobs;
use std::io::{self, Read, Write};

/// Version 3 added persistent connections, the flags and the same-host ranges; version 2 the
/// first token's log-probabilities.
pub const MAGIC: &[u8; 4] = b"SPD3";
/// WANT flag: the decode may copy the pages out of the prefill's memory (same-host socket only).
pub const CAN_READ: u8 = 1;
/// WANT flag: the decode takes page objects in page_first_direct order (`[layer][token]`), the
/// order a pool's pages are in; without it a prefill sends page_first (`[token][layer]`).
pub const TAKES_DIRECT: u8 = 2;
/// WANT flag: the decode can open CUDA IPC handles (same-host socket, a GPU runner, IPC on):
/// the prefill adds its pool's handle to the header (DEVICE_INFO).
pub const CAN_IPC: u8 = 4;
/// WANT flag: the decode has this prefill's pool handle open (learned from an earlier header):
/// the prefill may leave the pages in its GPU pool (ON_DEVICE).
pub const IPC_READY: u8 = 8;
/// WANT flag: the decode takes the prompt's pages in parts, each sent as soon as its prefill
/// chunk finished (PARTIAL headers before the final one, which then carries the rest).
pub const TAKES_PARTS: u8 = 16;
/// WANT flag: the prefill may copy the pages itself, device to device, straight into the
/// decode's pool pages listed in `dest` (sent with IPC_READY, to a prefill that announced
/// PUSHES); it then answers PUSHED once they landed.
pub const PUSH: u8 = 32;
/// WANT flag: send this transfer's page bytes over the queue pair this connection set up
/// (RDMA_ACCEPT); set only after one was connected, so a prefill that never accepted never sees it.
pub const RDMA: u8 = 64;
/// KV flag: no page bytes follow; `ranges` are the prefill's memory to copy.
pub const IN_PLACE: u32 = 1;
/// KV flag: the objects (on the socket or in `ranges`) are in page_first_direct order.
pub const DIRECT: u32 = 2;
/// KV flag: the header carries the prefill's GPU pool handle (`device`).
pub const DEVICE_INFO: u32 = 4;
/// KV flag: the pages stay in the prefill's GPU pool (`device.pages`); no bytes follow; the
/// decode copies them device to device and acknowledges (never ACK_SEND).
pub const ON_DEVICE: u32 = 8;
/// KV flag (with DEVICE_INFO): this prefill can copy pages into a decode's GPU pool (PUSH).
pub const PUSHES: u32 = 16;
/// KV flag: the prefill copied this header's pages (the next `n_pages` of the WANT's `dest`
/// pages) into the decode's pool and they have landed; no bytes, no ids follow.
pub const PUSHED: u32 = 32;
/// KV flag: this header's page bytes follow over the connection's queue pair, not on the socket
/// (only after a WANT with RDMA).
pub const VIA_RDMA: u32 = 64;
/// First bytes of the RDMA frames: not WANT's, so a prefill that does not know them refuses the
/// frame as not a PD transfer request and closes the connection (the decode then dials again
/// and does not offer).
pub const RDMA_MAGIC: &[u8; 4] = b"SPDR";
/// RDMA frame kinds: the decode's queue pair and offered geometry; the prefill's queue pair
/// (connected to the offer) and the agreed geometry; the prefill's refusal with a reason.
pub const RDMA_OFFER: u8 = 1;
pub const RDMA_ACCEPT: u8 = 2;
pub const RDMA_DECLINE: u8 = 3;
/// Longest RDMA frame body.
const MAX_RDMA_BODY: usize = 1024;
/// ACK values.
pub const ACK_OK: u8 = 1;
pub const ACK_REFUSED: u8 = 0;
/// After IN_PLACE: the copy failed, send the pages on the socket.
pub const ACK_SEND: u8 = 2;
/// Most ranges one header may announce (2 per page; a 1M-token prompt in pages of 16).
const MAX_RANGES: usize = 1 << 17;
/// Status codes of the KV header.
pub const OK: i32 = 0;
/// Heartbeat: the room's prefill has not finished yet; another header follows.
pub const WAITING: i32 = 1;
/// A part: the next `n_pages` pages of the prompt (one finished prefill chunk's), no ACK;
/// another header follows.
pub const PARTIAL: i32 = 2;
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
    pub flags: u8,
    pub token: String,
    /// PUSH: the decode's GPU pool and, in `pages`, the request's pages there in prompt order.
    pub dest: Option<DeviceInfo>,
}

/// The prefill side's answer header.
#[derive(Debug, Clone, PartialEq)]
pub struct KvHeader {
    pub status: i32,
    pub n_tokens: u32,
    pub first_token: u32,
    pub n_pages: u32,
    pub object_bytes: u32,
    pub flags: u32,
    pub msg: String,
    pub first_logprobs: Option<PosLogprobs>,
    /// IN_PLACE: the prefill's memory, (address in its memory, length), in transfer order: page
    /// after page, each page's K object bytes then its V object bytes.
    pub ranges: Vec<(u64, u64)>,
    /// DEVICE_INFO / ON_DEVICE: the prefill's GPU pool (and, ON_DEVICE, the pages in it).
    pub device: Option<DeviceInfo>,
}

/// A GPU KV pool as another process on the host can open it (CUDA IPC): the prefill's in a KV
/// header, the decode's in a PUSH WANT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `cuIpcGetMemHandle` of the pool allocation (`[layer][k|v][page][chunk]`).
    pub handle: [u8; 64],
    pub pool_pages: u64,
    pub layers: u32,
    /// Bytes of one page of one layer's K (or V).
    pub chunk_bytes: u64,
    /// ON_DEVICE: the prompt's pages in that pool, in order.
    pub pages: Vec<u32>,
}

impl DeviceInfo {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(88 + 4 * self.pages.len());
        b.extend_from_slice(&self.handle);
        b.extend_from_slice(&self.pool_pages.to_le_bytes());
        b.extend_from_slice(&self.layers.to_le_bytes());
        b.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        b.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for p in &self.pages {
            b.extend_from_slice(&p.to_le_bytes());
        }
        b
    }

    /// Appends `u32 len  block` (an empty block when there is none).
    fn write_block(d: Option<&Self>, b: &mut Vec<u8>) {
        let d = d.map(DeviceInfo::encode).unwrap_or_default();
        b.extend_from_slice(&(d.len() as u32).to_le_bytes());
        b.extend_from_slice(&d);
    }

    /// Reads `u32 len  block`; `what` names the block in errors.
    fn read_block(r: &mut impl Read, what: &str) -> io::Result<Self> {
        let mut l = [0u8; 4];
        r.read_exact(&mut l)?;
        let dl = u32::from_le_bytes(l) as usize;
        if dl > 88 + 4 * MAX_RANGES {
            return Err(bad(&format!("PD {what} block too long")));
        }
        let mut d = vec![0u8; dl];
        r.read_exact(&mut d)?;
        DeviceInfo::decode(&d).ok_or_else(|| bad(&format!("malformed PD {what} block")))
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 88 {
            return None;
        }
        let n = u32_at(b, 84) as usize;
        if b.len() != 88 + 4 * n {
            return None;
        }
        Some(DeviceInfo {
            handle: b[..64].try_into().ok()?,
            pool_pages: u64::from_le_bytes(b[64..72].try_into().ok()?),
            layers: u32_at(b, 72),
            chunk_bytes: u64::from_le_bytes(b[76..84].try_into().ok()?),
            pages: (0..n).map(|i| u32_at(b, 88 + 4 * i)).collect(),
        })
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// One RDMA frame (see [`RDMA_MAGIC`]): an offer, an accept or a decline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaFrame {
    pub kind: u8,
    /// OFFER / ACCEPT: an `rdma_hello` (`strata_cluster::transport::rdma::wire::RdmaHello`);
    /// DECLINE: the reason.
    pub body: Vec<u8>,
}

impl RdmaFrame {
    /// A decline saying why (cut to the longest body).
    pub fn decline(why: &str) -> Self {
        let mut end = why.len().min(MAX_RDMA_BODY);
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        RdmaFrame {
            kind: RDMA_DECLINE,
            body: why.as_bytes()[..end].to_vec(),
        }
    }

    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        if self.body.len() > MAX_RDMA_BODY {
            return Err(bad("PD RDMA frame body too long"));
        }
        let mut b = Vec::with_capacity(7 + self.body.len());
        b.extend_from_slice(RDMA_MAGIC);
        b.push(self.kind);
        b.extend_from_slice(&(self.body.len() as u16).to_le_bytes());
        b.extend_from_slice(&self.body);
        w.write_all(&b)
    }

    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut m = [0u8; 4];
        r.read_exact(&mut m)?;
        if &m != RDMA_MAGIC {
            return Err(bad("not a PD RDMA frame"));
        }
        Self::read_rest(r)
    }

    /// The frame after its magic.
    fn read_rest(r: &mut impl Read) -> io::Result<Self> {
        let mut b = [0u8; 3];
        r.read_exact(&mut b)?;
        let kind = b[0];
        if !(RDMA_OFFER..=RDMA_DECLINE).contains(&kind) {
            return Err(bad(&format!("unknown PD RDMA frame kind {kind}")));
        }
        let n = u16::from_le_bytes([b[1], b[2]]) as usize;
        if n > MAX_RDMA_BODY {
            return Err(bad("PD RDMA frame body too long"));
        }
        let mut body = vec![0u8; n];
        r.read_exact(&mut body)?;
        Ok(RdmaFrame { kind, body })
    }
}

/// What a decode sends its prefill's bootstrap server: a transfer's WANT, or an RDMA offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Want(Want),
    Rdma(RdmaFrame),
}

impl Request {
    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut m = [0u8; 4];
        r.read_exact(&mut m)?;
        match &m {
            m if m == MAGIC => Want::read_rest(r).map(Request::Want),
            m if m == RDMA_MAGIC => RdmaFrame::read_rest(r).map(Request::Rdma),
            _ => Err(bad("not a PD transfer request")),
        }
    }
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
        b.push(self.flags);
        b.extend_from_slice(&(t.len().min(u16::MAX as usize) as u16).to_le_bytes());
        b.extend_from_slice(&t[..t.len().min(u16::MAX as usize)]);
        if self.flags & PUSH != 0 {
            DeviceInfo::write_block(self.dest.as_ref(), &mut b);
        }
        w.write_all(&b)
    }

    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut m = [0u8; 4];
        r.read_exact(&mut m)?;
        if &m != MAGIC {
            return Err(bad("not a PD transfer request"));
        }
        Self::read_rest(r)
    }

    /// The WANT after its magic (the offsets below count the magic).
    fn read_rest(r: &mut impl Read) -> io::Result<Self> {
        let mut b = [0u8; 27];
        r.read_exact(&mut b[4..])?;
        let tl = u16::from_le_bytes([b[25], b[26]]) as usize;
        let mut t = vec![0u8; tl];
        r.read_exact(&mut t)?;
        let flags = b[24];
        let dest = if flags & PUSH != 0 {
            Some(DeviceInfo::read_block(r, "destination")?)
        } else {
            None
        };
        Ok(Want {
            room: u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")),
            prompt_len: u32_at(&b, 12),
            page_size: u32_at(&b, 16),
            object_bytes: u32_at(&b, 20),
            flags,
            token: String::from_utf8(t).map_err(|_| bad("token is not UTF-8"))?,
            dest,
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
            flags: 0,
            msg: msg.into(),
            first_logprobs: None,
            ranges: Vec::new(),
            device: None,
        }
    }

    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let m = self.msg.as_bytes();
        let mut b = Vec::with_capacity(40 + m.len() + 16 * self.ranges.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.status.to_le_bytes());
        for v in [
            self.n_tokens,
            self.first_token,
            self.n_pages,
            self.object_bytes,
            self.flags,
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
        b.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for &(a, l) in &self.ranges {
            b.extend_from_slice(&a.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
        }
        if self.flags & (DEVICE_INFO | ON_DEVICE) != 0 {
            DeviceInfo::write_block(self.device.as_ref(), &mut b);
        }
        w.write_all(&b)
    }

    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut b = [0u8; 32];
        r.read_exact(&mut b)?;
        if &b[..4] != MAGIC {
            return Err(bad("not a PD transfer answer"));
        }
        let ml = u32_at(&b, 28) as usize;
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
        r.read_exact(&mut l)?;
        let nr = u32::from_le_bytes(l) as usize;
        if nr > MAX_RANGES {
            return Err(bad("too many PD ranges"));
        }
        let mut rb = vec![0u8; 16 * nr];
        r.read_exact(&mut rb)?;
        let u64_at = |at: usize| u64::from_le_bytes(rb[at..at + 8].try_into().expect("8 bytes"));
        let ranges = (0..nr)
            .map(|i| (u64_at(16 * i), u64_at(16 * i + 8)))
            .collect();
        let flags = u32_at(&b, 24);
        let device = if flags & (DEVICE_INFO | ON_DEVICE) != 0 {
            Some(DeviceInfo::read_block(r, "device")?)
        } else {
            None
        };
        if flags & ON_DEVICE != 0 && device.is_none() {
            return Err(bad("PD pages on the device without a device block"));
        }
        Ok(KvHeader {
            status: i32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            n_tokens: u32_at(&b, 8),
            first_token: u32_at(&b, 12),
            n_pages: u32_at(&b, 16),
            object_bytes: u32_at(&b, 20),
            flags,
            msg: String::from_utf8_lossy(&m).into_owned(),
            first_logprobs,
            ranges,
            device,
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
            flags: CAN_READ,
            token: "tok".into(),
            dest: None,
        };
        let mut b = Vec::new();
        w.write(&mut b).unwrap();
        assert_eq!(Want::read(&mut b.as_slice()).unwrap(), w);
        let h = KvHeader::error(ERR_TIMEOUT, "late");
        let mut b = Vec::new();
        h.write(&mut b).unwrap();
        assert_eq!(KvHeader::read(&mut b.as_slice()).unwrap(), h);
        assert!(Want::read(&mut &b"GET / HTTP/1.1\r\n\r\n......"[..]).is_err());
        assert!(KvHeader::read(&mut &b"SPD3"[..]).is_err());
        // A version-2 peer's frames are refused.
        let mut old = b.clone();
        old[..4].copy_from_slice(b"SPD2");
        assert!(KvHeader::read(&mut old.as_slice()).is_err());
        // Same-host ranges ride in the header.
        let mut h = KvHeader::error(OK, "");
        h.flags = IN_PLACE;
        h.ranges = vec![(0x7f00_0000_1000, 4096), (0x7f00_0000_3000, 4096)];
        let mut b = Vec::new();
        h.write(&mut b).unwrap();
        assert_eq!(KvHeader::read(&mut b.as_slice()).unwrap(), h);
        assert!(KvHeader::read(&mut &b[..b.len() - 1]).is_err());
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

    fn dev(pages: Vec<u32>) -> DeviceInfo {
        let mut handle = [0u8; 64];
        for (i, b) in handle.iter_mut().enumerate() {
            *b = i as u8 ^ 0xA5;
        }
        DeviceInfo {
            handle,
            pool_pages: 1 << 20,
            layers: 32,
            chunk_bytes: 128 << 10,
            pages,
        }
    }

    /// The GPU pool block rides after the ranges when (and only when) a flag announces it; a
    /// header without those flags is byte-identical to what a peer without IPC sends and reads.
    #[test]
    fn device_block_round_trips_and_old_headers_are_unchanged() {
        for (flags, pages) in [
            (DEVICE_INFO, vec![]),
            (ON_DEVICE | DIRECT, vec![7, 3, 900_000]),
        ] {
            let mut h = KvHeader::error(OK, "");
            h.n_pages = pages.len() as u32;
            h.flags = flags;
            h.device = Some(dev(pages));
            let mut b = Vec::new();
            h.write(&mut b).unwrap();
            let first = b.len();
            // A following frame on the same connection is untouched.
            KvHeader::error(WAITING, "").write(&mut b).unwrap();
            let mut r = b.as_slice();
            assert_eq!(KvHeader::read(&mut r).unwrap(), h);
            assert_eq!(KvHeader::read(&mut r).unwrap().status, WAITING);
            assert!(r.is_empty());
            // Truncated or inconsistent blocks are refused.
            let mut r = &b[..first - 3];
            assert!(KvHeader::read(&mut r).is_err());
        }
        // Without DEVICE_INFO / ON_DEVICE no block is written even when one is set: an old decode
        // (which never asks for it) reads the header as before.
        let mut h = KvHeader::error(OK, "");
        h.device = Some(dev(vec![1]));
        let (mut with, mut without) = (Vec::new(), Vec::new());
        h.write(&mut with).unwrap();
        KvHeader::error(OK, "").write(&mut without).unwrap();
        assert_eq!(with, without);
        // ON_DEVICE without a block is malformed.
        let mut b = Vec::new();
        let mut h = KvHeader::error(OK, "");
        h.flags = DEVICE_INFO;
        h.write(&mut b).unwrap();
        let at = 24;
        b[at..at + 4].copy_from_slice(&ON_DEVICE.to_le_bytes());
        // (the block is empty: length 0)
        assert!(KvHeader::read(&mut b.as_slice()).is_err());
        // A WANT's new flags are plain bits of the old flags byte: an old prefill reads the same
        // frame length and ignores them.
        let w = Want {
            room: 5,
            prompt_len: 64,
            page_size: 16,
            object_bytes: 1024,
            flags: CAN_READ | TAKES_DIRECT | CAN_IPC | IPC_READY,
            token: String::new(),
            dest: Some(dev(vec![1])),
        };
        let mut b = Vec::new();
        w.write(&mut b).unwrap();
        assert_eq!(b.len(), 27);
        assert_eq!(
            Want::read(&mut b.as_slice()).unwrap(),
            Want { dest: None, ..w }
        );
    }

    /// A PUSH WANT carries the decode's pool and its pages after the token; the next frame on
    /// the connection is untouched, and a cut or malformed block is refused.
    #[test]
    fn push_want_carries_the_destination_pages() {
        let w = Want {
            room: 9,
            prompt_len: 200,
            page_size: 64,
            object_bytes: 1 << 20,
            flags: TAKES_DIRECT | CAN_IPC | IPC_READY | PUSH,
            token: "t".into(),
            dest: Some(dev(vec![5, 0, 1023, 77])),
        };
        let mut b = Vec::new();
        w.write(&mut b).unwrap();
        let first = b.len();
        assert_eq!(first, 28 + 4 + 88 + 16);
        Want {
            dest: None,
            flags: CAN_READ,
            ..w.clone()
        }
        .write(&mut b)
        .unwrap();
        let mut r = b.as_slice();
        assert_eq!(Want::read(&mut r).unwrap(), w);
        assert_eq!(Want::read(&mut r).unwrap().flags, CAN_READ);
        assert!(r.is_empty());
        assert!(Want::read(&mut &b[..first - 1]).is_err());
        // PUSH without a block is malformed (an empty block is not a pool).
        let mut bare = Vec::new();
        Want { dest: None, ..w }.write(&mut bare).unwrap();
        assert!(Want::read(&mut bare.as_slice()).is_err());
        // PUSHED headers carry no block.
        let mut h = KvHeader::error(PARTIAL, "");
        h.flags = DIRECT | PUSHED;
        h.n_pages = 3;
        let mut b = Vec::new();
        h.write(&mut b).unwrap();
        assert_eq!(KvHeader::read(&mut b.as_slice()).unwrap(), h);
    }

    /// The RDMA frames' exact bytes; a bootstrap server reads either request kind off one
    /// connection in turn, and refuses unknown kinds, oversize bodies and foreign magic.
    #[test]
    fn rdma_frames_have_their_own_magic_and_interleave_with_wants() {
        let offer = RdmaFrame {
            kind: RDMA_OFFER,
            body: vec![1, 2, 3],
        };
        let mut b = Vec::new();
        offer.write(&mut b).unwrap();
        assert_eq!(b, [b'S', b'P', b'D', b'R', 1, 3, 0, 1, 2, 3]);
        let w = Want {
            room: 3,
            prompt_len: 8,
            page_size: 4,
            object_bytes: 256,
            flags: TAKES_DIRECT | RDMA,
            token: String::new(),
            dest: None,
        };
        w.write(&mut b).unwrap();
        RdmaFrame::decline("no NIC").write(&mut b).unwrap();
        let mut r = b.as_slice();
        assert_eq!(Request::read(&mut r).unwrap(), Request::Rdma(offer));
        assert_eq!(Request::read(&mut r).unwrap(), Request::Want(w));
        let d = RdmaFrame::read(&mut r).unwrap();
        assert_eq!((d.kind, d.body.as_slice()), (RDMA_DECLINE, &b"no NIC"[..]));
        assert!(r.is_empty());
        // An older prefill reads the offer as a WANT and refuses it (then closes the connection).
        let mut o = Vec::new();
        RdmaFrame::decline("x").write(&mut o).unwrap();
        assert!(Want::read(&mut o.as_slice()).is_err());
        assert!(RdmaFrame::read(&mut &b"SPDR\x04\x00\x00"[..]).is_err());
        assert!(Request::read(&mut &b"SPDR\x01\xff\xff"[..]).is_err());
        assert!(Request::read(&mut &b"SPDX\x01\x00\x00"[..]).is_err());
        // A decline's reason is cut to the longest body, on a character boundary.
        let long = "é".repeat(MAX_RDMA_BODY);
        let d = RdmaFrame::decline(&long);
        assert_eq!(d.body.len(), MAX_RDMA_BODY);
        assert!(std::str::from_utf8(&d.body).is_ok());
        assert!(RdmaFrame {
            kind: RDMA_ACCEPT,
            body: vec![0; MAX_RDMA_BODY + 1]
        }
        .write(&mut Vec::new())
        .is_err());
    }
}
