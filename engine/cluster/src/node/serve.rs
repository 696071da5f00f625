//! The store node's per-connection loop: decode a request, run it against the engine, answer.
//!
//! PUT values are read from the socket straight into one reusable per-connection buffer and handed to
//! the engine as slices; GET values are read by the engine into 4 KiB-aligned slots of one reusable
//! buffer (the engine's zero-copy path) and written to the socket with one vectored write.
//! A protocol error closes this connection only.

use std::sync::Arc;

use crate::error::{code, ClusterError, ClusterResult};
use crate::proto::{codec, Header, Op};
use crate::transport::rdma::DataPath;
use crate::transport::{shm, Conn, ServerAuth};
use strata_engine::io::buf::round_up;
use strata_engine::{AlignedBuf, PutOptions, Store};

/// Serves one accepted connection until it closes or misbehaves. `conn.peer_pid` is set for
/// same-host connections, which may use the *_LOCAL operations; `rdma` is the node's RDMA device,
/// if it has one, offered to clients that send RDMA_HELLO.
pub fn serve_conn(store: Arc<Store>, auth: ServerAuth, rdma: DataPath, mut conn: Conn) {
    let peer = conn.peer();
    if let Err(e) = auth.accept(&mut conn) {
        tracing::warn!(%peer, "store: handshake refused: {e}");
        return;
    }
    let mut s = Session {
        store,
        rdma,
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

fn is_disconnect(e: &ClusterError) -> bool {
    use std::io::ErrorKind::*;
    matches!(e, ClusterError::Io(io) if matches!(io.kind(), UnexpectedEof | ConnectionReset | BrokenPipe))
}

pub(super) struct Session {
    pub(super) store: Arc<Store>,
    pub(super) rdma: DataPath,
    put_buf: AlignedBuf,
    pub(super) get_buf: AlignedBuf,
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
            Op::Put => self.put(conn, &h, &meta)?,
            Op::Get => self.get(conn, &h, &meta)?,
            Op::PutLocal | Op::GetLocal if conn.peer_pid.is_none() => {
                return self.refuse(conn, &h, "local operation on a remote connection");
            }
            Op::PutLocal => self.put_local(conn, &h, &meta)?,
            Op::GetLocal => self.get_local(conn, &h, &meta)?,
            Op::RdmaHello => self.rdma_hello(conn, &h, &meta)?,
            Op::PutRdma | Op::GetRdma if !conn.has_rdma() => {
                return self.refuse(conn, &h, "RDMA operation before a successful RDMA_HELLO");
            }
            Op::PutRdma => self.put_rdma(conn, &h, &meta)?,
            Op::GetRdma => self.get_rdma(conn, &h, &meta)?,
            Op::Exists => {
                let keys = checked(conn, &h, codec::decode_keys(&meta))?;
                let flags: Vec<bool> = keys.iter().map(|k| self.store.exists(k)).collect();
                reply(conn, &h, &codec::encode_flags(&flags))?;
            }
            Op::Remove => {
                let keys = checked(conn, &h, codec::decode_keys(&meta))?;
                let codes: Vec<i32> = keys
                    .iter()
                    .map(|k| match self.store.remove(k) {
                        Ok(true) => code::OK,
                        Ok(false) => code::OBJECT_NOT_FOUND,
                        Err(e) => ClusterError::from(e).code(),
                    })
                    .collect();
                reply(conn, &h, &codec::encode_codes(&codes))?;
            }
            Op::Clear => {
                checked(conn, &h, codec::Reader::new(&meta).finish())?;
                match self.store.clear() {
                    Ok(()) => reply(conn, &h, &[])?,
                    Err(e) => {
                        conn.send_error(h.request_id, code::INTERNAL_ERROR, &e.to_string())?
                    }
                }
            }
            Op::Stats => {
                let json = serde_json::to_vec(&self.store.stats()).unwrap_or_default();
                let mut w = codec::Writer::new();
                w.blob(&json);
                reply(conn, &h, &w.finish())?;
            }
            _ => return self.refuse(conn, &h, "operation not served by a store node"),
        }
        Ok(true)
    }

    pub(super) fn refuse(&self, conn: &mut Conn, h: &Header, why: &str) -> ClusterResult<bool> {
        let _ = conn.send_error(h.request_id, code::PROTOCOL_ERROR, why);
        Err(ClusterError::Protocol(format!("{:?}: {why}", h.op)))
    }

    fn put(&mut self, conn: &mut Conn, h: &Header, meta: &[u8]) -> ClusterResult<()> {
        let items = checked(conn, h, codec::decode_put(meta, h.payload_len))?;
        let shared = self.recv_values(&items, Source::Socket(conn))?;
        let codes = self.put_items(&items, shared);
        reply(conn, h, &codec::encode_codes(&codes))
    }

    /// Receives a put's values from `src`: each straight into a fresh shared buffer that the
    /// write-back queue keeps (from the socket without zeroing it first), or, without write-back,
    /// back to back into the reusable put buffer. Returns the shared buffers when there are any.
    pub(super) fn recv_values(
        &mut self,
        items: &[codec::PutItem<'_>],
        mut src: Source<'_>,
    ) -> ClusterResult<Option<Vec<Arc<[u8]>>>> {
        if self.store.has_write_back() {
            let mut bufs: Vec<Arc<[std::mem::MaybeUninit<u8>]>> = items
                .iter()
                .map(|it| Arc::new_uninit_slice(it.len as usize))
                .collect();
            let uniq = bufs
                .iter_mut()
                .map(|b| Arc::get_mut(b).expect("just allocated, so unique"));
            match &mut src {
                Source::Socket(c) => {
                    let raw: Vec<(*mut u8, usize)> = uniq
                        .map(|b| (b.as_mut_ptr().cast::<u8>(), b.len()))
                        .collect();
                    // SAFETY: each destination is a fresh buffer of `len` bytes owned here and
                    // touched by nothing else during the call.
                    unsafe { c.recv_exact_raw(&raw)? };
                }
                Source::Rdma(_) => {
                    let mut dst: Vec<&mut [u8]> = uniq
                        .map(|b| {
                            for x in b.iter_mut() {
                                x.write(0);
                            }
                            // SAFETY: every byte was just initialised.
                            unsafe {
                                std::slice::from_raw_parts_mut(b.as_mut_ptr().cast(), b.len())
                            }
                        })
                        .collect();
                    src.recv(&mut dst)?;
                }
            }
            // SAFETY: on success every byte of every buffer was written (by the socket read, or
            // zeroed and then overwritten by the queue pair's receive).
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
        src.recv(&mut dst)?;
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
    pub(super) fn put_items(
        &self,
        items: &[codec::PutItem<'_>],
        shared: Option<Vec<Arc<[u8]>>>,
    ) -> Vec<i32> {
        if let Some(values) = shared {
            let batch: Vec<SharedPut<'_>> = items
                .iter()
                .zip(values)
                .map(|(it, v)| (it.key, v, it.depth))
                .collect();
            return put_batch_shared(&self.store, &batch);
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
        put_batch(&self.store, &batch)
    }

    fn get(&mut self, conn: &mut Conn, h: &Header, meta: &[u8]) -> ClusterResult<()> {
        let items = checked(conn, h, codec::decode_get(meta))?;
        let (lens, hits) = self.read_hits(&items);
        let out = hits.slices(&self.get_buf);
        let meta = codec::encode_lens(&lens);
        let plen = out.iter().map(|p| p.len() as u64).sum();
        conn.send(
            Header::response(Op::Get, h.request_id, meta.len(), plen),
            &meta,
            &out,
        )?;
        Ok(())
    }

    /// PUT whose values are read straight out of the (same-host) client's memory.
    fn put_local(&mut self, conn: &mut Conn, h: &Header, meta: &[u8]) -> ClusterResult<()> {
        let (items, addrs) = checked(conn, h, codec::decode_put_local(meta))?;
        let pid = conn.peer_pid.expect("checked by the caller");
        if deny_local_for_tests() {
            conn.send_error(
                h.request_id,
                code::LOCAL_DENIED,
                "denied (STRATA_TEST_DENY_LOCAL)",
            )?;
            return Ok(());
        }
        let remote: Vec<(u64, usize)> = addrs
            .iter()
            .zip(&items)
            .map(|(&a, it)| (a, it.len as usize))
            .collect();
        let read = if self.store.has_write_back() {
            // Each value is read straight into the buffer the write-back queue keeps.
            read_shared(pid, &remote).map(Some)
        } else {
            let total = self.reserve_put_buf(&items);
            shm::read_from(pid, &remote, &mut self.put_buf[..total]).map(|_| None)
        };
        let shared = match read {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(pid, "store: reading client memory failed: {e}");
                conn.send_error(h.request_id, code::LOCAL_DENIED, &e.to_string())?;
                return Ok(());
            }
        };
        let codes = self.put_items(&items, shared);
        reply(conn, h, &codec::encode_codes(&codes))
    }

    /// GET whose values are written straight into the (same-host) client's buffers.
    fn get_local(&mut self, conn: &mut Conn, h: &Header, meta: &[u8]) -> ClusterResult<()> {
        let (items, addrs) = checked(conn, h, codec::decode_get_local(meta))?;
        let pid = conn.peer_pid.expect("checked by the caller");
        if deny_local_for_tests() {
            conn.send_error(
                h.request_id,
                code::LOCAL_DENIED,
                "denied (STRATA_TEST_DENY_LOCAL)",
            )?;
            return Ok(());
        }
        let (lens, hits) = self.read_hits(&items);
        let out = hits.slices(&self.get_buf);
        let remote: Vec<(u64, usize)> = addrs
            .iter()
            .zip(&lens)
            .filter(|(_, &l)| l >= 0)
            .map(|(&a, &l)| (a, l as usize))
            .collect();
        if let Err(e) = shm::write_to(pid, &out, &remote) {
            tracing::warn!(pid, "store: writing client memory failed: {e}");
            conn.send_error(h.request_id, code::LOCAL_DENIED, &e.to_string())?;
            return Ok(());
        }
        let meta = codec::encode_lens(&lens);
        conn.send(
            Header::response(Op::GetLocal, h.request_id, meta.len(), 0),
            &meta,
            &[],
        )?;
        Ok(())
    }

    /// Looks up a GET batch: one length or error code per item, and the hits in item order — DRAM
    /// values shared as they are (sent without a copy), the rest read from the device into the
    /// reusable get buffer.
    pub(super) fn read_hits(&mut self, items: &[codec::GetItem<'_>]) -> (Vec<i64>, Hits) {
        let mut lens: Vec<i64> = Vec::with_capacity(items.len());
        let mut hits: Vec<Hit> = Vec::new();
        let mut total = 0usize;
        for it in items {
            let max = it.max_len as usize;
            // DRAM first (one lookup gives the bytes and their length), the index otherwise.
            let len = match self.store.get_shared(it.key, max) {
                Ok(Some(v)) => {
                    lens.push(v.len() as i64);
                    hits.push(Hit::Shared(v));
                    continue;
                }
                Err(l) => Some(l),
                Ok(None) => self.store.value_len(it.key),
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
        let mut results = self.store.batch_get_into(&dev_keys, &mut parts).into_iter();
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

/// Puts `(key, value, depth)` items into the engine and returns one code per item. Runs of items
/// whose depths are absent or consecutive go to the engine as one batch, so their writes are in
/// flight together.
pub fn put_batch(store: &Store, items: &[(&[u8], &[u8], Option<u32>)]) -> Vec<i32> {
    put_runs(items, |run, opts| store.batch_put_with(run, opts))
}

/// [`put_batch`] of values held as shared buffers (kept without a copy by a write-back buffer).
pub fn put_batch_shared(store: &Store, items: &[SharedPut<'_>]) -> Vec<i32> {
    put_runs(items, |run, opts| store.batch_put_shared(run, opts))
}

/// Splits items into runs of consecutive depths, puts each run with `put`, maps the results to
/// Mooncake codes.
fn put_runs<'a, V: Clone>(
    items: &[(&'a [u8], V, Option<u32>)],
    put: impl Fn(&[(&'a [u8], V)], PutOptions) -> Vec<strata_engine::Result<bool>>,
) -> Vec<i32> {
    let mut codes = Vec::with_capacity(items.len());
    let mut start = 0;
    while start < items.len() {
        let mut end = start + 1;
        while end < items.len() && continues(items[end - 1].2, items[end].2) {
            end += 1;
        }
        let run: Vec<(&[u8], V)> = items[start..end]
            .iter()
            .map(|i| (i.0, i.1.clone()))
            .collect();
        let opts = PutOptions {
            depth: items[start].2,
        };
        for r in put(&run, opts) {
            codes.push(match r {
                Ok(true) => code::OK,
                Ok(false) => code::EXISTED,
                Err(e) => ClusterError::from(e).code(),
            });
        }
        start = end;
    }
    codes
}

/// Where a put's value bytes come from.
pub(super) enum Source<'a> {
    /// The frame's payload, on the connection's socket.
    Socket(&'a mut Conn),
    /// The connection's RDMA queue pair.
    Rdma(&'a mut Conn),
}

impl Source<'_> {
    /// Fills every slice in order.
    fn recv(&mut self, dst: &mut [&mut [u8]]) -> ClusterResult<()> {
        match self {
            Source::Socket(c) => Ok(c.recv_exact_vectored(dst)?),
            Source::Rdma(c) => c.rdma_recv(dst),
        }
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

/// A put item whose value is a shared buffer: key, value, depth.
pub type SharedPut<'a> = (&'a [u8], Arc<[u8]>, Option<u32>);

/// Reads each remote range of process `pid` into a fresh shared buffer of its length.
fn read_shared(pid: i32, remote: &[(u64, usize)]) -> std::io::Result<Vec<Arc<[u8]>>> {
    let mut bufs: Vec<Arc<[std::mem::MaybeUninit<u8>]>> =
        remote.iter().map(|r| Arc::new_uninit_slice(r.1)).collect();
    let local: Vec<(*mut u8, usize)> = bufs
        .iter_mut()
        .map(|b| {
            let b = Arc::get_mut(b).expect("just allocated, so unique");
            (b.as_mut_ptr().cast::<u8>(), b.len())
        })
        .collect();
    shm::read_into(pid, remote, &local)?;
    // SAFETY: `read_into` returned Ok only after the kernel filled every byte of every buffer
    // (a short copy is an error).
    Ok(bufs
        .into_iter()
        .map(|b| unsafe { b.assume_init() })
        .collect())
}

/// `STRATA_TEST_DENY_LOCAL=1` makes the node refuse every same-host operation as the kernel would
/// under a strict ptrace policy, so tests can cover the client's fallback to TCP as root.
fn deny_local_for_tests() -> bool {
    static DENY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DENY.get_or_init(|| std::env::var("STRATA_TEST_DENY_LOCAL").is_ok_and(|v| v == "1"))
}

/// Whether an item with depth `next` can join a batch whose last item had depth `prev`.
fn continues(prev: Option<u32>, next: Option<u32>) -> bool {
    match (prev, next) {
        (None, None) => true,
        (Some(p), Some(n)) => p.checked_add(1) == Some(n),
        _ => false,
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
