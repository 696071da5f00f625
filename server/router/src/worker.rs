//! Workers and pools: a worker's identity, health, circuit breaker and in-flight load; a pool is
//! the set of workers of one role (regular, prefill or decode) plus the policy that picks among them.
//!
//! Invariants: a worker's `load` counts requests dispatched to it and not yet finished; it is only
//! changed through [`LoadGuard`], so it returns to zero whatever path a request ends by. Pools are
//! copy-on-write snapshots: readers clone an `Arc` and never block writers for long.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::circuit::{CircuitBreaker, CircuitState};
use crate::config::CircuitConfig;
use crate::health::HealthCounter;
use crate::policy::{Candidate, Policy, RouteKey};

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    Regular,
    Prefill { bootstrap_port: Option<u16> },
    Decode,
}

impl WorkerKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Regular => "regular",
            Self::Prefill { .. } => "prefill",
            Self::Decode => "decode",
        }
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

#[derive(Debug)]
pub struct Worker {
    /// Unique for the life of the process; the cache-aware tree's tenant id.
    pub id: u32,
    pub url: String,
    /// The URL's host, parsed once (PD mode sends it as `bootstrap_host`).
    pub host: String,
    /// Under `--dp-aware`: the data-parallel replica of the server at `url` this worker is
    /// (requests carry it as `data_parallel_rank`).
    pub dp_rank: Option<usize>,
    pub kind: WorkerKind,
    healthy: AtomicBool,
    load: AtomicUsize,
    pub circuit: CircuitBreaker,
    pub health: Mutex<HealthCounter>,
}

impl Worker {
    pub fn new(url: String, kind: WorkerKind, circuit: &CircuitConfig) -> Arc<Self> {
        Self::ranked(url, kind, circuit, None)
    }

    /// A worker that is replica `dp_rank` of the server at `url`.
    pub fn ranked(
        url: String,
        kind: WorkerKind,
        circuit: &CircuitConfig,
        dp_rank: Option<usize>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            host: crate::config::url_host(&url),
            dp_rank,
            url,
            kind,
            healthy: AtomicBool::new(true),
            load: AtomicUsize::new(0),
            circuit: CircuitBreaker::new(circuit),
            health: Mutex::new(HealthCounter::default()),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Healthy and its circuit lets a request through.
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_healthy() && self.circuit.can_execute(now)
    }

    /// How listings and metrics name it: its URL, `url@rank` for a data-parallel replica
    /// (sglang-router's form).
    pub fn name(&self) -> String {
        match self.dp_rank {
            Some(r) => format!("{}@{r}", self.url),
            None => self.url.clone(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let port = match self.kind {
            WorkerKind::Prefill { bootstrap_port } => bootstrap_port,
            _ => None,
        };
        serde_json::json!({
            "url": self.name(),
            "dp_rank": self.dp_rank,
            "worker_type": self.kind.name(),
            "bootstrap_port": port,
            "is_healthy": self.is_healthy(),
            "load": self.load(),
            "circuit_state": match self.circuit.state() {
                CircuitState::Closed => "closed",
                CircuitState::Open => "open",
                CircuitState::HalfOpen => "half_open",
            },
        })
    }
}

/// Counts one in-flight request on a worker for as long as it lives.
#[derive(Debug)]
pub struct LoadGuard(Arc<Worker>);

impl LoadGuard {
    pub fn new(worker: Arc<Worker>) -> Self {
        worker.load.fetch_add(1, Ordering::Relaxed);
        Self(worker)
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The workers of one role and their policy.
pub struct Pool {
    workers: RwLock<Arc<Vec<Arc<Worker>>>>,
    pub policy: Box<dyn Policy>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("policy", &self.policy.name())
            .finish()
    }
}

impl Pool {
    pub fn new(policy: Box<dyn Policy>) -> Self {
        Self {
            workers: RwLock::new(Arc::new(Vec::new())),
            policy,
        }
    }

    pub fn snapshot(&self) -> Arc<Vec<Arc<Worker>>> {
        self.workers.read().clone()
    }

    pub fn find(&self, url: &str) -> Option<Arc<Worker>> {
        self.snapshot().iter().find(|w| w.url == url).cloned()
    }

    /// Adds `worker`; false if its URL (and replica) is already there.
    pub fn add(&self, worker: Arc<Worker>) -> bool {
        let mut w = self.workers.write();
        if w.iter()
            .any(|x| x.url == worker.url && x.dp_rank == worker.dp_rank)
        {
            return false;
        }
        let mut next = (**w).clone();
        next.push(worker);
        *w = Arc::new(next);
        true
    }

    /// Removes the worker at `url` (every replica of it), and forgets it in the policy.
    pub fn remove(&self, url: &str) -> Option<Arc<Worker>> {
        let mut w = self.workers.write();
        let (gone, kept): (Vec<_>, Vec<_>) = w.iter().cloned().partition(|x| x.url == url);
        if gone.is_empty() {
            return None;
        }
        *w = Arc::new(kept);
        drop(w);
        for g in &gone {
            self.policy.remove_worker(g.id);
        }
        gone.into_iter().next()
    }

    pub fn any_healthy(&self) -> bool {
        self.snapshot().iter().any(|w| w.is_healthy())
    }

    /// Picks an available worker for `key`, avoiding `exclude` (workers that already failed this
    /// request) unless nothing else is available.
    pub fn pick(&self, key: &RouteKey<'_>, exclude: &[u32]) -> Option<Arc<Worker>> {
        let snap = self.snapshot();
        let now = Instant::now();
        let mut avail: Vec<&Arc<Worker>> = snap.iter().filter(|w| w.is_available(now)).collect();
        if avail.len() > 1 && !exclude.is_empty() {
            let rest: Vec<_> = avail
                .iter()
                .copied()
                .filter(|w| !exclude.contains(&w.id))
                .collect();
            if !rest.is_empty() {
                avail = rest;
            }
        }
        if avail.is_empty() {
            return None;
        }
        let cands: Vec<Candidate<'_>> = avail
            .iter()
            .map(|w| Candidate {
                id: w.id,
                url: &w.url,
                load: w.load(),
            })
            .collect();
        let i = self.policy.select(&cands, key)?;
        Some(avail[i].clone())
    }
}
