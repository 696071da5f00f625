//! Counters and gauges shared by the scheduler (writer) and the HTTP layer (reader), plus the
//! latency histograms the HTTP layer records. Lock-free atomics; relaxed ordering is enough for
//! monitoring values.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Histogram bucket upper bounds in seconds (Prometheus `le`).
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (i, &b) in BUCKETS.iter().enumerate() {
            if seconds <= b {
                self.counts[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }
    /// (cumulative bucket counts, count, sum in seconds).
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        (
            self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            self.count.load(Relaxed),
            self.sum_micros.load(Relaxed) as f64 / 1e6,
        )
    }
}

/// One writer's part of a gauge that several writers add up to: each data-parallel replica's
/// scheduler publishes its running requests, pages and throughput through its own `Share`s, so
/// the server-wide gauge is their sum (one replica: its value).
#[derive(Debug, Default, Clone, Copy)]
pub struct Share(u64);

/// Server-wide statistics.
#[derive(Debug, Default)]
pub struct Stats {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub total_pages: AtomicU64,
    pub free_pages: AtomicU64,
    pub cached_pages: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub requests_finished: AtomicU64,
    pub retractions: AtomicU64,
    pub forward_passes: AtomicU64,
    /// Decode throughput of the last scheduler window, in tokens/s × 1000.
    pub gen_throughput_milli: AtomicU64,
    pub ttft: Histogram,
    /// PD prefill side: KV bytes sent to decode servers (parts included), the microseconds from
    /// each transfer's final header to its acknowledgement (not the chunks between parts),
    /// transfers that succeeded and that failed.
    pub pd_bytes: AtomicU64,
    pub pd_micros: AtomicU64,
    pub pd_ok: AtomicU64,
    pub pd_failed: AtomicU64,
    /// PD prefill side: transfers whose pages the decode copied out of this process's memory (the
    /// same-host path) instead of receiving them on the socket.
    pub pd_local: AtomicU64,
    /// PD prefill side: transfers whose page bytes went over the connection's RDMA queue pair.
    pub pd_rdma: AtomicU64,
    /// PD prefill side: transfers the decode copied device to device out of this server's GPU
    /// pool (CUDA IPC), and transfers whose pages went through a staging copy first (the GPU
    /// runner without IPC); the others were sent from the KV pool itself.
    pub pd_ipc: AtomicU64,
    pub pd_staged: AtomicU64,
    /// PD prefill side: bytes (parts included) and microseconds (final header to
    /// acknowledgement) of the CUDA IPC transfers alone.
    pub pd_ipc_bytes: AtomicU64,
    pub pd_ipc_micros: AtomicU64,
    /// PD prefill side, CUDA IPC push (this server copies into the decode's pool): copies (one per
    /// part and final header) and their bytes; microseconds to queue each copy (the host's
    /// control path), from queued to seen
    /// complete, and the copies' own device time; and the wall time with at least one push
    /// between its start and its header sent (bytes / that = the aggregate push rate).
    pub pd_push_copies: AtomicU64,
    /// PD prefill side: push copies queued (counted before their wait; a test can act then).
    pub pd_push_queued: AtomicU64,
    pub pd_push_bytes: AtomicU64,
    pub pd_push_enqueue_micros: AtomicU64,
    pub pd_push_wait_micros: AtomicU64,
    pub pd_push_device_micros: AtomicU64,
    pub pd_push_busy: BusyClock,
    /// PD prefill side: parts sent ahead of the final header (a finished chunk's pages each).
    pub pd_parts: AtomicU64,
    /// PD decode side: parts received.
    pub pd_recv_parts: AtomicU64,
    /// PD decode side: connections opened to prefill bootstrap servers (reuse does not count).
    pub pd_connections: AtomicU64,
    /// PD decode side: transfers received, and the microseconds from each of their KV headers'
    /// arrival (parts and the final one) to its pages landed, and for the final one to the
    /// acknowledgement sent (the copy, or the bytes read from the socket): transfer time, not
    /// the prefill's chunks between parts.
    pub pd_received: AtomicU64,
    pub pd_recv_micros: AtomicU64,
    /// PD decode side: received transfers copied device to device (CUDA IPC), and headers
    /// (parts and final ones) whose pages the prefill copied into this pool itself (PUSHED).
    pub pd_recv_ipc: AtomicU64,
    /// PD decode side: received transfers whose page bytes came over an RDMA queue pair.
    pub pd_recv_rdma: AtomicU64,
    pub pd_recv_pushed: AtomicU64,
    /// PD decode side, CUDA IPC: device-to-device copies (one per part and final header) and
    /// their bytes; microseconds from a header to its copy queued (the host's control path),
    /// from queued to seen complete (waiting behind the fence and the GPU's other work, the copy,
    /// the completion seen), and the copies' own device time (their start and end events).
    pub pd_recv_ipc_copies: AtomicU64,
    pub pd_recv_ipc_bytes: AtomicU64,
    pub pd_recv_ipc_enqueue_micros: AtomicU64,
    pub pd_recv_ipc_wait_micros: AtomicU64,
    pub pd_recv_ipc_device_micros: AtomicU64,
    /// PD decode side: bytes received, and the wall time during which at least one transfer's
    /// pages were between their KV header and their landing (the final header's: its
    /// acknowledgement); their ratio is the aggregate transfer rate with several in flight.
    pub pd_recv_bytes: AtomicU64,
    pub pd_recv_busy: BusyClock,
    /// PD decode side: tokens whose KV was queued for the L3 by decode offload.
    pub pd_offloaded_tokens: AtomicU64,
    /// Hierarchical cache counters (all zero when HiCache is off).
    pub hicache: crate::hicache::HiCacheStats,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Stats {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Relaxed)
    }
    pub fn set(v: &AtomicU64, x: u64) {
        v.store(x, Relaxed)
    }
    /// Publishes `x` as this writer's part of gauge `v` (see [`Share`]).
    pub fn share(v: &AtomicU64, mine: &mut Share, x: u64) {
        // Wrapping: a part that shrinks adds the two's complement of the difference.
        v.fetch_add(x.wrapping_sub(mine.0), Relaxed);
        mine.0 = x;
    }
    pub fn add(v: &AtomicU64, x: u64) {
        v.fetch_add(x, Relaxed);
    }
}

/// Wall time during which at least one of several overlapping activities ran.
#[derive(Debug, Default)]
pub struct BusyClock {
    /// Activities running, and since when the count has been above zero.
    state: parking_lot::Mutex<(u32, Option<std::time::Instant>)>,
    micros: AtomicU64,
}

/// One running activity of a [`BusyClock`]; ends when dropped.
pub struct Busy<'a>(&'a BusyClock);

impl BusyClock {
    /// Starts an activity.
    pub fn enter(&self) -> Busy<'_> {
        let mut g = self.state.lock();
        if g.0 == 0 {
            g.1 = Some(std::time::Instant::now());
        }
        g.0 += 1;
        Busy(self)
    }

    /// Busy microseconds so far (an interval still open counts up to now).
    pub fn micros(&self) -> u64 {
        let g = self.state.lock();
        let open =
            g.1.filter(|_| g.0 > 0)
                .map_or(0, |t| t.elapsed().as_micros() as u64);
        self.micros.load(Relaxed) + open
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut g = self.0.state.lock();
        g.0 -= 1;
        if g.0 == 0 {
            if let Some(t) = g.1.take() {
                self.0
                    .micros
                    .fetch_add(t.elapsed().as_micros() as u64, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod busy_tests {
    use super::*;
    use std::time::Duration;

    /// Overlapping activities count their common wall time once; idle gaps do not count.
    #[test]
    fn overlapping_activities_count_once() {
        let c = BusyClock::default();
        let a = c.enter();
        std::thread::sleep(Duration::from_millis(30));
        let b = c.enter();
        std::thread::sleep(Duration::from_millis(30));
        drop(a);
        std::thread::sleep(Duration::from_millis(30));
        drop(b);
        let busy = c.micros();
        std::thread::sleep(Duration::from_millis(50)); // idle
        assert_eq!(c.micros(), busy, "idle time counted");
        assert!((90_000..200_000).contains(&busy), "{busy} us");
    }
}
