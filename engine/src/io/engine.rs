//! The I/O engine trait: asynchronous reads and writes of aligned buffers at device offsets.
//!
//! Ownership of each buffer passes into the engine with the request and comes back with the result,
//! the shape io_uring needs: the kernel may touch the memory until the completion arrives.

use std::io;

use super::iobuf::IoBuf;

/// Direction of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// One read or write of the whole of `buf` at `offset`.
#[derive(Debug)]
pub struct IoReq {
    pub op: Op,
    pub offset: u64,
    pub buf: IoBuf,
}

/// The buffer back and whether the full transfer happened (a short transfer is an error).
pub type IoResult = (IoBuf, io::Result<()>);

/// A pending request; [`Completion::wait`] blocks until the engine finishes it.
pub struct Completion(oneshot::Receiver<IoResult>);

impl Completion {
    pub(crate) fn channel() -> (oneshot::Sender<IoResult>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(rx))
    }

    /// A completion that is already finished.
    pub(crate) fn ready(r: IoResult) -> Self {
        let (tx, c) = Self::channel();
        let _ = tx.send(r);
        c
    }

    /// Blocks until the request completes. Panics only if the engine dropped the request without an
    /// answer, which its threads never do.
    pub fn wait(self) -> IoResult {
        self.0
            .recv()
            .expect("I/O engine dropped a request without completing it")
    }
}

/// Something that moves bytes between aligned buffers and the device.
pub trait IoEngine: Send + Sync {
    /// Queues every request (they may run concurrently and complete in any order).
    fn submit(&self, reqs: Vec<IoReq>) -> Vec<Completion>;
    /// Makes every completed write durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Bytes addressable on the device.
    fn device_len(&self) -> u64;
    /// Allocates a buffer of at least `len` bytes, from registered memory when the engine has it.
    /// Its contents are unspecified (not necessarily zero).
    fn alloc(&self, len: usize) -> IoBuf {
        IoBuf::heap(len)
    }
    /// Registers caller memory for fixed-buffer I/O; `Ok(false)` when the engine has no use for it.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid (and not be freed) until the engine is dropped.
    unsafe fn register(&self, _ptr: *mut u8, _len: usize) -> io::Result<bool> {
        Ok(false)
    }
    /// Fixed-buffer index of registered memory containing `ptr..ptr+len`, if any.
    fn registered(&self, _ptr: *const u8, _len: usize) -> Option<u16> {
        None
    }
    /// Short name for logs and stats: `io_uring`, `psync`, `sim`.
    fn name(&self) -> &'static str;
}

/// Runs one request synchronously.
pub fn run_one(engine: &dyn IoEngine, op: Op, offset: u64, buf: IoBuf) -> IoResult {
    let mut c = engine.submit(vec![IoReq { op, offset, buf }]);
    c.pop().expect("one completion per request").wait()
}
