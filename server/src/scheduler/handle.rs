//! The handle the HTTP layer holds: it places each request on a scheduler thread (one, or one
//! per data-parallel replica, by `--load-balance-method`: `dp.rs`) and sends control messages
//! (abort, pause, flush, weight updates, L3 attach) to every one, answering once all did.

use super::dp::{self, LoadBalance, ReplicaLoad};
use super::request::{Msg, PauseMode, Request};
use super::weights;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

/// A handle to the scheduler threads: one, or one per data-parallel replica (`dp.rs`).
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    replicas: Arc<[Replica]>,
    balance: LoadBalance,
    /// Requests placed so far (round robin's turn).
    turn: Arc<AtomicUsize>,
    /// Whether generation is paused (what `/ready` reports), set once the schedulers answered.
    paused: Arc<AtomicBool>,
}

#[derive(Clone, Debug)]
struct Replica {
    tx: Sender<Msg>,
    load: Arc<ReplicaLoad>,
}

const GONE: &str = "the scheduler is gone";

impl SchedulerHandle {
    /// The handle of one scheduler reading `tx`'s messages.
    pub(super) fn one(tx: Sender<Msg>, load: Arc<ReplicaLoad>) -> SchedulerHandle {
        SchedulerHandle {
            replicas: Arc::new([Replica { tx, load }]),
            balance: LoadBalance::default(),
            turn: Arc::default(),
            paused: Arc::default(),
        }
    }

    /// One handle over the replicas `parts` (each from [`spawn_with_hook`]), placing requests by
    /// `balance`.
    pub fn join(parts: Vec<SchedulerHandle>, balance: LoadBalance) -> SchedulerHandle {
        SchedulerHandle {
            replicas: parts
                .iter()
                .flat_map(|p| p.replicas.iter().cloned())
                .collect(),
            balance,
            turn: Arc::default(),
            paused: Arc::default(),
        }
    }

    /// Data-parallel replicas behind this handle.
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// Each replica's unfinished work, in rank order (`/get_load`).
    pub fn loads(&self) -> Vec<Arc<ReplicaLoad>> {
        self.replicas.iter().map(|r| r.load.clone()).collect()
    }

    /// The replica the balancer picks for the next request (a PD leg of `room` when given).
    pub fn pick(&self, room: Option<u64>) -> usize {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let load = |i: usize| &*self.replicas[i].load;
        dp::pick(self.balance, self.replicas.len(), load, turn, room)
    }

    /// Queues a request on its `dp_rank` replica, else the one the balancer picks; false if
    /// that scheduler is gone.
    pub fn submit(&self, req: Request) -> bool {
        let i = match req.params.dp_rank {
            Some(i) if i < self.replicas.len() => i,
            _ => {
                let room = req
                    .bootstrap
                    .as_ref()
                    .filter(|b| b.is_real())
                    .map(|b| b.room);
                self.pick(room)
            }
        };
        let r = &self.replicas[i];
        r.load.add(&req);
        let Err(gone) = r.tx.send(Msg::Submit(Box::new(req))) else {
            return true;
        };
        if let Msg::Submit(req) = gone.0 {
            r.load.done(&req);
        }
        false
    }

    /// Aborts a request by rid ("" aborts all) on every replica.
    pub fn abort(&self, rid: &str) {
        for r in self.replicas.iter() {
            let _ = r.tx.send(Msg::Abort(rid.to_string()));
        }
    }

    /// Sends `make(reply)` to every replica, then waits for every answer (None: that scheduler
    /// is gone).
    async fn ask_all<T>(
        &self,
        make: impl Fn(tokio::sync::oneshot::Sender<T>) -> Msg,
    ) -> Vec<Option<T>> {
        let mut waits = Vec::new();
        for r in self.replicas.iter() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            waits.push(r.tx.send(make(tx)).ok().map(|()| rx));
        }
        let mut out = Vec::new();
        for w in waits {
            out.push(match w {
                Some(rx) => rx.await.ok(),
                None => None,
            });
        }
        out
    }

    /// Every replica's answer, or the first failure.
    fn all_ok<T>(answers: Vec<Option<Result<T, String>>>) -> Result<T, String> {
        let mut first = None;
        for a in answers {
            let msg = a.unwrap_or_else(|| Err(GONE.into()))?;
            first.get_or_insert(msg);
        }
        first.ok_or_else(|| GONE.into())
    }

    /// Empties the L3 store (`/clear_hicache_storage_backend`).
    pub async fn clear_storage(&self) -> Result<(), String> {
        Self::all_ok(self.ask_all(Msg::ClearStorage).await)
    }

    /// Pauses generation (`/pause_generation`); returns once every scheduler is paused (and, in
    /// the abort mode, every request is finished). False if a scheduler is gone.
    pub async fn pause(&self, mode: PauseMode) -> bool {
        self.set_paused(true, |tx| Msg::Pause(mode, tx)).await
    }

    /// Resumes generation (`/continue_generation`; nothing happens when not paused).
    pub async fn resume(&self) -> bool {
        self.set_paused(false, Msg::Continue).await
    }

    /// Sends `make(reply)` to every scheduler; once all answered, generation is `paused`.
    async fn set_paused(
        &self,
        paused: bool,
        make: impl Fn(tokio::sync::oneshot::Sender<()>) -> Msg,
    ) -> bool {
        let ok = self.ask_all(make).await.iter().all(Option::is_some);
        if ok {
            self.paused.store(paused, Ordering::SeqCst);
        }
        ok
    }

    /// Whether generation is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// `/update_weights_from_disk`: the checkpoint in `dir` replaces the weights once the
    /// requests already in the scheduler are done (at once when paused; after aborting them
    /// with `abort_all`); requests that arrive meanwhile wait and run on the new weights. Every
    /// replica loads it. Ok: the message of success.
    pub async fn update_weights(
        &self,
        dir: std::path::PathBuf,
        abort_all: bool,
        flush: bool,
        tag: String,
    ) -> Result<String, String> {
        let answers = self
            .ask_all(|reply| {
                Msg::UpdateWeights(weights::WeightUpdate {
                    dir: dir.clone(),
                    abort_all,
                    flush,
                    tag: tag.clone(),
                    reply,
                })
            })
            .await;
        Self::all_ok(answers)
    }

    /// Attaches (`Some`) or detaches (`None`) the L3 at runtime on every replica; Ok: what
    /// happened.
    pub async fn l3(&self, attach: Option<crate::hicache::Attach>) -> Result<String, String> {
        let answers = self
            .ask_all(|tx| Msg::L3(attach.clone().map(Box::new), tx))
            .await;
        Self::all_ok(answers)
    }

    /// Asks every replica to flush its prefix cache; true when all did.
    pub async fn flush(&self) -> bool {
        self.ask_all(Msg::Flush)
            .await
            .into_iter()
            .all(|a| a == Some(true))
    }
}
