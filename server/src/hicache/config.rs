//! HiCache options: SGLang's flag names, values and defaults, plus the backend's extra config.

use std::path::PathBuf;
use std::time::Duration;

/// When device pages are copied to the host pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePolicy {
    /// Every new cached node, as soon as it is inserted (SGLang's default).
    WriteThrough,
    /// A node once it has been hit `SELECTIVE_HITS` times.
    WriteThroughSelective,
    /// A node when it is evicted from the device.
    WriteBack,
}

/// Hits before write_through_selective backs a node up (SGLang's threshold).
pub const SELECTIVE_HITS: u32 = 2;

/// When a request waiting on an L3 prefetch may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchPolicy {
    /// As soon as the scheduler could run it, with whatever has arrived.
    BestEffort,
    /// Only once the whole prefetch has arrived.
    WaitComplete,
    /// Once the prefetch arrived or its deadline passed.
    Timeout,
}

/// Host pool layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemLayout {
    /// Per page: `[token][layer][kv_dim]` for K, then the same for V (SGLang's page_first).
    PageFirst,
    /// Per page: `[layer][token][kv_dim]` for K, then V (SGLang's page_first_direct).
    PageFirstDirect,
}

/// Where the L3 lives.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageBackend {
    /// The Strata cluster whose master is at this address (`strata`, alias `mooncake`).
    Cluster { master: String },
    /// One file per object in this directory (`file`, SGLang's HiCacheFile), bounded by
    /// `limits` (none by default).
    File {
        dir: PathBuf,
        limits: super::file_backend::evict::FileOptions,
    },
}

impl std::fmt::Display for StorageBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageBackend::Cluster { master } => write!(f, "cluster at {master}"),
            StorageBackend::File { dir, limits } if limits.enabled() => write!(
                f,
                "files in {} (max_size {} B, min_free_space {} B, eviction_ratio {})",
                dir.display(),
                limits.max_size,
                limits.min_free,
                limits.ratio
            ),
            StorageBackend::File { dir, .. } => write!(f, "files in {}", dir.display()),
        }
    }
}

/// SGLang's variable naming the file backend's directory, and its default.
pub const FILE_DIR_ENV: &str = "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR";
pub const FILE_DIR_DEFAULT: &str = "/tmp/hicache";

/// The file backend's directory: `$SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR` when set and not
/// empty, else `/tmp/hicache` (SGLang has no extra-config key for it).
pub fn file_backend_dir() -> PathBuf {
    std::env::var_os(FILE_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(FILE_DIR_DEFAULT), PathBuf::from)
}

/// The file backend's size bound: the extra config's `max_size`, `min_free_space` and
/// `eviction_ratio`, else `SGLANG_HICACHE_FILE_BACKEND_MAX_SIZE`, `..._MIN_FREE_SPACE` and
/// `..._EVICTION_RATIO` (SGLang's keys and variables); none set: no bound.
pub fn file_options(
    extra_config: Option<&str>,
) -> Result<super::file_backend::evict::FileOptions, String> {
    let v = match extra_config {
        Some(j) => Some(
            serde_json::from_str::<serde_json::Value>(j)
                .map_err(|e| format!("--hicache-storage-backend-extra-config: not JSON: {e}"))?,
        ),
        None => None,
    };
    Ok(super::file_backend::evict::resolve(
        v.as_ref().and_then(|v| v.as_object()),
    ))
}

/// The L3 that `--hicache-storage-backend NAME` (or a runtime attach) names: `strata` and
/// `mooncake` the cluster at the extra config's `master_server_address`, else `MOONCAKE_MASTER`,
/// else `STRATA_MASTER`; `file` the directory backend (`file_backend_dir`, `file_options`); the
/// error names the accepted values or the missing master.
pub fn storage_backend(
    name: &str,
    extra_master: Option<String>,
    extra_config: Option<&str>,
) -> Result<StorageBackend, String> {
    match name {
        "strata" | "mooncake" => Ok(StorageBackend::Cluster {
            master: extra_master
                .or_else(|| std::env::var("MOONCAKE_MASTER").ok())
                .or_else(|| std::env::var("STRATA_MASTER").ok())
                .ok_or("--hicache-storage-backend: no master address; set \"master_server_address\" in --hicache-storage-backend-extra-config, MOONCAKE_MASTER or STRATA_MASTER")?,
        }),
        "file" => Ok(StorageBackend::File {
            dir: file_backend_dir(),
            limits: file_options(extra_config)?,
        }),
        other => Err(format!(
            "--hicache-storage-backend {other}: expected strata or mooncake (the Strata cluster) or file (a directory: SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR, default /tmp/hicache)"
        )),
    }
}

/// Everything HiCache needs beyond the server's own options.
#[derive(Debug, Clone)]
pub struct HiCacheConfig {
    /// Host pool size as a multiple of the device pool (`--hicache-ratio`, 2.0).
    pub ratio: f64,
    /// Host pool size in GB (`--hicache-size`; overrides the ratio when > 0).
    pub size_gb: f64,
    pub write_policy: WritePolicy,
    pub layout: MemLayout,
    pub prefetch_policy: PrefetchPolicy,
    /// The L3 (`--hicache-storage-backend`), or none (L1 + L2 only).
    pub storage: Option<StorageBackend>,
    /// Minimum L3 hit, in tokens, worth a prefetch (extra config `prefetch_threshold`, 256).
    pub prefetch_threshold: usize,
    /// Timeout policy deadline: `base + per_ki_token × tokens / 1024` (1 s, 0.25 s).
    pub prefetch_timeout_base: Duration,
    pub prefetch_timeout_per_ki_token: Duration,
    /// Key prefix tag (extra config `extra_backend_tag`).
    pub extra_backend_tag: Option<String>,
    /// Model name in the key prefix (SGLang uses the served model name).
    pub model_name: Option<String>,
    pub tp_rank: usize,
    /// PD decode side (`--disaggregation-decode-enable-offload-kvcache`): write each finished
    /// request's KV (prompt and generated tokens) to the L3.
    pub decode_offload: bool,
    /// `--hicache-io-backend direct`: pages cross between device and host by one async memcpy
    /// per page run instead of the copy kernel (needs page_first_direct; see `parse_layout`).
    pub direct_io: bool,
}

impl Default for HiCacheConfig {
    fn default() -> Self {
        HiCacheConfig {
            ratio: 2.0,
            size_gb: 0.0,
            write_policy: WritePolicy::WriteThrough,
            layout: MemLayout::PageFirst,
            prefetch_policy: PrefetchPolicy::BestEffort,
            storage: None,
            prefetch_threshold: 256,
            prefetch_timeout_base: Duration::from_secs(1),
            prefetch_timeout_per_ki_token: Duration::from_millis(250),
            extra_backend_tag: None,
            model_name: None,
            tp_rank: 0,
            direct_io: false,
            decode_offload: false,
        }
    }
}

impl HiCacheConfig {
    /// Deadline of a prefetch of `tokens` tokens under the timeout policy.
    pub fn prefetch_timeout(&self, tokens: usize) -> Duration {
        self.prefetch_timeout_base
            + self
                .prefetch_timeout_per_ki_token
                .mul_f64(tokens as f64 / 1024.0)
    }
}

/// Parses `--hicache-write-policy`.
pub fn parse_write_policy(s: &str) -> Result<WritePolicy, String> {
    match s {
        "write_through" => Ok(WritePolicy::WriteThrough),
        "write_through_selective" => Ok(WritePolicy::WriteThroughSelective),
        "write_back" => Ok(WritePolicy::WriteBack),
        _ => Err(format!(
            "--hicache-write-policy {s}: expected write_through, write_through_selective or write_back"
        )),
    }
}

/// Parses `--hicache-storage-prefetch-policy`.
pub fn parse_prefetch_policy(s: &str) -> Result<PrefetchPolicy, String> {
    match s {
        "best_effort" => Ok(PrefetchPolicy::BestEffort),
        "wait_complete" => Ok(PrefetchPolicy::WaitComplete),
        "timeout" => Ok(PrefetchPolicy::Timeout),
        _ => Err(format!(
            "--hicache-storage-prefetch-policy {s}: expected best_effort, wait_complete or timeout"
        )),
    }
}

/// Parses `--hicache-mem-layout`. `layer_first` is rewritten to `page_first` with a warning when
/// an L3 is configured (storage needs page-contiguous host pages, as in SGLang); without one the
/// host layout is not observable and page_first is used as well.
pub fn parse_layout(s: &str, with_storage: bool) -> Result<MemLayout, String> {
    match s {
        "page_first" => Ok(MemLayout::PageFirst),
        "page_first_direct" => Ok(MemLayout::PageFirstDirect),
        "layer_first" => {
            if with_storage {
                tracing::warn!(
                    "--hicache-mem-layout layer_first: a storage backend needs page-contiguous host pages; using page_first"
                );
            }
            Ok(MemLayout::PageFirst)
        }
        _ => Err(format!(
            "--hicache-mem-layout {s}: expected layer_first, page_first or page_first_direct"
        )),
    }
}

/// Applies `--hicache-storage-backend-extra-config` (a JSON object) to `cfg`. Unknown keys are
/// ignored, as SGLang's backends ignore what they do not use. Returns the master address it
/// names, if any.
pub fn apply_extra_config(cfg: &mut HiCacheConfig, json: &str) -> Result<Option<String>, String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("--hicache-storage-backend-extra-config: not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("--hicache-storage-backend-extra-config: expected a JSON object")?;
    let secs = |k: &str| -> Result<Option<Duration>, String> {
        match obj.get(k) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|s| *s >= 0.0)
                .map(|s| Some(Duration::from_secs_f64(s)))
                .ok_or(format!(
                    "extra config {k}: expected a non-negative number of seconds"
                )),
        }
    };
    if let Some(x) = obj.get("prefetch_threshold") {
        cfg.prefetch_threshold = x
            .as_u64()
            .ok_or("extra config prefetch_threshold: expected a token count")?
            as usize;
    }
    if let Some(d) = secs("prefetch_timeout_base")? {
        cfg.prefetch_timeout_base = d;
    }
    if let Some(d) = secs("prefetch_timeout_per_ki_token")? {
        cfg.prefetch_timeout_per_ki_token = d;
    }
    if let Some(t) = obj.get("extra_backend_tag").filter(|t| !t.is_null()) {
        cfg.extra_backend_tag = Some(match t.as_str() {
            Some(s) => s.to_string(),
            None => t.to_string(),
        });
    }
    Ok(obj
        .get("master_server_address")
        .and_then(|m| m.as_str())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_config_sets_sglang_knobs_and_ignores_unknown_keys() {
        let mut c = HiCacheConfig::default();
        let m = apply_extra_config(
            &mut c,
            r#"{"master_server_address": "10.0.0.1:50051", "prefetch_threshold": 64,
                "prefetch_timeout_base": 0.5, "extra_backend_tag": "t", "protocol": "tcp"}"#,
        )
        .unwrap();
        assert_eq!(m.as_deref(), Some("10.0.0.1:50051"));
        assert_eq!(c.prefetch_threshold, 64);
        assert_eq!(c.prefetch_timeout(2048), Duration::from_millis(1000));
        assert_eq!(c.extra_backend_tag.as_deref(), Some("t"));
        assert!(apply_extra_config(&mut c, "[1]").is_err());
        assert!(apply_extra_config(&mut c, r#"{"prefetch_timeout_base": "x"}"#).is_err());
    }
}
