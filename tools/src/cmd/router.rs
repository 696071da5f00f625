//! `strata router`: the flags of `python -m sglang_router.launch_router` (names and defaults of
//! sglang-router 0.3.2), turned into a `RouterConfig`. The rest of 0.3.2's flags are accepted and
//! ignored with a warning (`compat.rs`); unknown flags are clap errors that name the flag.

use anyhow::Context;
use clap::ArgAction;
use strata_router::config::{PolicyKind, PrefillSpec, DEFAULT_REQUEST_ID_HEADERS};
use strata_router::RouterConfig;

const POLICIES: [&str; 4] = ["cache_aware", "round_robin", "random", "power_of_two"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port to serve on.
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Worker URLs (regular mode).
    #[arg(long, num_args = 0.., value_name = "URL")]
    worker_urls: Vec<String>,
    /// Routing policy: cache_aware (prefix affinity with load balance), round_robin, random,
    /// power_of_two.
    #[arg(long, default_value = "cache_aware", value_parser = POLICIES)]
    policy: String,
    /// Policy for prefill workers in PD mode (default: --policy).
    #[arg(long, value_parser = POLICIES)]
    prefill_policy: Option<String>,
    /// Policy for decode workers in PD mode (default: --policy).
    #[arg(long, value_parser = POLICIES)]
    decode_policy: Option<String>,
    /// cache_aware: smallest prefix-match ratio that routes by affinity instead of load.
    #[arg(long, default_value_t = 0.3)]
    cache_threshold: f32,
    /// cache_aware: load gap (requests) above which the least-loaded worker is chosen ...
    #[arg(long, default_value_t = 64)]
    balance_abs_threshold: usize,
    /// cache_aware: ... if also above this ratio of the smallest load.
    #[arg(long, default_value_t = 1.5)]
    balance_rel_threshold: f32,
    /// cache_aware: seconds between prefix-tree evictions.
    #[arg(long, default_value_t = 60)]
    eviction_interval_secs: u64,
    /// cache_aware: most characters kept in the prefix tree per worker set.
    #[arg(long, default_value_t = 1 << 26)]
    max_tree_size: usize,
    /// Largest request body in bytes; larger bodies get a JSON 413.
    #[arg(long, default_value_t = 512 << 20)]
    max_payload_size: usize,
    /// Prefill/decode disaggregation: send each request to a prefill and a decode worker
    /// (--prefill, --decode).
    #[arg(long)]
    pd_disaggregation: bool,
    /// Prefill worker: URL [BOOTSTRAP_PORT|none]; repeatable.
    #[arg(long, num_args = 1..=2, action = ArgAction::Append, value_names = ["URL", "BOOTSTRAP_PORT"])]
    prefill: Vec<String>,
    /// Decode worker URL; repeatable.
    #[arg(long, action = ArgAction::Append, value_name = "URL")]
    decode: Vec<String>,
    /// Seconds to wait for the workers to become healthy at start-up.
    #[arg(long, default_value_t = 1800)]
    worker_startup_timeout_secs: u64,
    /// Seconds between health probes while waiting at start-up.
    #[arg(long, default_value_t = 30)]
    worker_startup_check_interval: u64,
    /// Log level.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    log_level: String,
    /// Port of the Prometheus /metrics listener (start-up fails if it is taken).
    #[arg(long, default_value_t = 29000)]
    prometheus_port: u16,
    /// Bind address of the Prometheus /metrics listener.
    #[arg(long, default_value = "0.0.0.0")]
    prometheus_host: String,
    /// Headers that carry a client's request id (default: x-request-id x-correlation-id
    /// x-trace-id request-id).
    #[arg(long, num_args = 0..)]
    request_id_headers: Option<Vec<String>>,
    /// Seconds a forwarded request may take before it fails with 504.
    #[arg(long, default_value_t = 1800)]
    request_timeout_secs: u64,
    /// On SIGTERM/Ctrl-C, seconds in-flight requests may take to finish.
    #[arg(long, default_value_t = 180)]
    shutdown_grace_period_secs: u64,
    /// -1: no limit.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    max_concurrent_requests: i64,
    /// Requests that may wait for a concurrency slot (with --max-concurrent-requests); more get
    /// 429.
    #[arg(long, default_value_t = 100)]
    queue_size: usize,
    /// Seconds a queued request may wait before it fails with 408.
    #[arg(long, default_value_t = 60)]
    queue_timeout_secs: u64,
    /// Most attempts per request on retryable worker failures.
    #[arg(long, default_value_t = 5)]
    retry_max_retries: u32,
    /// First retry backoff in milliseconds.
    #[arg(long, default_value_t = 50)]
    retry_initial_backoff_ms: u64,
    /// Largest retry backoff in milliseconds.
    #[arg(long, default_value_t = 30000)]
    retry_max_backoff_ms: u64,
    /// Backoff growth per retry.
    #[arg(long, default_value_t = 1.5)]
    retry_backoff_multiplier: f32,
    /// Random fraction added to or taken from each backoff.
    #[arg(long, default_value_t = 0.2)]
    retry_jitter_factor: f32,
    /// Never retry a failed request on another worker.
    #[arg(long)]
    disable_retries: bool,
    /// Circuit breaker: consecutive failures that open a worker's circuit.
    #[arg(long, default_value_t = 10)]
    cb_failure_threshold: u32,
    /// Circuit breaker: successes in half-open state that close it again.
    #[arg(long, default_value_t = 3)]
    cb_success_threshold: u32,
    /// Circuit breaker: seconds an open circuit waits before a trial request.
    #[arg(long, default_value_t = 60)]
    cb_timeout_duration_secs: u64,
    /// Circuit breaker: seconds of the failure-counting window.
    #[arg(long, default_value_t = 120)]
    cb_window_duration_secs: u64,
    /// Never take a worker out of rotation for its failures.
    #[arg(long)]
    disable_circuit_breaker: bool,
    /// Failed health checks that mark a worker unhealthy.
    #[arg(long, default_value_t = 3)]
    health_failure_threshold: u32,
    /// Passed health checks that mark it healthy again.
    #[arg(long, default_value_t = 2)]
    health_success_threshold: u32,
    /// Seconds a health check may take.
    #[arg(long, default_value_t = 5)]
    health_check_timeout_secs: u64,
    /// Seconds between background health checks.
    #[arg(long, default_value_t = 60)]
    health_check_interval_secs: u64,
    /// Path probed on each worker.
    #[arg(long, default_value = "/health")]
    health_check_endpoint: String,
    /// No background health checks.
    #[arg(long)]
    disable_health_check: bool,
    /// Key clients must send as `Authorization: Bearer KEY`; also sent to workers.
    #[arg(long)]
    api_key: Option<String>,
    /// Route to each data-parallel replica of a worker (`--dp-size`) as to a worker of its own.
    #[arg(long)]
    dp_aware: bool,
}

fn policy(s: &str) -> anyhow::Result<PolicyKind> {
    Ok(s.parse()?)
}

impl Args {
    fn into_config(self) -> anyhow::Result<RouterConfig> {
        // clap flattens the values of repeated `--prefill`; a URL (never a port) starts a new one.
        let mut prefill = Vec::new();
        let mut cur: Vec<String> = Vec::new();
        for v in self.prefill {
            if v.contains("://") && !cur.is_empty() {
                prefill.push(PrefillSpec::parse(&cur)?);
                cur.clear();
            }
            cur.push(v);
        }
        if !cur.is_empty() {
            prefill.push(PrefillSpec::parse(&cur)?);
        }
        let mut c = RouterConfig {
            host: self.host,
            port: self.port,
            worker_urls: self.worker_urls,
            policy: policy(&self.policy)?,
            prefill_policy: self.prefill_policy.as_deref().map(policy).transpose()?,
            decode_policy: self.decode_policy.as_deref().map(policy).transpose()?,
            max_payload_size: self.max_payload_size,
            pd_disaggregation: self.pd_disaggregation,
            prefill,
            decode: self.decode,
            worker_startup_timeout_secs: self.worker_startup_timeout_secs,
            worker_startup_check_interval: self.worker_startup_check_interval,
            prometheus_host: self.prometheus_host,
            prometheus_port: self.prometheus_port,
            request_id_headers: self
                .request_id_headers
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_REQUEST_ID_HEADERS.map(String::from).to_vec()),
            request_timeout_secs: self.request_timeout_secs,
            shutdown_grace_period_secs: self.shutdown_grace_period_secs,
            max_concurrent_requests: usize::try_from(self.max_concurrent_requests).ok(),
            queue_size: self.queue_size,
            queue_timeout_secs: self.queue_timeout_secs,
            disable_retries: self.disable_retries,
            disable_circuit_breaker: self.disable_circuit_breaker,
            api_key: self.api_key,
            dp_aware: self.dp_aware,
            ..Default::default()
        };
        let ca = &mut c.cache_aware;
        ca.cache_threshold = self.cache_threshold;
        ca.balance_abs_threshold = self.balance_abs_threshold;
        ca.balance_rel_threshold = self.balance_rel_threshold;
        ca.eviction_interval_secs = self.eviction_interval_secs;
        ca.max_tree_size = self.max_tree_size;
        let r = &mut c.retry;
        r.max_retries = self.retry_max_retries;
        r.initial_backoff_ms = self.retry_initial_backoff_ms;
        r.max_backoff_ms = self.retry_max_backoff_ms;
        r.backoff_multiplier = self.retry_backoff_multiplier;
        r.jitter_factor = self.retry_jitter_factor;
        let cb = &mut c.circuit;
        cb.failure_threshold = self.cb_failure_threshold;
        cb.success_threshold = self.cb_success_threshold;
        cb.timeout_duration_secs = self.cb_timeout_duration_secs;
        cb.window_duration_secs = self.cb_window_duration_secs;
        let h = &mut c.health;
        h.failure_threshold = self.health_failure_threshold;
        h.success_threshold = self.health_success_threshold;
        h.timeout_secs = self.health_check_timeout_secs;
        h.interval_secs = self.health_check_interval_secs;
        h.endpoint = self.health_check_endpoint;
        h.disabled = self.disable_health_check;
        Ok(c.validate()?)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    super::logging::init(&args.log_level);
    let cfg = args.into_config()?;
    // Requests are served on per-core runtimes of their own (see `router::app::serve`); this one
    // runs start-up, health checks, tree upkeep and the metrics listener.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(strata_router::run(cfg))?;
    Ok(())
}
