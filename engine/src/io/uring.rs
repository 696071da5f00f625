//! The io_uring engine: one ring per I/O thread, where the I/O threads are the callers themselves.
//!
//! Each thread that submits gets its own ring (thread-local, created on first use): it pushes its
//! requests, enters the kernel once to submit them, and reaps its own completions when it waits — no
//! hand-off to another thread, no wake-ups, no locks around the ring. The device is registered as
//! fixed file 0 and the engine's arena as fixed buffer 0 (`WriteFixed`/`ReadFixed`); memory callers
//! register later occupies further slots of a sparse buffer table, applied lazily by each ring. At
//! most `depth` requests are in the kernel per ring; a short transfer is resubmitted for the rest.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use io_uring::{opcode, types, IoUring};
use parking_lot::RwLock;

use super::arena::Arena;
use super::device::{datasync, Device};
use super::engine::{Completion, IoEngine, IoReq, IoResult, LocalWait, Op};
use super::iobuf::IoBuf;

/// Fixed-buffer slots per ring: slot 0 is the engine's arena, the rest caller registrations.
const SLOTS: u32 = 32;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Shared {
    id: u64,
    dev: Arc<Device>,
    arena: Option<Arc<Arena>>,
    depth: u32,
    /// Caller registrations: (base address, length, slot). Only ever grows.
    regions: RwLock<Vec<(usize, usize, u16)>>,
}

/// io_uring engine over one device.
pub struct UringEngine {
    shared: Arc<Shared>,
    sparse: bool,
}

struct Slot {
    req: IoReq,
    moved: usize,
    result: Option<io::Result<()>>,
}

struct RingState {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    in_flight: usize,
    arena_ok: bool,
    sparse: bool,
    regions_applied: usize,
}

struct LocalRing {
    engine: Weak<Shared>,
    id: u64,
    st: RefCell<RingState>,
}

thread_local! {
    static RINGS: RefCell<Vec<Rc<LocalRing>>> = const { RefCell::new(Vec::new()) };
}

impl UringEngine {
    /// Sets up the engine and probes io_uring on the calling thread (its ring is kept for it).
    /// Fails when the kernel refuses io_uring, so that `Auto` can fall back.
    pub fn new(dev: Arc<Device>, depth: u32, arena_bytes: usize) -> io::Result<Self> {
        let arena = (arena_bytes > 0).then(|| Arena::new(arena_bytes));
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            dev,
            arena,
            depth: depth.max(1),
            regions: RwLock::new(Vec::new()),
        });
        let ring = local_ring(&shared)?;
        let sparse = ring.st.borrow().sparse;
        Ok(Self { shared, sparse })
    }
}

/// This thread's ring for `shared`, created on first use. Rings of dropped engines are released.
fn local_ring(shared: &Arc<Shared>) -> io::Result<Rc<LocalRing>> {
    RINGS.with(|rings| {
        let mut rings = rings.borrow_mut();
        rings.retain(|r| r.engine.strong_count() > 0);
        if let Some(r) = rings.iter().find(|r| r.id == shared.id) {
            return Ok(r.clone());
        }
        let r = Rc::new(LocalRing {
            engine: Arc::downgrade(shared),
            id: shared.id,
            st: RefCell::new(new_ring(shared)?),
        });
        rings.push(r.clone());
        Ok(r)
    })
}

fn new_ring(shared: &Shared) -> io::Result<RingState> {
    let entries = shared.depth.next_power_of_two().max(8);
    // Only this thread submits to and reaps from the ring, so completions can wait for it to enter
    // the kernel (no task-work interrupts); older kernels get a plain ring.
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| IoUring::new(entries))?;
    ring.submitter()
        .register_files(&[shared.dev.file.as_raw_fd()])?;
    // A sparse table lets callers register their own memory later; older kernels get the arena alone.
    let sparse = ring.submitter().register_buffers_sparse(SLOTS).is_ok();
    let mut arena_ok = false;
    if let Some(a) = &shared.arena {
        let iov = libc::iovec {
            iov_base: a.base() as *mut _,
            iov_len: a.len(),
        };
        // SAFETY: the arena lives as long as the engine, and a ring is only used while its engine is
        // alive (rings of dropped engines are discarded before any use).
        let r = unsafe {
            if sparse {
                ring.submitter().register_buffers_update(0, &[iov], None)
            } else {
                ring.submitter().register_buffers(&[iov])
            }
        };
        match r {
            Ok(()) => arena_ok = true,
            Err(e) => {
                tracing::warn!(error = %e, "io_uring buffer registration failed; using unregistered reads/writes")
            }
        }
    }
    Ok(RingState {
        ring,
        slots: Vec::new(),
        free: Vec::new(),
        in_flight: 0,
        arena_ok,
        sparse,
        regions_applied: 0,
    })
}

impl RingState {
    /// Applies caller registrations this ring has not seen yet.
    fn apply_regions(&mut self, shared: &Shared) {
        let regions = shared.regions.read();
        while self.sparse && self.regions_applied < regions.len() {
            let (base, len, slot) = regions[self.regions_applied];
            let iov = libc::iovec {
                iov_base: base as *mut _,
                iov_len: len,
            };
            // SAFETY: `Store::register_buffer`'s caller keeps the memory valid while the store lives.
            if let Err(e) = unsafe {
                self.ring
                    .submitter()
                    .register_buffers_update(slot as u32, &[iov], None)
            } {
                tracing::warn!(error = %e, slot, "registering caller memory failed; using plain reads");
            }
            self.regions_applied += 1;
        }
    }

    fn push(&mut self, idx: usize) {
        let slot = self.slots[idx].as_mut().expect("live slot");
        // Slot 0 (the arena) is usable only if its registration succeeded; caller slots only if the
        // table is sparse (they were applied above).
        let fixed =
            slot.req
                .buf
                .fixed_index()
                .filter(|&i| if i == 0 { self.arena_ok } else { self.sparse });
        let moved = slot.moved;
        let len = (slot.req.buf.len() - moved) as u32;
        // SAFETY: `moved < len` of the buffer.
        let ptr = unsafe { slot.req.buf.as_mut_ptr().add(moved) };
        let off = slot.req.offset + moved as u64;
        let file = types::Fixed(0);
        let sqe = match (slot.req.op, fixed) {
            (Op::Read, Some(i)) => opcode::ReadFixed::new(file, ptr, len, i)
                .offset(off)
                .build(),
            (Op::Write, Some(i)) => opcode::WriteFixed::new(file, ptr, len, i)
                .offset(off)
                .build(),
            (Op::Read, None) => opcode::Read::new(file, ptr, len).offset(off).build(),
            (Op::Write, None) => opcode::Write::new(file, ptr, len).offset(off).build(),
        };
        let sqe = sqe.user_data(idx as u64);
        // SAFETY: the buffer stays in `slots` until its completion is reaped. The queue has room: at
        // most `depth` requests are outstanding and the ring has at least `depth` entries.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            let _ = self.ring.submit();
        }
        self.in_flight += 1;
    }

    /// Submits what is queued and waits for at least one completion, then records every completion.
    fn reap(&mut self) {
        if let Err(e) = self.ring.submit_and_wait(1) {
            if !matches!(
                e.raw_os_error(),
                Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
            ) {
                tracing::error!(error = %e, "io_uring wait failed");
            }
        }
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (token, res) in cqes {
            let idx = token as usize;
            self.in_flight -= 1;
            let slot = self.slots[idx]
                .as_mut()
                .expect("completion for a live slot");
            if res < 0 {
                slot.result = Some(Err(io::Error::from_raw_os_error(-res)));
            } else if res == 0 {
                slot.result = Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short transfer at end of device",
                )));
            } else {
                slot.moved += res as usize;
                if slot.moved < slot.req.buf.len() {
                    self.push(idx);
                } else {
                    slot.result = Some(Ok(()));
                }
            }
        }
    }
}

impl LocalWait for LocalRing {
    fn wait(&self, token: usize) -> IoResult {
        let mut st = self.st.borrow_mut();
        loop {
            if st.slots[token].as_ref().is_some_and(|s| s.result.is_some()) {
                let slot = st.slots[token].take().expect("live slot");
                st.free.push(token);
                return (slot.req.buf, slot.result.expect("finished"));
            }
            st.reap();
        }
    }
}

impl IoEngine for UringEngine {
    fn submit(&self, reqs: Vec<IoReq>) -> Vec<Completion> {
        let ring = match local_ring(&self.shared) {
            Ok(r) => r,
            Err(e) => {
                let kind = e.kind();
                return reqs
                    .into_iter()
                    .map(|r| {
                        Completion::ready((
                            r.buf,
                            Err(io::Error::new(kind, format!("io_uring setup: {e}"))),
                        ))
                    })
                    .collect();
            }
        };
        let mut tokens = Vec::with_capacity(reqs.len());
        {
            let mut st = ring.st.borrow_mut();
            st.apply_regions(&self.shared);
            for req in reqs {
                while st.in_flight >= self.shared.depth as usize {
                    st.reap();
                }
                let idx = st.free.pop().unwrap_or_else(|| {
                    st.slots.push(None);
                    st.slots.len() - 1
                });
                st.slots[idx] = Some(Slot {
                    req,
                    moved: 0,
                    result: None,
                });
                st.push(idx);
                tokens.push(idx);
            }
            if let Err(e) = st.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed; will retry when waiting");
            }
        }
        let waiter: Rc<dyn LocalWait> = ring;
        tokens
            .into_iter()
            .map(|t| Completion::local(waiter.clone(), t))
            .collect()
    }

    fn sync(&self) -> io::Result<()> {
        datasync(self.shared.dev.file.as_raw_fd())
    }

    fn device_len(&self) -> u64 {
        self.shared.dev.len
    }

    fn alloc(&self, len: usize) -> IoBuf {
        self.shared
            .arena
            .as_ref()
            .and_then(|a| a.alloc(len))
            .unwrap_or_else(|| IoBuf::heap(len))
    }

    unsafe fn register(&self, ptr: *mut u8, len: usize) -> io::Result<bool> {
        if !self.sparse || len == 0 || len > (1 << 30) {
            return Ok(false);
        }
        let mut regions = self.shared.regions.write();
        let slot = regions.len() as u16 + 1;
        if slot as u32 >= SLOTS {
            return Ok(false);
        }
        regions.push((ptr as usize, len, slot));
        Ok(true)
    }

    fn registered(&self, ptr: *const u8, len: usize) -> Option<u16> {
        if !self.sparse {
            return None;
        }
        let p = ptr as usize;
        let regions = self.shared.regions.read();
        regions
            .iter()
            .find(|&&(base, l, _)| p >= base && p + len <= base + l)
            .map(|&(_, _, slot)| slot)
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}
