//! Transports that carry protocol frames: TCP (the default, [`tcp`]), the same-host data path
//! ([`shm`]: a Unix socket for control, cross-memory copies for pages) and RDMA ([`rdma`]: verbs
//! behind the off-by-default `rdma` cargo feature; its wire and chunking logic is always built).
//!
//! [`Conn`] is one framed, blocking, authenticated connection; both sides of every transport speak
//! through it, so the frame rules (limits, handshake, error frames) live in one place.

pub mod conn;
pub mod rdma;
pub mod shm;
pub mod stream;
pub mod tcp;

pub use conn::Conn;
pub use tcp::{connect, connect_local, listen, ServerAuth};

/// Splits a device list as SGLang and Mooncake write it (`mlx5_0,mlx5_1` or space-separated).
pub fn parse_devices(list: &str) -> Vec<String> {
    list.split([',', ' ', ';'])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Chooses the data path for page traffic to remote nodes from an RDMA device list (from
/// `--disaggregation-ib-device` or `MOONCAKE_DEVICE`), and logs the one line that says which and why
/// when RDMA was asked for. With a device open, each node is still asked (RDMA_HELLO on every new
/// connection); a node that declines gets TCP, with one warning per node.
pub fn select(devices: &str) -> rdma::Nic {
    let wanted = parse_devices(devices);
    if wanted.is_empty() {
        return rdma::Nic::None;
    }
    match rdma::open(&wanted) {
        Ok(path) => {
            tracing::info!(
                "RDMA data path on {path:?}: page traffic to nodes that accept RDMA_HELLO goes over \
                 verbs, the rest over TCP"
            );
            path
        }
        Err(why) => {
            tracing::warn!("RDMA unavailable ({why}); page traffic uses TCP");
            rdma::Nic::None
        }
    }
}
