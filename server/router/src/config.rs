//! Router configuration: every setting of `strata router`, with sglang-router 0.3.2's defaults.
//!
//! The command line lives in `strata-tools`; it fills a [`RouterConfig`] and calls
//! [`RouterConfig::validate`]. Durations are kept in the units the flags use (seconds, milliseconds)
//! so that the struct reads like the flag list.

use crate::error::{Result, RouterError};

/// Which routing policy a pool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    CacheAware,
    RoundRobin,
    Random,
    PowerOfTwo,
}

impl std::str::FromStr for PolicyKind {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cache_aware" => Ok(Self::CacheAware),
            "round_robin" => Ok(Self::RoundRobin),
            "random" => Ok(Self::Random),
            "power_of_two" => Ok(Self::PowerOfTwo),
            other => Err(RouterError::Config(format!("unknown policy {other:?}"))),
        }
    }
}

/// Settings of the cache-aware policy.
#[derive(Debug, Clone)]
pub struct CacheAwareConfig {
    /// Minimum matched fraction of the request text for prefix routing (0.3).
    pub cache_threshold: f32,
    /// Load difference above which the policy balances instead (64).
    pub balance_abs_threshold: usize,
    /// Load ratio above which the policy balances instead (1.5).
    pub balance_rel_threshold: f32,
    /// Seconds between tree evictions (60).
    pub eviction_interval_secs: u64,
    /// Per-worker tree size bound, in elements (bytes of text or token ids) (2^26).
    pub max_tree_size: usize,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            eviction_interval_secs: 60,
            max_tree_size: 1 << 26,
        }
    }
}

/// Retry settings: `max_retries` is the total number of attempts, as in sglang-router.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub backoff_multiplier: f32,
    pub jitter_factor: f32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff_ms: 50,
            max_backoff_ms: 30_000,
            backoff_multiplier: 1.5,
            jitter_factor: 0.2,
        }
    }
}

/// Circuit breaker settings, one breaker per worker.
#[derive(Debug, Clone)]
pub struct CircuitConfig {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub timeout_duration_secs: u64,
    pub window_duration_secs: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 10,
            success_threshold: 3,
            timeout_duration_secs: 60,
            window_duration_secs: 120,
        }
    }
}

/// Active health check settings.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub timeout_secs: u64,
    pub interval_secs: u64,
    pub endpoint: String,
    pub disabled: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            success_threshold: 2,
            timeout_secs: 5,
            interval_secs: 60,
            endpoint: "/health".into(),
            disabled: false,
        }
    }
}

/// A prefill worker: its URL and the bootstrap port its KV sender listens on (None: `null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefillSpec {
    pub url: String,
    pub bootstrap_port: Option<u16>,
}

impl PrefillSpec {
    /// Parses the values of one `--prefill URL [BOOTSTRAP_PORT|none]`.
    pub fn parse(values: &[String]) -> Result<Self> {
        let (url, port) = match values {
            [url] => (url, None),
            [url, port] if port.eq_ignore_ascii_case("none") => (url, None),
            [url, port] => {
                let p = port.parse::<u16>().map_err(|_| {
                    RouterError::Config(format!("--prefill {url}: bad bootstrap port {port:?}"))
                })?;
                (url, Some(p))
            }
            _ => {
                return Err(RouterError::Config(
                    "--prefill takes URL [BOOTSTRAP_PORT]".into(),
                ))
            }
        };
        Ok(Self {
            url: normalize_url(url)?,
            bootstrap_port: port,
        })
    }
}

/// Everything `strata router` needs to run.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub host: String,
    pub port: u16,
    pub worker_urls: Vec<String>,
    pub policy: PolicyKind,
    pub prefill_policy: Option<PolicyKind>,
    pub decode_policy: Option<PolicyKind>,
    pub cache_aware: CacheAwareConfig,
    pub max_payload_size: usize,
    pub pd_disaggregation: bool,
    pub prefill: Vec<PrefillSpec>,
    pub decode: Vec<String>,
    pub worker_startup_timeout_secs: u64,
    pub worker_startup_check_interval: u64,
    pub prometheus_host: String,
    pub prometheus_port: u16,
    pub request_id_headers: Vec<String>,
    pub request_timeout_secs: u64,
    pub shutdown_grace_period_secs: u64,
    /// `None`: no limit (the flag's -1).
    pub max_concurrent_requests: Option<usize>,
    pub queue_size: usize,
    pub queue_timeout_secs: u64,
    pub retry: RetryConfig,
    pub disable_retries: bool,
    pub circuit: CircuitConfig,
    pub disable_circuit_breaker: bool,
    pub health: HealthConfig,
    pub api_key: Option<String>,
    /// `--dp-aware`: each data-parallel replica of a regular worker is a worker of its own,
    /// addressed by `data_parallel_rank` in the body (`Router::expand_dp_ranks`).
    pub dp_aware: bool,
}

/// Request-id headers looked at when `--request-id-headers` is not given.
pub const DEFAULT_REQUEST_ID_HEADERS: [&str; 4] = [
    "x-request-id",
    "x-correlation-id",
    "x-trace-id",
    "request-id",
];

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 30000,
            worker_urls: Vec::new(),
            policy: PolicyKind::CacheAware,
            prefill_policy: None,
            decode_policy: None,
            cache_aware: CacheAwareConfig::default(),
            max_payload_size: 512 << 20,
            pd_disaggregation: false,
            prefill: Vec::new(),
            decode: Vec::new(),
            worker_startup_timeout_secs: 1800,
            worker_startup_check_interval: 30,
            prometheus_host: "0.0.0.0".into(),
            prometheus_port: 29000,
            request_id_headers: DEFAULT_REQUEST_ID_HEADERS.map(String::from).to_vec(),
            request_timeout_secs: 1800,
            shutdown_grace_period_secs: 180,
            max_concurrent_requests: None,
            queue_size: 100,
            queue_timeout_secs: 60,
            retry: RetryConfig::default(),
            disable_retries: false,
            circuit: CircuitConfig::default(),
            disable_circuit_breaker: false,
            health: HealthConfig::default(),
            api_key: None,
            dp_aware: false,
        }
    }
}

impl RouterConfig {
    /// Checks cross-flag rules and normalises URLs; call once before [`crate::Router::new`].
    pub fn validate(mut self) -> Result<Self> {
        if self.pd_disaggregation {
            if !self.worker_urls.is_empty() {
                return Err(RouterError::Config(
                    "--worker-urls cannot be used with --pd-disaggregation; use --prefill/--decode"
                        .into(),
                ));
            }
        } else if !self.prefill.is_empty() || !self.decode.is_empty() {
            return Err(RouterError::Config(
                "--prefill/--decode need --pd-disaggregation".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.cache_aware.cache_threshold) {
            return Err(RouterError::Config(
                "--cache-threshold must be in [0, 1]".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.retry.jitter_factor) {
            return Err(RouterError::Config(
                "--retry-jitter-factor must be in [0, 1]".into(),
            ));
        }
        if self.disable_retries {
            self.retry.max_retries = 1;
        }
        self.retry.max_retries = self.retry.max_retries.max(1);
        if self.disable_circuit_breaker {
            self.circuit.failure_threshold = u32::MAX;
        }
        self.worker_urls = self
            .worker_urls
            .iter()
            .map(|u| normalize_url(u))
            .collect::<Result<_>>()?;
        self.decode = self
            .decode
            .iter()
            .map(|u| normalize_url(u))
            .collect::<Result<_>>()?;
        for h in &mut self.request_id_headers {
            *h = h.to_ascii_lowercase();
        }
        Ok(self)
    }
}

/// Checks that `url` is an http(s) URL with a host, and drops a trailing `/`.
pub fn normalize_url(url: &str) -> Result<String> {
    let parsed = url::Url::parse(url)
        .map_err(|e| RouterError::Config(format!("bad worker url {url:?}: {e}")))?;
    if parsed.scheme() != "http" || parsed.host_str().is_none() {
        return Err(RouterError::Config(format!(
            "bad worker url {url:?}: need http://host:port (workers are reached over plain HTTP)"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The host part of a worker URL (what PD mode sends as `bootstrap_host`), without IPv6 brackets.
pub fn url_host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn prefill_spec_forms() {
        let p = PrefillSpec::parse(&s(&["http://10.0.0.1:30000/"])).unwrap();
        assert_eq!(
            p,
            PrefillSpec {
                url: "http://10.0.0.1:30000".into(),
                bootstrap_port: None
            }
        );
        let p = PrefillSpec::parse(&s(&["http://h:1", "8998"])).unwrap();
        assert_eq!(p.bootstrap_port, Some(8998));
        let p = PrefillSpec::parse(&s(&["http://h:1", "none"])).unwrap();
        assert_eq!(p.bootstrap_port, None);
        assert!(PrefillSpec::parse(&s(&["http://h:1", "x"])).is_err());
        assert!(PrefillSpec::parse(&s(&["not a url"])).is_err());
    }

    #[test]
    fn validate_rules() {
        let c = RouterConfig {
            disable_retries: true,
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(c.retry.max_retries, 1);
        let bad = RouterConfig {
            decode: vec!["http://h:1".into()],
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        assert_eq!(url_host("http://[::1]:80"), "::1");
        assert_eq!(url_host("http://127.0.0.1:30000"), "127.0.0.1");
    }
}
