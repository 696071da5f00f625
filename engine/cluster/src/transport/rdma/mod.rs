//! The RDMA data path (verbs, through the `ibverbs` crate), built with the off-by-default `rdma`
//! cargo feature.
//!
//! Control stays on the TCP connection: after HELLO, a client with an open NIC sends RDMA_HELLO with
//! its queue pair's endpoint; a node that can serve RDMA answers with its own, both connect their
//! queue pairs, and the pair lives as long as the TCP connection (the client's `path::rdma::Rdma`,
//! the node's `path::rdma::RdmaEnd`). PUT_RDMA and GET_RDMA then carry keys, lengths and codes as
//! frames on the TCP connection while the values travel over the queue pair, cut into chunks by
//! [`plan`]. A node or build without RDMA answers
//! RDMA_HELLO with `RDMA_UNAVAILABLE` and the connection carries plain PUT/GET.
//!
//! Files: [`wire`] (RDMA_HELLO body) and [`plan`] (chunking) are pure and always compiled, so CI
//! tests them; `device` (NIC and protection domain), `link` (queue pair, buffers, completions) and
//! `setup` (both sides of RDMA_HELLO) need the feature and libibverbs. No RDMA hardware was
//! available to develop this: it compiles and its pure parts are tested, it has not run on a NIC.

pub mod plan;
pub mod wire;

#[cfg(feature = "rdma")]
pub mod device;
#[cfg(feature = "rdma")]
pub mod link;
#[cfg(feature = "rdma")]
pub mod setup;

#[cfg(feature = "rdma")]
use crate::error::ClusterResult;

/// Receive chunk a side offers (512 KiB).
pub const CHUNK: u32 = 512 << 10;
/// Receives a side keeps posted: with [`CHUNK`], 4 MiB of registered memory per direction per
/// connection.
pub const DEPTH: u32 = 8;

/// The NIC a process moves page bytes over to (or from) remote peers, if any.
#[derive(Clone, Copy, Debug, Default)]
pub enum Nic {
    /// No NIC: TCP frames only.
    #[default]
    None,
    /// RDMA through this device, for peers that accept RDMA_HELLO.
    #[cfg(feature = "rdma")]
    Open(&'static device::Device),
}

/// Opens the first usable device of `wanted` (non-empty) or says why RDMA is not available.
pub fn open(wanted: &[String]) -> Result<Nic, String> {
    #[cfg(feature = "rdma")]
    return device::open_first(wanted).map(Nic::Open);
    #[cfg(not(feature = "rdma"))]
    Err(format!(
        "RDMA devices {wanted:?} requested but this build has no `rdma` feature"
    ))
}

#[cfg(feature = "rdma")]
impl link::Link {
    /// Sends values (one slice per item, back to back in item order) over the queue pair.
    pub fn send_values(&mut self, values: &[&[u8]]) -> ClusterResult<()> {
        let lens: Vec<usize> = values.iter().map(|v| v.len()).collect();
        self.send(&plan::plan(&lens, self.chunk())?, values)
    }

    /// Receives values into `dst` (one slice per item, each filled completely) over the queue pair.
    pub fn recv_values(&mut self, dst: &mut [&mut [u8]]) -> ClusterResult<()> {
        let lens: Vec<usize> = dst.iter().map(|v| v.len()).collect();
        self.recv(&plan::plan(&lens, self.chunk())?, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the feature this is the "no `rdma` feature" reason; with it, libibverbs really runs
    /// and finds no such device (there is no RDMA hardware on the development machines).
    #[test]
    fn missing_device_gives_a_reason_and_tcp() {
        let why = open(&["strata-no-such-nic".into()]).unwrap_err();
        assert!(!why.is_empty());
        assert!(matches!(
            crate::transport::select("strata-no-such-nic"),
            Nic::None
        ));
        assert!(matches!(crate::transport::select(""), Nic::None));
    }
}
