//! `strata store`: a store node contributing device and DRAM capacity to the cluster: it opens the
//! engine on `--device`, registers with `--master`, heartbeats, and serves batch get/put/exists/remove.

use crate::cmd::size::parse_size;
use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};
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
    /// Port clients should dial (default: the bound port), for a proxy or NAT that forwards
    /// another port to this node.
    #[arg(long)]
    advertise_port: Option<u16>,
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
    check_space(&a.device, a.capacity)?;
    let sc = StoreConfig::new(&a.device)
        .with_capacity(a.capacity)
        .with_memory(a.memory)
        .with_segment_size(a.segment_size)
        .with_io_engine(a.io_engine)
        .with_write_back(a.write_back);
    let mut nc = NodeConfig::new(a.master, sc);
    nc.listen = format!("{}:{}", a.host, a.port);
    nc.advertise_host = a.advertise_host;
    nc.advertise_port = a.advertise_port;
    nc.node_id = a.node_id;
    nc.auth_token = a.service.auth_token;
    nc.heartbeat = Duration::from_millis(a.heartbeat_ms);
    nc.deny_same_host = a.deny_same_host;
    let master = nc.master.clone();
    let h = strata_cluster::node::start(nc)
        .with_context(|| format!("store on {} (master {master})", a.device.display()))?;
    println!("strata store ready node_id={} addr={}", h.node_id, h.addr);
    std::io::stdout().flush()?;
    wait_for_shutdown_signal()?;
    tracing::info!("shutting down: leaving the cluster and syncing the store");
    h.shutdown()?;
    Ok(())
}

/// Refuses a `--capacity` that a file-backed store could not grow to: the file's current size
/// plus the free space of its file system (a sparse file would otherwise fail puts much later,
/// with ENOSPC, once the disk fills). Block devices are sized by the engine.
fn check_space(device: &Path, capacity: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let existing = match std::fs::metadata(device) {
        Ok(m) if m.file_type().is_block_device() => return Ok(()),
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let dir = match device.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        // No such directory: the engine's open reports it.
        return Ok(());
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if capacity > existing + free {
        bail!(
            "--capacity {} does not fit on {}: {} free on its file system{}; lower --capacity \
             or free space",
            human(capacity),
            device.display(),
            human(free),
            if existing > 0 {
                format!(" plus {} already in the file", human(existing))
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
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
