//! The data path: how one request's page bytes travel between a client and a node's store.
//!
//! Each transport is one implementation of [`DataPath`], the client's end, and — when a node serves
//! it on a connection — of [`NodeEnd`], the node's end. The batch logic (`client::batch`) and the
//! node's handlers (`node::serve`) are written once against these two traits, so a new transport is
//! one file here, not an edit to every operation.
//!
//! | transport | client end | node end | page bytes travel |
//! |---|---|---|---|
//! | TCP ([`tcp`]) | `Tcp` | `TcpEnd` | in the frames' payloads |
//! | same-host ([`same_host`]) | `SameHost` | `SameHostEnd` | copied by the node between the two address spaces (`process_vm_readv` / `_writev`); frames carry addresses |
//! | RDMA ([`rdma`], feature `rdma`) | `Rdma` | `RdmaEnd` | over the connection's queue pair |
//! | in-process ([`in_process`]) | `InProcess` | none: direct engine calls ([`crate::store_ops`]) | a memcpy |
//!
//! Keys, lengths and codes always travel as the frames of docs/protocol.md (or, in-process, as the
//! same encoded bodies handed to [`crate::store_ops::answer`]).

pub mod in_process;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod same_host;
pub mod tcp;

use crate::error::ClusterResult;
use crate::proto::{codec, GetItem, Op, PutItem};
use crate::transport::Conn;

/// The client's end of a data path to one node. A path that returns an error is dropped (its
/// connection is in an unknown state); one that succeeded may serve the next request.
pub trait DataPath: Send {
    /// Stores `values[i]` under `items[i].key` (existing keys are kept). One code per item.
    fn put(&mut self, items: &[PutItem<'_>], values: &[&[u8]]) -> ClusterResult<Vec<i32>>;

    /// Reads each item's value into `dst[i]` (at least `items[i].max_len` bytes). One length or
    /// negative code per item; bytes land in `dst[i]` only for a length.
    fn get(&mut self, items: &[GetItem<'_>], dst: &mut [&mut [u8]]) -> ClusterResult<Vec<i64>>;

    /// One keys-only request (EXISTS, REMOVE, CLEAR, STATS): its meta in, the response's meta out.
    fn call(&mut self, op: Op, meta: &[u8]) -> ClusterResult<Vec<u8>>;

    /// Per key: whether the node has it.
    fn exists(&mut self, keys: &[&[u8]]) -> ClusterResult<Vec<bool>> {
        codec::decode_flags(
            &self.call(Op::Exists, &codec::encode_keys(keys))?,
            keys.len(),
        )
    }

    /// Per key: 0 when removed, -704 when absent, or the engine's error code.
    fn remove(&mut self, keys: &[&[u8]]) -> ClusterResult<Vec<i32>> {
        codec::decode_codes(
            &self.call(Op::Remove, &codec::encode_keys(keys))?,
            keys.len(),
        )
    }

    /// Removes every key on the node; how many it removed (0 from a node that predates the count).
    fn clear(&mut self) -> ClusterResult<u64> {
        let meta = self.call(Op::Clear, &[])?;
        Ok(meta
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes"))))
    }
}

/// The node's end of a data path on one connection: where a PUT's values come from and how a
/// GET's values leave. An end refuses a request by returning `ClusterError::Remote` (answered as an
/// error frame; the connection stays up); any other error closes the connection.
pub trait NodeEnd {
    /// Decodes a PUT request's meta (the frame's payload length is `payload_len`).
    fn put_items<'m>(
        &mut self,
        meta: &'m [u8],
        payload_len: u64,
    ) -> ClusterResult<Vec<PutItem<'m>>>;

    /// Fills every slice, in item order, with the values of the PUT just decoded.
    fn recv(&mut self, conn: &mut Conn, dst: &mut [&mut [u8]]) -> ClusterResult<()>;

    /// [`NodeEnd::recv`] into raw, possibly uninitialised memory (`(ptr, len)` per item). By
    /// default the memory is zeroed first, then filled by `recv`.
    ///
    /// # Safety
    /// Every `ptr..ptr + len` must be valid for writes and touched by nothing else until this
    /// returns. After `Ok` every byte of every destination has been written.
    unsafe fn recv_raw(&mut self, conn: &mut Conn, dst: &[(*mut u8, usize)]) -> ClusterResult<()> {
        let mut slices: Vec<&mut [u8]> = dst
            .iter()
            .map(|&(p, l)| {
                // SAFETY: the caller's contract; zeroing makes the bytes initialised.
                unsafe {
                    p.write_bytes(0, l);
                    std::slice::from_raw_parts_mut(p, l)
                }
            })
            .collect();
        self.recv(conn, &mut slices)
    }

    /// Decodes a GET request's meta.
    fn get_items<'m>(&mut self, meta: &'m [u8]) -> ClusterResult<Vec<GetItem<'m>>>;

    /// Sends the answer to a GET.
    fn send_get(&mut self, conn: &mut Conn, a: &GetAnswer<'_>) -> ClusterResult<()>;
}

/// The answer to one GET, as the node's handler prepared it.
pub struct GetAnswer<'a> {
    pub request_id: u32,
    /// One length (or negative code) per item.
    pub lens: &'a [i64],
    /// `lens` encoded as the response's meta.
    pub meta: &'a [u8],
    /// The found values' bytes, in item order.
    pub hits: &'a [&'a [u8]],
}

/// One request frame without payload and its response's meta (the keys-only requests of the
/// connection-based paths).
pub(crate) fn frame_call(conn: &mut Conn, op: Op, meta: &[u8]) -> ClusterResult<Vec<u8>> {
    let id = conn.send_request(op, meta, &[])?;
    Ok(conn.recv_response(op, id)?.1)
}

/// The destinations of the hits among `dst`: `dst[i][..lens[i]]` for every `lens[i] >= 0`, in order.
pub(crate) fn hit_slices<'a>(dst: &'a mut [&mut [u8]], lens: &[i64]) -> Vec<&'a mut [u8]> {
    dst.iter_mut()
        .zip(lens)
        .filter(|(_, &l)| l >= 0)
        .map(|(d, &l)| &mut d[..l as usize])
        .collect()
}
