//! The master: membership, heartbeats and liveness of store nodes, the cluster epoch, the
//! Mooncake-style HTTP metadata server and the metrics/admin endpoints. Its state survives a restart
//! (see [`persist`]).
//!
//! The master holds no per-key locations: placement is a function of the membership
//! (`membership::placement`), so the master is off the data path entirely and a restart of it costs
//! clients nothing but a missed membership refresh.

pub mod admin;
pub mod http_meta;
pub mod persist;
pub mod rpc;
pub mod state;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{ClusterError, ClusterResult};
use state::{Change, State};

/// How the master runs.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// RPC bind address. Default `127.0.0.1:50051`.
    pub rpc: String,
    /// HTTP metadata server bind address, `None` = disabled. Default `None`.
    pub http_metadata: Option<String>,
    /// Metrics/admin bind address, `None` = disabled. Default `127.0.0.1:9003`.
    pub metrics: Option<String>,
    /// State file. Default `strata-master.json` in the working directory.
    pub state_file: PathBuf,
    /// A node not heard from for this long is dead. Default 3 s.
    pub heartbeat_timeout: Duration,
    /// Token required on every connection and HTTP request (empty = none).
    pub auth_token: String,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            rpc: "127.0.0.1:50051".into(),
            http_metadata: None,
            metrics: Some("127.0.0.1:9003".into()),
            state_file: PathBuf::from("strata-master.json"),
            heartbeat_timeout: Duration::from_secs(3),
            auth_token: String::new(),
        }
    }
}

/// Shared master state plus counters for metrics.
pub struct Master {
    pub cfg: MasterConfig,
    pub state: Mutex<State>,
    pub rpc_requests: AtomicU64,
    pub rpc_errors: AtomicU64,
}

impl Master {
    /// Applies a transition under the lock and persists when it changed durable state.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> (T, Change)) -> T {
        let mut st = self.state.lock();
        let (v, change) = f(&mut st);
        if change == Change::Persist {
            if let Err(e) = persist::save(&self.cfg.state_file, &st) {
                tracing::error!(
                    "master: saving {} failed: {e}",
                    self.cfg.state_file.display()
                );
            }
        }
        v
    }

    pub fn sweep(&self) {
        let t = self.cfg.heartbeat_timeout;
        self.update(|s| ((), s.sweep(t, Instant::now())));
    }
}

/// Addresses the running master actually bound.
#[derive(Debug, Clone)]
pub struct MasterAddrs {
    pub rpc: String,
    pub http_metadata: Option<String>,
    pub metrics: Option<String>,
}

/// A running master (threads and an HTTP runtime that live as long as this handle).
pub struct MasterHandle {
    pub addrs: MasterAddrs,
    pub master: Arc<Master>,
    _runtime: tokio::runtime::Runtime,
}

/// Loads the state file, binds every surface and starts serving.
pub fn start(cfg: MasterConfig) -> ClusterResult<MasterHandle> {
    let state = persist::load(&cfg.state_file, Instant::now())?;
    tracing::info!(
        members = state.members.len(),
        metadata = state.metadata.len(),
        epoch = state.epoch,
        "master state loaded from {}",
        cfg.state_file.display()
    );
    let master = Arc::new(Master {
        cfg: cfg.clone(),
        state: Mutex::new(state),
        rpc_requests: AtomicU64::new(0),
        rpc_errors: AtomicU64::new(0),
    });
    let rpc = bind(&cfg.rpc, "RPC (--rpc-port)")?;
    let rpc_addr = rpc.local_addr()?.to_string();
    rpc::spawn(master.clone(), rpc)?;
    let m = master.clone();
    std::thread::Builder::new()
        .name("strata-sweep".into())
        .spawn(move || loop {
            std::thread::sleep(m.cfg.heartbeat_timeout / 4);
            m.sweep();
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut addrs = MasterAddrs {
        rpc: rpc_addr,
        http_metadata: None,
        metrics: None,
    };
    if let Some(a) = &cfg.http_metadata {
        let l = bind(a, "HTTP metadata (--http-metadata-server-port)")?;
        addrs.http_metadata = Some(l.local_addr()?.to_string());
        serve_http(&runtime, l, http_meta::app(master.clone()))?;
    }
    if let Some(a) = &cfg.metrics {
        let l = bind(a, "metrics (--metrics-port)")?;
        addrs.metrics = Some(l.local_addr()?.to_string());
        serve_http(&runtime, l, admin::app(master.clone()))?;
    }
    Ok(MasterHandle {
        addrs,
        master,
        _runtime: runtime,
    })
}

fn serve_http(
    rt: &tokio::runtime::Runtime,
    l: TcpListener,
    app: axum::Router,
) -> ClusterResult<()> {
    l.set_nonblocking(true)?;
    let _g = rt.enter();
    let l = tokio::net::TcpListener::from_std(l)?;
    rt.spawn(async move {
        if let Err(e) = axum::serve(l, app).await {
            tracing::error!("master: http server stopped: {e}");
        }
    });
    Ok(())
}

/// Checks an HTTP request's token: `Authorization: Bearer T` or `X-Strata-Token: T`.
pub fn http_authorized(token: &str, headers: &axum::http::HeaderMap) -> bool {
    if token.is_empty() {
        return true;
    }
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let plain = headers.get("x-strata-token").and_then(|v| v.to_str().ok());
    [bearer, plain]
        .into_iter()
        .flatten()
        .any(|t| crate::transport::tcp::ct_eq(t.as_bytes(), token.as_bytes()))
}

/// Binds `addr`, naming the address and the flag that chose it when that fails (a port in use is
/// the common case, and "Address already in use" alone does not say which of three).
fn bind(addr: &str, what: &str) -> ClusterResult<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        ClusterError::Config(format!("cannot listen on {addr} for the {what} port: {e}"))
    })
}
