//! Logging set-up shared by every subcommand: `tracing` to stderr, filtered by `--log-level` or
//! `RUST_LOG`. Colours only when stderr is a terminal and `NO_COLOR` is unset, so logs written to
//! files and pipes (`strata up` children, systemd, `2>log`) carry no escape codes.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a `tracing` filter such as `info` or `strata=debug`;
/// `RUST_LOG` wins when set.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .try_init();
    super::compat::log_ignored();
}

/// Whether stderr should get ANSI colours.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
