//! Logging set-up shared by every subcommand: `tracing` to stderr, filtered by `--log-level` or
//! `RUST_LOG`. Colours only when stderr is a terminal and `NO_COLOR` is unset, so logs written to
//! files and pipes (`strata up` children, systemd, `2>log`) carry no escape codes.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a `tracing` filter such as `info` or `strata=debug`;
/// `RUST_LOG` wins when set.
pub fn init(level: &str) {
    let level = python_level(level);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .try_init();
    super::compat::log_ignored();
}

/// Python's logging level names as SGLang takes them (`--log-level warning`, `CRITICAL`) in
/// `tracing`'s terms; anything else (`info`, `strata_server=debug`) unchanged. Without this,
/// `warning` would parse as a target name and hide every warning and error.
fn python_level(level: &str) -> String {
    match level.to_ascii_lowercase().as_str() {
        "warning" => "warn".into(),
        "critical" | "fatal" => "error".into(),
        "notset" => "trace".into(),
        l @ ("trace" | "debug" | "info" | "warn" | "error" | "off") => l.into(),
        _ => level.into(),
    }
}

/// Whether stderr should get ANSI colours.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn python_level_names() {
        for (given, want) in [
            ("warning", "warn"),
            ("WARNING", "warn"),
            ("critical", "error"),
            ("Info", "info"),
            ("debug", "debug"),
            ("strata_server=debug", "strata_server=debug"),
        ] {
            assert_eq!(super::python_level(given), want);
        }
    }
}
