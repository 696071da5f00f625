//! The L3 tier: the Strata cluster client behind two I/O threads, so the scheduler never waits on
//! the network.
//!
//! Prefetch threads serve exists queries and reads into host pages (several, so one long prompt's
//! chunks arrive in parallel), one more thread serves backups (writes from host pages), so a burst
//! of backups cannot delay a prefetch. Both share one client,
//! connected lazily: when the master is unreachable, jobs answer as misses (a prefetch finds
//! nothing, a backup is skipped) with one warning, and the connection is retried at most every
//! `RETRY` — serving never depends on the L3 being up. Reads and writes go straight between the
//! store and the host pool's memory (the client's zero-copy batch calls).

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_cluster::{Client, ClientConfig};

const RETRY: Duration = Duration::from_secs(2);

/// Threads taking prefetch jobs off one queue: a long prompt's read is split into chunks
/// (`super::CHUNK_BYTES`) that these fetch side by side (one thread's copy tops out near
/// 7 GB/s from a same-host store node on the H200 host).
const PREFETCH_THREADS: usize = 4;

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
    /// `pages`: leading pages whose K and V both arrived intact.
    Get {
        id: u64,
        pages: usize,
        bytes: usize,
        secs: f64,
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

struct Shared {
    master: String,
    client: Mutex<(Option<Client>, Option<Instant>)>,
    region: (usize, usize),
}

impl Shared {
    fn client(&self) -> Option<Client> {
        let mut g = self.client.lock();
        if let Some(c) = &g.0 {
            return Some(c.clone());
        }
        if g.1.is_some_and(|t| t.elapsed() < RETRY) {
            return None;
        }
        let first = g.1.is_none();
        g.1 = Some(Instant::now());
        match Client::connect(ClientConfig::new(self.master.clone())) {
            Ok(c) => {
                // SAFETY: the host pool outlives the storage (the scheduler drops it last).
                let region = unsafe {
                    std::slice::from_raw_parts(self.region.0 as *const u8, self.region.1)
                };
                c.register_buffer(region);
                tracing::info!(master = %self.master, "hicache: L3 store connected");
                g.0 = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                if first {
                    tracing::warn!(
                        master = %self.master,
                        "hicache: L3 store unreachable, serving without it and retrying: {e}"
                    );
                }
                None
            }
        }
    }
}

/// The L3 handle the scheduler owns.
pub struct Storage {
    prefetch_tx: Sender<Job>,
    backup_tx: Sender<Job>,
    done_rx: Receiver<Done>,
    shared: Arc<Shared>,
}

impl Storage {
    /// Starts the I/O threads for the cluster whose master is `master`; `region` is the host
    /// pool's memory (registered with the client once connected).
    pub fn start(master: String, region: (*mut u8, usize)) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            master,
            client: Mutex::new((None, None)),
            region: (region.0 as usize, region.1),
        });
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let spawn = |name: &str, threads: usize| -> std::io::Result<Sender<Job>> {
            let (tx, rx) = crossbeam_channel::unbounded::<Job>();
            for _ in 0..threads {
                let (sh, done, rx) = (shared.clone(), done_tx.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || io_loop(sh, rx, done))?;
            }
            Ok(tx)
        };
        let prefetch_tx = spawn("strata-l3-prefetch", PREFETCH_THREADS)?;
        let backup_tx = spawn("strata-l3-backup", 1)?;
        // Connect in the background now, so the first request does not pay for it.
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("strata-l3-connect".into())
            .spawn(move || drop(sh.client()))?;
        Ok(Storage {
            prefetch_tx,
            backup_tx,
            done_rx,
            shared,
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
        let c = self
            .shared
            .client()
            .ok_or("the L3 store is not reachable")?;
        c.clear().map_err(|e| e.to_string())
    }
}

fn io_loop(sh: Arc<Shared>, rx: Receiver<Job>, done: Sender<Done>) {
    for job in rx {
        let d = run(&sh, job);
        if done.send(d).is_err() {
            return;
        }
    }
}

fn run(sh: &Shared, job: Job) -> Done {
    let client = sh.client();
    match job {
        Job::Exists { id, keys } => {
            let pages = client.map_or(0, |c| {
                let ex = c.batch_is_exist(&keys);
                ex.chunks(2)
                    .take_while(|p| p.iter().all(|&e| e == 1))
                    .count()
            });
            Done::Exists { id, pages }
        }
        Job::Get { id, keys, dst } => {
            let t0 = Instant::now();
            let Some(c) = client else {
                return Done::Get {
                    id,
                    pages: 0,
                    bytes: 0,
                    secs: 0.0,
                };
            };
            let mut bufs: Vec<&mut [u8]> = dst
                .iter()
                // SAFETY: each span is a distinct host-pool object reserved for this job.
                .map(|s| unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) })
                .collect();
            let codes = c.batch_get_into(&keys, &mut bufs);
            let ok = codes
                .iter()
                .zip(&dst)
                .map(|(&r, s)| r == s.len as i64)
                .collect::<Vec<_>>();
            let pages = ok.chunks(2).take_while(|p| p.iter().all(|&x| x)).count();
            Done::Get {
                id,
                pages,
                bytes: pages * 2 * dst.first().map_or(0, |s| s.len),
                secs: t0.elapsed().as_secs_f64(),
            }
        }
        Job::Put {
            id,
            keys,
            src,
            depths,
        } => {
            let t0 = Instant::now();
            let Some(c) = client else {
                return Done::Put {
                    id,
                    written: 0,
                    failed: keys.len(),
                    bytes: 0,
                    secs: 0.0,
                };
            };
            // Ask first and send only what is missing (a shared prefix is usually stored already).
            let ex = c.batch_is_exist(&keys);
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| ex[i] != 1).collect();
            let mkeys: Vec<&String> = missing.iter().map(|&i| &keys[i]).collect();
            let vals: Vec<&[u8]> = missing
                .iter()
                // SAFETY: the spans are host-pool objects the scheduler keeps locked until Done.
                .map(|&i| unsafe { std::slice::from_raw_parts(src[i].ptr, src[i].len) })
                .collect();
            let mdepths: Vec<u32> = missing.iter().map(|&i| depths[i]).collect();
            let codes = if mkeys.is_empty() {
                Vec::new()
            } else {
                c.batch_put_from_with_depth(&mkeys, &vals, &mdepths)
            };
            let written = codes.iter().filter(|&&r| r == 0).count();
            Done::Put {
                id,
                written,
                failed: codes.len() - written,
                bytes: vals
                    .iter()
                    .zip(&codes)
                    .filter(|(_, &r)| r == 0)
                    .map(|(v, _)| v.len())
                    .sum(),
                secs: t0.elapsed().as_secs_f64(),
            }
        }
    }
}
