//! The decode side: fetches a request's prompt KV from the prefill's bootstrap server on a
//! background thread while the scheduler holds the request, then hands the pages over.

use super::wire::{self, KvHeader, Want};
use super::{Bootstrap, PdConfig};
use crate::hicache::MemLayout;
use crate::kv::HostKvPool;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;

/// The prompt's KV, received.
pub struct Fetched {
    pub first_token: u32,
    /// The first token's log-probabilities as the prefill computed them (when asked for).
    pub first_logprobs: Option<crate::logprobs::PosLogprobs>,
    pub staging: HostKvPool,
    pub n_pages: usize,
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
}

impl Fetcher {
    pub fn new(cfg: PdConfig, geo: Geometry) -> Self {
        Fetcher {
            cfg,
            geo,
            results: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Starts fetching the KV of `rid` (a prompt of `prompt_len` tokens) from `b`'s prefill.
    pub fn start(&self, rid: &str, b: &Bootstrap, prompt_len: usize) {
        let (cfg, geo, results) = (self.cfg.clone(), self.geo, self.results.clone());
        let (id, b) = (rid.to_string(), b.clone());
        self.results.lock().insert(rid.to_string(), None);
        let spawned = std::thread::Builder::new()
            .name("strata-pd-fetch".into())
            .spawn(move || {
                let r = fetch(&cfg, geo, &b, prompt_len);
                if let Err(e) = &r {
                    tracing::warn!(rid = id, room = b.room, "PD: {e}");
                }
                if let Some(slot) = results.lock().get_mut(&id) {
                    *slot = Some(r);
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

fn fetch(cfg: &PdConfig, g: Geometry, b: &Bootstrap, prompt_len: usize) -> Result<Fetched, String> {
    let port = b.port.unwrap_or(cfg.bootstrap_port);
    let addr = (b.host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("bootstrap address {}:{port}: {e}", b.host))?
        .next()
        .ok_or_else(|| format!("bootstrap address {}:{port} does not resolve", b.host))?;
    let conn = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
        .map_err(|e| format!("cannot reach the prefill's bootstrap server {addr}: {e}"))?;
    let _ = conn.set_nodelay(true);
    // Reads time out after the heartbeat window: a prefill that stops answering (hung, paused,
    // cut off) fails the request then, not after the whole bootstrap timeout.
    conn.set_read_timeout(Some(cfg.silence_limit()))
        .and_then(|_| conn.set_write_timeout(Some(cfg.timeout)))
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let staging_pages = prompt_len.div_ceil(g.page_size);
    let staging = HostKvPool::new(
        staging_pages,
        g.page_size,
        g.layers,
        g.kv_dim,
        g.elem,
        MemLayout::PageFirst,
    )?;
    let obj = staging.object_bytes();
    let mut w = conn.try_clone().map_err(|e| e.to_string())?;
    Want {
        room: b.room,
        prompt_len: prompt_len as u32,
        page_size: g.page_size as u32,
        object_bytes: obj as u32,
        token: cfg.token.clone(),
    }
    .write(&mut w)
    .map_err(|e| format!("bootstrap request: {e}"))?;
    // A small buffer: headers are read through it, and page objects (larger than it) go from the
    // socket straight into the staging pool instead of through one more copy.
    let mut r = BufReader::with_capacity(4096, conn);
    let silent = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!(
                "the prefill server stopped answering (no heartbeat for {:?})",
                cfg.silence_limit()
            )
        } else {
            format!("the prefill server closed the transfer before sending the KV cache: {e}")
        }
    };
    let h = loop {
        let h = KvHeader::read(&mut r).map_err(silent)?;
        if h.status != wire::WAITING {
            break h;
        }
        if started.elapsed() > cfg.timeout {
            return Err("the prefill did not finish in time".into());
        }
    };
    if h.status != wire::OK {
        return Err(format!(
            "the prefill server refused the transfer: {}",
            h.msg
        ));
    }
    if h.n_pages as usize != staging_pages || h.object_bytes as usize != obj {
        return Err("the prefill server sent KV of another geometry".into());
    }
    for p in 0..staging_pages as u32 {
        for v in [false, true] {
            // SAFETY: the staging pool was just created by this thread and is not shared yet.
            r.read_exact(unsafe { staging.object_mut(p, v) })
                .map_err(|e| format!("the prefill server broke off the KV transfer: {e}"))?;
        }
    }
    if cfg.inject_fault(b.room) {
        let _ = w.write_all(&[0]);
        return Err("injected test fault: the decode side refused the pages".into());
    }
    w.write_all(&[1]).map_err(|e| e.to_string())?;
    Ok(Fetched {
        first_token: h.first_token,
        first_logprobs: h.first_logprobs,
        staging,
        n_pages: staging_pages,
    })
}
