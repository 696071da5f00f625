//! The node side of the RDMA data path: answering RDMA_HELLO, and PUT_RDMA / GET_RDMA, which run
//! the same engine calls as PUT / GET (`serve`'s helpers) with the values moved over the
//! connection's queue pair instead of the TCP payload.

use std::time::Duration;

use super::serve::{checked, reply, Session, Source};
use crate::error::{code, ClusterResult};
use crate::proto::{codec, Header, Op};
use crate::transport::rdma::{self, wire::RdmaHello, DataPath};
use crate::transport::{parse_devices, Conn};

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
        let shared = self.recv_values(&items, Source::Rdma(conn))?;
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
        let (lens, hits) = self.read_hits(&items);
        let out = hits.slices(&self.get_buf);
        let meta = codec::encode_lens(&lens);
        conn.send(
            Header::response(Op::GetRdma, h.request_id, meta.len(), 0),
            &meta,
            &[],
        )?;
        conn.rdma_send(&out)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use super::*;
    use crate::error::ClusterError;
    use crate::proto::{GetItem, Hello, PutItem, PROTO_VERSION};
    use crate::transport::rdma::wire::Endpoint;
    use crate::transport::ServerAuth;
    use strata_engine::{IoEngineKind, Store, StoreConfig};

    /// A node session without RDMA over a socket pair (no peer pid: served as a remote connection),
    /// and the client end after HELLO.
    fn session(dir: &std::path::Path) -> Conn {
        let cfg = StoreConfig::new(dir.join("store"))
            .with_capacity(64 * 1024 + 16 * (1 << 20))
            .with_segment_size(1 << 20)
            .with_memory(0)
            .with_io_engine(IoEngineKind::Psync);
        let store = Arc::new(Store::open(cfg).unwrap());
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            crate::node::serve::serve_conn(
                store,
                ServerAuth::default(),
                DataPath::Tcp,
                Conn::new(b),
            )
        });
        let mut c = Conn::new(a);
        let hello = Hello {
            version: PROTO_VERSION,
            token: String::new(),
            peer: "test".into(),
        };
        c.call(Op::Hello, &hello.encode()).unwrap();
        c
    }

    fn offer() -> Vec<u8> {
        RdmaHello {
            endpoint: Endpoint {
                qp_num: 5,
                lid: 1,
                gid: None,
            },
            chunk: rdma::CHUNK,
            depth: rdma::DEPTH,
        }
        .encode()
    }

    #[test]
    fn node_without_rdma_declines_and_keeps_serving_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = session(dir.path());
        match c.call(Op::RdmaHello, &offer()) {
            Err(ClusterError::Remote { code: k, .. }) => assert_eq!(k, code::RDMA_UNAVAILABLE),
            other => panic!("expected RDMA_UNAVAILABLE, got {other:?}"),
        }
        assert!(!c.has_rdma());
        // The same connection still carries PUT and GET.
        let item = PutItem {
            key: b"k",
            len: 3,
            depth: None,
        };
        let id = c
            .send_request(Op::Put, &codec::encode_put(&[item]), &[b"abc"])
            .unwrap();
        let (_, m) = c.recv_response(Op::Put, id).unwrap();
        assert_eq!(codec::decode_codes(&m, 1).unwrap(), [code::OK]);
        let get = GetItem {
            key: b"k",
            max_len: 10,
        };
        let id = c
            .send_request(Op::Get, &codec::encode_get(&[get]), &[])
            .unwrap();
        let (h, m) = c.recv_response(Op::Get, id).unwrap();
        assert_eq!(
            codec::decode_lens(&m, &[10], Some(h.payload_len)).unwrap(),
            [3]
        );
        let mut v = [0u8; 3];
        c.recv_exact(&mut v).unwrap();
        assert_eq!(&v, b"abc");
        assert!(c.rdma_send(&[b"x"]).is_err());
    }

    #[test]
    fn rdma_ops_without_hello_and_bad_hello_close_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = session(dir.path());
        let get = GetItem {
            key: b"k",
            max_len: 10,
        };
        match c.call(Op::GetRdma, &codec::encode_get(&[get])) {
            Err(ClusterError::Remote { code: k, .. }) => assert_eq!(k, code::PROTOCOL_ERROR),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        assert!(c.recv_header().unwrap().is_none(), "connection closed");

        let dir = tempfile::tempdir().unwrap();
        let mut c = session(dir.path());
        let mut bad = offer();
        bad.truncate(bad.len() - 2);
        match c.call(Op::RdmaHello, &bad) {
            Err(ClusterError::Remote { code: k, .. }) => assert_eq!(k, code::PROTOCOL_ERROR),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        assert!(c.recv_header().unwrap().is_none(), "connection closed");
    }
}
