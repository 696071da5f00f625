//! A store node: one engine [`Store`] served over TCP, registered with the master and kept alive by
//! heartbeats.
//!
//! The node's identity (`node_id`) is stable across restarts (by default a hash of the advertised host
//! and the device path), so placement maps the same keys to it when it comes back and its persisted
//! pages are served again. Losing the master never stops the node serving: it keeps re-registering
//! in the background.

pub mod heap;
mod rdma;
mod serve;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::{ClusterError, ClusterResult};
use crate::membership::MasterLink;
use crate::proto::{Heartbeat, Op, Reader, Register};
use crate::transport::rdma::Nic;
use crate::transport::{listen, shm, Conn, ServerAuth};
use serve::{serve_conn, Serving};
use strata_engine::{Store, StoreConfig};

/// How a store node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Master RPC address (`host:port`).
    pub master: String,
    /// Address to bind. Default `127.0.0.1:0`.
    pub listen: String,
    /// Host clients dial; the bound port is appended. Default: the bind host.
    pub advertise_host: Option<String>,
    /// Port clients dial, when something in front of the node (a proxy, a NAT) forwards another
    /// port to the bound one. Default: the bound port.
    pub advertise_port: Option<u16>,
    /// Stable identity; default derived from the advertised host and the device path.
    pub node_id: Option<String>,
    /// The engine to serve.
    pub store: StoreConfig,
    /// Shared token for every connection (empty = none).
    pub auth_token: String,
    /// Heartbeat period. Default 1 s.
    pub heartbeat: Duration,
    /// RDMA NICs to serve the RDMA data path on (same list format as the client's). Default from
    /// `MOONCAKE_DEVICE`; empty = TCP only. Needs the `rdma` cargo feature.
    pub rdma_devices: String,
    /// Refuse every same-host operation with LOCAL_DENIED, as the kernel does under a strict ptrace
    /// policy; clients then use TCP with this node. Default false (`strata store
    /// --deny-same-host`; tests use it to cover the client's fallback).
    pub deny_same_host: bool,
}

impl NodeConfig {
    pub fn new(master: impl Into<String>, store: StoreConfig) -> Self {
        Self {
            master: master.into(),
            listen: "127.0.0.1:0".into(),
            advertise_host: None,
            advertise_port: None,
            node_id: None,
            store,
            auth_token: String::new(),
            heartbeat: Duration::from_secs(1),
            rdma_devices: std::env::var("MOONCAKE_DEVICE").unwrap_or_default(),
            deny_same_host: false,
        }
    }
}

/// A running node. Dropping it stops heartbeats (the listener thread lives with the process).
pub struct NodeHandle {
    pub node_id: String,
    /// The address clients dial.
    pub addr: String,
    pub store: Arc<Store>,
    stop: Arc<AtomicBool>,
    master: String,
    token: String,
}

impl NodeHandle {
    /// Graceful stop: no more heartbeats, leave the membership now (clients stop routing here
    /// without waiting for the heartbeat timeout), and make every completed put durable with the
    /// open segment sealed (the next open reads summaries only; `inspect` sees no torn tail).
    pub fn shutdown(&self) -> ClusterResult<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut w = crate::proto::Writer::new();
        w.str(&self.node_id);
        let left = MasterLink::new(&self.master, &self.token, &self.node_id)
            .call(Op::Unregister, &w.finish());
        if let Err(e) = &left {
            tracing::warn!("store: could not leave the membership: {e}");
        }
        self.store.seal_open()?;
        Ok(())
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Opens the engine, starts serving and registers with the master.
pub fn start(cfg: NodeConfig) -> ClusterResult<NodeHandle> {
    // The write-back buffer's size only: reserving its DRAM tier too (which adopts flushed pages)
    // was measured slower for colocated puts of 256 KiB-4 MiB (3-6 vs 8-13 GB/s; glibc's free
    // lists over a 2 GiB heap), though faster for TCP puts into a store process.
    heap::reserve(cfg.store.write_back);
    let store = Arc::new(Store::open(cfg.store.clone())?);
    let listener = listen(&cfg.listen)?;
    start_with(cfg, store, listener)
}

/// Like [`start`] with an already open engine and listener (the colocated client uses this).
pub fn start_with(
    cfg: NodeConfig,
    store: Arc<Store>,
    listener: TcpListener,
) -> ClusterResult<NodeHandle> {
    let bound = listener.local_addr()?;
    let host = cfg
        .advertise_host
        .clone()
        .unwrap_or_else(|| bound.ip().to_string());
    if host == "0.0.0.0" || host == "::" {
        return Err(ClusterError::Config(
            "binding a wildcard address needs --advertise-host".into(),
        ));
    }
    let addr = format!("{host}:{}", cfg.advertise_port.unwrap_or(bound.port()));
    let node_id = cfg.node_id.clone().unwrap_or_else(|| {
        let dev = std::fs::canonicalize(&cfg.store.path).unwrap_or(cfg.store.path.clone());
        let h = xxhash_rust::xxh3::xxh3_64(format!("{host}|{}", dev.display()).as_bytes());
        format!("node-{h:016x}")
    });
    let auth = ServerAuth {
        token: cfg.auth_token.clone(),
        name: node_id.clone(),
    };
    let serving = Serving {
        store: store.clone(),
        auth,
        rdma: rdma::open(&cfg.rdma_devices),
        deny_same_host: cfg.deny_same_host,
    };
    let sv = serving.clone();
    thread::Builder::new()
        .name("strata-accept".into())
        .spawn(move || accept_loop(listener, sv))?;
    match shm::bind(&addr) {
        Ok(l) => {
            // A same-host connection never sets up RDMA.
            let sv = Serving {
                rdma: Nic::None,
                ..serving
            };
            thread::Builder::new()
                .name("strata-accept-local".into())
                .spawn(move || accept_local_loop(l, sv))?;
        }
        Err(e) => tracing::warn!("store: same-host socket unavailable, TCP only: {e}"),
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reg = Register {
        node_id: node_id.clone(),
        addr: addr.clone(),
        capacity: cfg.store.capacity,
        memory: cfg.store.memory,
    };
    let mut link = MasterLink::new(&cfg.master, &cfg.auth_token, &node_id);
    // Register once before returning, so a client that starts this node in-process sees it at once;
    // an unreachable master is retried by the heartbeat thread.
    let registered = match link.call(Op::Register, &reg.encode()) {
        Ok(_) => true,
        // A refused token is a configuration error, not a network fault: retrying cannot fix it.
        Err(ClusterError::Unauthorized) => {
            return Err(ClusterError::Config(format!(
                "the master at {} refused this node's auth token (--auth-token / \
                 STRATA_AUTH_TOKEN must match the master's)",
                cfg.master
            )))
        }
        Err(e) => {
            tracing::warn!("store: master {} unreachable, will retry: {e}", cfg.master);
            false
        }
    };
    let (st, sp) = (store.clone(), stop.clone());
    let period = cfg.heartbeat;
    thread::Builder::new()
        .name("strata-heartbeat".into())
        .spawn(move || heartbeat_loop(link, reg, registered, st, sp, period))?;
    tracing::info!(%node_id, %addr, master = %cfg.master, "store node serving");
    Ok(NodeHandle {
        node_id,
        addr,
        store,
        stop,
        master: cfg.master,
        token: cfg.auth_token,
    })
}

fn accept_loop(listener: TcpListener, serving: Serving) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let sv = serving.clone();
                let _ = thread::Builder::new()
                    .name("strata-conn".into())
                    .spawn(move || serve_conn(sv, Conn::new(s), None));
            }
            Err(e) => {
                tracing::warn!("store: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn accept_local_loop(listener: UnixListener, serving: Serving) {
    for stream in listener.incoming() {
        let s = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("store: local accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let pid = match shm::peer_pid(&s) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("store: no peer credentials on a local connection: {e}");
                continue;
            }
        };
        let sv = serving.clone();
        let _ = thread::Builder::new()
            .name("strata-conn-local".into())
            .spawn(move || serve_conn(sv, Conn::new(s), Some(pid)));
    }
}

fn heartbeat_loop(
    mut link: MasterLink,
    reg: Register,
    mut registered: bool,
    store: Arc<Store>,
    stop: Arc<AtomicBool>,
    period: Duration,
) {
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        let r = if registered {
            let s = store.stats();
            let hb = Heartbeat {
                node_id: reg.node_id.clone(),
                used_bytes: s.live_bytes,
                keys: s.keys,
            };
            link.call(Op::Heartbeat, &hb.encode()).and_then(|m| {
                let mut r = Reader::new(&m);
                Ok(r.u8()? != 0)
            })
        } else {
            link.call(Op::Register, &reg.encode()).map(|_| true)
        };
        match r {
            Ok(known) => {
                if !registered || warned {
                    tracing::info!(node_id = %reg.node_id, "registered with master {}", link.addr());
                }
                registered = known;
                warned = false;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!("store: master {} unreachable: {e}", link.addr());
                    warned = true;
                }
                registered = false;
            }
        }
        thread::sleep(period);
    }
    let _ = link.call(Op::Unregister, &{
        let mut w = crate::proto::Writer::new();
        w.str(&reg.node_id);
        w.finish()
    });
}
