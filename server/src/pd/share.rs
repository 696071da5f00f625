//! What a KV pool offers the PD transfer threads, which run beside the scheduler (which owns the
//! pool) and must not go through it:
//!
//! - [`HostSpans`]: a pool in this process's memory (the CPU runner). The prefill leaves a
//!   finished prompt's pages where they are until the decode acknowledged them; the bootstrap
//!   thread writes them to the socket from there, or announces their addresses for the decode's
//!   cross-memory copy (no staging copy on the prefill).
//! - [`DeviceKv`]: a GPU pool other processes on the host can open (the CUDA runner, CUDA IPC).
//!   The prefill announces its pool's handle; a decode opens it once and copies the listed pages
//!   device to device, straight into the pool pages the scheduler gave the fetch (a fence orders
//!   the copy after the compute stream's earlier work on them). A decode without pool pages for
//!   the fetch does not ask for device pages: the prefill stages them through host memory.
//!   With a decode that sends its own pool and pages (PUSH, opt-in), the prefill copies instead,
//!   on its own stream, and reports them landed (on one shared GPU that was slower: the copy
//!   waits behind the prefill's own forward kernels; docs/perf.md).
//!
//! The transfer order of one page's bytes is page_first_direct: the K object (every layer's K
//! rows of the page, layer after layer), then the V object.

use super::wire::DeviceInfo;
use std::any::Any;
use std::sync::Arc;

/// A pool's pages in this process's memory: page `p` of layer `l` is `run` bytes at
/// `k[l] + p * run` (K) and `v[l] + p * run` (V).
#[derive(Debug, Clone)]
pub struct HostSpans {
    pub k: Vec<usize>,
    pub v: Vec<usize>,
    pub run: usize,
    pub pages: usize,
}

impl HostSpans {
    /// Bytes of one page's K (or V) object.
    pub fn object_bytes(&self) -> usize {
        self.run * self.k.len()
    }

    /// The (address, length) ranges of `pages` in transfer order.
    pub fn ranges(&self, pages: &[u32]) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(pages.len() * 2 * self.k.len());
        for &p in pages {
            assert!((p as usize) < self.pages, "page {p} outside the pool");
            let off = p as usize * self.run;
            for bases in [&self.k, &self.v] {
                out.extend(bases.iter().map(|&b| ((b + off) as u64, self.run as u64)));
            }
        }
        out
    }
}

/// A GPU pool opened from another process (kept open while held).
pub type Opened = Arc<dyn Any + Send + Sync>;
/// A point in the runner's compute stream (an event): a copy into pages handed out then starts
/// after the work queued before it.
pub type Fence = Box<dyn Any + Send + Sync>;
/// A device-to-device copy queued by [`DeviceKv::copy_into`], until [`DeviceKv::wait`].
pub type Copying = Box<dyn Any + Send>;

/// A GPU runner's pool as PD transfers reach it.
pub trait DeviceKv: Send + Sync {
    /// This pool as another process opens it (no pages listed).
    fn export(&self) -> Result<DeviceInfo, String>;
    /// Opens another process's pool (at most once per pool and process: later calls while it
    /// is held return the same mapping).
    fn open(&self, info: &DeviceInfo) -> Result<Opened, String>;
    /// Marks the work queued so far on the compute stream (called on the scheduler's thread when
    /// it hands pool pages to a fetch).
    fn fence(&self) -> Result<Fence, String>;
    /// Queues the copy of `info.pages[i]` of an opened pool straight into this pool's page
    /// `dst[i]` (every layer, K and V), after `after`, and returns at once (no allocation, no
    /// wait). The opened pool stays mapped until the copy finished, also when the caller lets go
    /// of it and of the returned copy.
    fn copy_into(
        &self,
        opened: &Opened,
        info: &DeviceInfo,
        dst: &[u32],
        after: Option<&Fence>,
    ) -> Result<Copying, String>;
    /// Queues the copy of this pool's pages `src[i]` straight into page `dst[i]` of an opened
    /// pool (`info` its geometry), every layer, K and V, and returns at once; the pages must be
    /// written already (the prefill hands them over after their forward returned). The opened
    /// pool stays mapped until the copy finished.
    fn copy_out(
        &self,
        opened: &Opened,
        info: &DeviceInfo,
        src: &[u32],
        dst: &[u32],
    ) -> Result<Copying, String>;
    /// Waits until the bytes of `copy` have landed (its event, not the device); returns the
    /// copy's own time on the device when the runner measured it (its start and end events).
    fn wait(&self, copy: Copying) -> Result<Option<std::time::Duration>, String>;
    /// Waits on the host until the compute-stream work before `fence` finished (a decode does so
    /// before another process may write the pages handed out at the fence).
    fn settle(&self, fence: &Fence) -> Result<(), String>;
}

/// Whether `STRATA_PD_IPC` allows the CUDA IPC path (default on; `0` turns it off).
pub fn ipc_enabled() -> bool {
    std::env::var("STRATA_PD_IPC").map_or(true, |v| v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_page_first_direct_order() {
        let s = HostSpans {
            k: vec![1000, 2000],
            v: vec![3000, 4000],
            run: 10,
            pages: 8,
        };
        assert_eq!(s.object_bytes(), 20);
        assert_eq!(
            s.ranges(&[3, 0]),
            vec![
                (1030, 10),
                (2030, 10),
                (3030, 10),
                (4030, 10),
                (1000, 10),
                (2000, 10),
                (3000, 10),
                (4000, 10)
            ]
        );
    }
}
