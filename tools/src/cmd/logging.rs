//! Logging set-up shared by every subcommand: `tracing` to stderr, filtered by `--log-level` or
//! `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a `tracing` filter such as `info` or `strata=debug`;
/// `RUST_LOG` wins when set.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
