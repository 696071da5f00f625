//! The write-back flusher: a background thread that appends the pages buffered in the write-back
//! buffer (`writeback.rs`) to the log through the [`super::Writer`], in small batches, at idle
//! priority. It owns its thread; the store stops it (after the buffer drains) when dropped.

use std::sync::Arc;

use super::write::Pending;
use super::Core;
use crate::Result;

/// The running flusher thread.
pub(super) struct Flusher {
    thread: std::thread::JoinHandle<()>,
}

impl Flusher {
    /// Starts the thread; `core` must have a write-back buffer.
    pub(super) fn start(core: Arc<Core>) -> Self {
        let thread = std::thread::Builder::new()
            .name("strata-flusher".into())
            .spawn(move || {
                lower_priority();
                run(&core)
            })
            .expect("spawn the write-back flusher");
        Self { thread }
    }

    /// Lets the thread finish what is buffered, then waits for it.
    pub(super) fn stop(self, core: &Core) {
        if let Some(wb) = &core.wb {
            wb.stop();
        }
        let _ = self.thread.join();
    }
}

/// Appends buffered pages to the log in batches until stopped and drained.
fn run(core: &Core) {
    let wb = core
        .wb
        .as_ref()
        .expect("flusher runs only with a write-back buffer");
    loop {
        // Small batches (8 pages / 1 MiB) with a yield between them: the flusher runs beside
        // request threads (at lower priority), and short bursts keep it from holding a core a
        // request is waiting for (single-key put/get tail latency on a 2-vCPU node).
        let batch = wb.take(8, 1 << 20);
        if batch.is_empty() {
            return;
        }
        let todo = batch
            .iter()
            .enumerate()
            .map(|(item, b)| Pending {
                item,
                key: &b.key,
                value: Some(&b.value),
                shared: Some(&b.value),
                depth: b.depth,
            })
            .collect();
        let mut results: Vec<Result<bool>> = batch.iter().map(|_| Ok(true)).collect();
        {
            let _ops = core.ops.read();
            core.writer.write_records(core, todo, &mut results);
        }
        let mut failed = 0;
        for r in &results {
            if let Err(e) = r {
                failed += 1;
                tracing::warn!(error = %e, "a buffered page could not be written; it is dropped");
            }
        }
        wb.done(&batch, failed);
        std::thread::yield_now();
    }
}

/// Makes the calling thread yield the CPU to request threads: `SCHED_IDLE` (Linux, per thread),
/// else nice +10. The write-back flusher works in the background, and on a small machine its
/// copies and checksums otherwise delay the puts and gets it shares cores with (their tail
/// latency): an idle-class thread runs only on a CPU nothing else wants and is preempted at once
/// by a waking request thread, where a nice +10 thread still holds the CPU for part of a slice.
/// A full buffer makes puts wait, which frees the CPUs for it, so it cannot fall behind without
/// bound.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; failure only leaves the priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) != 0 {
            let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
        }
    }
}
