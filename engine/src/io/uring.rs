//! The io_uring engine: one ring per I/O thread, the device registered as fixed file 0, the engine's
//! arena registered as fixed buffer 0 (`ReadFixed`/`WriteFixed` for arena buffers, plain
//! `Read`/`Write` for other memory).
//!
//! Each thread owns its ring outright (no locks around it). Submitters hand requests over a channel
//! and kick an eventfd that the ring polls, so a thread waiting for completions also wakes for new
//! work. At most `depth` requests are in the kernel per ring; the rest wait in a local queue.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{opcode, types, IoUring};

use super::arena::Arena;
use super::device::{datasync, Device};
use super::engine::{Completion, IoEngine, IoReq, IoResult, Op};
use super::iobuf::IoBuf;

const WAKE_TOKEN: u64 = u64::MAX;

/// Fixed-buffer slots per ring: slot 0 is the engine's arena, the rest caller registrations.
const SLOTS: u32 = 32;

enum Msg {
    Work(Vec<(IoReq, oneshot::Sender<IoResult>)>),
    Register(u16, libc::iovec, oneshot::Sender<io::Result<()>>),
    Stop,
}

// SAFETY: the iovec only describes memory whose owner promised it outlives the engine.
unsafe impl Send for Msg {}

struct Lane {
    tx: crossbeam_channel::Sender<Msg>,
    efd: i32,
}

/// io_uring engine over one device.
pub struct UringEngine {
    dev: Arc<Device>,
    arena: Option<Arc<Arena>>,
    lanes: Vec<Lane>,
    next: AtomicUsize,
    threads: Vec<JoinHandle<()>>,
    /// Caller registrations: (base address, length, slot).
    regions: parking_lot::RwLock<Vec<(usize, usize, u16)>>,
    sparse: bool,
}

struct Slot {
    req: IoReq,
    done: oneshot::Sender<IoResult>,
    /// Bytes already transferred (short transfers are resubmitted for the rest).
    moved: usize,
}

impl UringEngine {
    /// Sets up `threads` rings of `depth` entries, registering the device and an arena of
    /// `arena_bytes` (0 = none). Fails when the kernel refuses io_uring.
    pub fn new(
        dev: Arc<Device>,
        threads: usize,
        depth: u32,
        arena_bytes: usize,
    ) -> io::Result<Self> {
        let arena = (arena_bytes > 0).then(|| Arena::new(arena_bytes));
        let mut lanes = Vec::new();
        let mut handles = Vec::new();
        let mut sparse_all = true;
        for i in 0..threads.max(1) {
            let ring = IoUring::new(depth.next_power_of_two().max(8) + 1)?;
            let fd = dev.file.as_raw_fd();
            ring.submitter().register_files(&[fd])?;
            // A sparse table lets callers register their own memory later; older kernels get the
            // arena alone.
            let sparse = ring.submitter().register_buffers_sparse(SLOTS).is_ok();
            sparse_all &= sparse;
            let mut registered = false;
            if let Some(a) = &arena {
                let iov = libc::iovec {
                    iov_base: a.base() as *mut _,
                    iov_len: a.len(),
                };
                // SAFETY: the arena outlives the ring (the engine joins its threads before dropping
                // the arena) and stays at a fixed address.
                let r = unsafe {
                    if sparse {
                        ring.submitter().register_buffers_update(0, &[iov], None)
                    } else {
                        ring.submitter().register_buffers(&[iov])
                    }
                };
                match r {
                    Ok(()) => registered = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring buffer registration failed; using unregistered reads/writes")
                    }
                }
            }
            // SAFETY: plain syscall.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if efd < 0 {
                return Err(io::Error::last_os_error());
            }
            let (tx, rx) = crossbeam_channel::unbounded();
            let depth = depth as usize;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("strata-uring-{i}"))
                    .spawn(move || run_ring(ring, rx, efd, depth, registered))?,
            );
            lanes.push(Lane { tx, efd });
        }
        Ok(Self {
            dev,
            arena,
            lanes,
            next: AtomicUsize::new(0),
            threads: handles,
            regions: parking_lot::RwLock::new(Vec::new()),
            sparse: sparse_all,
        })
    }
}

fn run_ring(
    mut ring: IoUring,
    rx: crossbeam_channel::Receiver<Msg>,
    efd: i32,
    depth: usize,
    registered: bool,
) {
    let mut slots: Vec<Option<Slot>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut queue: VecDeque<Slot> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut wake_armed = false;
    let mut stopping = false;
    let mut efd_buf = [0u8; 8];
    loop {
        // Take new work without blocking while anything is in flight.
        loop {
            let msg = if in_flight == 0 && queue.is_empty() && !stopping {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            match msg {
                Msg::Work(v) => queue.extend(v.into_iter().map(|(req, done)| Slot {
                    req,
                    done,
                    moved: 0,
                })),
                Msg::Register(slot, iov, done) => {
                    // SAFETY: the caller of `UringEngine::register` guarantees the memory outlives us.
                    let r = unsafe {
                        ring.submitter()
                            .register_buffers_update(slot as u32, &[iov], None)
                    };
                    let _ = done.send(r);
                }
                Msg::Stop => stopping = true,
            }
        }
        if stopping && in_flight == 0 && queue.is_empty() {
            let _ = ring.submitter().unregister_files();
            return;
        }
        while in_flight < depth {
            let Some(mut slot) = queue.pop_front() else {
                break;
            };
            let idx = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            let sqe = build_sqe(&mut slot, idx as u64, registered);
            slots[idx] = Some(slot);
            // SAFETY: the buffer lives in `slots` until its completion is reaped.
            unsafe {
                ring.submission()
                    .push(&sqe)
                    .expect("ring sized above depth")
            };
            in_flight += 1;
        }
        if !wake_armed {
            let poll = opcode::PollAdd::new(types::Fd(efd), libc::POLLIN as _)
                .build()
                .user_data(WAKE_TOKEN);
            // SAFETY: the eventfd outlives the ring.
            unsafe {
                ring.submission()
                    .push(&poll)
                    .expect("ring has room for the wake poll")
            };
            wake_armed = true;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                tracing::error!(error = %e, "io_uring submit failed");
            }
        }
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (token, res) in cqes {
            if token == WAKE_TOKEN {
                wake_armed = false;
                // SAFETY: reading 8 bytes from our own non-blocking eventfd.
                unsafe { libc::read(efd, efd_buf.as_mut_ptr() as *mut _, 8) };
                continue;
            }
            let idx = token as usize;
            let mut slot = slots[idx].take().expect("completion for a live slot");
            in_flight -= 1;
            free.push(idx);
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else if res == 0 {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short transfer at end of device",
                ))
            } else {
                slot.moved += res as usize;
                if slot.moved < slot.req.buf.len() {
                    queue.push_front(slot);
                    continue;
                }
                Ok(())
            };
            let _ = slot.done.send((slot.req.buf, result));
        }
    }
}

fn build_sqe(slot: &mut Slot, token: u64, registered: bool) -> io_uring::squeue::Entry {
    // Slot 0 (the arena) is usable only if its registration succeeded; caller slots always are.
    let fixed = slot.req.buf.fixed_index().filter(|&i| i != 0 || registered);
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
    sqe.user_data(token)
}

impl IoEngine for UringEngine {
    fn submit(&self, reqs: Vec<IoReq>) -> Vec<Completion> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut work = Vec::with_capacity(reqs.len());
        for req in reqs {
            let (done, c) = Completion::channel();
            work.push((req, done));
            out.push(c);
        }
        let lane = &self.lanes[self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len()];
        lane.tx.send(Msg::Work(work)).expect("uring thread alive");
        kick(lane.efd);
        out
    }

    fn sync(&self) -> io::Result<()> {
        datasync(self.dev.file.as_raw_fd())
    }

    fn device_len(&self) -> u64 {
        self.dev.len
    }

    fn alloc(&self, len: usize) -> IoBuf {
        self.arena
            .as_ref()
            .and_then(|a| a.alloc(len))
            .unwrap_or_else(|| IoBuf::heap(len))
    }

    unsafe fn register(&self, ptr: *mut u8, len: usize) -> io::Result<bool> {
        if !self.sparse || len == 0 || len > (1 << 30) {
            return Ok(false);
        }
        let mut regions = self.regions.write();
        let slot = regions.len() as u16 + 1;
        if slot as u32 >= SLOTS {
            return Ok(false);
        }
        let iov = libc::iovec {
            iov_base: ptr as *mut _,
            iov_len: len,
        };
        for lane in &self.lanes {
            let (tx, rx) = oneshot::channel();
            lane.tx
                .send(Msg::Register(slot, iov, tx))
                .expect("uring thread alive");
            kick(lane.efd);
            rx.recv()
                .map_err(|_| io::Error::other("uring thread gone"))??;
        }
        regions.push((ptr as usize, len, slot));
        Ok(true)
    }

    fn registered(&self, ptr: *const u8, len: usize) -> Option<u16> {
        let p = ptr as usize;
        let regions = self.regions.read();
        regions
            .iter()
            .find(|&&(base, l, _)| p >= base && p + len <= base + l)
            .map(|&(_, _, slot)| slot)
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

fn kick(efd: i32) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes to our own eventfd.
    unsafe { libc::write(efd, &one as *const u64 as *const _, 8) };
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        for lane in &self.lanes {
            let _ = lane.tx.send(Msg::Stop);
            kick(lane.efd);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for lane in &self.lanes {
            // SAFETY: closing our own eventfd after its ring thread exited.
            unsafe { libc::close(lane.efd) };
        }
    }
}
