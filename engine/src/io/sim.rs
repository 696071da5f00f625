//! A simulated device for deterministic fault-injection tests.
//!
//! Reads see every write so far; durability follows `sync`. From one seed it injects read errors,
//! failed (and partially applied) writes, and crashes: [`SimDisk::crash`] rebuilds the image a power
//! cut could leave — every write since the last sync is applied whole, torn at a 4 KiB boundary, or
//! lost, in order — and then the store is reopened on it.

use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::engine::{Completion, IoEngine, IoReq, Op};
use crate::ALIGN;

/// Fault rates of a simulated disk (each in 0.0..=1.0).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub read_error: f64,
    pub write_error: f64,
}

struct State {
    image: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    rng: StdRng,
    faults: Faults,
    /// Bumped by every crash: engines opened before it can no longer touch the disk (the process
    /// that owned them is gone).
    generation: u64,
}

/// The bytes of a simulated device, shared by the engines opened on it.
pub struct SimDisk {
    state: Mutex<State>,
}

impl SimDisk {
    pub fn new(len: u64, seed: u64, faults: Faults) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                image: vec![0; len as usize],
                durable: vec![0; len as usize],
                pending: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                faults,
                generation: 0,
            }),
        })
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// Simulates a power cut: unsynced writes survive whole, torn or not at all.
    pub fn crash(&self) {
        let mut s = self.state.lock();
        let pending = std::mem::take(&mut s.pending);
        let mut image = s.durable.clone();
        for (off, data) in pending {
            let blocks = data.len() / ALIGN;
            let keep = match s.rng.random_range(0..4) {
                0 | 1 => blocks,
                2 => s.rng.random_range(0..=blocks),
                _ => 0,
            };
            let n = keep * ALIGN;
            image[off as usize..off as usize + n].copy_from_slice(&data[..n]);
        }
        s.durable = image.clone();
        s.image = image;
        s.generation += 1;
    }

    /// Flips one byte of the image (durable too), for corruption tests.
    pub fn corrupt(&self, offset: u64) {
        let mut s = self.state.lock();
        s.image[offset as usize] ^= 0x5a;
        s.durable[offset as usize] ^= 0x5a;
    }

    /// A copy of the current image.
    pub fn snapshot(&self) -> Vec<u8> {
        self.state.lock().image.clone()
    }
}

/// An engine over a [`SimDisk`]; requests complete synchronously inside `submit`.
pub struct SimEngine {
    disk: Arc<SimDisk>,
    generation: u64,
}

impl SimEngine {
    pub fn new(disk: Arc<SimDisk>) -> Self {
        let generation = disk.state.lock().generation;
        Self { disk, generation }
    }
}

impl IoEngine for SimEngine {
    fn submit(&self, reqs: Vec<IoReq>) -> Vec<Completion> {
        let mut guard = self.disk.state.lock();
        let s = &mut *guard;
        reqs.into_iter()
            .map(|mut req| {
                let off = req.offset as usize;
                let len = req.buf.len();
                if s.generation != self.generation {
                    let e = io::Error::other("the simulated process crashed");
                    return Completion::ready((req.buf, Err(e)));
                }
                if off + len > s.image.len() {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "past end of sim disk");
                    return Completion::ready((req.buf, Err(e)));
                }
                let r = match req.op {
                    Op::Read => {
                        let p = s.faults.read_error;
                        if s.rng.random_bool(p) {
                            Err(io::Error::other("injected read error"))
                        } else {
                            req.buf.copy_from_slice(&s.image[off..off + len]);
                            Ok(())
                        }
                    }
                    Op::Write => {
                        let p = s.faults.write_error;
                        let fail = s.rng.random_bool(p);
                        let n = if fail {
                            s.rng.random_range(0..=len / ALIGN) * ALIGN
                        } else {
                            len
                        };
                        s.image[off..off + n].copy_from_slice(&req.buf[..n]);
                        s.pending.push((req.offset, req.buf[..n].to_vec()));
                        if fail {
                            Err(io::Error::other("injected write error"))
                        } else {
                            Ok(())
                        }
                    }
                };
                Completion::ready((req.buf, r))
            })
            .collect()
    }

    fn sync(&self) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.pending.clear();
        s.durable = s.image.clone();
        Ok(())
    }

    fn device_len(&self) -> u64 {
        self.disk.state.lock().image.len() as u64
    }

    fn name(&self) -> &'static str {
        "sim"
    }
}
