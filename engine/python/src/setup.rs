//! `setup(...)`: Mooncake's arguments, positional, by keyword or as one dict, turned into a
//! Strata [`ClientConfig`].
//!
//! | Mooncake argument | Strata meaning |
//! |---|---|
//! | `local_hostname` | host the local segment's node listens on and advertises (`host` or `host:port`) |
//! | `metadata_server` | accepted and unused: Strata needs no transfer-engine metadata service |
//! | `global_segment_size` | bytes this process contributes as a segment (0 = a pure client): a store engine on a file in `segment_dir` / `STRATA_SEGMENT_DIR` (default the temp dir), with a DRAM tier of the same size; `write_back` / `STRATA_WRITE_BACK` (bytes, or `512MiB`-style; default 0) gives it a write-back buffer, so that puts are acknowledged from DRAM as Mooncake's are |
//! | `local_buffer_size` | accepted and unused: zero-copy calls move bytes straight from/to the caller's buffers |
//! | `protocol` | `tcp`, or `rdma` (uses `rdma_devices`; falls back to TCP with a log line when this build or host has no RDMA) |
//! | `rdma_devices` | NIC list, as `MOONCAKE_DEVICE` |
//! | `master_server_addr` | the Strata master's RPC address (`host:port`) |
//! | `engine`, `enable_ssd_offload`, `ssd_offload_path`, `tenant_id`, `enable_client_http_server`, `client_http_port`, `ipc_socket_path` | accepted and unused |
//!
//! An unknown keyword is a `TypeError` naming it, as pybind11 raises: SGLang's Mooncake backend
//! retries `setup` without the keywords such an error names.

use std::path::PathBuf;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use strata_cluster::ClientConfig;
use strata_engine::StoreConfig;

/// The positional order of Mooncake's `setup`.
const POSITIONAL: [&str; 8] = [
    "local_hostname",
    "metadata_server",
    "global_segment_size",
    "local_buffer_size",
    "protocol",
    "rdma_devices",
    "master_server_addr",
    "engine",
];

/// Keywords accepted and ignored.
const IGNORED: [&str; 7] = [
    "enable_ssd_offload",
    "ssd_offload_path",
    "tenant_id",
    "enable_client_http_server",
    "client_http_port",
    "ipc_socket_path",
    "engine",
];

/// What `setup` was asked for.
#[derive(Debug, Clone)]
pub struct SetupArgs {
    pub local_hostname: String,
    pub global_segment_size: u64,
    pub protocol: String,
    pub rdma_devices: String,
    pub master: String,
    pub segment_dir: Option<PathBuf>,
    /// The local segment's write-back buffer in bytes (0 = puts are written through).
    pub write_back: u64,
}

impl SetupArgs {
    /// Parses `setup(*args, **kwargs)` or `setup(config_dict)`.
    pub fn parse(args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let given = PyDict::new(args.py());
        if args.len() == 1 && args.get_item(0)?.is_instance_of::<PyDict>() {
            // The dict overload: Mooncake's defaults for what is missing.
            let d = args.get_item(0)?.cast_into::<PyDict>()?;
            if kwargs.is_some_and(|k| !k.is_empty()) {
                return Err(PyTypeError::new_err(
                    "setup(config: dict) takes no keyword arguments",
                ));
            }
            for (k, v) in d.iter() {
                given.set_item(k, v)?;
            }
            let mut a = Self::from_dict(&given)?;
            if !given.contains("global_segment_size")? {
                a.global_segment_size = 16 << 20;
            }
            return Ok(a);
        }
        if args.len() > POSITIONAL.len() {
            return Err(PyTypeError::new_err(format!(
                "setup() takes at most {} positional arguments ({} given)",
                POSITIONAL.len(),
                args.len()
            )));
        }
        for (name, v) in POSITIONAL.iter().zip(args.iter()) {
            given.set_item(name, v)?;
        }
        if let Some(kw) = kwargs {
            for (k, v) in kw.iter() {
                let name: String = k.extract()?;
                if given.contains(&name)? {
                    return Err(PyTypeError::new_err(format!(
                        "setup() got multiple values for argument '{name}'"
                    )));
                }
                given.set_item(name, v)?;
            }
        }
        for name in &POSITIONAL[..7] {
            if !given.contains(name)? {
                return Err(PyTypeError::new_err(format!(
                    "setup() missing required argument '{name}'"
                )));
            }
        }
        Self::from_dict(&given)
    }

    fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<Self> {
        for k in d.keys() {
            let name: String = k.extract()?;
            let known = POSITIONAL.contains(&name.as_str())
                || IGNORED.contains(&name.as_str())
                || name == "segment_dir"
                || name == "write_back"
                || name == "master_server_address";
            if !known {
                return Err(PyTypeError::new_err(format!(
                    "setup() got an unexpected keyword argument '{name}'"
                )));
            }
        }
        let s = |name: &str, default: &str| -> PyResult<String> {
            match d.get_item(name)? {
                Some(v) if !v.is_none() => v.extract(),
                _ => Ok(default.to_string()),
            }
        };
        let n = |name: &str| -> PyResult<u64> {
            match d.get_item(name)? {
                Some(v) if !v.is_none() => v.extract(),
                _ => Ok(0),
            }
        };
        let master = match s("master_server_addr", "")? {
            m if m.is_empty() => s("master_server_address", "127.0.0.1:50051")?,
            m => m,
        };
        let dir = s("segment_dir", "")?;
        let wb = match d.get_item("write_back")? {
            Some(v) if !v.is_none() => match v.extract::<u64>() {
                Ok(n) => n,
                Err(_) => parse_size(&v.extract::<String>()?).ok_or_else(|| {
                    PyTypeError::new_err("setup(): write_back must be bytes or a size like '1GiB'")
                })?,
            },
            _ => match std::env::var("STRATA_WRITE_BACK") {
                Ok(v) => parse_size(&v).ok_or_else(|| {
                    PyTypeError::new_err(format!("STRATA_WRITE_BACK={v:?} is not a size"))
                })?,
                Err(_) => 0,
            },
        };
        Ok(Self {
            local_hostname: s("local_hostname", "localhost")?,
            global_segment_size: n("global_segment_size")?,
            protocol: s("protocol", "tcp")?,
            rdma_devices: s("rdma_devices", "")?,
            master: master
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            segment_dir: (!dir.is_empty()).then(|| PathBuf::from(dir)),
            write_back: wb,
        })
    }

    /// The client configuration, and the local segment's device file (to delete at close).
    pub fn client_config(&self) -> Result<(ClientConfig, Option<PathBuf>), String> {
        let mut cfg = ClientConfig::new(self.master.clone());
        if let Ok(n) = std::env::var("STRATA_REPLICA_NUM") {
            cfg.replica_num = n.parse().map_err(|_| format!("STRATA_REPLICA_NUM={n}"))?;
        }
        match self.protocol.to_ascii_lowercase().as_str() {
            "tcp" => cfg.rdma_devices = String::new(),
            "rdma" => {
                if !self.rdma_devices.is_empty() {
                    cfg.rdma_devices = self.rdma_devices.clone();
                }
            }
            p => return Err(format!("protocol {p:?}: Strata speaks tcp or rdma")),
        }
        cfg.local_listen = if self.local_hostname.contains(':') {
            self.local_hostname.clone()
        } else {
            format!("{}:0", self.local_hostname)
        };
        let mut device = None;
        if self.global_segment_size > 0 {
            let dir = self
                .segment_dir
                .clone()
                .or_else(|| std::env::var_os("STRATA_SEGMENT_DIR").map(PathBuf::from))
                .unwrap_or_else(std::env::temp_dir);
            let path = dir.join(format!(
                "strata-py-segment-{}-{}.strata",
                std::process::id(),
                SEGMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            cfg.local_segment = Some(
                segment_config(&path, self.global_segment_size).with_write_back(self.write_back),
            );
            device = Some(path);
        }
        Ok((cfg, device))
    }
}

/// `1048576`, `512MiB`, `1GiB`, `64M`, `4k` (binary units).
fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().ok()?;
    let mult: u64 = match t[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

static SEGMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A local segment of about `bytes`: engine segments of 64 MiB (16 MiB below 256 MiB), at least
/// two of them, and a DRAM tier as large as the device part (Mooncake's segment is DRAM).
fn segment_config(path: &std::path::Path, bytes: u64) -> StoreConfig {
    let seg: u64 = if bytes >= 256 << 20 {
        64 << 20
    } else {
        16 << 20
    };
    let min = (1 << 20) + 2 * seg;
    let capacity = bytes.max(min).div_ceil(1 << 20) << 20;
    StoreConfig::new(path)
        .with_capacity(capacity)
        .with_memory(capacity)
        .with_segment_size(seg)
}
