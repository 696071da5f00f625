//! The decode side: fetches a request's prompt KV from the prefill's bootstrap server on a
//! background thread while the scheduler holds the request, then hands the pages over. The
//! connection comes from the pool of [`super::link`]. Three data paths, chosen per transfer:
//!
//! - CUDA IPC (same host, GPU runners on both sides): the pages stay in the prefill's GPU pool,
//!   which this process opened once per prefill (the handle came in an earlier header); they are
//!   copied device to device straight into the pool pages the scheduler gave the fetch ([`Dest`]).
//!   A fetch without pool pages does not ask for device pages (the prefill stages them). With
//!   `STRATA_PD_PUSH=1` the prefill copies them into those pool pages itself (PUSHED).
//! - same-host copy: the pages are copied with `process_vm_readv` straight out of the prefill's
//!   memory (its KV pool on the CPU runner, else its staging pool).
//! - the socket (TCP, or the fallback of the other two); over TCP the page bytes go over the
//!   connection's RDMA queue pair instead when it has one (the `rdma` build, [`super::rdma`]).
//!
//! On the CPU runner the scheduler gives a fetch its pool pages up front ([`Dest`]) when the pool
//! has room: pages the prefill sends in the pool's own order (page_first_direct, from its pool)
//! land there directly, by either of the last two paths, and nothing is copied again. Otherwise
//! they land in a staging pool that the scheduler loads into the pool. One transfer on a
//! connection (WANT, headers, landing, ACK) is [`exchange`].

use super::link::Links;
use super::share::{DeviceKv, Fence, HostSpans};
use super::staging::StagingCache;
use super::wire::{self, Want};
use super::{Bootstrap, PdConfig};
use crate::hicache::MemLayout;
use crate::kv::HostKvPool;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::Arc;

mod exchange;
mod workers;
use exchange::{Exchange, Got, Staging};

/// Where received pages wait for the scheduler.
pub enum Payload {
    /// A host staging pool (pages `0..n_pages`).
    Host(HostKvPool),
    /// Already in the pool pages the scheduler gave the fetch ([`Dest`]), which come back in
    /// [`Fetched::pages`].
    InPool,
}

/// Pool pages the scheduler allocated for a fetch: pages in page_first_direct order go straight
/// there (the CPU runner, whose pool memory `spans` reaches), as do pages copied device to device
/// out of a prefill's GPU pool (the CUDA runner: the copy waits for `fence`); no staging copy.
/// The fetch owns the pages until the scheduler takes the result, so an aborted request's pages
/// cannot be reused while a copy into them runs.
pub struct Dest {
    pub pages: Vec<crate::kv::Page>,
    pub spans: Option<Arc<HostSpans>>,
    pub fence: Option<Fence>,
}

/// Where one transfer's time went, on the decode side.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// From the fetch's start to its connection ready, before the WANT (the fetch thread's
    /// start, the address, the pooled connection's check).
    pub began: std::time::Duration,
    /// From the WANT to the final KV header, less the time parts spent landing: waiting for the
    /// prefill's pages (its compute, its wake-up, the headers).
    pub waited: std::time::Duration,
    /// From each KV header (parts and the final one) to its bytes in place (the copy, or the
    /// socket read), summed: the transfer itself, not the prefill's chunks between parts.
    pub moved: std::time::Duration,
    /// From the bytes in place to the acknowledgement sent.
    pub acked: std::time::Duration,
    pub bytes: u64,
}

/// The prompt's KV, received.
pub struct Fetched {
    pub first_token: u32,
    /// The first token's log-probabilities as the prefill computed them (when asked for).
    pub first_logprobs: Option<crate::logprobs::PosLogprobs>,
    pub payload: Payload,
    pub n_pages: usize,
    /// The pool pages given with the fetch ([`Dest`]), the prompt's KV in them when the payload
    /// is `InPool`.
    pub pages: Option<Vec<crate::kv::Page>>,
    pub timing: Timing,
}

/// Page geometry both sides must agree on.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub page_size: usize,
    pub layers: usize,
    pub kv_dim: usize,
    pub elem: usize,
}

/// Per request id: `None` while its fetch runs, then the result. A forgotten (aborted) request
/// has no entry, so a fetch that finishes after the abort drops its pages at once.
type Results = Arc<Mutex<HashMap<String, Option<Result<Fetched, String>>>>>;

/// Fetches in flight and finished, by request id.
pub struct Fetcher {
    cfg: PdConfig,
    geo: Geometry,
    results: Results,
    links: Arc<Links>,
    /// Tells the scheduler a fetch finished (so it need not poll for it).
    waker: Arc<Mutex<Option<Waker>>>,
    /// Staging pools whose pages were loaded, for the next fetches.
    staging: Arc<StagingCache>,
    /// The threads fetches run on.
    workers: workers::Workers,
    /// The runner's GPU pool, when it can take pages device to device (CUDA IPC).
    device: Option<Arc<dyn DeviceKv>>,
}

type Waker = Box<dyn Fn() + Send + Sync>;

impl Fetcher {
    pub fn new(cfg: PdConfig, geo: Geometry, stats: Arc<crate::stats::Stats>) -> Self {
        let links = Links::new(cfg.same_host, cfg.silence_limit(), stats)
            .with_nic(super::rdma::open(&cfg.ib_devices));
        let links = Arc::new(links);
        Fetcher {
            cfg,
            geo,
            results: Arc::new(Mutex::new(HashMap::new())),
            links,
            waker: Arc::new(Mutex::new(None)),
            staging: Arc::new(StagingCache::default()),
            workers: Default::default(),
            device: None,
        }
    }

    /// Lets same-host transfers from GPU prefills go device to device (CUDA IPC).
    pub fn with_device(mut self, device: Option<Arc<dyn DeviceKv>>) -> Self {
        self.device = device;
        self
    }

    /// The runner's GPU pool as transfers reach it (CUDA IPC), if any.
    pub fn device(&self) -> Option<Arc<dyn DeviceKv>> {
        self.device.clone()
    }

    /// Gives back the staging pool of a fetch whose pages were loaded.
    pub fn recycle(&self, staging: HostKvPool) {
        self.staging.give(staging);
    }

    /// Called after every finished fetch.
    pub fn set_waker(&self, w: Waker) {
        *self.waker.lock() = Some(w);
    }

    /// Starts fetching the KV of `rid` (a prompt of `prompt_len` tokens) from `b`'s prefill,
    /// into `dest`'s pool pages when given and the prefill sends page_first_direct.
    pub fn start(&self, rid: &str, b: &Bootstrap, prompt_len: usize, dest: Option<Dest>) {
        let (cfg, geo, results) = (self.cfg.clone(), self.geo, self.results.clone());
        let (links, waker, cache) = (self.links.clone(), self.waker.clone(), self.staging.clone());
        let (id, b, device) = (rid.to_string(), b.clone(), self.device.clone());
        let t0 = std::time::Instant::now();
        self.results.lock().insert(rid.to_string(), None);
        let spawned = self.workers.run(move || {
            let r = fetch(
                t0,
                &cfg,
                geo,
                &b,
                prompt_len,
                &links,
                &cache,
                device.as_deref(),
                dest,
            );
            if let Err(e) = &r {
                tracing::warn!(rid = id, room = b.room, "PD: {e}");
            }
            if let Some(slot) = results.lock().get_mut(&id) {
                *slot = Some(r);
            }
            if let Some(w) = waker.lock().as_ref() {
                w();
            }
        });
        if let Err(e) = spawned {
            self.results.lock().insert(
                rid.to_string(),
                Some(Err(format!("cannot start a PD fetch: {e}"))),
            );
        }
    }

    /// The finished fetch of `rid`, if any (removed).
    pub fn take(&self, rid: &str) -> Option<Result<Fetched, String>> {
        let mut g = self.results.lock();
        g.get(rid)?.as_ref()?;
        g.remove(rid).flatten()
    }

    /// Returns a fetched result that could not be used yet.
    pub fn put_back(&self, rid: &str, f: Fetched) {
        self.results.lock().insert(rid.to_string(), Some(Ok(f)));
    }

    /// Forgets `rid` (aborted); a fetch still running drops its result when it finishes.
    pub fn forget(&self, rid: &str) {
        self.results.lock().remove(rid);
    }
}

/// Why an exchange on a connection failed.
struct Fail {
    msg: String,
    /// The connection ended at a frame boundary and may serve the next transfer.
    keep: bool,
    /// Nothing came back on a reused connection: the prefill had closed it (restarted); the
    /// transfer may be retried on a new one.
    stale: bool,
}

impl Fail {
    fn broken(msg: String) -> Self {
        Fail {
            msg,
            keep: false,
            stale: false,
        }
    }
}

#[allow(clippy::too_many_arguments)] // one transfer's whole context
fn fetch(
    t0: std::time::Instant,
    cfg: &PdConfig,
    g: Geometry,
    b: &Bootstrap,
    prompt_len: usize,
    links: &Links,
    cache: &StagingCache,
    device: Option<&dyn DeviceKv>,
    dest: Option<Dest>,
) -> Result<Fetched, String> {
    let port = b.port.unwrap_or(cfg.bootstrap_port);
    let addr = (b.host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("bootstrap address {}:{port}: {e}", b.host))?
        .next()
        .ok_or_else(|| format!("bootstrap address {}:{port} does not resolve", b.host))?;
    let staging_pages = prompt_len.div_ceil(g.page_size);
    let object_bytes = g.page_size * g.layers * g.kv_dim * g.elem;
    let make = || {
        cache.take(staging_pages, object_bytes, |pages| {
            HostKvPool::new(
                pages,
                g.page_size,
                g.layers,
                g.kv_dim,
                g.elem,
                MemLayout::PageFirst,
            )
        })
    };
    let mut staging = Staging {
        pool: None,
        make: Some(&make),
    };
    let dest = dest.filter(|d| d.pages.len() == staging_pages);
    // Parts land in the pool pages given, or (host pages) in the staging pool; device pages are
    // asked for only with pool pages to land in.
    let want = Want {
        room: b.room,
        prompt_len: prompt_len as u32,
        page_size: g.page_size as u32,
        object_bytes: object_bytes as u32,
        flags: wire::TAKES_DIRECT | wire::TAKES_PARTS,
        token: cfg.token.clone(),
        dest: None,
    };
    let mut link = links.take(addr)?;
    let began = t0.elapsed();
    let ids: Vec<u32> = dest.as_ref().map_or(Vec::new(), |d| {
        d.pages.iter().map(crate::kv::Page::id).collect()
    });
    let ex = Exchange {
        cfg,
        links,
        addr,
        device,
        dest: dest
            .as_ref()
            .and_then(|d| Some(d.spans.as_ref()?.ranges(&ids))),
        dest_pages: dest.as_ref().map(|_| ids.as_slice()),
        fence: dest.as_ref().and_then(|d| d.fence.as_ref()),
    };
    let mut r = ex.run(&mut link, &want, &mut staging, staging_pages);
    if matches!(&r, Err(f) if f.stale) {
        tracing::debug!(%addr, "PD: a pooled connection was closed by the prefill; dialing again");
        link = links.dial(addr)?;
        r = ex.run(&mut link, &want, &mut staging, staging_pages);
    }
    match r {
        Ok((h, got, timing)) => {
            links.give(addr, link);
            let payload = match got {
                Got::Staging => Payload::Host(
                    staging
                        .pool
                        .take()
                        .ok_or("no staging pool for staged pages")?,
                ),
                Got::InPool => {
                    if let Some(p) = staging.pool.take() {
                        cache.give(p);
                    }
                    Payload::InPool
                }
            };
            Ok(Fetched {
                first_token: h.first_token,
                first_logprobs: h.first_logprobs,
                timing: Timing { began, ..timing },
                payload,
                n_pages: staging_pages,
                pages: dest.map(|d| d.pages),
            })
        }
        Err(f) => {
            if f.keep {
                links.give(addr, link);
            }
            Err(f.msg)
        }
    }
}

#[cfg(test)]
mod tests;
