//! The body of RDMA_HELLO (request and response alike): one side's queue-pair endpoint and the
//! receive geometry it offers. Compiled without the `rdma` feature so the encoding is tested in CI.
//!
//! ```text
//! u8  version      1
//! u32 qp_num       24-bit queue-pair number (high byte zero)
//! u16 lid          the port's local id (0 on RoCE)
//! u8  has_gid      0 or 1
//! [16] gid         only when has_gid = 1 (raw bytes, network order)
//! u32 chunk        bytes per receive buffer, 4 KiB..=16 MiB, a multiple of 4 KiB
//! u32 depth        receive buffers posted at a time, 1..=256
//! ```
//!
//! The client offers its maximum chunk and depth; the node answers with the values both sides then
//! use (never larger than the offer).

use crate::error::{ClusterError, ClusterResult};
use crate::proto::{Reader, Writer};

/// Version byte of the RDMA_HELLO body.
pub const WIRE_VERSION: u8 = 1;
/// Smallest and largest receive chunk.
pub const MIN_CHUNK: u32 = 4 << 10;
pub const MAX_CHUNK: u32 = 16 << 20;
/// Most receive buffers posted at once.
pub const MAX_DEPTH: u32 = 256;
/// Queue-pair numbers are 24 bits wide.
pub const QPN_MASK: u32 = 0x00FF_FFFF;

/// Where a queue pair can be reached: what the other side needs to move its own queue pair to
/// ready-to-receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub qp_num: u32,
    pub lid: u16,
    /// Global id, for routed (RoCE or multi-subnet) paths.
    pub gid: Option<[u8; 16]>,
}

/// An RDMA_HELLO body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaHello {
    pub endpoint: Endpoint,
    pub chunk: u32,
    pub depth: u32,
}

fn bad<T>(m: String) -> ClusterResult<T> {
    Err(ClusterError::Protocol(format!("RDMA_HELLO: {m}")))
}

impl RdmaHello {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(WIRE_VERSION)
            .u32(self.endpoint.qp_num)
            .u16(self.endpoint.lid);
        match &self.endpoint.gid {
            Some(g) => w.u8(1).raw(g),
            None => w.u8(0),
        };
        w.u32(self.chunk).u32(self.depth);
        w.finish()
    }

    /// Decodes and checks every field against the limits above.
    pub fn decode(meta: &[u8]) -> ClusterResult<Self> {
        let mut r = Reader::new(meta);
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return bad(format!("unsupported version {version}"));
        }
        let qp_num = r.u32()?;
        if qp_num & !QPN_MASK != 0 {
            return bad(format!(
                "queue-pair number {qp_num:#x} is wider than 24 bits"
            ));
        }
        let lid = r.u16()?;
        let gid = match r.u8()? {
            0 => None,
            1 => Some(r.array::<16>()?),
            f => return bad(format!("gid flag {f} is not 0 or 1")),
        };
        let chunk = r.u32()?;
        let depth = r.u32()?;
        r.finish()?;
        check_geometry(chunk, depth)?;
        Ok(Self {
            endpoint: Endpoint { qp_num, lid, gid },
            chunk,
            depth,
        })
    }

    /// The geometry a node uses for an offer: the smaller of each side's chunk and depth.
    pub fn agree(&self, max_chunk: u32, max_depth: u32) -> (u32, u32) {
        (self.chunk.min(max_chunk), self.depth.min(max_depth))
    }
}

/// Checks a chunk size and a depth against the limits.
pub fn check_geometry(chunk: u32, depth: u32) -> ClusterResult<()> {
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) || chunk % MIN_CHUNK != 0 {
        return bad(format!(
            "chunk of {chunk} bytes is not a multiple of {MIN_CHUNK} in {MIN_CHUNK}..={MAX_CHUNK}"
        ));
    }
    if !(1..=MAX_DEPTH).contains(&depth) {
        return bad(format!("depth {depth} outside 1..={MAX_DEPTH}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(gid: Option<[u8; 16]>) -> RdmaHello {
        RdmaHello {
            endpoint: Endpoint {
                qp_num: 0x12_3456,
                lid: 7,
                gid,
            },
            chunk: 512 << 10,
            depth: 8,
        }
    }

    #[test]
    fn roundtrip_with_and_without_gid() {
        for h in [hello(None), hello(Some([0xAB; 16]))] {
            assert_eq!(RdmaHello::decode(&h.encode()).unwrap(), h);
        }
        assert_eq!(hello(None).encode().len(), 1 + 4 + 2 + 1 + 4 + 4);
        assert_eq!(
            hello(Some([0; 16])).encode().len(),
            1 + 4 + 2 + 1 + 16 + 4 + 4
        );
    }

    fn rejects(b: &[u8], what: &str) {
        let e = RdmaHello::decode(b).unwrap_err().to_string();
        assert!(e.contains(what), "{e:?} should mention {what:?}");
    }

    #[test]
    fn rejects_malformed() {
        let good = hello(Some([1; 16])).encode();
        rejects(&good[..good.len() - 1], "truncated");
        rejects(&[good.clone(), vec![0]].concat(), "trailing");
        rejects(&[], "truncated");
        let mut b = good.clone();
        b[0] = 2;
        rejects(&b, "version");
        let mut b = good.clone();
        b[4] = 1; // high byte of the qp number
        rejects(&b, "24 bits");
        let mut b = good.clone();
        b[7] = 2;
        rejects(&b, "gid flag");
    }

    #[test]
    fn rejects_oversize_geometry() {
        for (chunk, depth, what) in [
            (MAX_CHUNK + MIN_CHUNK, 8, "chunk"),
            (0, 8, "chunk"),
            (MIN_CHUNK + 1, 8, "chunk"),
            (MIN_CHUNK, 0, "depth"),
            (MIN_CHUNK, MAX_DEPTH + 1, "depth"),
        ] {
            let h = RdmaHello {
                chunk,
                depth,
                ..hello(None)
            };
            rejects(&h.encode(), what);
        }
    }

    #[test]
    fn agree_takes_the_smaller() {
        assert_eq!(hello(None).agree(64 << 10, 32), (64 << 10, 8));
        assert_eq!(hello(None).agree(16 << 20, 4), (512 << 10, 4));
    }
}
