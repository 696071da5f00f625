//! The CUDA runner's side of PD transfers over CUDA IPC (same host): the prefill's pool is
//! exported once, a decode opens it once per prefill (cached while any connection to that prefill
//! holds it) and copies the listed pages straight into the pool pages the scheduler gave the
//! fetch (`PeerCopy`: one kernel launch on a PD stream, after a fence on the compute stream, no
//! allocation per transfer; the fetch thread waits for the copy's event only). In the other
//! direction (PUSH) a prefill opens the decode's pool the same way and copies its own pages into
//! the decode's listed pages (`copy_out`), on its own PD stream. A fetch without
//! pool pages does not ask for device pages (the prefill stages them), so nothing here allocates.
//! Each copy runs between two timing events, so the decode's metrics split a transfer into the
//! host's control path, the wait for the GPU, and the copy itself. No host memory is touched. See
//! docs/protocol.md ("PD KV transfer") for the handshake and docs/perf.md for the measurements.

use super::kv::CudaKv;
use crate::pd::share::{Copying, DeviceKv, Fence, Opened};
use crate::pd::wire::DeviceInfo;
use cudarc::driver::CudaEvent;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use strata_kernels::cuda::{ipc_handle, DTensor, GpuContext, IpcMapping, PageLayout, PeerCopy};

/// A queued copy: its start and end events (the mapping it reads holds the end event too).
struct Queued {
    start: CudaEvent,
    done: Arc<CudaEvent>,
}

/// One CUDA pool as PD transfers see it.
pub(super) struct CudaDeviceKv {
    ctx: Arc<GpuContext>,
    /// The whole pool (a view sharing the allocation; the pool lives as long as the server).
    pool: DTensor,
    layers: usize,
    page_size: usize,
    kv_dim: usize,
    num_pages: usize,
    copy: Mutex<Option<Arc<PeerCopy>>>,
    /// This pool's export (the handle is asked for once).
    exported: Mutex<Option<DeviceInfo>>,
    /// Peer pools opened in this process, by handle (kept open while a connection holds one).
    opened: Mutex<HashMap<[u8; 64], Weak<IpcMapping>>>,
}

impl CudaDeviceKv {
    pub(super) fn new(kv: &CudaKv) -> Result<Self, String> {
        Ok(CudaDeviceKv {
            ctx: kv.context().clone(),
            pool: kv
                .pool
                .view(0, kv.pool.shape())
                .map_err(|e| e.to_string())?,
            layers: kv.k.len(),
            page_size: kv.page_size,
            kv_dim: kv.pool.shape()[1],
            num_pages: kv.num_pages,
            copy: Mutex::new(None),
            exported: Mutex::new(None),
            opened: Mutex::new(HashMap::new()),
        })
    }

    fn chunk_bytes(&self) -> u64 {
        (self.page_size * self.kv_dim * 2) as u64
    }

    fn copier(&self) -> Result<Arc<PeerCopy>, String> {
        let mut g = self.copy.lock();
        if let Some(p) = g.as_ref() {
            return Ok(p.clone());
        }
        let p = Arc::new(
            PeerCopy::new(self.ctx.clone())
                .map_err(|e| format!("cannot set up the device-to-device copy: {e}"))?,
        );
        *g = Some(p.clone());
        Ok(p)
    }

    fn layout(&self, pool_pages: usize) -> PageLayout {
        PageLayout {
            layers: self.layers,
            pool_pages,
            chunk_bytes: self.chunk_bytes() as usize,
        }
    }
}

impl DeviceKv for CudaDeviceKv {
    fn export(&self) -> Result<DeviceInfo, String> {
        let mut g = self.exported.lock();
        if let Some(d) = g.as_ref() {
            return Ok(d.clone());
        }
        let handle = ipc_handle(&self.ctx, &self.pool).map_err(|e| e.to_string())?;
        let d = DeviceInfo {
            handle,
            pool_pages: self.num_pages as u64,
            layers: self.layers as u32,
            chunk_bytes: self.chunk_bytes(),
            pages: Vec::new(),
        };
        *g = Some(d.clone());
        Ok(d)
    }

    fn open(&self, info: &DeviceInfo) -> Result<Opened, String> {
        if info.layers as usize != self.layers || info.chunk_bytes != self.chunk_bytes() {
            return Err(format!(
                "the peer's GPU pool has {} layers of {}-byte page chunks, this one {} of {}",
                info.layers,
                info.chunk_bytes,
                self.layers,
                self.chunk_bytes()
            ));
        }
        let mut g = self.opened.lock();
        g.retain(|_, w| w.strong_count() > 0);
        if let Some(m) = g.get(&info.handle).and_then(Weak::upgrade) {
            return Ok(m);
        }
        let bytes = info.layers as usize * 2 * info.pool_pages as usize * info.chunk_bytes as usize;
        let m = IpcMapping::open(&self.ctx, &info.handle, bytes).map_err(|e| e.to_string())?;
        if m.device() != self.ctx.ordinal() {
            tracing::info!(
                "PD: the peer's GPU KV pool is on GPU {}, copied over the peer link from GPU {}",
                m.device(),
                self.ctx.ordinal()
            );
        }
        g.insert(info.handle, Arc::downgrade(&m));
        Ok(m)
    }

    fn fence(&self) -> Result<Fence, String> {
        let e = self
            .ctx
            .stream()
            .record_event(None)
            .map_err(|e| format!("cannot record a fence on the compute stream: {e}"))?;
        Ok(Box::new(e))
    }

    fn copy_into(
        &self,
        opened: &Opened,
        info: &DeviceInfo,
        dst: &[u32],
        after: Option<&Fence>,
    ) -> Result<Copying, String> {
        let after = match after {
            Some(f) => Some(
                f.downcast_ref::<CudaEvent>()
                    .ok_or("not a fence of this runner")?,
            ),
            None => None,
        };
        self.queue(opened, info, &info.pages, dst, Direction::In, after)
    }

    fn copy_out(
        &self,
        opened: &Opened,
        info: &DeviceInfo,
        src: &[u32],
        dst: &[u32],
    ) -> Result<Copying, String> {
        self.queue(opened, info, src, dst, Direction::Out, None)
    }

    fn wait(&self, copy: Copying) -> Result<Option<std::time::Duration>, String> {
        let q = copy
            .downcast::<Queued>()
            .map_err(|_| "not a copy of this runner".to_string())?;
        q.done
            .synchronize()
            .map_err(|e| format!("the device-to-device copy failed: {e}"))?;
        Ok(q.start
            .elapsed_ms(&q.done)
            .ok()
            .map(|ms| std::time::Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3)))
    }

    fn settle(&self, fence: &Fence) -> Result<(), String> {
        fence
            .downcast_ref::<CudaEvent>()
            .ok_or("not a fence of this runner")?
            .synchronize()
            .map_err(|e| format!("waiting for the compute stream: {e}"))
    }
}

/// Which way a copy between this pool and an opened one goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The opened pool's pages into this pool (the decode pulls).
    In,
    /// This pool's pages into the opened pool (the prefill pushes).
    Out,
}

impl CudaDeviceKv {
    /// Queues one timed `PeerCopy` between this pool and `opened` (`info` its geometry).
    fn queue(
        &self,
        opened: &Opened,
        info: &DeviceInfo,
        src: &[u32],
        dst: &[u32],
        dir: Direction,
        after: Option<&CudaEvent>,
    ) -> Result<Copying, String> {
        let m = opened
            .clone()
            .downcast::<IpcMapping>()
            .map_err(|_| "not an opened GPU pool".to_string())?;
        let copy = self.copier()?;
        let peer = m.tensor();
        let theirs = (&peer, self.layout(info.pool_pages as usize));
        let mine = (&self.pool, self.layout(self.num_pages));
        let (from, to) = match dir {
            Direction::In => (theirs, mine),
            Direction::Out => (mine, theirs),
        };
        let (start, done) = copy.copy(from, to, src, dst, after, true).map_err(|e| {
            // Whatever was queued finishes before the mapping can be closed.
            let _ = copy.stream().synchronize();
            e.to_string()
        })?;
        // The mapping is closed only after this copy (and the earlier ones) finished.
        m.used_until(done.clone());
        let start = start.ok_or("the copy was not timed")?;
        Ok(Box::new(Queued { start, done }))
    }
}
