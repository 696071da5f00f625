//! strata-tests: end-to-end tests that start real `strata` processes on loopback.
//!
//! Helpers shared by the tests in `tests/tests/`: locating the built `strata` binary.

use std::path::PathBuf;

/// Path of the `strata` binary built in this workspace's target directory.
///
/// Tests run `cargo build -p strata-tools` first through [`build_strata`].
pub fn strata_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile).join("strata")
}

/// Builds the `strata` binary once (in the same profile as the tests) and returns its path.
pub fn build_strata() -> anyhow::Result<PathBuf> {
    static ONCE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "-q", "-p", "strata-tools", "--bin", "strata"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("cargo build failed: {status}"));
        }
        Ok(strata_bin())
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// A free TCP port on loopback (bound, then released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
