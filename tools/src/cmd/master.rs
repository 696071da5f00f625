//! `strata master`: the cluster's membership and metadata service (the counterpart of
//! `mooncake_master --enable_http_metadata_server=true`). Accepts Mooncake's gflags spellings
//! (`--rpc_port`, `-rpc_port`, `--enable_http_metadata_server=true`) as well as kebab-case; its
//! other flags are accepted and ignored with a warning (`compat.rs`).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use strata_cluster::MasterConfig;

#[derive(clap::Args)]
pub struct Args {
    /// RPC port (store nodes and clients); `--port` is mooncake_master's deprecated spelling.
    #[arg(long, alias = "port", default_value_t = 50051)]
    rpc_port: u16,
    /// RPC bind address.
    #[arg(long, default_value = "127.0.0.1")]
    rpc_address: String,
    /// Serve the Mooncake-style HTTP metadata server (`/metadata?key=`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    enable_http_metadata_server: bool,
    /// HTTP metadata server port (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    http_metadata_server_port: u16,
    /// HTTP metadata server bind address.
    #[arg(long, default_value = "127.0.0.1")]
    http_metadata_server_host: String,
    /// Metrics/admin port (`/metrics`, `/metrics/summary`, `/query_key`, `/get_all_segments`).
    #[arg(long, default_value_t = 9003)]
    metrics_port: u16,
    /// Metrics/admin bind address.
    #[arg(long, default_value = "127.0.0.1")]
    metrics_host: String,
    /// Serve metrics at all.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    enable_metric_reporting: bool,
    /// Where the master's state (members, metadata) persists.
    #[arg(long, default_value = "strata-master.json")]
    state_file: PathBuf,
    /// A store node silent for this long is dead and its keys become misses.
    #[arg(long, default_value_t = 3000)]
    heartbeat_timeout_ms: u64,
    #[command(flatten)]
    service: super::service::ServiceArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    super::logging::init(&a.service.log_level);
    let cfg = MasterConfig {
        rpc: format!("{}:{}", a.rpc_address, a.rpc_port),
        http_metadata: a.enable_http_metadata_server.then(|| {
            format!(
                "{}:{}",
                a.http_metadata_server_host, a.http_metadata_server_port
            )
        }),
        metrics: a
            .enable_metric_reporting
            .then(|| format!("{}:{}", a.metrics_host, a.metrics_port)),
        state_file: a.state_file,
        heartbeat_timeout: Duration::from_millis(a.heartbeat_timeout_ms),
        auth_token: a.service.auth_token,
    };
    let h = strata_cluster::master::start(cfg)?;
    let none = || "-".to_string();
    println!(
        "strata master ready rpc={} http_metadata={} metrics={}",
        h.addrs.rpc,
        h.addrs.http_metadata.clone().unwrap_or_else(none),
        h.addrs.metrics.clone().unwrap_or_else(none)
    );
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

/// Rewrites gflags-style `--foo_bar[=v]` into `--foo-bar[=v]` for the `master` and `store`
/// subcommands (values are left alone), and for `master` also gflags' single-dash `-foo_bar`, so
/// Mooncake command lines work unchanged.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let args: Vec<OsString> = args.into_iter().collect();
    let sub = args.get(1).and_then(|s| s.to_str()).unwrap_or("");
    if !matches!(sub, "master" | "store") {
        return args;
    }
    let single_dash = sub == "master";
    args.into_iter()
        .map(|a| match a.to_str() {
            // gflags takes `-name` as `--name`; `-h` and negative numbers stay as they are.
            Some(s)
                if single_dash
                    && s.len() > 2
                    && s.starts_with('-')
                    && s.as_bytes()[1].is_ascii_alphabetic() =>
            {
                let s = format!("-{s}");
                let (name, rest) = s.split_at(s.find('=').unwrap_or(s.len()));
                OsString::from(format!("{}{rest}", name.replace('_', "-")))
            }
            Some(s) if s.starts_with("--") => {
                let (name, rest) = s.split_at(s.find('=').unwrap_or(s.len()));
                OsString::from(format!("{}{rest}", name.replace('_', "-")))
            }
            _ => a,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gflags_spellings() {
        let v: Vec<OsString> = [
            "strata",
            "master",
            "--enable_http_metadata_server=true",
            "--rpc_port",
            "1",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out = normalize_args(v);
        assert_eq!(out[2], "--enable-http-metadata-server=true");
        assert_eq!(out[3], "--rpc-port");
        let v: Vec<OsString> = ["strata", "serve", "--a_b"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(normalize_args(v)[2], "--a_b");
        let v: Vec<OsString> = ["strata", "master", "-rpc_port=5", "-h", "-1", "-v", "2"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            normalize_args(v)[2..],
            ["--rpc-port=5", "-h", "-1", "-v", "2"].map(OsString::from)
        );
    }
}
