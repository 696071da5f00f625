//! RDMA (feature `rdma`): keys, lengths and codes as frames on the TCP connection, the values over
//! the queue pair RDMA_HELLO set up for it (see `transport::rdma`).

use super::{frame_call, hit_slices, DataPath, GetAnswer, NodeEnd};
use crate::error::{ClusterError, ClusterResult};
use crate::proto::{codec, GetItem, Header, Op, PutItem};
use crate::transport::rdma::link::Link;
use crate::transport::Conn;

/// The client's end: a pooled TCP connection and its queue pair.
pub struct Rdma {
    pub conn: Conn,
    pub link: Link,
}

impl DataPath for Rdma {
    fn put(&mut self, items: &[PutItem<'_>], values: &[&[u8]]) -> ClusterResult<Vec<i32>> {
        // Keys and lengths as a frame, then the values over the queue pair.
        let id = self
            .conn
            .send_request(Op::PutRdma, &codec::encode_put(items), &[])?;
        self.link.send_values(values)?;
        let (_, m) = self.conn.recv_response(Op::PutRdma, id)?;
        codec::decode_codes(&m, items.len())
    }

    fn get(&mut self, items: &[GetItem<'_>], dst: &mut [&mut [u8]]) -> ClusterResult<Vec<i64>> {
        let id = self
            .conn
            .send_request(Op::GetRdma, &codec::encode_get(items), &[])?;
        let (h, m) = self.conn.recv_response(Op::GetRdma, id)?;
        // The values follow over the queue pair, never in the frame.
        if h.payload_len != 0 {
            return Err(ClusterError::Protocol("payload on GET_RDMA".into()));
        }
        let caps: Vec<usize> = items.iter().map(|it| it.max_len as usize).collect();
        let lens = codec::decode_lens(&m, &caps, None)?;
        self.link.recv_values(&mut hit_slices(dst, &lens))?;
        Ok(lens)
    }

    fn call(&mut self, op: Op, meta: &[u8]) -> ClusterResult<Vec<u8>> {
        frame_call(&mut self.conn, op, meta)
    }
}

/// The node's end: the queue pair of a connection that completed RDMA_HELLO.
pub struct RdmaEnd(pub Link);

impl NodeEnd for RdmaEnd {
    fn put_items<'m>(&mut self, meta: &'m [u8], _: u64) -> ClusterResult<Vec<PutItem<'m>>> {
        codec::decode_put_rdma(meta)
    }

    fn recv(&mut self, _: &mut Conn, dst: &mut [&mut [u8]]) -> ClusterResult<()> {
        self.0.recv_values(dst)
    }

    fn get_items<'m>(&mut self, meta: &'m [u8]) -> ClusterResult<Vec<GetItem<'m>>> {
        codec::decode_get(meta)
    }

    /// The lengths go back as a frame first (so the client can plan its receives), then the hits'
    /// bytes over the queue pair, in item order.
    fn send_get(&mut self, conn: &mut Conn, a: &GetAnswer<'_>) -> ClusterResult<()> {
        let header = Header::response(Op::GetRdma, a.request_id, a.meta.len(), 0);
        conn.send(header, a.meta, &[])?;
        self.0.send_values(a.hits)
    }
}
