//! Attaching and detaching the L3 at runtime (SGLang's `PUT` / `DELETE /hicache/storage-backend`):
//! the host tier stays, the L3 I/O threads start or stop. The scheduler allows it only while no
//! request runs or waits (SGLang's rule) and, to detach, no L3 job is in flight.

use super::config::{
    apply_extra_config, parse_prefetch_policy, parse_write_policy, storage_backend,
};
use super::storage::Storage;
use super::HiCache;

/// What `PUT /hicache/storage-backend` asks for (SGLang's fields).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Attach {
    pub hicache_storage_backend: String,
    /// The extra config as JSON text (`--hicache-storage-backend-extra-config`).
    #[serde(default)]
    pub hicache_storage_backend_extra_config_json: Option<String>,
    #[serde(default)]
    pub hicache_storage_prefetch_policy: Option<String>,
    #[serde(default)]
    pub hicache_write_policy: Option<String>,
}

impl HiCache {
    /// Starts the L3 `a` names (the extra config and policies as given, the rest as at launch).
    pub fn attach(&mut self, a: &Attach) -> Result<String, String> {
        if let Some(b) = &self.cfg.storage {
            return Err(format!(
                "an L3 backend is attached already ({b}); detach it first"
            ));
        }
        let mut cfg = self.cfg.clone();
        let extra = a.hicache_storage_backend_extra_config_json.as_deref();
        let master = match extra {
            Some(j) => apply_extra_config(&mut cfg, j)?,
            None => None,
        };
        if let Some(p) = &a.hicache_storage_prefetch_policy {
            cfg.prefetch_policy = parse_prefetch_policy(p)?;
        }
        if let Some(w) = &a.hicache_write_policy {
            cfg.write_policy = parse_write_policy(w)?;
        }
        let backend = storage_backend(&a.hicache_storage_backend, master, extra)?;
        let storage = Storage::start(&backend, self.host.region(), self.host.object_bytes())?;
        let what = backend.to_string();
        cfg.storage = Some(backend);
        self.cfg = cfg;
        self.storage = Some(storage);
        self.rebuild_keys();
        tracing::info!(storage = %what, "hicache: L3 attached");
        Ok(format!("L3: {what}"))
    }

    /// Stops the L3 (its I/O threads end once idle); refused while L3 jobs are in flight.
    pub fn detach(&mut self) -> Result<String, String> {
        let Some(b) = self.cfg.storage.take() else {
            return Err("no L3 backend is attached".into());
        };
        if self.busy() {
            self.cfg.storage = Some(b);
            return Err("L3 transfers are in flight; retry in a moment".into());
        }
        self.storage = None;
        tracing::info!(storage = %b, "hicache: L3 detached");
        Ok(format!("L3 was: {b}"))
    }
}
