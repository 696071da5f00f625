//! Flags shared by the long-running cluster services (`strata master`, `strata store`).

/// Authentication and logging of a cluster service.
#[derive(clap::Args)]
pub struct ServiceArgs {
    /// Token required on every connection and HTTP request (a store node also sends it to the
    /// master).
    #[arg(
        long,
        env = "STRATA_AUTH_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub auth_token: String,
    /// Log filter (`tracing` syntax, e.g. info or strata_cluster=debug); RUST_LOG wins.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}
