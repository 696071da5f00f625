//! `strata store`: a store node contributing device and DRAM capacity to the cluster: it opens the
//! engine on `--device`, registers with `--master`, heartbeats, and serves batch get/put/exists/remove.

use crate::cmd::size::parse_size;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use strata_cluster::NodeConfig;
use strata_engine::{IoEngineKind, StoreConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Master RPC address.
    #[arg(long, env = "STRATA_MASTER", default_value = "127.0.0.1:50051")]
    master: String,
    /// File or block device holding the pages.
    #[arg(long)]
    device: PathBuf,
    /// Device bytes to use, e.g. 64GiB.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    capacity: u64,
    /// DRAM tier in front of the device, e.g. 4GiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    memory: u64,
    /// Engine segment size.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    segment_size: u64,
    /// Write-back buffer: a put is acknowledged once buffered in DRAM and written in the background
    /// (durable after the next sync; a node stopped with SIGTERM syncs). 0 (default): a put is
    /// acknowledged after its O_DIRECT write.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    write_back: u64,
    /// auto, uring or psync.
    #[arg(long, default_value = "auto")]
    io_engine: IoEngineKind,
    /// Bind address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Bind port (0 = any free port; the chosen one is registered with the master).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Host clients should dial (default: the bind host).
    #[arg(long)]
    advertise_host: Option<String>,
    /// Stable node identity (default: derived from the advertised host and the device path).
    #[arg(long)]
    node_id: Option<String>,
    /// Heartbeat period.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Refuse same-host (cross-memory) requests with LOCAL_DENIED, as a kernel with a strict ptrace
    /// policy does; same-host clients then use TCP with this node.
    #[arg(long)]
    deny_same_host: bool,
    #[command(flatten)]
    service: super::service::ServiceArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    super::logging::init(&a.service.log_level);
    let sc = StoreConfig::new(&a.device)
        .with_capacity(a.capacity)
        .with_memory(a.memory)
        .with_segment_size(a.segment_size)
        .with_io_engine(a.io_engine)
        .with_write_back(a.write_back);
    let mut nc = NodeConfig::new(a.master, sc);
    nc.listen = format!("{}:{}", a.host, a.port);
    nc.advertise_host = a.advertise_host;
    nc.node_id = a.node_id;
    nc.auth_token = a.service.auth_token;
    nc.heartbeat = Duration::from_millis(a.heartbeat_ms);
    nc.deny_same_host = a.deny_same_host;
    let h = strata_cluster::node::start(nc)?;
    println!("strata store ready node_id={} addr={}", h.node_id, h.addr);
    std::io::stdout().flush()?;
    wait_for_shutdown_signal()?;
    tracing::info!("shutting down: leaving the cluster and syncing the store");
    h.shutdown()?;
    Ok(())
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        anyhow::Ok(())
    })
}
