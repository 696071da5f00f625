//! The store node's per-connection loop: decode a request, run it against the engine, answer.
//!
//! PUT and GET are each written once, against the connection's data path ([`NodeEnd`]: TCP frames,
//! the same-host copy, or the RDMA queue pair): PUT values are received straight into one reusable
//! per-connection buffer (or, with write-back, into fresh shared buffers the write-back queue
//! keeps) and handed to the engine; GET values are read by the engine into 4 KiB-aligned slots of
//! one reusable buffer (the engine's zero-copy path) or shared from DRAM, and leave in one go. The
//! keys-only requests are answered by [`store_ops::answer`]. A protocol error closes this
//! connection only.

use std::sync::Arc;

use crate::error::{code, ClusterError, ClusterResult};
use crate::path::same_host::SameHostEnd;
use crate::path::tcp::TcpEnd;
use crate::path::{GetAnswer, NodeEnd};
use crate::proto::{codec, Header, Op};
use crate::store_ops::{self, put_batch, put_batch_shared, SharedPut};
use crate::transport::rdma::Nic;
use crate::transport::{Conn, ServerAuth};
use strata_engine::io::buf::round_up;
use strata_engine::{AlignedBuf, Store};

/// What every connection of one node shares.
#[derive(Clone)]
pub struct Serving {
    pub store: Arc<Store>,
    pub auth: ServerAuth,
    /// The node's RDMA NIC, offered to clients that send RDMA_HELLO.
    pub rdma: Nic,
    /// Refuse the same-host operations (`NodeConfig::deny_same_host`).
    pub deny_same_host: bool,
}

/// Serves one accepted connection until it closes or misbehaves. `peer_pid` is the client's pid on
/// a same-host connection (from the kernel), which may use the *_LOCAL operations.
pub fn serve_conn(node: Serving, mut conn: Conn, peer_pid: Option<i32>) {
    let peer = conn.peer();
    if let Err(e) = node.auth.accept(&mut conn) {
        tracing::warn!(%peer, "store: handshake refused: {e}");
        return;
    }
    let mut s = Session {
        node,
        peer_pid,
        rdma: None,
        put_buf: AlignedBuf::new(1 << 20),
        get_buf: AlignedBuf::new(1 << 20),
    };
    loop {
        match s.one(&mut conn) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                if is_disconnect(&e) {
                    tracing::debug!(%peer, "store: connection closed: {e}");
                } else {
                    tracing::error!(%peer, "store: closing connection: {e}");
                }
                return;
            }
        }
    }
}

/// A request as read off the connection: its header and meta.
type Req<'a> = (&'a Header, &'a [u8]);

fn is_disconnect(e: &ClusterError) -> bool {
    use std::io::ErrorKind::*;
    matches!(e, ClusterError::Io(io) if matches!(io.kind(), UnexpectedEof | ConnectionReset | BrokenPipe))
}

pub(super) struct Session {
    pub(super) node: Serving,
    pub(super) peer_pid: Option<i32>,
    /// The node's end of this connection's queue pair, after a successful RDMA_HELLO.
    pub(super) rdma: Option<Box<dyn NodeEnd>>,
    put_buf: AlignedBuf,
    get_buf: AlignedBuf,
}

impl Session {
    /// Handles one request; `Ok(false)` on a clean close.
    fn one(&mut self, conn: &mut Conn) -> ClusterResult<bool> {
        let Some(h) = conn.recv_header()? else {
            return Ok(false);
        };
        if h.response {
            return self.refuse(conn, &h, "unexpected response frame");
        }
        let meta = conn.recv_meta(h.meta_len)?.to_vec();
        if h.op != Op::Put && h.payload_len != 0 {
            return self.refuse(conn, &h, "payload on a request that takes none");
        }
        match h.op {
            Op::Put | Op::Get => self.data(conn, (&h, &meta), &mut TcpEnd)?,
            Op::PutLocal | Op::GetLocal => {
                let Some(pid) = self.peer_pid else {
                    return self.refuse(conn, &h, "local operation on a remote connection");
                };
                let mut end = SameHostEnd::new(pid, self.node.deny_same_host);
                self.data(conn, (&h, &meta), &mut end)?
            }
            Op::RdmaHello => self.rdma_hello(conn, &h, &meta)?,
            Op::PutRdma | Op::GetRdma => {
                let Some(mut end) = self.rdma.take() else {
                    return self.refuse(conn, &h, "RDMA operation before a successful RDMA_HELLO");
                };
                let r = self.data(conn, (&h, &meta), end.as_mut());
                self.rdma = Some(end);
                r?
            }
            Op::Exists | Op::Remove | Op::Clear | Op::Stats => {
                match checked(conn, &h, store_ops::answer(&self.node.store, h.op, &meta))? {
                    Ok(m) => reply(conn, &h, &m)?,
                    Err(e) => {
                        conn.send_error(h.request_id, code::INTERNAL_ERROR, &e.to_string())?
                    }
                }
            }
            _ => return self.refuse(conn, &h, "operation not served by a store node"),
        }
        Ok(true)
    }

    /// A PUT or GET (of any data path) through `end`.
    fn data(&mut self, conn: &mut Conn, req: Req<'_>, end: &mut dyn NodeEnd) -> ClusterResult<()> {
        match req.0.op {
            Op::Put | Op::PutLocal | Op::PutRdma => self.put(conn, req, end),
            _ => self.get(conn, req, end),
        }
    }

    pub(super) fn refuse(&self, conn: &mut Conn, h: &Header, why: &str) -> ClusterResult<bool> {
        let _ = conn.send_error(h.request_id, code::PROTOCOL_ERROR, why);
        Err(ClusterError::Protocol(format!("{:?}: {why}", h.op)))
    }

    fn put(&mut self, conn: &mut Conn, req: Req<'_>, end: &mut dyn NodeEnd) -> ClusterResult<()> {
        let (h, meta) = req;
        let items = match end.put_items(meta, h.payload_len) {
            Ok(items) => items,
            Err(e) => return declined(conn, h, e, true),
        };
        let shared = match self.recv_values(conn, end, &items) {
            Ok(shared) => shared,
            Err(e) => return declined(conn, h, e, false),
        };
        let codes = self.put_items(&items, shared);
        reply(conn, h, &codec::encode_codes(&codes))
    }

    /// Receives a put's values through `end`: each straight into a fresh shared buffer that the
    /// write-back queue keeps (uninitialised until the path fills it), or, without write-back, back
    /// to back into the reusable put buffer. Returns the shared buffers when there are any.
    fn recv_values(
        &mut self,
        conn: &mut Conn,
        end: &mut dyn NodeEnd,
        items: &[codec::PutItem<'_>],
    ) -> ClusterResult<Option<Vec<Arc<[u8]>>>> {
        if self.node.store.has_write_back() {
            let mut bufs: Vec<Arc<[std::mem::MaybeUninit<u8>]>> = items
                .iter()
                .map(|it| Arc::new_uninit_slice(it.len as usize))
                .collect();
            let raw: Vec<(*mut u8, usize)> = bufs
                .iter_mut()
                .map(|b| {
                    let b = Arc::get_mut(b).expect("just allocated, so unique");
                    (b.as_mut_ptr().cast::<u8>(), b.len())
                })
                .collect();
            // SAFETY: each destination is a fresh buffer of `len` bytes owned here and touched by
            // nothing else during the call.
            unsafe { end.recv_raw(conn, &raw)? };
            // SAFETY: on success every byte of every buffer was written (`recv_raw`'s contract).
            return Ok(Some(
                bufs.into_iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect(),
            ));
        }
        let total = self.reserve_put_buf(items);
        let mut rest: &mut [u8] = &mut self.put_buf[..total];
        let mut dst: Vec<&mut [u8]> = Vec::with_capacity(items.len());
        for it in items {
            let (a, b) = std::mem::take(&mut rest).split_at_mut(it.len as usize);
            dst.push(a);
            rest = b;
        }
        end.recv(conn, &mut dst)?;
        Ok(None)
    }

    /// Grows the reusable put buffer to hold every item's value; returns their total length.
    fn reserve_put_buf(&mut self, items: &[codec::PutItem<'_>]) -> usize {
        let total: usize = items.iter().map(|it| it.len as usize).sum();
        if self.put_buf.len() < total {
            self.put_buf = AlignedBuf::new(total);
        }
        total
    }

    /// Stores the items whose values are in `shared` (one buffer each) or, without it, back to
    /// back in the put buffer; one code per item.
    fn put_items(&self, items: &[codec::PutItem<'_>], shared: Option<Vec<Arc<[u8]>>>) -> Vec<i32> {
        if let Some(values) = shared {
            let batch: Vec<SharedPut<'_>> = items
                .iter()
                .zip(values)
                .map(|(it, v)| (it.key, v, it.depth))
                .collect();
            return put_batch_shared(&self.node.store, &batch);
        }
        let mut off = 0;
        let batch: Vec<(&[u8], &[u8], Option<u32>)> = items
            .iter()
            .map(|it| {
                let v = &self.put_buf[off..off + it.len as usize];
                off += it.len as usize;
                (it.key, v, it.depth)
            })
            .collect();
        put_batch(&self.node.store, &batch)
    }

    fn get(&mut self, conn: &mut Conn, req: Req<'_>, end: &mut dyn NodeEnd) -> ClusterResult<()> {
        let (h, meta) = req;
        let items = match end.get_items(meta) {
            Ok(items) => items,
            Err(e) => return declined(conn, h, e, true),
        };
        let (lens, hits) = self.read_hits(&items);
        let out = hits.slices(&self.get_buf);
        let answer = GetAnswer {
            request_id: h.request_id,
            lens: &lens,
            meta: &codec::encode_lens(&lens),
            hits: &out,
        };
        match end.send_get(conn, &answer) {
            Ok(()) => Ok(()),
            Err(e) => declined(conn, h, e, false),
        }
    }

    /// Looks up a GET batch: one length or error code per item, and the hits in item order — DRAM
    /// values shared as they are (sent without a copy), the rest read from the device into the
    /// reusable get buffer.
    fn read_hits(&mut self, items: &[codec::GetItem<'_>]) -> (Vec<i64>, Hits) {
        let mut lens: Vec<i64> = Vec::with_capacity(items.len());
        let mut hits: Vec<Hit> = Vec::new();
        let mut total = 0usize;
        for it in items {
            let max = it.max_len as usize;
            // DRAM first (one lookup gives the bytes and their length), the index otherwise.
            let len = match self.node.store.get_shared(it.key, max) {
                Ok(Some(v)) => {
                    lens.push(v.len() as i64);
                    hits.push(Hit::Shared(v));
                    continue;
                }
                Err(l) => Some(l),
                Ok(None) => self.node.store.value_len(it.key),
            };
            match len {
                None => lens.push(code::OBJECT_NOT_FOUND as i64),
                Some(l) if l > max => lens.push(code::BUFFER_OVERFLOW as i64),
                Some(l) => {
                    lens.push(l as i64);
                    hits.push(Hit::Buf(total, l));
                    total += round_up(l);
                }
            }
        }
        if self.get_buf.len() < total {
            self.get_buf = AlignedBuf::new(total);
        }
        let mut rest: &mut [u8] = &mut self.get_buf[..total];
        let mut parts: Vec<&mut [u8]> = Vec::new();
        let mut dev_keys: Vec<&[u8]> = Vec::new();
        let hit_items = items.iter().zip(&lens).filter(|(_, &l)| l >= 0);
        for ((it, _), hit) in hit_items.zip(&hits) {
            if let Hit::Buf(_, l) = *hit {
                let (a, b) = std::mem::take(&mut rest).split_at_mut(round_up(l));
                parts.push(a);
                rest = b;
                dev_keys.push(it.key);
            }
        }
        let mut results = self
            .node
            .store
            .batch_get_into(&dev_keys, &mut parts)
            .into_iter();
        let mut kept = Vec::with_capacity(hits.len());
        let mut hits = hits.into_iter();
        for l in lens.iter_mut().filter(|l| **l >= 0) {
            let hit = hits.next().expect("one hit per found item");
            if let Hit::Buf(_, want) = hit {
                match results.next().expect("one result per device read") {
                    Ok(Some(n)) if n == want => {}
                    Ok(_) => {
                        *l = code::OBJECT_NOT_FOUND as i64;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("store: read failed: {e}");
                        *l = code::INTERNAL_ERROR as i64;
                        continue;
                    }
                }
            }
            kept.push(hit);
        }
        (lens, Hits(kept))
    }
}

/// The values a GET answers with, in item order (see [`Session::read_hits`]).
pub struct Hits(Vec<Hit>);

enum Hit {
    /// A DRAM value, sent from the shared buffer itself.
    Shared(Arc<[u8]>),
    /// `(offset, len)` in the session's get buffer.
    Buf(usize, usize),
}

impl Hits {
    /// The hits' bytes: shared values as they are, the rest from `get_buf`.
    pub fn slices<'a>(&'a self, get_buf: &'a [u8]) -> Vec<&'a [u8]> {
        self.0
            .iter()
            .map(|h| match h {
                Hit::Shared(v) => &v[..],
                Hit::Buf(off, len) => &get_buf[*off..*off + *len],
            })
            .collect()
    }
}

/// A request `end` could not serve: a refusal (`ClusterError::Remote`) is answered with its code
/// and the connection stays up; anything else closes it, after a PROTOCOL_ERROR frame when the
/// request did not decode (`decoding`).
fn declined(conn: &mut Conn, h: &Header, e: ClusterError, decoding: bool) -> ClusterResult<()> {
    match e {
        ClusterError::Remote { code, message } => {
            Ok(conn.send_error(h.request_id, code, &message)?)
        }
        e if decoding => checked(conn, h, Err(e)),
        e => Err(e),
    }
}

/// Turns a meta decoding failure into an error frame plus a connection-closing error.
pub(super) fn checked<T>(conn: &mut Conn, h: &Header, r: ClusterResult<T>) -> ClusterResult<T> {
    if let Err(e) = &r {
        let _ = conn.send_error(h.request_id, code::PROTOCOL_ERROR, &e.to_string());
    }
    r
}

pub(super) fn reply(conn: &mut Conn, h: &Header, meta: &[u8]) -> ClusterResult<()> {
    conn.send(
        Header::response(h.op, h.request_id, meta.len(), 0),
        meta,
        &[],
    )?;
    Ok(())
}
