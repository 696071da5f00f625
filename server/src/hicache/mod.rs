//! The hierarchical KV cache (SGLang's HiCache): device pool (L1), host pool (L2), the Strata
//! cluster or a directory of files (L3, [`storage`]).
//!
//! The radix tree ([`crate::cache::RadixCache`]) records which nodes live in L1, L2 or both; this
//! module moves pages between the tiers and decides when:
//! - **Backup** L1 -> L2 by the write policy (write_through: every new node at insertion;
//!   write_through_selective: once a node was hit twice; write_back: at device eviction), then
//!   L2 -> L3 right after, skipping objects that already exist. A node is locked while its L3 write
//!   is in flight, so its host pages cannot be reused under the I/O.
//! - **Prefetch** L3 -> L2 when a request is queued and its L1+L2 miss is at least
//!   `prefetch_threshold` tokens: one exists query, then reads in chunks into fresh host pages.
//!   The request is held (skipped by admission, never blocking others) until the prefetch policy
//!   releases it; what arrived by then is inserted as host-only nodes. Pages whose reads are still
//!   in flight at release are parked until their completion arrives.
//! - **Load back** L2 -> L1 at admission, for the host-only nodes on the request's matched path.
//! - **Decode offload** (PD decode side): a finished request's full pages, prompt and generated
//!   tokens, go device -> fresh host pages -> L3 under the same chained keys, so the next turn's
//!   prefill finds prompt + answer in the L3. The host pages are freed when the write completes.
//! - **Adaptive skip**: a prefetch whose estimated load time (measured aggregate store bandwidth)
//!   exceeds the estimated recompute time (measured prefill rate) is dropped after the exists
//!   query, so a slow L3 costs at most that one query (estimate.rs).

mod attach;
mod cluster_backend;
mod config;
mod estimate;
pub mod file_backend;
pub mod keys;
pub mod storage;

pub use attach::Attach;
pub use config::{
    apply_extra_config, file_backend_dir, file_options, parse_layout, parse_prefetch_policy,
    parse_write_policy, storage_backend, HiCacheConfig, MemLayout, PrefetchPolicy, StorageBackend,
    WritePolicy, FILE_DIR_DEFAULT, FILE_DIR_ENV, SELECTIVE_HITS,
};

use crate::cache::{CacheNs, Fresh, NodeId, RadixCache, Tier};
use crate::kv::{HostKvPool, Page, PageId};
use crate::stats::{Share, Stats};
use estimate::Estimates;
use keys::{page_hashes, KeyScheme, PageHash};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use storage::{Done, Job, Span, Storage};

/// Most pages per L3 read job: the granularity at which a best_effort or timed-out prefetch can
/// use a partial result.
const CHUNK_PAGES: usize = 64;
/// Most bytes per L3 read job (K + V of its pages), so that a long prompt of a large model is
/// read as several jobs that the prefetch threads run in parallel (an 8B model's page of 64
/// tokens is 8 MiB: 8 pages per job).
const CHUNK_BYTES: usize = 64 << 20;

/// HiCache counters, exported by `/metrics` with SGLang's series names.
#[derive(Debug, Default)]
pub struct HiCacheStats {
    pub enabled: AtomicU64,
    pub host_total_pages: AtomicU64,
    pub host_cached_pages: AtomicU64,
    pub prefetched_tokens: AtomicU64,
    pub prefetch_skipped: AtomicU64,
    pub backuped_tokens: AtomicU64,
    pub load_back_tokens: AtomicU64,
    pub evicted_tokens: AtomicU64,
    pub l3_hit_tokens: AtomicU64,
    /// L3 bytes read by prefetches, and the seconds (× 1e6) those reads took.
    pub prefetch_bytes: AtomicU64,
    pub prefetch_micros: AtomicU64,
    /// Bytes/s × 1, last measured.
    pub prefetch_bandwidth: AtomicU64,
    pub backup_bandwidth: AtomicU64,
}

enum Stage {
    /// Waiting for the exists answer of job `id`.
    Querying(u64),
    /// Reads in flight: (job id, pages of the job, pages that arrived once done).
    Fetching {
        jobs: Vec<(u64, usize, Option<usize>)>,
        pages: Vec<Page>,
        /// When the reads were queued (the read rate is measured over the whole prefetch:
        /// its jobs run in parallel).
        started: Instant,
    },
}

impl Prefetch {
    /// Every read finished, or one came back short (nothing after it can be used).
    fn complete(&self) -> bool {
        match &self.stage {
            Stage::Querying(_) => false,
            Stage::Fetching { jobs, .. } => {
                jobs.iter().all(|j| j.2.is_some())
                    || jobs.iter().any(|j| j.2.is_some_and(|n| n < j.1))
            }
        }
    }
}

struct Prefetch {
    /// Locked tree node where the prefetch starts (the L1+L2 match at enqueue).
    node: NodeId,
    /// The request's cache namespace.
    ns: Option<CacheNs>,
    start_page: usize,
    /// Hashes of pages `start_page..`.
    hashes: Vec<PageHash>,
    /// The tokens of the pages `..start_page + hashes.len()`.
    tokens: Vec<u32>,
    stage: Stage,
    deadline: Instant,
}

/// The hierarchical cache's state, owned by the scheduler thread.
pub struct HiCache {
    cfg: HiCacheConfig,
    page_size: usize,
    host: Arc<HostKvPool>,
    storage: Option<Storage>,
    keys: KeyScheme,
    prefetches: HashMap<String, Prefetch>,
    /// Host pages of abandoned reads, freed when their job completes.
    parked: HashMap<u64, Vec<Page>>,
    /// Nodes locked by in-flight L3 writes.
    writes: HashMap<u64, NodeId>,
    /// Host pages of in-flight decode offloads, freed when their write completes.
    offloads: HashMap<u64, Vec<Page>>,
    next_id: u64,
    est: Estimates,
    stats: Arc<Stats>,
    /// The weights' tag in the L3 keys after `/update_weights_from_disk` (see `set_weights_tag`).
    weights_tag: Option<String>,
    /// This cache's part of the host page gauges (data-parallel replicas add up).
    host_cached: Share,
}

impl HiCache {
    /// Builds the host pool's companion state; `storage` is the L3 (started by the caller).
    pub fn new(
        cfg: HiCacheConfig,
        page_size: usize,
        host: Arc<HostKvPool>,
        storage: Option<Storage>,
        stats: Arc<Stats>,
    ) -> Self {
        let keys = KeyScheme::new(
            cfg.extra_backend_tag.as_deref(),
            cfg.model_name.as_deref(),
            cfg.tp_rank,
        );
        let h = &stats.hicache;
        Stats::set(&h.enabled, 1);
        Stats::share(
            &h.host_total_pages,
            &mut Share::default(),
            host.total_pages() as u64,
        );
        HiCache {
            cfg,
            page_size,
            host,
            storage,
            keys,
            prefetches: HashMap::new(),
            parked: HashMap::new(),
            writes: HashMap::new(),
            offloads: HashMap::new(),
            next_id: 0,
            est: Estimates::default(),
            stats,
            weights_tag: None,
            host_cached: Share::default(),
        }
    }

    pub fn host(&self) -> &Arc<HostKvPool> {
        &self.host
    }

    pub fn write_policy(&self) -> WritePolicy {
        self.cfg.write_policy
    }

    pub fn has_storage(&self) -> bool {
        self.storage.is_some()
    }

    /// Empties the L3 store.
    pub fn clear_storage(&self) -> Result<(), String> {
        match &self.storage {
            Some(s) => s.clear(),
            None => Err("no L3 storage backend is configured".into()),
        }
    }

    /// The K and V objects of host pages `pages`, in key order (k0, v0, k1, v1, ...).
    fn spans(&self, pages: &[PageId]) -> Vec<Span> {
        let obj = self.host.object_bytes();
        pages
            .iter()
            .flat_map(|&p| {
                [false, true].map(|v| Span {
                    ptr: self.host.object_ptr(p, v),
                    len: obj,
                })
            })
            .collect()
    }

    fn submit_prefetch(&self, job: Job) {
        if let Some(s) = &self.storage {
            s.prefetch(job);
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Folds one prefill measurement (tokens computed in `secs`) into the recompute estimate.
    pub fn observe_prefill(&mut self, tokens: usize, secs: f64) {
        self.est.observe_prefill(tokens, secs);
    }

    /// Host pages for `n` pages, evicting host-cached nodes if needed.
    pub fn alloc_host(&self, tree: &mut RadixCache, n: usize) -> Option<Vec<Page>> {
        let free = self.host.free_pages();
        if free < n {
            let freed = tree.evict_host(n - free);
            Stats::add(
                &self.stats.hicache.evicted_tokens,
                (freed * self.page_size) as u64,
            );
        }
        self.host.alloc(n)
    }

    // ---- L2 -> L3 ----

    /// Writes node `node`'s host pages to the L3 (objects already there are skipped). The node
    /// stays locked until the write completes.
    pub fn store_node(&mut self, tree: &mut RadixCache, node: NodeId) {
        if self.storage.is_none() {
            return;
        }
        let host = tree.pages_of(node, Tier::Host);
        if host.is_empty() {
            return;
        }
        let tokens = tree.path_tokens(node);
        let hashes = page_hashes(tree.ns_of(node), &tokens, self.page_size);
        let first = hashes.len() - host.len();
        let keys = self.keys.keys(&hashes[first..]);
        let src = self.spans(&host);
        let depths = (first..hashes.len()).flat_map(|d| [d as u32; 2]).collect();
        tree.lock(node);
        let id = self.id();
        self.writes.insert(id, node);
        if let Some(s) = &self.storage {
            s.backup(Job::Put {
                id,
                keys,
                src,
                depths,
            });
        }
    }

    /// Decode offload: copies the device pages `dev` holding the KV of `tokens` (whole pages, of
    /// namespace `ns`) to fresh host pages and writes them to the L3 (objects already there are
    /// skipped). Returns the pages queued; none when offload is off, there is no L3, or the host
    /// pool is full.
    pub fn offload(
        &mut self,
        ns: Option<CacheNs>,
        tokens: &[u32],
        dev: &[u32],
        copy: &mut dyn FnMut(&[u32], &[u32]) -> bool,
    ) -> usize {
        let ps = self.page_size;
        let n = dev.len().min(tokens.len() / ps);
        if !self.cfg.decode_offload || self.storage.is_none() || n == 0 {
            return 0;
        }
        let Some(host) = self.host.alloc(n) else {
            tracing::debug!(pages = n, "hicache: decode offload skipped, host pool full");
            return 0;
        };
        let ids: Vec<u32> = host.iter().map(Page::id).collect();
        if !copy(&dev[..n], &ids) {
            return 0;
        }
        let hashes = page_hashes(ns, &tokens[..n * ps], ps);
        let id = self.id();
        let job = Job::Put {
            id,
            keys: self.keys.keys(&hashes),
            src: self.spans(&ids),
            depths: (0..n).flat_map(|d| [d as u32; 2]).collect(),
        };
        self.offloads.insert(id, host);
        if let Some(s) = &self.storage {
            s.backup(job);
        }
        n
    }

    /// Whether finished decode requests are offloaded to the L3.
    pub fn decode_offload(&self) -> bool {
        self.cfg.decode_offload && self.storage.is_some()
    }

    // ---- L3 -> L2 ----

    /// Called when a request is queued. Starts an L3 prefetch when the part of `tokens` (of
    /// namespace `ns`) missing from L1 and L2 is at least the threshold; returns true to hold the
    /// request meanwhile.
    pub fn start_prefetch(
        &mut self,
        tree: &mut RadixCache,
        rid: &str,
        ns: Option<CacheNs>,
        tokens: &[u32],
    ) -> bool {
        if self.storage.is_none() || tokens.len() < 2 || self.prefetches.contains_key(rid) {
            return false;
        }
        let ps = self.page_size;
        let upto = (tokens.len() - 1) / ps; // leave a token to compute
        let m = tree.match_prefix(ns, &tokens[..upto * ps]);
        let start = (m.tokens + m.host_tokens) / ps;
        if (upto - start) * ps < self.cfg.prefetch_threshold.max(1) {
            return false;
        }
        let all = page_hashes(ns, &tokens[..upto * ps], ps);
        let hashes = all[start..].to_vec();
        let id = self.id();
        self.submit_prefetch(Job::Exists {
            id,
            keys: self.keys.keys(&hashes),
        });
        tree.lock(m.host_node);
        self.prefetches.insert(
            rid.to_string(),
            Prefetch {
                node: m.host_node,
                ns,
                start_page: start,
                hashes,
                tokens: tokens[..upto * ps].to_vec(),
                stage: Stage::Querying(id),
                deadline: Instant::now() + self.cfg.prefetch_timeout((upto - start) * ps),
            },
        );
        true
    }

    /// Processes finished L3 jobs: starts reads after exists answers, unlocks written nodes,
    /// frees parked pages, and ends complete prefetches at once — their pages join the tree as
    /// host-only nodes and their lock goes, so a finished prefetch never pins device pages while
    /// its request waits for admission. Call once per scheduling round.
    pub fn poll(&mut self, tree: &mut RadixCache) {
        self.poll_jobs(tree);
        let done: Vec<String> = self
            .prefetches
            .iter()
            .filter(|(_, p)| p.complete())
            .map(|(r, _)| r.clone())
            .collect();
        for rid in done {
            self.finish_prefetch(tree, &rid);
        }
    }

    fn poll_jobs(&mut self, tree: &mut RadixCache) {
        let Some(storage) = &self.storage else { return };
        for d in storage.poll() {
            match d {
                Done::Exists { id, pages } => self.on_exists(tree, id, pages),
                Done::Get { id, pages } => {
                    if self.parked.remove(&id).is_some() {
                        continue;
                    }
                    let object = self.host.object_bytes();
                    for p in self.prefetches.values_mut() {
                        let Stage::Fetching { jobs, started, .. } = &mut p.stage else {
                            continue;
                        };
                        let Some(j) = jobs.iter_mut().find(|j| j.0 == id) else {
                            continue;
                        };
                        j.2 = Some(pages);
                        if jobs.iter().any(|j| j.2.is_none()) {
                            break;
                        }
                        // The whole prefetch arrived: its bytes over its wall time.
                        let got: usize = jobs.iter().map(|j| j.2.unwrap_or(0) * 2 * object).sum();
                        let secs = started.elapsed().as_secs_f64();
                        if got > 0 && secs > 0.0 {
                            let h = &self.stats.hicache;
                            Stats::add(&h.prefetch_bytes, got as u64);
                            Stats::add(&h.prefetch_micros, (secs * 1e6) as u64);
                            let bw = self.est.observe_read(*started, Instant::now(), got);
                            Stats::set(&h.prefetch_bandwidth, bw as u64);
                        }
                        break;
                    }
                }
                Done::Put {
                    id,
                    written,
                    failed,
                    bytes,
                    secs,
                } => {
                    if let Some(node) = self.writes.remove(&id) {
                        tree.unlock(node);
                    }
                    self.offloads.remove(&id); // frees an offload's host pages
                    if failed > 0 {
                        tracing::debug!(written, failed, "hicache: L3 backup incomplete");
                    }
                    Stats::add(
                        &self.stats.hicache.backuped_tokens,
                        (written / 2 * self.page_size) as u64,
                    );
                    if bytes > 0 && secs > 0.0 {
                        Stats::set(
                            &self.stats.hicache.backup_bandwidth,
                            (bytes as f64 / secs) as u64,
                        );
                    }
                }
            }
        }
    }

    fn on_exists(&mut self, tree: &mut RadixCache, id: u64, hit: usize) {
        let Some(rid) = self
            .prefetches
            .iter()
            .find(|(_, p)| matches!(p.stage, Stage::Querying(q) if q == id))
            .map(|(r, _)| r.clone())
        else {
            return; // released or aborted before the answer came
        };
        let ps = self.page_size;
        let too_small = hit * ps < self.cfg.prefetch_threshold.max(1);
        let bytes = (hit * 2 * self.host.object_bytes()) as f64;
        let slow = !too_small && self.est.skip(bytes, hit * ps);
        if slow {
            Stats::add(&self.stats.hicache.prefetch_skipped, 1);
        }
        let pages = if too_small || slow {
            None
        } else {
            self.alloc_host(tree, hit)
        };
        let Some(pages) = pages else {
            let p = self.prefetches.remove(&rid).expect("present");
            tree.unlock(p.node);
            return;
        };
        Stats::add(&self.stats.hicache.l3_hit_tokens, (hit * ps) as u64);
        let hashes = std::mem::take(&mut self.prefetches.get_mut(&rid).expect("present").hashes);
        let mut jobs = Vec::new();
        let started = Instant::now();
        let per = (CHUNK_BYTES / (2 * self.host.object_bytes()).max(1)).clamp(1, CHUNK_PAGES);
        for (c, chunk) in pages.chunks(per).enumerate() {
            let at = c * per;
            let id = self.id();
            let ids: Vec<PageId> = chunk.iter().map(Page::id).collect();
            let dst = self.spans(&ids);
            let keys = self.keys.keys(&hashes[at..at + chunk.len()]);
            self.submit_prefetch(Job::Get { id, keys, dst });
            jobs.push((id, chunk.len(), None));
        }
        let p = self.prefetches.get_mut(&rid).expect("present");
        p.hashes = hashes;
        p.stage = Stage::Fetching {
            jobs,
            pages,
            started,
        };
    }

    /// Whether the held request `rid` may go ahead now (its prefetch's policy says so); on
    /// release, what arrived is inserted into the tree as host-only nodes.
    pub fn prefetch_ready(&mut self, tree: &mut RadixCache, rid: &str) -> bool {
        let Some(p) = self.prefetches.get(rid) else {
            return true;
        };
        let go = p.complete()
            || match self.cfg.prefetch_policy {
                PrefetchPolicy::BestEffort => true,
                PrefetchPolicy::WaitComplete => false,
                PrefetchPolicy::Timeout => Instant::now() >= p.deadline,
            };
        if go {
            self.finish_prefetch(tree, rid);
        }
        go
    }

    /// Ends a prefetch (release or abort): inserts the leading pages that arrived, parks the
    /// pages of reads still in flight, unlocks the start node.
    pub fn finish_prefetch(&mut self, tree: &mut RadixCache, rid: &str) {
        let Some(p) = self.prefetches.remove(rid) else {
            return;
        };
        if let Stage::Fetching {
            jobs, mut pages, ..
        } = p.stage
        {
            let mut arrived = 0;
            let mut contiguous = true;
            let mut rest = Vec::new();
            let mut at = 0;
            for (id, n, got) in jobs {
                let chunk: Vec<Page> = pages.drain(..n).collect();
                match got {
                    Some(g) if contiguous => {
                        arrived += g;
                        contiguous = g == n;
                        let mut chunk = chunk;
                        rest.extend(chunk.drain(..g));
                    }
                    Some(_) => {}
                    None => {
                        contiguous = false;
                        self.parked.insert(id, chunk);
                    }
                }
                at += n;
            }
            debug_assert!(at >= arrived);
            if arrived > 0 {
                let ps = self.page_size;
                let end = (p.start_page + arrived) * ps;
                tree.insert_host(p.ns, &p.tokens[..end], p.start_page, rest);
                Stats::add(&self.stats.hicache.prefetched_tokens, (arrived * ps) as u64);
            }
        }
        tree.unlock(p.node);
    }

    // ---- L1 -> L2 ----

    /// Backs up, by the write policy, the nodes an insertion created (write_through), then
    /// writes them on to the L3. `copy` copies device pages to host pages.
    pub fn after_insert(
        &mut self,
        tree: &mut RadixCache,
        fresh: &[Fresh],
        copy: &mut dyn FnMut(&[u32], &[u32]) -> bool,
    ) {
        if self.cfg.write_policy != WritePolicy::WriteThrough {
            return;
        }
        for f in fresh {
            self.backup_node(tree, f.node, copy);
        }
    }

    /// Copies node `node` (device-resident, not backed up) to new host pages and on to the L3.
    pub fn backup_node(
        &mut self,
        tree: &mut RadixCache,
        node: NodeId,
        copy: &mut dyn FnMut(&[u32], &[u32]) -> bool,
    ) {
        if !tree.is_live(node) || !tree.pages_of(node, Tier::Host).is_empty() {
            return;
        }
        let dev = tree.pages_of(node, Tier::Device);
        if dev.is_empty() {
            return;
        }
        tree.lock(node); // keep it while host eviction makes room
        let host = self.alloc_host(tree, dev.len());
        tree.unlock(node);
        let Some(host) = host else { return };
        let ids: Vec<u32> = host.iter().map(Page::id).collect();
        if !copy(&dev, &ids) {
            return;
        }
        tree.set_pages(node, Tier::Host, host);
        self.store_node(tree, node);
    }

    /// Publishes tier occupancy.
    pub fn publish(&mut self, tree: &RadixCache) {
        Stats::share(
            &self.stats.hicache.host_cached_pages,
            &mut self.host_cached,
            tree.host_pages() as u64,
        );
    }

    /// Whether L3 writes are in flight (their nodes stay locked until they finish).
    pub fn writes_pending(&self) -> bool {
        !self.writes.is_empty()
    }

    /// After a weight update: pages computed with the old weights must not come back from the
    /// L3, so the keys' model part becomes `<model>-w-<tag>` (`tag`: the new weight version, else
    /// the new checkpoint's path); servers that load the same update share the new keys.
    pub fn set_weights_tag(&mut self, tag: &str) {
        self.weights_tag = Some(tag.to_string());
        self.rebuild_keys();
    }

    /// The key scheme of the configuration and the weights' tag.
    fn rebuild_keys(&mut self) {
        let model = self.cfg.model_name.as_deref().unwrap_or("");
        let named = match &self.weights_tag {
            Some(tag) => format!("{model}-w-{tag}"),
            None => model.to_string(),
        };
        self.keys = KeyScheme::new(
            self.cfg.extra_backend_tag.as_deref(),
            Some(&named),
            self.cfg.tp_rank,
        );
    }

    /// Whether L3 jobs are in flight (the scheduler then polls instead of sleeping on its queue).
    pub fn busy(&self) -> bool {
        !self.prefetches.is_empty()
            || !self.writes.is_empty()
            || !self.parked.is_empty()
            || !self.offloads.is_empty()
    }
}
