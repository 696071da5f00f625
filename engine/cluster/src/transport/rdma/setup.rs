//! Both sides of RDMA_HELLO: the client offers its queue pair on a fresh TCP connection, the node
//! connects its own to it and answers with its endpoint and the agreed geometry.

use std::time::Duration;

use super::device::Device;
use super::link::{Link, Pending};
use super::wire::RdmaHello;
use super::{CHUNK, DEPTH};
use crate::error::{code, ClusterError, ClusterResult};
use crate::proto::{Header, Op};
use crate::transport::Conn;

/// Client side, right after HELLO: the connection's queue pair. `Ok(Err(why))`: RDMA is not used on
/// this connection (the node declined, or this side's verbs failed) and it keeps carrying TCP
/// frames; `Err`: the connection broke.
pub fn offer(
    conn: &mut Conn,
    dev: &'static Device,
    timeout: Duration,
) -> ClusterResult<Result<Link, String>> {
    let pending = match Pending::new(dev, DEPTH) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Err(format!(
                "creating a queue pair on {} failed: {e}",
                dev.name
            )))
        }
    };
    let hello = RdmaHello {
        endpoint: pending.endpoint(),
        chunk: CHUNK,
        depth: DEPTH,
    };
    let answer = match conn.call(Op::RdmaHello, &hello.encode()) {
        Ok(m) => RdmaHello::decode(&m)?,
        Err(ClusterError::Remote {
            code: code::RDMA_UNAVAILABLE,
            message,
        }) => return Ok(Err(format!("the node has no RDMA: {message}"))),
        Err(e) => return Err(e),
    };
    if answer.chunk > CHUNK || answer.depth > DEPTH {
        return Err(ClusterError::Protocol(format!(
            "RDMA_HELLO answer {}x{} exceeds the offer {CHUNK}x{DEPTH}",
            answer.depth, answer.chunk
        )));
    }
    match pending.connect(answer.endpoint, answer.chunk, answer.depth, timeout) {
        Ok(link) => Ok(Ok(link)),
        // The node's queue pair stays unused; it serves plain PUT/GET on this connection too.
        Err(e) => Ok(Err(format!("connecting the queue pair failed: {e}"))),
    }
}

/// Node side: connects a queue pair to the client's offer and answers with its endpoint (returning
/// the queue pair), or answers RDMA_UNAVAILABLE when the verbs calls fail (`None`; the connection
/// stays up either way).
pub fn accept(
    conn: &mut Conn,
    request_id: u32,
    offer: &RdmaHello,
    dev: &'static Device,
    timeout: Duration,
) -> ClusterResult<Option<Link>> {
    let (chunk, depth) = offer.agree(CHUNK, DEPTH);
    let made = Pending::new(dev, depth)
        .map_err(ClusterError::from)
        .and_then(|p| {
            let endpoint = p.endpoint();
            p.connect(offer.endpoint, chunk, depth, timeout)
                .map(|l| (l, endpoint))
        });
    match made {
        Ok((link, endpoint)) => {
            let meta = RdmaHello {
                endpoint,
                chunk,
                depth,
            }
            .encode();
            conn.send(
                Header::response(Op::RdmaHello, request_id, meta.len(), 0),
                &meta,
                &[],
            )?;
            Ok(Some(link))
        }
        Err(e) => {
            tracing::warn!(peer = %conn.peer(), "store: RDMA queue pair setup failed: {e}");
            let why = format!("queue pair setup on {} failed: {e}", dev.name);
            conn.send_error(request_id, code::RDMA_UNAVAILABLE, &why)?;
            Ok(None)
        }
    }
}
