//! The node side of the RDMA data path: answering RDMA_HELLO, and PUT_RDMA / GET_RDMA, which run
//! the same engine calls as PUT / GET (`serve`'s helpers) with the values moved over the
//! connection's queue pair instead of the TCP payload.

use std::time::Duration;

use super::serve::{checked, reply, Session};
use crate::cluster::error::{code, ClusterResult};
use crate::cluster::proto::{codec, Header, Op};
use crate::cluster::transport::rdma::{self, wire::RdmaHello, DataPath};
use crate::cluster::transport::{parse_devices, Conn};

/// Longest wait for one completion on the node. Longer than a client's request timeout: a client
/// that fans out to several nodes drains one node's GET while the others wait for their receives.
#[cfg_attr(not(feature = "rdma"), allow(dead_code))]
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens the node's RDMA device (`NodeConfig::rdma_devices`) and logs the one line that says
/// whether the node serves RDMA and why not.
pub(super) fn open(devices: &str) -> DataPath {
    let wanted = parse_devices(devices);
    if wanted.is_empty() {
        return DataPath::Tcp;
    }
    match rdma::open(&wanted) {
        Ok(p) => {
            tracing::info!("store: serving RDMA on {p:?} to clients that send RDMA_HELLO");
            p
        }
        Err(why) => {
            tracing::warn!("store: RDMA unavailable ({why}); serving TCP only");
            DataPath::Tcp
        }
    }
}

impl Session {
    /// RDMA_HELLO: connect a queue pair to the client's, or say RDMA_UNAVAILABLE (the connection
    /// stays up for TCP frames).
    pub(super) fn rdma_hello(
        &mut self,
        conn: &mut Conn,
        h: &Header,
        meta: &[u8],
    ) -> ClusterResult<()> {
        let offer = checked(conn, h, RdmaHello::decode(meta))?;
        if conn.has_rdma() {
            return self
                .refuse(conn, h, "second RDMA_HELLO on one connection")
                .map(|_| ());
        }
        match self.rdma {
            #[cfg(feature = "rdma")]
            DataPath::Rdma(dev) if conn.peer_pid.is_none() => {
                rdma::setup::accept(conn, h.request_id, &offer, dev, NODE_TIMEOUT)
            }
            _ => {
                let _ = offer;
                conn.send_error(
                    h.request_id,
                    code::RDMA_UNAVAILABLE,
                    "no RDMA here (no device opened, a same-host connection, or a build without \
                     the `rdma` feature)",
                )?;
                Ok(())
            }
        }
    }

    /// PUT_RDMA: PUT whose values arrive over the queue pair.
    pub(super) fn put_rdma(
        &mut self,
        conn: &mut Conn,
        h: &Header,
        meta: &[u8],
    ) -> ClusterResult<()> {
        let items = checked(conn, h, codec::decode_put_rdma(meta))?;
        let shared = self.recv_values(&items, |dst| conn.rdma_recv(dst))?;
        let codes = self.put_items(&items, shared);
        reply(conn, h, &codec::encode_codes(&codes))
    }

    /// GET_RDMA: the lengths go back as a frame first (so the client can plan its receives), then
    /// the hits' bytes over the queue pair, in item order.
    pub(super) fn get_rdma(
        &mut self,
        conn: &mut Conn,
        h: &Header,
        meta: &[u8],
    ) -> ClusterResult<()> {
        let items = checked(conn, h, codec::decode_get(meta))?;
        let (lens, out) = self.read_hits(&items);
        let meta = codec::encode_lens(&lens);
        conn.send(
            Header::response(Op::GetRdma, h.request_id, meta.len(), 0),
            &meta,
            &[],
        )?;
        conn.rdma_send(&out)
    }
}
