//! The Strata cluster as the HiCache L3: the cluster client's zero-copy batch calls, behind a
//! lazy connection. When the master is unreachable every call answers `None` (a miss), one
//! warning is logged, and the connection is retried at most every `RETRY`.

use super::storage::L3Backend;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_cluster::{Client, ClientConfig};

const RETRY: Duration = Duration::from_secs(2);

/// The cluster whose master is `master`, reached through one shared client.
pub struct ClusterBackend {
    master: String,
    /// The client once connected; when the last attempt was made.
    client: Mutex<(Option<Client>, Option<Instant>)>,
    /// The host pool's memory, registered with the client for zero-copy transfers.
    region: (usize, usize),
}

impl ClusterBackend {
    /// The backend for `master`; connects in the background now, so the first request does not
    /// pay for it.
    pub fn start(master: String, region: (*mut u8, usize)) -> std::io::Result<Arc<Self>> {
        let b = Arc::new(ClusterBackend {
            master,
            client: Mutex::new((None, None)),
            region: (region.0 as usize, region.1),
        });
        let bg = b.clone();
        std::thread::Builder::new()
            .name("strata-l3-connect".into())
            .spawn(move || drop(bg.client()))?;
        Ok(b)
    }

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

impl L3Backend for ClusterBackend {
    fn exists(&self, keys: &[String]) -> Option<Vec<bool>> {
        let c = self.client()?;
        Some(c.batch_is_exist(keys).iter().map(|&e| e == 1).collect())
    }

    fn get_into(&self, keys: &[String], dst: &mut [&mut [u8]]) -> Option<Vec<bool>> {
        let c = self.client()?;
        let lens: Vec<usize> = dst.iter().map(|d| d.len()).collect();
        let codes = c.batch_get_into(keys, dst);
        Some(
            codes
                .iter()
                .zip(&lens)
                .map(|(&r, &n)| r == n as i64)
                .collect(),
        )
    }

    fn put(&self, keys: &[&String], vals: &[&[u8]], depths: &[u32]) -> Option<Vec<bool>> {
        let c = self.client()?;
        Some(
            c.batch_put_from_with_depth(keys, vals, depths)
                .iter()
                .map(|&r| r == 0)
                .collect(),
        )
    }

    fn clear(&self) -> Result<(), String> {
        let c = self.client().ok_or("the L3 store is not reachable")?;
        c.clear().map_err(|e| e.to_string())
    }
}
