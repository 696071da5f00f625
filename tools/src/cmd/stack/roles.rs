//! The command line of each role as `strata up` and `strata chaos` start it, and the made model
//! they serve. Callers append role-specific flags to what these return.

use std::path::{Path, PathBuf};

use strata_make_model::{make_model, DType, MakeModel, Size};
use strata_server::model::Arch;

fn s(v: &str) -> String {
    v.to_string()
}

/// Writes the tiny llama model (seed 0) into `dir/model-tiny` unless it is there; returns its path.
pub fn ensure_model(dir: &Path) -> anyhow::Result<PathBuf> {
    let model = dir.join("model-tiny");
    if !model.join("config.json").exists() {
        make_model(
            &MakeModel {
                arch: Arch::Llama,
                size: Size::Tiny,
                seed: 0,
                dtype: DType::F32,
            },
            &model,
        )?;
        eprintln!("made a tiny llama model in {}", model.display());
    }
    Ok(model)
}

/// `strata master` with the HTTP metadata server on, state persisted in `state`.
pub fn master(rpc: u16, meta: u16, metrics: u16, state: &Path) -> Vec<String> {
    vec![
        s("master"),
        s("--rpc-port"),
        rpc.to_string(),
        s("--enable-http-metadata-server=true"),
        s("--http-metadata-server-port"),
        meta.to_string(),
        s("--metrics-port"),
        metrics.to_string(),
        s("--state-file"),
        state.display().to_string(),
    ]
}

/// `strata store` registering with `master`, pages on `device`.
pub fn store(master: &str, device: &Path, capacity: &str, memory: &str) -> Vec<String> {
    vec![
        s("store"),
        s("--master"),
        s(master),
        s("--device"),
        device.display().to_string(),
        s("--capacity"),
        s(capacity),
        s("--memory"),
        s(memory),
    ]
}

/// `strata serve` on `model` at `port`; with `l3_master`, HiCache on the store cluster as its L3
/// (the seed's quick start), `extra_config` merged into the backend's JSON.
pub fn serve(
    model: &Path,
    port: u16,
    page_size: usize,
    l3_master: Option<&str>,
    extra_config: &str,
) -> Vec<String> {
    let mut a = vec![
        s("serve"),
        s("--model-path"),
        model.display().to_string(),
        s("--port"),
        port.to_string(),
        s("--page-size"),
        page_size.to_string(),
    ];
    if let Some(m) = l3_master {
        a.extend([
            s("--enable-hierarchical-cache"),
            s("--hicache-storage-prefetch-policy"),
            s("timeout"),
        ]);
        a.extend(l3_backend(m, extra_config));
    }
    a
}

/// The flags naming the store cluster at `master` as the L3 backend, `extra_config` merged into its
/// JSON (HiCache uses them, and so does a decode server's offload).
pub fn l3_backend(master: &str, extra_config: &str) -> [String; 4] {
    [
        s("--hicache-storage-backend"),
        s("strata"),
        s("--hicache-storage-backend-extra-config"),
        format!(r#"{{"master_server_address": "{master}"{extra_config}}}"#),
    ]
}

/// The flags that make a server one side of a PD pair (`prefill` or `decode`).
pub fn pd_side(mode: &str, bootstrap_port: u16) -> Vec<String> {
    vec![
        s("--disaggregation-mode"),
        s(mode),
        s("--disaggregation-bootstrap-port"),
        bootstrap_port.to_string(),
    ]
}

/// `strata router` in regular mode over `workers`.
pub fn router(workers: &[String], port: u16, metrics_port: u16) -> Vec<String> {
    let mut a = vec![s("router"), s("--worker-urls")];
    a.extend(workers.iter().cloned());
    a.extend(router_ports(port, metrics_port));
    a
}

/// `strata router` in PD mode over one prefill (with its bootstrap port) and one decode server.
pub fn pd_router(
    prefill: &str,
    bootstrap_port: u16,
    decode: &str,
    port: u16,
    metrics_port: u16,
) -> Vec<String> {
    let mut a = vec![
        s("router"),
        s("--pd-disaggregation"),
        s("--prefill"),
        s(prefill),
        bootstrap_port.to_string(),
        s("--decode"),
        s(decode),
    ];
    a.extend(router_ports(port, metrics_port));
    a
}

fn router_ports(port: u16, metrics_port: u16) -> [String; 4] {
    [
        s("--port"),
        port.to_string(),
        s("--prometheus-port"),
        metrics_port.to_string(),
    ]
}
