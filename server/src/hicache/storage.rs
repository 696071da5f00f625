//! The L3 tier behind its own I/O threads, so the scheduler never waits on it.
//!
//! Prefetch threads serve exists queries and reads into host pages (several, so one long prompt's
//! chunks arrive in parallel), one more thread serves backups (writes from host pages), so a burst
//! of backups cannot delay a prefetch. All call one [`L3Backend`]: the Strata cluster
//! ([`super::cluster_backend`], connected lazily and retried) or a directory of files
//! ([`super::file_backend`]). A backend that cannot be reached answers
//! `None`, and the job then answers as a miss (a prefetch finds nothing, a backup is skipped):
//! serving never depends on the L3 being up. Reads and writes go straight between the backend and
//! the host pool's memory.

use super::config::StorageBackend;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

/// Threads taking prefetch jobs off one queue: a long prompt's read is split into chunks
/// (`super::CHUNK_BYTES`) that these fetch side by side (one thread's copy tops out near
/// 7 GB/s from a same-host store node on the H200 host).
const PREFETCH_THREADS: usize = 4;

/// The batch calls the I/O threads make on an L3. `None` means the backend is unreachable right
/// now (the job answers as a miss); otherwise one answer per key, in order.
pub trait L3Backend: Send + Sync {
    /// Whether each object exists.
    fn exists(&self, keys: &[String]) -> Option<Vec<bool>>;
    /// Reads each object into its buffer; true where the whole object arrived intact.
    fn get_into(&self, keys: &[String], dst: &mut [&mut [u8]]) -> Option<Vec<bool>>;
    /// Writes each object (`depths`: chain position, a placement hint); true where stored.
    fn put(&self, keys: &[&String], vals: &[&[u8]], depths: &[u32]) -> Option<Vec<bool>>;
    /// Removes every object.
    fn clear(&self) -> Result<(), String>;
}

/// A host memory range handed to an I/O thread; valid until its job's [`Done`] is received (see
/// the sharing protocol of [`crate::kv::host`]).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: the scheduler keeps the memory alive and untouched until the job completes.
unsafe impl Send for Span {}

/// Work for the I/O threads. `keys` are object keys, two per page (K then V).
#[derive(Debug)]
pub enum Job {
    /// How many leading pages exist (both objects).
    Exists { id: u64, keys: Vec<String> },
    /// Read each object into its span.
    Get {
        id: u64,
        keys: Vec<String>,
        dst: Vec<Span>,
    },
    /// Write each object that does not exist yet; `depths` per object (chain position).
    Put {
        id: u64,
        keys: Vec<String>,
        src: Vec<Span>,
        depths: Vec<u32>,
    },
}

/// A finished job.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    Exists {
        id: u64,
        pages: usize,
    },
    /// `pages`: leading pages whose K and V both arrived intact (the read rate is measured by
    /// the scheduler over a whole prefetch: its jobs run in parallel).
    Get {
        id: u64,
        pages: usize,
    },
    /// `written`: objects newly stored; `failed`: objects neither stored nor present.
    Put {
        id: u64,
        written: usize,
        failed: usize,
        bytes: usize,
        secs: f64,
    },
}

/// The L3 handle the scheduler owns.
pub struct Storage {
    prefetch_tx: Sender<Job>,
    backup_tx: Sender<Job>,
    done_rx: Receiver<Done>,
    backend: Arc<dyn L3Backend>,
}

impl Storage {
    /// Opens the configured backend and starts the I/O threads. `region` is the host pool's
    /// memory (registered with the cluster client once connected); `object_bytes` the size of
    /// every object (the file backend checks it). Errors are start-up errors (an unusable
    /// directory); an unreachable cluster is not one.
    pub fn start(
        cfg: &StorageBackend,
        region: (*mut u8, usize),
        object_bytes: usize,
    ) -> Result<Self, String> {
        let backend: Arc<dyn L3Backend> = match cfg {
            StorageBackend::Cluster { master } => {
                super::cluster_backend::ClusterBackend::start(master.clone(), region)
                    .map_err(|e| format!("cannot start the L3 connect thread: {e}"))?
            }
            StorageBackend::File { dir, limits } => Arc::new(
                super::file_backend::FileBackend::open(dir, object_bytes, *limits)?,
            ),
        };
        Self::with_backend(backend).map_err(|e| format!("cannot start the L3 I/O threads: {e}"))
    }

    /// Starts the I/O threads on `backend`.
    pub fn with_backend(backend: Arc<dyn L3Backend>) -> std::io::Result<Self> {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let spawn = |name: &str, threads: usize| -> std::io::Result<Sender<Job>> {
            let (tx, rx) = crossbeam_channel::unbounded::<Job>();
            for _ in 0..threads {
                let (b, done, rx) = (backend.clone(), done_tx.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || io_loop(&*b, rx, done))?;
            }
            Ok(tx)
        };
        let prefetch_tx = spawn("strata-l3-prefetch", PREFETCH_THREADS)?;
        let backup_tx = spawn("strata-l3-backup", 1)?;
        Ok(Storage {
            prefetch_tx,
            backup_tx,
            done_rx,
            backend,
        })
    }

    /// Queues a prefetch-side job (exists or get).
    pub fn prefetch(&self, job: Job) {
        let _ = self.prefetch_tx.send(job);
    }

    /// Queues a backup (put).
    pub fn backup(&self, job: Job) {
        let _ = self.backup_tx.send(job);
    }

    /// Finished jobs, without waiting.
    pub fn poll(&self) -> Vec<Done> {
        self.done_rx.try_iter().collect()
    }

    /// Removes every key in the L3 (`/clear_hicache_storage_backend`).
    pub fn clear(&self) -> Result<(), String> {
        self.backend.clear()
    }
}

fn io_loop(b: &dyn L3Backend, rx: Receiver<Job>, done: Sender<Done>) {
    for job in rx {
        let d = run(b, job);
        if done.send(d).is_err() {
            return;
        }
    }
}

/// Leading pages (K and V objects in pairs) whose both objects are `true`.
fn leading_pages(ok: &[bool]) -> usize {
    ok.chunks(2).take_while(|p| p.iter().all(|&x| x)).count()
}

fn run(b: &dyn L3Backend, job: Job) -> Done {
    match job {
        Job::Exists { id, keys } => Done::Exists {
            id,
            pages: b.exists(&keys).map_or(0, |ex| leading_pages(&ex)),
        },
        Job::Get { id, keys, dst } => {
            let mut bufs: Vec<&mut [u8]> = dst
                .iter()
                // SAFETY: each span is a distinct host-pool object reserved for this job.
                .map(|s| unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) })
                .collect();
            let Some(ok) = b.get_into(&keys, &mut bufs) else {
                return Done::Get { id, pages: 0 };
            };
            let pages = leading_pages(&ok);
            Done::Get { id, pages }
        }
        Job::Put {
            id,
            keys,
            src,
            depths,
        } => {
            let t0 = Instant::now();
            // Ask first and send only what is missing (a shared prefix is usually stored already).
            let Some(ex) = b.exists(&keys) else {
                return Done::Put {
                    id,
                    written: 0,
                    failed: keys.len(),
                    bytes: 0,
                    secs: 0.0,
                };
            };
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| !ex[i]).collect();
            let mkeys: Vec<&String> = missing.iter().map(|&i| &keys[i]).collect();
            let vals: Vec<&[u8]> = missing
                .iter()
                // SAFETY: the spans are host-pool objects the scheduler keeps locked until Done.
                .map(|&i| unsafe { std::slice::from_raw_parts(src[i].ptr, src[i].len) })
                .collect();
            let mdepths: Vec<u32> = missing.iter().map(|&i| depths[i]).collect();
            let ok = if mkeys.is_empty() {
                Vec::new()
            } else {
                b.put(&mkeys, &vals, &mdepths)
                    .unwrap_or_else(|| vec![false; mkeys.len()])
            };
            let written = ok.iter().filter(|&&r| r).count();
            Done::Put {
                id,
                written,
                failed: ok.len() - written,
                bytes: vals
                    .iter()
                    .zip(&ok)
                    .filter(|(_, &r)| r)
                    .map(|(v, _)| v.len())
                    .sum(),
                secs: t0.elapsed().as_secs_f64(),
            }
        }
    }
}
