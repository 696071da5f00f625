//! TCP: a frame is `header | meta | raw values`. Values go out with one vectored write from the
//! sender's buffers and are read straight into the receiver's destinations.

use super::{frame_call, hit_slices, DataPath, GetAnswer, NodeEnd};
use crate::error::ClusterResult;
use crate::proto::{codec, GetItem, Header, Op, PutItem};
use crate::transport::Conn;

/// The client's end: one pooled connection.
pub struct Tcp(pub Conn);

impl DataPath for Tcp {
    fn put(&mut self, items: &[PutItem<'_>], values: &[&[u8]]) -> ClusterResult<Vec<i32>> {
        let id = self
            .0
            .send_request(Op::Put, &codec::encode_put(items), values)?;
        let (_, m) = self.0.recv_response(Op::Put, id)?;
        codec::decode_codes(&m, items.len())
    }

    fn get(&mut self, items: &[GetItem<'_>], dst: &mut [&mut [u8]]) -> ClusterResult<Vec<i64>> {
        let id = self
            .0
            .send_request(Op::Get, &codec::encode_get(items), &[])?;
        let (h, m) = self.0.recv_response(Op::Get, id)?;
        let caps: Vec<usize> = items.iter().map(|it| it.max_len as usize).collect();
        let lens = codec::decode_lens(&m, &caps, Some(h.payload_len))?;
        // One vectored read loop straight into the callers' buffers, in payload order.
        self.0.recv_exact_vectored(&mut hit_slices(dst, &lens))?;
        Ok(lens)
    }

    fn call(&mut self, op: Op, meta: &[u8]) -> ClusterResult<Vec<u8>> {
        frame_call(&mut self.0, op, meta)
    }
}

/// The node's end: PUT / GET frames on any connection.
pub struct TcpEnd;

impl NodeEnd for TcpEnd {
    fn put_items<'m>(
        &mut self,
        meta: &'m [u8],
        payload_len: u64,
    ) -> ClusterResult<Vec<PutItem<'m>>> {
        codec::decode_put(meta, payload_len)
    }

    fn recv(&mut self, conn: &mut Conn, dst: &mut [&mut [u8]]) -> ClusterResult<()> {
        Ok(conn.recv_exact_vectored(dst)?)
    }

    unsafe fn recv_raw(&mut self, conn: &mut Conn, dst: &[(*mut u8, usize)]) -> ClusterResult<()> {
        // SAFETY: forwarded contract (the socket read writes every byte, no zeroing needed).
        unsafe { conn.recv_exact_raw(dst)? };
        Ok(())
    }

    fn get_items<'m>(&mut self, meta: &'m [u8]) -> ClusterResult<Vec<GetItem<'m>>> {
        codec::decode_get(meta)
    }

    fn send_get(&mut self, conn: &mut Conn, a: &GetAnswer<'_>) -> ClusterResult<()> {
        let plen = a.hits.iter().map(|p| p.len() as u64).sum();
        let header = Header::response(Op::Get, a.request_id, a.meta.len(), plen);
        Ok(conn.send(header, a.meta, a.hits)?)
    }
}
