//! Meta-section encoding: a bounds-checked [`Reader`], a [`Writer`], and the typed bodies of each
//! opcode. Every count and length is validated against the limits in [`super`] before it is used to
//! allocate or index, and a body must be consumed exactly (trailing bytes are an error).

use super::{MAX_ITEMS, MAX_STR};
use crate::error::{ClusterError, ClusterResult};
use strata_engine::{MAX_KEY_LEN, MAX_VALUE_LEN};

fn err<T>(m: impl Into<String>) -> ClusterResult<T> {
    Err(ClusterError::Protocol(m.into()))
}

/// A cursor over a received meta section.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> ClusterResult<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return err(format!(
                "meta truncated: need {n} bytes at offset {}",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> ClusterResult<u8> {
        Ok(self.take(1)?[0])
    }

    /// An item count, at most [`MAX_ITEMS`].
    pub fn count(&mut self) -> ClusterResult<usize> {
        let n = self.u32()? as usize;
        if n > MAX_ITEMS {
            return err(format!("{n} items exceed the limit of {MAX_ITEMS}"));
        }
        Ok(n)
    }

    /// A key: `u8` length in 1..=128, then the bytes.
    pub fn key(&mut self) -> ClusterResult<&'a [u8]> {
        let n = self.u8()? as usize;
        if n == 0 || n > MAX_KEY_LEN {
            return err(format!("key length {n} outside 1..={MAX_KEY_LEN}"));
        }
        self.take(n)
    }

    /// A UTF-8 string of at most [`MAX_STR`] bytes.
    pub fn str(&mut self) -> ClusterResult<&'a str> {
        let n = self.u16()? as usize;
        if n > MAX_STR {
            return err(format!("string of {n} bytes exceeds {MAX_STR}"));
        }
        std::str::from_utf8(self.take(n)?).or_else(|_| err("string is not UTF-8"))
    }

    /// Exactly `N` raw bytes.
    pub fn array<const N: usize>(&mut self) -> ClusterResult<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// A `u32`-length byte blob (bounded by the meta section itself).
    pub fn blob(&mut self) -> ClusterResult<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Fails unless the whole section was consumed.
    pub fn finish(&self) -> ClusterResult<()> {
        if self.pos != self.buf.len() {
            return err(format!(
                "{} trailing bytes in meta",
                self.buf.len() - self.pos
            ));
        }
        Ok(())
    }
}

/// The little-endian integer fields of a meta section: `Reader::u32()`, `Writer::u32(v)`, ...
macro_rules! le_fields {
    ($($t:ident),*) => {
        impl Reader<'_> {
            $(pub fn $t(&mut self) -> ClusterResult<$t> {
                Ok($t::from_le_bytes(self.array()?))
            })*
        }
        impl Writer {
            $(pub fn $t(&mut self, v: $t) -> &mut Self {
                self.buf.extend_from_slice(&v.to_le_bytes());
                self
            })*
        }
    };
}
le_fields!(u16, u32, u64, i32, i64);

/// Builds a meta section.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// Callers validate key lengths first (the client API does); an invalid key panics here.
    pub fn key(&mut self, k: &[u8]) -> &mut Self {
        assert!(
            !k.is_empty() && k.len() <= MAX_KEY_LEN,
            "key length checked by caller"
        );
        self.u8(k.len() as u8);
        self.buf.extend_from_slice(k);
        self
    }
    /// Strings longer than [`MAX_STR`] are truncated at a char boundary.
    pub fn str(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(MAX_STR);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.buf.extend_from_slice(&s.as_bytes()[..end]);
        self
    }
    /// Raw bytes without a length (the reader knows how many).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// HELLO request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub token: String,
    pub peer: String,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.version).str(&self.token).str(&self.peer);
        w.finish()
    }
    pub fn decode(meta: &[u8]) -> ClusterResult<Self> {
        let mut r = Reader::new(meta);
        let h = Self {
            version: r.u32()?,
            token: r.str()?.to_owned(),
            peer: r.str()?.to_owned(),
        };
        r.finish()?;
        Ok(h)
    }
}

/// One PUT item; its value is the next `len` bytes of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutItem<'a> {
    pub key: &'a [u8],
    pub len: u32,
    pub depth: Option<u32>,
}

/// Encodes a PUT meta section.
pub fn encode_put(items: &[PutItem<'_>]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(items.len() as u32);
    for it in items {
        w.key(it.key).u32(it.len).u32(it.depth.unwrap_or(u32::MAX));
    }
    w.finish()
}

/// Decodes a PUT meta section and checks that the values exactly fill `payload_len`.
pub fn decode_put(meta: &[u8], payload_len: u64) -> ClusterResult<Vec<PutItem<'_>>> {
    let (items, _, total) = decode_put_items(meta, false)?;
    if total != payload_len {
        return err(format!(
            "values sum to {total} bytes, payload has {payload_len}"
        ));
    }
    Ok(items)
}

/// Decodes PUT_RDMA (PUT's meta; the values follow over the queue pair, not in the frame). The
/// values must fit in one payload's limit.
pub fn decode_put_rdma(meta: &[u8]) -> ClusterResult<Vec<PutItem<'_>>> {
    let (items, _, total) = decode_put_items(meta, false)?;
    check_out_of_band(total)?;
    Ok(items)
}

fn check_out_of_band(total: u64) -> ClusterResult<()> {
    if total > super::MAX_PAYLOAD {
        return err(format!(
            "values sum to {total} bytes, more than one payload"
        ));
    }
    Ok(())
}

/// PUT items (each followed by a `u64` address when `with_addr`), and their values' total length.
fn decode_put_items(
    meta: &[u8],
    with_addr: bool,
) -> ClusterResult<(Vec<PutItem<'_>>, Vec<u64>, u64)> {
    let mut r = Reader::new(meta);
    let n = r.count()?;
    let (mut items, mut addrs) = (Vec::with_capacity(n), Vec::new());
    let mut total = 0u64;
    for _ in 0..n {
        let key = r.key()?;
        let len = r.u32()?;
        if len == 0 || len as usize > MAX_VALUE_LEN {
            return err(format!("value length {len} outside 1..={MAX_VALUE_LEN}"));
        }
        let depth = r.u32()?;
        total += u64::from(len);
        items.push(PutItem {
            key,
            len,
            depth: (depth != u32::MAX).then_some(depth),
        });
        if with_addr {
            addrs.push(r.u64()?);
        }
    }
    r.finish()?;
    Ok((items, addrs, total))
}

/// Encodes a PUT_LOCAL meta section: PUT's items, each followed by the value's address in the
/// sender's memory.
pub fn encode_put_local(items: &[PutItem<'_>], addrs: &[u64]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(items.len() as u32);
    for (it, &a) in items.iter().zip(addrs) {
        w.key(it.key)
            .u32(it.len)
            .u32(it.depth.unwrap_or(u32::MAX))
            .u64(a);
    }
    w.finish()
}

/// Decodes PUT_LOCAL; the values must fit in one payload's limit.
pub fn decode_put_local(meta: &[u8]) -> ClusterResult<(Vec<PutItem<'_>>, Vec<u64>)> {
    let (items, addrs, total) = decode_put_items(meta, true)?;
    check_out_of_band(total)?;
    Ok((items, addrs))
}

/// Encodes GET_LOCAL: GET's items, each followed by the destination address in the sender's memory.
pub fn encode_get_local(items: &[GetItem<'_>], addrs: &[u64]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(items.len() as u32);
    for (it, &a) in items.iter().zip(addrs) {
        w.key(it.key).u32(it.max_len).u64(a);
    }
    w.finish()
}

pub fn decode_get_local(meta: &[u8]) -> ClusterResult<(Vec<GetItem<'_>>, Vec<u64>)> {
    let mut r = Reader::new(meta);
    let n = r.count()?;
    let (mut items, mut addrs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        items.push(GetItem {
            key: r.key()?,
            max_len: r.u32()?,
        });
        addrs.push(r.u64()?);
    }
    r.finish()?;
    Ok((items, addrs))
}

/// One GET item: the key and the capacity of the caller's destination buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetItem<'a> {
    pub key: &'a [u8],
    pub max_len: u32,
}

pub fn encode_get(items: &[GetItem<'_>]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(items.len() as u32);
    for it in items {
        w.key(it.key).u32(it.max_len);
    }
    w.finish()
}

pub fn decode_get(meta: &[u8]) -> ClusterResult<Vec<GetItem<'_>>> {
    let mut r = Reader::new(meta);
    let n = r.count()?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(GetItem {
            key: r.key()?,
            max_len: r.u32()?,
        });
    }
    r.finish()?;
    Ok(items)
}

/// EXISTS / REMOVE request: a list of keys.
pub fn encode_keys(keys: &[&[u8]]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(keys.len() as u32);
    for k in keys {
        w.key(k);
    }
    w.finish()
}

pub fn decode_keys(meta: &[u8]) -> ClusterResult<Vec<&[u8]>> {
    let mut r = Reader::new(meta);
    let n = r.count()?;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(r.key()?);
    }
    r.finish()?;
    Ok(keys)
}

/// A response list of `i32` codes (PUT, REMOVE).
pub fn encode_codes(codes: &[i32]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(codes.len() as u32);
    for &c in codes {
        w.i32(c);
    }
    w.finish()
}

pub fn decode_codes(meta: &[u8], expect: usize) -> ClusterResult<Vec<i32>> {
    let mut r = Reader::new(meta);
    let n = r.count()?;
    if n != expect {
        return err(format!("{n} results for {expect} items"));
    }
    let v = (0..n).map(|_| r.i32()).collect::<ClusterResult<Vec<_>>>()?;
    r.finish()?;
    Ok(v)
}

/// GET response: per key, a length (>= 0, its bytes are in the payload) or a negative code.
pub fn encode_lens(lens: &[i64]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(lens.len() as u32);
    for &l in lens {
        w.i64(l);
    }
    w.finish()
}

/// Decodes a GET response and checks it against the request's buffer capacities and payload length.
/// `payload_len` is `None` for GET_LOCAL, whose values travel outside the frame.
pub fn decode_lens(
    meta: &[u8],
    max_lens: &[usize],
    payload_len: Option<u64>,
) -> ClusterResult<Vec<i64>> {
    let mut r = Reader::new(meta);
    let n = r.count()?;
    if n != max_lens.len() {
        return err(format!("{n} results for {} items", max_lens.len()));
    }
    let mut total = 0u64;
    let mut v = Vec::with_capacity(n);
    for &cap in max_lens {
        let l = r.i64()?;
        if l >= 0 {
            if l as u64 > cap as u64 {
                return err(format!("value of {l} bytes for a buffer of {cap}"));
            }
            total += l as u64;
        }
        v.push(l);
    }
    r.finish()?;
    match payload_len {
        Some(p) if p != total => err(format!("values sum to {total} bytes, payload has {p}")),
        _ => Ok(v),
    }
}

/// EXISTS response: one flag per key.
pub fn encode_flags(flags: &[bool]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(flags.len() as u32);
    for &f in flags {
        w.u8(f as u8);
    }
    w.finish()
}

pub fn decode_flags(meta: &[u8], expect: usize) -> ClusterResult<Vec<bool>> {
    let mut r = Reader::new(meta);
    let n = r.count()?;
    if n != expect {
        return err(format!("{n} results for {expect} items"));
    }
    let v = (0..n)
        .map(|_| r.u8().map(|b| b != 0))
        .collect::<ClusterResult<Vec<_>>>()?;
    r.finish()?;
    Ok(v)
}

/// Error response body.
pub fn encode_error(code: i32, message: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.i32(code).str(message);
    w.finish()
}

pub fn decode_error(meta: &[u8]) -> ClusterError {
    let mut r = Reader::new(meta);
    match (r.i32(), r.str()) {
        (Ok(code), Ok(m)) if code == crate::error::code::UNAUTHORIZED => {
            let _ = m;
            ClusterError::Unauthorized
        }
        (Ok(code), Ok(m)) => ClusterError::Remote {
            code,
            message: m.to_owned(),
        },
        _ => ClusterError::Protocol("malformed error response".into()),
    }
}

/// REGISTER request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub node_id: String,
    pub addr: String,
    pub capacity: u64,
    pub memory: u64,
}

impl Register {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.node_id)
            .str(&self.addr)
            .u64(self.capacity)
            .u64(self.memory);
        w.finish()
    }
    pub fn decode(meta: &[u8]) -> ClusterResult<Self> {
        let mut r = Reader::new(meta);
        let v = Self {
            node_id: r.str()?.to_owned(),
            addr: r.str()?.to_owned(),
            capacity: r.u64()?,
            memory: r.u64()?,
        };
        r.finish()?;
        if v.node_id.is_empty() {
            return err("empty node id");
        }
        Ok(v)
    }
}

/// HEARTBEAT request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub node_id: String,
    pub used_bytes: u64,
    pub keys: u64,
}

impl Heartbeat {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.node_id).u64(self.used_bytes).u64(self.keys);
        w.finish()
    }
    pub fn decode(meta: &[u8]) -> ClusterResult<Self> {
        let mut r = Reader::new(meta);
        let v = Self {
            node_id: r.str()?.to_owned(),
            used_bytes: r.u64()?,
            keys: r.u64()?,
        };
        r.finish()?;
        Ok(v)
    }
}

/// One member as the master reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    pub id: String,
    pub addr: String,
    pub capacity: u64,
    pub memory: u64,
    pub alive: bool,
}

/// MEMBERS response body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub epoch: u64,
    pub nodes: Vec<MemberInfo>,
}

impl Members {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.epoch).u32(self.nodes.len() as u32);
        for m in &self.nodes {
            w.str(&m.id)
                .str(&m.addr)
                .u64(m.capacity)
                .u64(m.memory)
                .u8(m.alive as u8);
        }
        w.finish()
    }
    pub fn decode(meta: &[u8]) -> ClusterResult<Self> {
        let mut r = Reader::new(meta);
        let epoch = r.u64()?;
        let n = r.count()?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(MemberInfo {
                id: r.str()?.to_owned(),
                addr: r.str()?.to_owned(),
                capacity: r.u64()?,
                memory: r.u64()?,
                alive: r.u8()? != 0,
            });
        }
        r.finish()?;
        Ok(Self { epoch, nodes })
    }
}
