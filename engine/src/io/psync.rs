//! The portable engine: a pool of threads doing `pread`/`pwrite`. Chosen when io_uring cannot be set
//! up, and run by the same test suite as the io_uring engine.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::device::{datasync, pio, Device};
use super::engine::{Completion, IoEngine, IoReq, IoResult, Op};

type Job = (IoReq, oneshot::Sender<IoResult>);

/// pread/pwrite thread pool over one device.
pub struct PsyncEngine {
    dev: Arc<Device>,
    tx: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl PsyncEngine {
    pub fn new(dev: Arc<Device>, threads: usize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                let fd = dev.file.as_raw_fd();
                std::thread::Builder::new()
                    .name(format!("strata-psync-{i}"))
                    .spawn(move || {
                        for (mut req, done) in rx {
                            let (ptr, len) = (req.buf.as_mut_ptr(), req.buf.len());
                            // SAFETY: the buffer is owned by the request until it is sent back.
                            let r = unsafe { pio(fd, req.op == Op::Write, ptr, len, req.offset) };
                            let _ = done.send((req.buf, r));
                        }
                    })
                    .expect("spawn psync thread")
            })
            .collect();
        Self {
            dev,
            tx: Some(tx),
            threads,
        }
    }
}

impl IoEngine for PsyncEngine {
    fn submit(&self, reqs: Vec<IoReq>) -> Vec<Completion> {
        let tx = self.tx.as_ref().expect("engine running");
        reqs.into_iter()
            .map(|req| {
                let (done, c) = Completion::channel();
                tx.send((req, done)).expect("psync threads alive");
                c
            })
            .collect()
    }

    fn sync(&self) -> std::io::Result<()> {
        datasync(self.dev.file.as_raw_fd())
    }

    fn device_len(&self) -> u64 {
        self.dev.len
    }

    fn name(&self) -> &'static str {
        "psync"
    }
}

impl Drop for PsyncEngine {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
