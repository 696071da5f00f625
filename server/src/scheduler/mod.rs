//! The scheduler: one thread that owns the model, the KV pool and the prefix cache, and runs
//! continuous batching (one per data-parallel replica; the HTTP layer reaches them through
//! [`SchedulerHandle`], `handle.rs`, which places requests by `dp.rs`).
//!
//! Each round: take new messages; drop aborted or disconnected requests (their pages go back at
//! once); build one mixed batch — every running sequence that is decoding contributes one token,
//! sequences still prefilling contribute a chunk under the `--chunked-prefill-size` budget, and
//! queued requests are admitted (prefix-cache match, page allocation) while the budget,
//! `--max-running-requests` and free pages allow; run one forward pass; sample, stream, finish.
//! Under overlap scheduling (`overlap.rs`) the next round is built and launched while a queued
//! forward runs on the GPU, and that forward's tokens are taken back after.
//! When a decode cannot get a page even after evicting the prefix cache, the most recently
//! admitted other request is retracted: its pages are freed and it is requeued at the front with
//! its output so far, to be recomputed later (never corrupted).
//!
//! `/pause_generation` stops the rounds (see [`request::PauseMode`]): the thread then only
//! takes messages, so new requests queue and running ones wait, until `/continue_generation`.
//!
//! Invariant: pages held by sequences + pages cached by the radix tree + free pages == pool size.

mod batch;
pub mod budget;
pub mod dp;
mod forward;
mod handle;
pub mod hooks;
mod order;
mod overlap;
#[cfg(test)]
mod overlap_tests;
#[cfg(test)]
mod pause_tests;
mod pd_side;
pub mod policy;
mod profile;
pub mod request;
mod sample_reqs;
mod seq;
#[cfg(test)]
mod tests;
mod unfinished;
pub mod watchdog;
pub mod weights;
#[cfg(test)]
mod weights_tests;

use crate::cache::{CacheNs, RadixCache};
use crate::hicache::HiCache;
use crate::kv::{DeviceKvPool, KvPool, Page};
use crate::model::{ModelRunner, Tokenizer};
use crate::seeded::SplitMix64;
use crate::stats::{Share, Stats};
pub use handle::SchedulerHandle;
use hooks::{NoPrefetch, PrefetchHook};
pub use pd_side::PdSide;
use policy::{Priority, SchedulePolicy};
use request::{Event, Finish, FinishReason, Msg, PauseMode, Request};
use seq::Seq;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

/// Scheduling limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub page_size: usize,
    pub max_running_requests: usize,
    /// Tokens of prefill per round; `None` = whole prompts.
    pub chunked_prefill_size: Option<usize>,
    pub context_length: usize,
    pub radix_cache: bool,
    /// Evict the least frequently (instead of least recently) used prefixes first.
    pub eviction_lfu: bool,
    /// `--max-prefill-tokens`: prompt tokens one round admits (see `budget.rs`).
    pub max_prefill_tokens: usize,
    /// `--schedule-policy`: the admission order of waiting requests (see `policy.rs`).
    pub schedule_policy: SchedulePolicy,
    /// `--random-seed`: requests that sample without their own seed get one drawn, in the order
    /// they reach the scheduler, from a generator seeded with it; the `random` policy's shuffles
    /// come from a second generator seeded with it. `None`: seeds from the clock.
    pub random_seed: Option<u64>,
    /// `--max-queued-requests`: a request that arrives while this many wait (admitted to no
    /// batch yet) is refused at once (SGLang's 503 "The request queue is full."); `None`: no
    /// limit. Ignored on a PD server, as in SGLang.
    pub max_queued_requests: Option<usize>,
    /// `--enable-priority-scheduling` and its flags (see `policy.rs`).
    pub priority: Priority,
    /// `--max-loras-per-batch`: distinct adapters in the running batch, the base model counted
    /// as one (SGLang's rule); admission stops at the first request that would exceed it.
    pub max_loras_per_batch: usize,
    /// Overlap scheduling unless `--disable-overlap-schedule` (`overlap.rs`; it runs where the
    /// runner's launches return early).
    pub overlap_schedule: bool,
    /// `--watchdog-timeout` / `--soft-watchdog-timeout` (`watchdog.rs`).
    pub watchdog: watchdog::WatchdogConfig,
    /// `--prefill-max-requests`: requests in one round's prefill (continued chunks and new
    /// admissions; decodes are not counted); None: no limit.
    pub prefill_max_requests: Option<usize>,
    /// A sleep inside every round that runs a forward (a hidden test flag: a hung round for the
    /// watchdog's end-to-end test); zero in service.
    pub test_round_stall: std::time::Duration,
}

impl Default for SchedulerConfig {
    /// Small limits for tests, examples and simulations (pages of 4, 8 running requests, a
    /// 512-token context, no chunking, the radix cache and overlap on); the server builds its
    /// configuration from its flags (`launch`).
    fn default() -> Self {
        SchedulerConfig {
            page_size: 4,
            max_running_requests: 8,
            chunked_prefill_size: None,
            context_length: 512,
            radix_cache: true,
            eviction_lfu: false,
            max_prefill_tokens: 16384,
            schedule_policy: SchedulePolicy::default(),
            random_seed: None,
            max_queued_requests: None,
            priority: Priority::default(),
            max_loras_per_batch: 8,
            overlap_schedule: true,
            watchdog: Default::default(),
            prefill_max_requests: None,
            test_round_stall: std::time::Duration::ZERO,
        }
    }
}

/// The abort of a request that sets a priority under `--abort-on-priority-when-disabled`.
pub const PRIORITY_DISABLED: &str =
    "This request sets a priority, but priority scheduling is not enabled (--enable-priority-scheduling).";

/// SGLang's message for a request refused by `--max-queued-requests`.
pub const QUEUE_FULL: &str = "The request queue is full.";

/// The scheduler state (lives on its own thread; see [`spawn`]).
pub struct Scheduler<R: ModelRunner> {
    cfg: SchedulerConfig,
    model: R,
    pool: DeviceKvPool<R>,
    tree: RadixCache,
    tokenizer: Arc<Tokenizer>,
    stats: Arc<Stats>,
    hook: Box<dyn PrefetchHook>,
    /// The hierarchical cache (host tier and L3), when enabled.
    hicache: Option<HiCache>,
    /// This server's PD role, when it has one.
    pd: Option<PdSide>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    aborts: HashSet<String>,
    eos: Vec<u32>,
    seed_counter: u64,
    /// Per-request seeds under `--random-seed`.
    seeds: Option<SplitMix64>,
    /// The `random` policy's shuffles.
    policy_rng: SplitMix64,
    /// The last round's admission stopped at a request the KV pool had no room for (priority
    /// preemption may then make room).
    kv_blocked: bool,
    /// The policy in force (cache-aware ones become fcfs without a prefix cache, as SGLang).
    policy: SchedulePolicy,
    /// PD prefill: finished legs whose pages stay in the pool until their transfer ends, by id.
    parked: HashMap<u64, Seq>,
    parked_next: u64,
    /// PD prefill: where a transfer thread says a parked leg's transfer ended.
    pd_tx: Option<Sender<Msg>>,
    /// PD: the pool's memory, when transfers can read from (prefill) or write into (decode)
    /// pool pages in place (the CPU runner; `STRATA_PD_POOL=0` turns it off).
    pd_spans: Option<Arc<crate::pd::share::HostSpans>>,
    /// PD decode: the GPU pool, when fetches can copy device to device into pool pages (CUDA
    /// IPC).
    pd_device: Option<Arc<dyn crate::pd::share::DeviceKv>>,
    /// `/pause_generation` is in force: no round runs.
    paused: bool,
    /// A weight update waiting for the requests that came before it.
    update: Option<weights::WeightUpdate>,
    /// Requests that arrived after a pending weight update: they run on the new weights.
    held: VecDeque<Box<Request>>,
    /// Chunks of prompts still being prefilled join the prefix cache (`unfinished.rs`).
    cache_unfinished: bool,
    /// This scheduler's parts of the server-wide gauges (data-parallel replicas add up).
    gauges: Gauges,
    /// Requests handed to this scheduler and not finished (the data-parallel balancer's view).
    load: Arc<dp::ReplicaLoad>,
    /// Overlap scheduling is on (`overlap.rs`), and the forward launched and not yet taken back.
    overlap: bool,
    /// Forwards that already ran are held in flight too (tests of the bookkeeping on the CPU).
    hold_done: bool,
    /// Overlap scheduling on a HiCache server too (unless `STRATA_OVERLAP_HICACHE=0`).
    hicache_overlap: bool,
    /// The round stamp the watchdog thread reads (None: no watchdog).
    watchdog: Option<Arc<watchdog::Watchdog>>,
    /// Rounds run ahead of rows with output penalties or logprobs too
    /// (`runner::overlap_wide_from_env`).
    overlap_wide: bool,
    /// Rounds run ahead of rows under a grammar too (their masks come after the forward is
    /// launched; `runner::overlap_grammar_from_env`).
    overlap_grammar: bool,
    /// A decode found no page while a forward was in flight: the next round takes it back first.
    kv_short: bool,
    /// Rounds built while a forward was in flight.
    ran_ahead: u64,
    /// Forwards launched in two halves (rows under a grammar in a round run ahead).
    launched_later: u64,
    inflight: Option<overlap::InFlight>,
    /// Where the thread's time goes per forward (logged).
    round_prof: profile::RoundProfile,
    /// The next sequence's uid.
    next_uid: u64,
}

/// The gauges a scheduler publishes, as its [`Share`]s.
#[derive(Debug, Default)]
struct Gauges {
    running: Share,
    waiting: Share,
    total_pages: Share,
    free_pages: Share,
    cached_pages: Share,
    throughput: Share,
}

/// Starts the scheduler thread.
pub fn spawn<R: ModelRunner>(
    cfg: SchedulerConfig,
    model: R,
    pool: DeviceKvPool<R>,
    tokenizer: Arc<Tokenizer>,
    stats: Arc<Stats>,
) -> std::io::Result<SchedulerHandle> {
    spawn_with_hook(cfg, model, pool, tokenizer, stats, Seams::default())
}

/// What plugs into the scheduler besides the model: a prefetch hook, the hierarchical cache, a PD
/// role.
pub struct Seams {
    pub hook: Box<dyn PrefetchHook>,
    pub hicache: Option<HiCache>,
    pub pd: Option<PdSide>,
}

impl Default for Seams {
    fn default() -> Self {
        Seams {
            hook: Box::new(NoPrefetch),
            hicache: None,
            pd: None,
        }
    }
}

/// Starts the scheduler thread with its seams (prefetch hook, hierarchical cache, PD role).
pub fn spawn_with_hook<R: ModelRunner>(
    cfg: SchedulerConfig,
    model: R,
    pool: DeviceKvPool<R>,
    tokenizer: Arc<Tokenizer>,
    stats: Arc<Stats>,
    seams: Seams,
) -> std::io::Result<SchedulerHandle> {
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(PdSide::Decode(f)) = &seams.pd {
        let wake = tx.clone();
        f.set_waker(Box::new(move || {
            let _ = wake.send(Msg::Wake);
        }));
    }
    let prefill = matches!(seams.pd, Some(PdSide::Prefill(_)));
    let mut s = Scheduler::new(cfg, model, pool, tokenizer, stats)
        .with_hook(seams.hook)
        .with_hicache(seams.hicache)
        .with_pd(seams.pd);
    if prefill {
        s.pd_tx = Some(tx.clone());
    }
    let load = s.load.clone();
    std::thread::Builder::new()
        .name("strata-scheduler".into())
        .spawn(move || s.run(rx))?;
    Ok(SchedulerHandle::one(tx, load))
}

impl<R: ModelRunner> Scheduler<R> {
    pub fn new(
        cfg: SchedulerConfig,
        model: R,
        pool: DeviceKvPool<R>,
        tokenizer: Arc<Tokenizer>,
        stats: Arc<Stats>,
    ) -> Self {
        let eos = model.cfg().eos_token_ids.clone();
        let mut gauges = Gauges::default();
        Stats::share(
            &stats.total_pages,
            &mut gauges.total_pages,
            pool.total_pages() as u64,
        );
        Stats::share(
            &stats.free_pages,
            &mut gauges.free_pages,
            pool.free_pages() as u64,
        );
        let mut policy = cfg.schedule_policy;
        if policy.cache_aware() && !cfg.radix_cache {
            tracing::info!(
                ?policy,
                "the prefix cache is off: schedule policy fcfs (as SGLang)"
            );
            policy = SchedulePolicy::Fcfs;
        }
        // Two streams from one seed: the shuffles never shift the per-request seeds.
        let seeds = cfg.random_seed.map(SplitMix64);
        let policy_rng = SplitMix64(match cfg.random_seed {
            Some(s) => s ^ 0x5C4E_D01E_0000_0001,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        });
        // `STRATA_OVERLAP_SCHEDULE=1` runs it on any runner, holding forwards that already ran
        // as if queued (the CPU runner's tests of the bookkeeping); `0` turns it off.
        let forced = std::env::var("STRATA_OVERLAP_SCHEDULE");
        let overlap = match forced.as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => cfg.overlap_schedule && model.queues(),
        };
        // HiCache servers run with it too unless `STRATA_OVERLAP_HICACHE=0` (an A/B switch;
        // the forced mode above always does).
        let hicache_overlap = forced.as_deref() == Ok("1")
            || std::env::var("STRATA_OVERLAP_HICACHE").as_deref() != Ok("0");
        Scheduler {
            watchdog: watchdog::Watchdog::start(cfg.watchdog),
            overlap,
            hicache_overlap,
            overlap_wide: crate::model::runner::overlap_wide_from_env(),
            overlap_grammar: crate::model::runner::overlap_grammar_from_env(),
            hold_done: forced.as_deref() == Ok("1"),
            kv_short: false,
            ran_ahead: 0,
            launched_later: 0,
            inflight: None,
            round_prof: Default::default(),
            next_uid: 0,
            seeds,
            policy_rng,
            kv_blocked: false,
            policy,
            tree: RadixCache::new(cfg.page_size).with_lfu(cfg.eviction_lfu),
            cfg,
            model,
            pool,
            tokenizer,
            stats,
            hook: Box::new(NoPrefetch),
            hicache: None,
            pd: None,
            waiting: VecDeque::new(),
            running: Vec::new(),
            aborts: HashSet::new(),
            eos,
            seed_counter: 0,
            parked: HashMap::new(),
            parked_next: 0,
            pd_tx: None,
            pd_spans: None,
            pd_device: None,
            paused: false,
            update: None,
            held: VecDeque::new(),
            cache_unfinished: std::env::var("STRATA_CACHE_UNFINISHED").map_or(true, |v| v != "0"),
            gauges,
            load: Arc::default(),
        }
    }

    /// Replaces the prefetch hook (PD decode side).
    pub fn with_hook(mut self, hook: Box<dyn PrefetchHook>) -> Self {
        self.hook = hook;
        self
    }

    /// Turns the hierarchical cache on.
    pub fn with_hicache(mut self, hicache: Option<HiCache>) -> Self {
        self.hicache = hicache;
        self
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            self.apply_update_when_ready();
            let l3_busy = self.hicache.as_ref().is_some_and(HiCache::busy);
            if self.paused {
                // No round until `Msg::Continue`: take messages as they come (new requests
                // queue), and look every 100 ms for clients gone (1 ms while L3 jobs finish).
                let wait = if l3_busy { 1 } else { 100 };
                match rx.recv_timeout(std::time::Duration::from_millis(wait)) {
                    Ok(m) => self.handle(m),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                self.reap_aborted();
                if let Some(h) = &mut self.hicache {
                    h.poll(&mut self.tree);
                }
                self.publish();
                continue;
            }
            if self.running.is_empty() && self.waiting.is_empty() {
                if l3_busy {
                    // Finish the L3 jobs in flight (unlock written nodes, free parked pages).
                    match rx.recv_timeout(std::time::Duration::from_millis(1)) {
                        Ok(m) => self.handle(m),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                } else {
                    match rx.recv() {
                        Ok(m) => self.handle(m),
                        Err(_) => return,
                    }
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        if self.running.is_empty() && self.waiting.is_empty() {
                            return;
                        }
                        break;
                    }
                }
            }
            if self.paused {
                continue; // a pause taken just now: no round after it
            }
            self.reap_aborted();
            if let Some(h) = &mut self.hicache {
                h.poll(&mut self.tree);
            }
            let round = watchdog::round(&self.watchdog);
            if !self.cfg.test_round_stall.is_zero() && !self.running.is_empty() {
                std::thread::sleep(self.cfg.test_round_stall);
            }
            let progressed = self.step();
            drop(round);
            self.publish();
            if !progressed {
                // Everything queued is held (prefetch) or blocked on memory: wait a little.
                if let Ok(m) = rx.recv_timeout(std::time::Duration::from_millis(2)) {
                    self.handle(m);
                }
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        if !matches!(m, Msg::Submit(_) | Msg::Abort(_) | Msg::Wake) {
            // Everything else may change the running batch: not while a forward is in flight.
            self.sync();
        }
        match m {
            Msg::Submit(req) if self.update.is_some() => self.held.push_back(req),
            Msg::UpdateWeights(u) => self.start_update(u),
            Msg::L3(attach, reply) => {
                let _ = reply.send(self.l3_control(attach.as_deref()));
            }
            Msg::Submit(req)
                if self.cfg.priority.abort_when_disabled
                    && !self.cfg.priority.enabled
                    && req.params.priority.is_some() =>
            {
                self.refuse(&req, FinishReason::Abort(PRIORITY_DISABLED.into()));
            }
            Msg::Submit(req) if self.queue_full() => {
                tracing::debug!(rid = %req.rid, waiting = self.waiting.len(), "queue full: refused");
                self.refuse(&req, FinishReason::Refused(QUEUE_FULL.into()));
            }
            Msg::Submit(req) => {
                self.seed_counter += 1;
                let seed = match (req.params.seed, &mut self.seeds) {
                    (Some(s), _) => s,
                    // Greedy requests (health checks among them) draw nothing, so they do not
                    // shift the seeds of the sampled requests after them.
                    (None, Some(g)) if req.params.sample.temperature > 0.0 => g.next_u64(),
                    _ => {
                        let t = req.arrival.elapsed().as_nanos() as u64;
                        SplitMix64(self.seed_counter ^ t ^ 0x5EED).next_u64()
                    }
                };
                let mut req = req;
                let real_pd = req.bootstrap.as_ref().is_some_and(|b| b.is_real());
                if real_pd && matches!(self.pd, Some(PdSide::Prefill(_))) {
                    // The prefill leg computes the prompt and the first token only.
                    req.params.max_new_tokens = req.params.max_new_tokens.min(1);
                }
                let mut seq = Seq::new(*req, seed);
                seq.uid = self.next_uid;
                self.next_uid += 1;
                if real_pd && matches!(self.pd, Some(PdSide::Decode(_))) {
                    let b = seq.req.bootstrap.clone().expect("bootstrap");
                    let dest = self.pd_dest(seq.prompt_len);
                    if let Some(PdSide::Decode(f)) = &self.pd {
                        f.start(&seq.req.rid, &b, seq.prompt_len, dest);
                    }
                    seq.held = true;
                    seq.pd_fetch = true;
                }
                let cached = if self.cfg.radix_cache {
                    self.tree.match_prefix(seq.ns, &seq.tokens).tokens
                } else {
                    0
                };
                seq.held = self.hook.on_enqueue(&seq.req.rid, &seq.tokens, cached);
                if let Some(h) = self.hicache.as_mut().filter(|_| self.cfg.radix_cache) {
                    seq.held |= h.start_prefetch(&mut self.tree, &seq.req.rid, seq.ns, &seq.tokens);
                }
                self.waiting.push_back(seq);
            }
            Msg::Abort(rid) => {
                if rid.is_empty() {
                    self.aborts.extend(
                        self.running
                            .iter()
                            .chain(&self.waiting)
                            .map(|s| s.req.rid.clone()),
                    );
                } else {
                    self.aborts.insert(rid);
                }
            }
            Msg::Wake => {}
            Msg::PdRelease(id) => {
                if let Some(s) = self.parked.remove(&id) {
                    drop(self.release(s, true));
                    // The loop may go back to waiting without another round: show the pages
                    // free now.
                    self.publish();
                }
            }
            Msg::Pause(mode, reply) => {
                self.pause(mode);
                let _ = reply.send(());
            }
            Msg::Continue(reply) => {
                if std::mem::replace(&mut self.paused, false) {
                    tracing::info!("generation continued");
                }
                let _ = reply.send(());
            }
            Msg::Flush(reply) => {
                let ok = self.running.is_empty() && self.tree.reset();
                let _ = reply.send(ok);
            }
            Msg::ClearStorage(reply) => {
                let r = match &self.hicache {
                    Some(h) => h.clear_storage(),
                    None => Err("hierarchical cache is not enabled".into()),
                };
                let _ = reply.send(r);
            }
        }
    }

    /// `PUT` / `DELETE /hicache/storage-backend`: only with the hierarchical cache on and no
    /// request running or waiting (SGLang's rule).
    fn l3_control(&mut self, attach: Option<&crate::hicache::Attach>) -> Result<String, String> {
        let (running, waiting) = (self.running.len(), self.waiting.len() + self.held.len());
        let Some(h) = &mut self.hicache else {
            return Err(
                "the hierarchical cache is not enabled (--enable-hierarchical-cache)".into(),
            );
        };
        if running + waiting > 0 {
            return Err(format!(
                "the L3 can be attached or detached only while no request runs or waits ({running} running, {waiting} waiting)"
            ));
        }
        match attach {
            Some(a) => h.attach(a),
            None => h.detach(),
        }
    }

    /// Stops the rounds; `Abort` finishes every request now, `Retract` requeues the running ones
    /// (a PD prefill leg that sent part of its KV already stays in place).
    fn pause(&mut self, mode: PauseMode) {
        tracing::info!(?mode, "generation paused");
        self.paused = true;
        match mode {
            PauseMode::Abort => {
                self.handle(Msg::Abort(String::new()));
                self.reap_aborted();
            }
            PauseMode::InPlace => {}
            PauseMode::Retract => {
                let running = std::mem::take(&mut self.running);
                let mut kept = Vec::new();
                // Newest first, each to the front: the queue keeps their admission order.
                for s in running.into_iter().rev() {
                    if s.pd_sent > 0 {
                        kept.push(s);
                    } else {
                        let s = self.release(s, true);
                        self.waiting.push_front(s);
                    }
                }
                kept.reverse();
                self.running = kept;
            }
        }
        self.publish();
    }

    /// Ends `req` on arrival, never queued, with `reason` (and off this replica's load).
    fn refuse(&self, req: &Request, reason: FinishReason) {
        self.load.done(req);
        let done = Finish {
            reason,
            prompt_tokens: req.input_ids.len(),
            completion_tokens: 0,
            cached_tokens: 0,
            num_retractions: 0,
        };
        let _ = req.events.send(Event::Done(done));
    }

    /// Whether `--max-queued-requests` refuses the next arrival: as many requests wait as it
    /// allows (SGLang counts its waiting queue the same way, and only without a PD role).
    fn queue_full(&self) -> bool {
        self.pd.is_none()
            && self
                .cfg
                .max_queued_requests
                .is_some_and(|n| self.waiting.len() >= n)
    }

    /// Finishes requests whose client went away or that `/abort_request` named.
    fn reap_aborted(&mut self) {
        let aborts = std::mem::take(&mut self.aborts);
        let gone = |s: &Seq| s.req.events.is_closed() || aborts.contains(&s.req.rid);
        if self.inflight.is_some() && self.running.iter().any(&gone) {
            self.sync();
        }
        let mut i = 0;
        while i < self.running.len() {
            if gone(&self.running[i]) {
                let s = self.running.remove(i);
                self.finish(
                    s,
                    FinishReason::Abort("Aborted by the client or /abort_request.".into()),
                );
            } else {
                i += 1;
            }
        }
        let mut keep = VecDeque::new();
        while let Some(s) = self.waiting.pop_front() {
            if gone(&s) {
                self.hook.on_dequeue(&s.req.rid);
                if let Some(PdSide::Decode(f)) = &self.pd {
                    f.forget(&s.req.rid);
                }
                if let Some(h) = &mut self.hicache {
                    h.finish_prefetch(&mut self.tree, &s.req.rid);
                }
                self.finish(
                    s,
                    FinishReason::Abort("Aborted by the client or /abort_request.".into()),
                );
            } else {
                keep.push_back(s);
            }
        }
        self.waiting = keep;
    }

    /// Caches `tokens` (whole pages: the first `skip` the caller's locked match, `own` the rest)
    /// in the radix tree, and lets HiCache back up the nodes that are new.
    fn cache_pages(&mut self, ns: Option<CacheNs>, tokens: &[u32], skip: usize, own: Vec<Page>) {
        let (_, fresh) = self.tree.insert(ns, tokens, skip, own);
        if let Some(h) = &mut self.hicache {
            let host = h.host().clone();
            let (pool, model) = (&self.pool, &self.model);
            let mut copy = |dev: &[u32], hp: &[u32]| copy_out(model, pool, &host, dev, hp);
            h.after_insert(&mut self.tree, &fresh, &mut copy);
        }
    }

    /// Releases a sequence's pages: caches the full pages of its computed tokens in the radix tree
    /// (when enabled) and unlocks its prefix.
    fn release(&mut self, mut s: Seq, cache: bool) -> Seq {
        let ps = self.cfg.page_size;
        let (own, prefix) = s.take_pages();
        if self.cfg.radix_cache && cache {
            let full = (s.computed / ps).max(prefix.len());
            let mut own = own;
            let extra = full.saturating_sub(prefix.len()).min(own.len());
            own.truncate(extra);
            let full = prefix.len() + own.len();
            self.cache_pages(s.ns, &s.tokens[..full * ps], prefix.len(), own);
        } else {
            drop(own);
        }
        if let Some(node) = s.lock_node.take() {
            self.tree.unlock(node);
        }
        s.computed = 0;
        s
    }

    fn finish(&mut self, mut s: Seq, reason: FinishReason) {
        // Tokens still being sampled for it (a failed forward's) are not part of its output.
        s.tokens.truncate(s.tokens.len() - s.pending());
        let ok = !matches!(reason, FinishReason::Abort(_) | FinishReason::Refused(_));
        // A PD prefill leg hands its prompt's KV over: left in the pool (the pages stay the
        // leg's until the transfer ends) or copied to a staging pool before its pages go back.
        let handoff = match (&self.pd, &s.req.bootstrap) {
            (Some(PdSide::Prefill(reg)), Some(b)) if b.is_real() => {
                let reg = reg.clone();
                let pages = if ok {
                    self.handoff_pages(&reg, b.room, &s)
                } else {
                    Err("the prefill request was aborted".into())
                };
                Some((reg, b.room, pages))
            }
            _ => None,
        };
        if ok && matches!(self.pd, Some(PdSide::Decode(_))) {
            self.offload_kv(&s);
        }
        let done = Finish {
            reason,
            prompt_tokens: s.prompt_len,
            completion_tokens: s.tokens.len() - s.prompt_len,
            cached_tokens: s.cached_tokens,
            num_retractions: s.retractions,
        };
        let events = s.req.events.clone();
        let first_token = s.tokens.get(s.prompt_len).copied().unwrap_or(0);
        let first_logprobs = s.first_lp.as_deref().cloned();
        let prompt_len = s.prompt_len;
        Stats::add(&self.stats.requests_finished, 1);
        self.load.done(&s.req);
        match handoff {
            Some((reg, room, Ok((pages, n_pages)))) => {
                let hold = if matches!(pages, crate::pd::prefill::Pages::Staged(_)) {
                    drop(self.release(s, ok));
                    None
                } else {
                    let id = self.parked_next;
                    self.parked_next += 1;
                    self.parked.insert(id, s);
                    let tx = self.pd_tx.clone();
                    Some(crate::pd::prefill::Hold::new(move || {
                        if let Some(tx) = tx {
                            let _ = tx.send(Msg::PdRelease(id));
                        }
                    }))
                };
                reg.ready(
                    room,
                    crate::pd::prefill::Handoff {
                        n_tokens: prompt_len as u32,
                        first_token,
                        first_logprobs,
                        pages,
                        n_pages,
                        page_size: self.cfg.page_size,
                        hold,
                        deliver: Box::new(move |r| {
                            let done = match r {
                                Ok(()) => done,
                                Err(e) => Finish {
                                    reason: FinishReason::Abort(e),
                                    ..done
                                },
                            };
                            let _ = events.send(Event::Done(done));
                        }),
                    },
                );
            }
            Some((reg, room, Err(why))) => {
                drop(self.release(s, ok));
                reg.fail(room, &why);
                let _ = events.send(Event::Done(done));
            }
            None => {
                drop(self.release(s, ok));
                let _ = events.send(Event::Done(done));
            }
        }
    }

    /// PD decode with offload on: writes the KV of `s`'s computed tokens (whole pages) to the L3.
    fn offload_kv(&mut self, s: &Seq) {
        let Some(h) = self.hicache.as_mut().filter(|h| h.decode_offload()) else {
            return;
        };
        let ps = self.cfg.page_size;
        let full = (s.computed / ps).min(s.tokens.len() / ps);
        let table = s.page_table();
        let host = h.host().clone();
        let (pool, model) = (&self.pool, &self.model);
        let mut copy = |dev: &[u32], hp: &[u32]| copy_out(model, pool, &host, dev, hp);
        let n = h.offload(
            s.ns,
            &s.tokens[..full * ps],
            &table[..full.min(table.len())],
            &mut copy,
        );
        Stats::add(&self.stats.pd_offloaded_tokens, (n * ps) as u64);
    }

    fn publish(&mut self) {
        let (st, g) = (&self.stats, &mut self.gauges);
        Stats::share(&st.running, &mut g.running, self.running.len() as u64);
        Stats::share(&st.waiting, &mut g.waiting, self.waiting.len() as u64);
        self.load.set_waiting(self.waiting.len());
        let free = self.pool.free_pages() as u64;
        Stats::share(&st.free_pages, &mut g.free_pages, free);
        let cached = self.tree.cached_pages() as u64;
        Stats::share(&st.cached_pages, &mut g.cached_pages, cached);
        if let Some(h) = &mut self.hicache {
            h.publish(&self.tree);
        }
    }
}

/// Copies device pages to host pages, logging (and reporting) a failure.
fn copy_out<R: ModelRunner>(
    model: &R,
    pool: &DeviceKvPool<R>,
    host: &crate::kv::HostKvPool,
    dev: &[u32],
    hp: &[u32],
) -> bool {
    match model.save_pages(&pool.buffers, dev, host, hp) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("hicache: device -> host copy failed: {e}");
            false
        }
    }
}
