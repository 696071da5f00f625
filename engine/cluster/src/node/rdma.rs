//! The node side of RDMA_HELLO: opening the node's NIC, and connecting a queue pair for a client
//! that offers one. PUT_RDMA / GET_RDMA are then served by `serve`'s PUT and GET through the
//! connection's `path::rdma::RdmaEnd`.

use std::time::Duration;

use super::serve::{checked, Session};
use crate::error::{code, ClusterResult};
use crate::proto::Header;
use crate::transport::rdma::{self, wire::RdmaHello, Nic};
use crate::transport::{parse_devices, Conn};

/// Longest wait for one completion on the node. Longer than a client's request timeout: a client
/// that fans out to several nodes drains one node's GET while the others wait for their receives.
#[cfg_attr(not(feature = "rdma"), allow(dead_code))]
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens the node's RDMA device (`NodeConfig::rdma_devices`) and logs the one line that says
/// whether the node serves RDMA and why not.
pub(super) fn open(devices: &str) -> Nic {
    let wanted = parse_devices(devices);
    if wanted.is_empty() {
        return Nic::None;
    }
    match rdma::open(&wanted) {
        Ok(p) => {
            tracing::info!("store: serving RDMA on {p:?} to clients that send RDMA_HELLO");
            p
        }
        Err(why) => {
            tracing::warn!("store: RDMA unavailable ({why}); serving TCP only");
            Nic::None
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
        if self.rdma.is_some() {
            return self
                .refuse(conn, h, "second RDMA_HELLO on one connection")
                .map(|_| ());
        }
        match self.node.rdma {
            #[cfg(feature = "rdma")]
            Nic::Open(dev) if self.peer_pid.is_none() => {
                let link = rdma::setup::accept(conn, h.request_id, &offer, dev, NODE_TIMEOUT)?;
                self.rdma = link.map(|l| Box::new(crate::path::rdma::RdmaEnd(l)) as _);
                Ok(())
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
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use super::*;
    use crate::error::ClusterError;
    use crate::node::serve::{serve_conn, Serving};
    use crate::proto::{codec, GetItem, Hello, Op, PutItem, PROTO_VERSION};
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
        let node = Serving {
            store,
            auth: ServerAuth::default(),
            rdma: Nic::None,
            deny_same_host: false,
        };
        std::thread::spawn(move || serve_conn(node, Conn::new(b), None));
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
