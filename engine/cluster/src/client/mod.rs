//! The cluster client (linked into `strata serve` and `strata bench store`).
//!
//! It learns the membership from the master (refreshed in the background every `refresh`), places
//! each key with rendezvous hashing ([`crate::membership::placement`]), and talks to store nodes
//! directly over pooled data paths (`pool`: same-host, TCP or RDMA, see [`crate::path`]); batched
//! calls fan out to every node involved at once. Per-key results are codes (`error::code`, Mooncake's
//! numbering). A node that dies or fails mid-call is marked down locally at once and its keys read as
//! misses: no call fails because a node is gone.
//!
//! A client may contribute its own memory and device as a segment (`ClientConfig::local_segment`), as
//! SGLang servers do in Mooncake's quick start: it then runs a store node in-process, and keys placed
//! on it are served by a direct call into the engine (a memcpy, no socket).

mod batch;
mod pool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::error::{code, ClusterError, ClusterResult};
use crate::membership::MasterLink;
use crate::node::{self, NodeConfig, NodeHandle};
use crate::path::in_process::InProcess;
use crate::path::DataPath;
use crate::proto::{MemberInfo, Members, Op};
use strata_engine::{Store, StoreConfig};

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Master RPC address `host:port`.
    pub master: String,
    /// Shared token (empty = none). Default from `STRATA_AUTH_TOKEN`.
    pub auth_token: String,
    /// Copies of each key. Default 1.
    pub replica_num: usize,
    /// Read/write timeout of one node request. Default 10 s.
    pub timeout: Duration,
    /// Membership refresh period. Default 500 ms.
    pub refresh: Duration,
    /// Contribute this engine as a segment served from this process. Default none.
    pub local_segment: Option<StoreConfig>,
    /// Where the local segment's node listens (`host:port`; port 0 = any). Default `127.0.0.1:0`.
    pub local_listen: String,
    /// Name sent in HELLO.
    pub name: String,
    /// Parallel connections (and node threads) one large batch uses per node. Default 2;
    /// `STRATA_STREAMS` overrides.
    pub streams: usize,
    /// Use the same-host path (Unix socket + cross-memory copies) to nodes on this host. Default
    /// true; `STRATA_SAME_HOST=0` turns it off.
    pub same_host: bool,
    /// RDMA NICs to use (`--disaggregation-ib-device` / `MOONCAKE_DEVICE` style list, e.g.
    /// `mlx5_0,mlx5_1`). Default from `MOONCAKE_DEVICE`. With the `rdma` cargo feature and a device
    /// that opens, batch get/put to nodes that accept RDMA_HELLO move page bytes over verbs; otherwise
    /// TCP, with one log line saying which and why (see `transport::select`).
    pub rdma_devices: String,
}

impl ClientConfig {
    pub fn new(master: impl Into<String>) -> Self {
        Self {
            master: master.into(),
            auth_token: std::env::var("STRATA_AUTH_TOKEN").unwrap_or_default(),
            replica_num: 1,
            timeout: Duration::from_secs(10),
            refresh: Duration::from_millis(500),
            local_segment: None,
            local_listen: "127.0.0.1:0".into(),
            name: format!("client-{}", std::process::id()),
            streams: std::env::var("STRATA_STREAMS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
            same_host: std::env::var("STRATA_SAME_HOST").map_or(true, |v| v != "0"),
            rdma_devices: std::env::var("MOONCAKE_DEVICE").unwrap_or_default(),
        }
    }

    /// From `STRATA_MASTER` (or `MOONCAKE_MASTER`), `STRATA_AUTH_TOKEN` and `STRATA_REPLICA_NUM`.
    pub fn from_env() -> ClusterResult<Self> {
        let master = std::env::var("STRATA_MASTER")
            .or_else(|_| std::env::var("MOONCAKE_MASTER"))
            .map_err(|_| ClusterError::Config("set STRATA_MASTER (or MOONCAKE_MASTER)".into()))?;
        let mut c = Self::new(master);
        if let Ok(n) = std::env::var("STRATA_REPLICA_NUM") {
            c.replica_num = n
                .parse()
                .map_err(|_| ClusterError::Config(format!("STRATA_REPLICA_NUM={n}")))?;
        }
        Ok(c)
    }
}

/// What the client currently believes about the cluster.
#[derive(Default)]
struct View {
    epoch: u64,
    /// Alive members, as the master reported them.
    alive: Vec<MemberInfo>,
    /// Members this client saw fail, until the given instant.
    down: HashMap<String, Instant>,
}

struct Inner {
    cfg: ClientConfig,
    view: RwLock<View>,
    pool: pool::Pool,
    local: Option<(String, Arc<Store>)>,
    regions: Mutex<Vec<(usize, usize)>>,
    stop: AtomicBool,
}

/// A connected cluster client. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _local: Option<Arc<NodeHandle>>,
}

impl Client {
    /// Connects to the master, fetches the membership and starts the refresh thread (and the local
    /// segment's node when configured).
    pub fn connect(cfg: ClientConfig) -> ClusterResult<Self> {
        if cfg.replica_num == 0 {
            return Err(ClusterError::Config(
                "replica_num must be at least 1".into(),
            ));
        }
        let data_path = crate::transport::select(&cfg.rdma_devices);
        let mut local_handle = None;
        let mut local = None;
        if let Some(sc) = &cfg.local_segment {
            let mut nc = NodeConfig::new(cfg.master.clone(), sc.clone());
            nc.auth_token = cfg.auth_token.clone();
            nc.listen = cfg.local_listen.clone();
            let h = node::start(nc)?;
            local = Some((h.node_id.clone(), h.store.clone()));
            local_handle = Some(Arc::new(h));
        }
        let mut link = MasterLink::new(&cfg.master, &cfg.auth_token, &cfg.name);
        let m = Members::decode(&link.call(Op::Members, &[])?)?;
        let inner = Arc::new(Inner {
            pool: pool::Pool::new(
                &cfg.auth_token,
                &cfg.name,
                cfg.timeout,
                cfg.same_host,
                data_path,
            ),
            cfg,
            view: RwLock::new(View::default()),
            local,
            regions: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        inner.apply(m);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("strata-client-refresh".into())
            .spawn(move || refresh_loop(weak, link))?;
        Ok(Self {
            inner,
            _local: local_handle,
        })
    }

    /// [`Client::connect`] with [`ClientConfig::from_env`].
    pub fn from_env() -> ClusterResult<Self> {
        Self::connect(ClientConfig::from_env()?)
    }

    /// Records a host memory region that later `batch_get_into` / `batch_put_from` calls use. Over TCP
    /// any memory works and this only bookkeeps; the same-host path needs no registration either, and
    /// the RDMA path copies through buffers it registered itself (`ibverbs` 0.9 cannot register
    /// memory it did not allocate). Returns 0.
    pub fn register_buffer(&self, region: &[u8]) -> i32 {
        self.inner
            .regions
            .lock()
            .push((region.as_ptr() as usize, region.len()));
        code::OK
    }

    /// Forgets a region recorded by [`Client::register_buffer`]; 0, or -600 when unknown.
    pub fn unregister_buffer(&self, region: &[u8]) -> i32 {
        let mut r = self.inner.regions.lock();
        let before = r.len();
        r.retain(|&(p, _)| p != region.as_ptr() as usize);
        if r.len() < before {
            code::OK
        } else {
            code::INVALID_PARAMS
        }
    }

    /// Alive members as this client sees them, and the epoch.
    pub fn members(&self) -> (u64, Vec<MemberInfo>) {
        let v = self.inner.view.read();
        (v.epoch, v.alive.clone())
    }

    /// Fetches the membership from the master now (instead of waiting for the refresh thread).
    pub fn refresh(&self) -> ClusterResult<()> {
        let mut link = MasterLink::new(
            &self.inner.cfg.master,
            &self.inner.cfg.auth_token,
            "refresh",
        );
        let m = Members::decode(&link.call(Op::Members, &[])?)?;
        self.inner.apply(m);
        Ok(())
    }

    /// Stores each value unless its key exists. Per key: 0 (stored or already present) or a negative
    /// code.
    pub fn batch_put_from<K: AsRef<[u8]>>(&self, keys: &[K], values: &[&[u8]]) -> Vec<i32> {
        self.inner.batch_put(keys, values, None)
    }

    /// [`Client::batch_put_from`] with each page's depth in its prefix chain (0 = head; reclaim keeps
    /// heads longest).
    pub fn batch_put_from_with_depth<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        values: &[&[u8]],
        depths: &[u32],
    ) -> Vec<i32> {
        self.inner.batch_put(keys, values, Some(depths))
    }

    /// Reads each value into its buffer. Per key: the value's length, or a negative code
    /// (-704 missing, -10 buffer too small).
    pub fn batch_get_into<K: AsRef<[u8]>>(&self, keys: &[K], bufs: &mut [&mut [u8]]) -> Vec<i64> {
        self.inner.batch_get(keys, bufs)
    }

    /// Number of keys that exist consecutively from the start.
    pub fn batch_exists<K: AsRef<[u8]>>(&self, keys: &[K]) -> usize {
        self.inner
            .batch_is_exist(keys)
            .iter()
            .take_while(|&&c| c == 1)
            .count()
    }

    /// Per key: 1 exists, 0 does not (an unreachable node counts as 0).
    pub fn batch_is_exist<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<i32> {
        self.inner.batch_is_exist(keys)
    }

    pub fn put_from(&self, key: impl AsRef<[u8]>, value: &[u8]) -> i32 {
        self.batch_put_from(&[key], &[value])[0]
    }

    pub fn get_into(&self, key: impl AsRef<[u8]>, buf: &mut [u8]) -> i64 {
        self.batch_get_into(&[key], &mut [buf])[0]
    }

    pub fn is_exist(&self, key: impl AsRef<[u8]>) -> i32 {
        self.batch_is_exist(&[key])[0]
    }

    /// Removes each key from every replica. Per key: 0, or -704 when no replica had it.
    pub fn batch_remove<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<i32> {
        self.inner.batch_remove(keys)
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> i32 {
        self.batch_remove(&[key])[0]
    }

    /// Removes every key on every alive node. Fails if any alive node could not be cleared.
    pub fn clear(&self) -> ClusterResult<()> {
        self.inner.clear().map(|_| ())
    }

    /// Takes this client's own segment (if any) out of the membership now, making its completed
    /// puts durable; other clients stop placing keys on it at once. The client keeps working for
    /// keys on other nodes.
    pub fn leave(&self) -> ClusterResult<()> {
        match &self._local {
            Some(h) => h.shutdown(),
            None => Ok(()),
        }
    }

    /// [`Client::clear`], answering how many keys the nodes removed (Mooncake's `remove_all`).
    pub fn clear_count(&self) -> ClusterResult<u64> {
        self.inner.clear()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Inner {
    fn apply(&self, m: Members) {
        let mut v = self.view.write();
        if m.epoch != v.epoch {
            tracing::debug!(
                epoch = m.epoch,
                nodes = m.nodes.len(),
                "client: membership changed"
            );
            // A new epoch may mean a node came back: forget local suspicions.
            v.down.clear();
        }
        v.epoch = m.epoch;
        v.alive = m.nodes.into_iter().filter(|n| n.alive).collect();
    }

    /// Alive members minus those this client saw fail recently.
    fn usable(&self) -> Vec<MemberInfo> {
        let v = self.view.read();
        let now = Instant::now();
        v.alive
            .iter()
            .filter(|m| v.down.get(&m.id).is_none_or(|&t| t < now))
            .cloned()
            .collect()
    }

    fn mark_down(&self, m: &MemberInfo, e: &ClusterError) {
        tracing::warn!(node = %m.id, addr = %m.addr, "client: node failed, its keys read as misses: {e}");
        self.pool.forget(&m.addr);
        let until = Instant::now() + self.cfg.refresh * 4 + Duration::from_secs(1);
        self.view.write().down.insert(m.id.clone(), until);
    }

    /// The data path to `m`: the in-process one for this client's own segment, else a pooled one.
    fn path(&self, m: &MemberInfo) -> ClusterResult<Box<dyn DataPath>> {
        match self.local_store(m) {
            Some(store) => Ok(Box::new(InProcess(store.clone()))),
            None => self.pool.take(&m.addr),
        }
    }

    /// Returns a path that served a request cleanly (pooled ones go back to the pool).
    fn give(&self, m: &MemberInfo, path: Box<dyn DataPath>) {
        if self.local_store(m).is_none() {
            self.pool.give(&m.addr, path);
        }
    }

    fn local_store(&self, m: &MemberInfo) -> Option<&Arc<Store>> {
        self.local
            .as_ref()
            .filter(|(id, _)| *id == m.id)
            .map(|(_, s)| s)
    }
}

fn refresh_loop(weak: std::sync::Weak<Inner>, mut link: MasterLink) {
    let mut warned = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.stop.load(Ordering::Relaxed) {
            return;
        }
        let period = inner.cfg.refresh;
        match link
            .call(Op::Members, &[])
            .and_then(|m| Members::decode(&m))
        {
            Ok(m) => {
                inner.apply(m);
                warned = false;
            }
            Err(e) if !warned => {
                tracing::warn!("client: master unreachable, keeping the last membership: {e}");
                warned = true;
            }
            Err(_) => {}
        }
        drop(inner);
        std::thread::sleep(period);
    }
}
