//! The same-host path: a Unix socket for the frames, and the node copies page bytes itself between
//! its memory and the client's (`process_vm_readv` / `process_vm_writev`, see `transport::shm`).
//! PUT_LOCAL / GET_LOCAL carry the client's addresses instead of bytes. When the node may not touch
//! the client (the kernel's ptrace check, or `NodeConfig::deny_same_host`) it answers LOCAL_DENIED
//! and the client uses TCP with that node.

use super::{frame_call, DataPath, GetAnswer, NodeEnd};
use crate::error::{code, ClusterError, ClusterResult};
use crate::proto::{codec, GetItem, Header, Op, PutItem};
use crate::transport::{shm, Conn};

/// The client's end: one pooled connection on the node's same-host socket.
pub struct SameHost(pub Conn);

impl DataPath for SameHost {
    fn put(&mut self, items: &[PutItem<'_>], values: &[&[u8]]) -> ClusterResult<Vec<i32>> {
        let addrs: Vec<u64> = values.iter().map(|v| v.as_ptr() as u64).collect();
        let meta = codec::encode_put_local(items, &addrs);
        let id = self.0.send_request(Op::PutLocal, &meta, &[])?;
        let (_, m) = self.0.recv_response(Op::PutLocal, id)?;
        codec::decode_codes(&m, items.len())
    }

    fn get(&mut self, items: &[GetItem<'_>], dst: &mut [&mut [u8]]) -> ClusterResult<Vec<i64>> {
        let addrs: Vec<u64> = dst.iter_mut().map(|d| d.as_mut_ptr() as u64).collect();
        let meta = codec::encode_get_local(items, &addrs);
        let id = self.0.send_request(Op::GetLocal, &meta, &[])?;
        // The node already wrote the values into `dst` when it answers.
        let (_, m) = self.0.recv_response(Op::GetLocal, id)?;
        let caps: Vec<usize> = items.iter().map(|it| it.max_len as usize).collect();
        codec::decode_lens(&m, &caps, None)
    }

    fn call(&mut self, op: Op, meta: &[u8]) -> ClusterResult<Vec<u8>> {
        frame_call(&mut self.0, op, meta)
    }
}

/// The node's end for one request from the client process `pid`.
pub struct SameHostEnd {
    pid: i32,
    /// Refuse every request (`NodeConfig::deny_same_host`).
    deny: bool,
    /// The client addresses of the request just decoded, one per item.
    addrs: Vec<u64>,
}

impl SameHostEnd {
    pub fn new(pid: i32, deny: bool) -> Self {
        Self {
            pid,
            deny,
            addrs: Vec::new(),
        }
    }

    fn admit(&self) -> ClusterResult<()> {
        if self.deny {
            return Err(denied(
                "denied by this node's configuration (deny_same_host)",
            ));
        }
        Ok(())
    }

    /// The client ranges of the items whose lengths are `lens`, skipping negative ones.
    fn ranges(&self, lens: impl Iterator<Item = i64>) -> Vec<(u64, usize)> {
        self.addrs
            .iter()
            .zip(lens)
            .filter(|(_, l)| *l >= 0)
            .map(|(&a, l)| (a, l as usize))
            .collect()
    }

    fn failed(&self, what: &str, e: std::io::Error) -> ClusterError {
        tracing::warn!(pid = self.pid, "store: {what} client memory failed: {e}");
        denied(&e.to_string())
    }
}

fn denied(why: &str) -> ClusterError {
    ClusterError::Remote {
        code: code::LOCAL_DENIED,
        message: why.into(),
    }
}

impl NodeEnd for SameHostEnd {
    fn put_items<'m>(&mut self, meta: &'m [u8], _: u64) -> ClusterResult<Vec<PutItem<'m>>> {
        let (items, addrs) = codec::decode_put_local(meta)?;
        self.admit()?;
        self.addrs = addrs;
        Ok(items)
    }

    fn recv(&mut self, _: &mut Conn, dst: &mut [&mut [u8]]) -> ClusterResult<()> {
        let local: Vec<(*mut u8, usize)> =
            dst.iter_mut().map(|d| (d.as_mut_ptr(), d.len())).collect();
        let remote = self.ranges(dst.iter().map(|d| d.len() as i64));
        shm::read_into(self.pid, &remote, &local).map_err(|e| self.failed("reading", e))
    }

    unsafe fn recv_raw(&mut self, _: &mut Conn, dst: &[(*mut u8, usize)]) -> ClusterResult<()> {
        let remote = self.ranges(dst.iter().map(|d| d.1 as i64));
        // `read_into` returns Ok only after the kernel filled every byte of every destination (a
        // short copy is an error); the destinations are valid by this fn's contract.
        shm::read_into(self.pid, &remote, dst).map_err(|e| self.failed("reading", e))
    }

    fn get_items<'m>(&mut self, meta: &'m [u8]) -> ClusterResult<Vec<GetItem<'m>>> {
        let (items, addrs) = codec::decode_get_local(meta)?;
        self.admit()?;
        self.addrs = addrs;
        Ok(items)
    }

    fn send_get(&mut self, conn: &mut Conn, a: &GetAnswer<'_>) -> ClusterResult<()> {
        let remote = self.ranges(a.lens.iter().copied());
        shm::write_to(self.pid, a.hits, &remote).map_err(|e| self.failed("writing", e))?;
        let header = Header::response(Op::GetLocal, a.request_id, a.meta.len(), 0);
        Ok(conn.send(header, a.meta, &[])?)
    }
}
