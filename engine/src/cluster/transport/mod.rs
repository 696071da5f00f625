//! Transports that carry protocol frames: TCP (the default, [`tcp`]), the same-host data path
//! ([`shm`]: a Unix socket for control, cross-memory copies for pages) and RDMA behind the off-by-default `rdma` cargo feature ([`rdma`]).
//!
//! [`Conn`] is one framed, blocking, authenticated connection; both sides of every transport speak
//! through it, so the frame rules (limits, handshake, error frames) live in one place.

pub mod conn;
#[cfg(feature = "rdma")]
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

/// Chooses the data transport for an RDMA device list (from `--disaggregation-ib-device` or
/// `MOONCAKE_DEVICE`). Page traffic uses TCP in every case today; this logs the one line that says
/// why when RDMA was asked for.
pub fn select(devices: &str) -> &'static str {
    let wanted = parse_devices(devices);
    if wanted.is_empty() {
        return "tcp";
    }
    #[cfg(feature = "rdma")]
    match rdma::open_first(&wanted) {
        Ok(name) => tracing::info!(
            "RDMA device {name} opened; the verbs data path is not built yet, page traffic uses TCP"
        ),
        Err(why) => tracing::warn!("RDMA unavailable ({why}); falling back to TCP"),
    }
    #[cfg(not(feature = "rdma"))]
    tracing::warn!(
        "RDMA devices {wanted:?} requested but this build has no `rdma` feature; falling back to TCP"
    );
    "tcp"
}
