//! Prefill/decode disaggregation (SGLang's `--disaggregation-mode prefill|decode`).
//!
//! The router sends the same request to a prefill server and a decode server, with
//! `bootstrap_host` / `bootstrap_port` / `bootstrap_room` naming the prefill's bootstrap endpoint
//! and a room shared by the two legs:
//!
//! ```text
//!  decode                                   prefill (bootstrap port, default 8998)
//!  queue request, hold it  ──WANT room──▶   wait until the room's prefill finished
//!                          ◀──KV pages───   (all layers, page-first) + first token
//!  load pages, ack         ───ACK──────▶    answer its HTTP request (success)
//!  decode from the first token, no forward over the prompt
//! ```
//!
//! The decode keeps its connections to a prefill open and reuses them ([`link`]). With a prefill on
//! the same host they are the abstract Unix socket of the store cluster's same-host path, and the
//! pages move with one cross-memory copy instead of through the socket; otherwise TCP. A prefill
//! leaves the prompt's pages in its KV pool until the decode acknowledged them ([`share`]): the
//! CPU runner's pages are sent (or copied by the decode) straight from the pool, and a GPU
//! prefill's pages are copied device to device over CUDA IPC, by the prefill into the pool pages
//! a same-host GPU decode listed (push) or by the decode out of the prefill's pool; a GPU prefill
//! stages them through host memory for any other decode. Over TCP, with the `rdma` build and a
//! NIC on both sides, the page bytes go over a queue pair set up per connection ([`rdma`]).
//!
//! States (SGLang's names): Bootstrapping (decode connecting) → WaitingForInput (the prefill
//! computing) → Transferring → Success | Failed. Every wait has a deadline
//! (`SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT`, 300 s; `SGLANG_DISAGGREGATION_WAITING_TIMEOUT`, 300 s);
//! a broken connection fails the request on both sides at once. Requests without bootstrap
//! fields, or with SGLang's fake bootstrap host (warm-up and health checks), run colocated.
//! The wire format is in docs/protocol.md ("PD KV transfer").

pub mod decode;
pub mod link;
pub mod prefill;
pub mod rdma;
pub mod share;
pub mod staging;
pub mod wire;

use std::time::Duration;

/// SGLang's placeholder host for warm-up requests that must not transfer anything.
pub const FAKE_BOOTSTRAP_HOST: &str = "2.2.2.2";

/// The server's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Null,
    Prefill,
    Decode,
}

/// Parses `--disaggregation-mode`.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "null" | "" => Ok(Mode::Null),
        "prefill" => Ok(Mode::Prefill),
        "decode" => Ok(Mode::Decode),
        _ => Err(format!(
            "--disaggregation-mode {s}: expected null, prefill or decode"
        )),
    }
}

/// PD options.
#[derive(Debug, Clone)]
pub struct PdConfig {
    pub mode: Mode,
    /// The prefill's bootstrap port (`--disaggregation-bootstrap-port`), also the decode side's
    /// default when a request's `bootstrap_port` is null.
    pub bootstrap_port: u16,
    /// Address the prefill's bootstrap server binds (the server's `--host`).
    pub bind_host: String,
    /// How long either side waits for the other.
    pub timeout: Duration,
    /// While a decode waits for a room, the prefill sends a heartbeat this often; a decode that
    /// hears nothing for `heartbeat × heartbeat_failures` gives up on the prefill (SGLang's
    /// SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL, 5 s, and _MAX_FAILURE, 2).
    pub heartbeat: Duration,
    pub heartbeat_failures: u32,
    /// Shared token (the server's `--api-key`), checked on the bootstrap connection.
    pub token: String,
    /// Test-only fault rate (`--disaggregation-test-failure-prob`, env
    /// `DISAGGREGATION_TEST_FAILURE_PROB` as in SGLang): the fraction of transfers this side
    /// breaks on purpose — a prefill cuts the connection halfway through the pages, a decode
    /// refuses the pages it received. Chosen per room by a seeded hash, so a run is replayable.
    pub failure_prob: f64,
    /// Use the same-host path (abstract Unix socket + cross-memory copy) with a peer on this host;
    /// `STRATA_SAME_HOST=0`, the store cluster client's switch, turns it off (TCP only).
    pub same_host: bool,
    /// Test only (`--disaggregation-test-stall-ms`): the decode side waits this long after a KV
    /// header with pages arrived, before it copies them, so a test can kill the prefill
    /// mid-transfer.
    pub test_stall: Duration,
    /// Decode side: ask a same-host GPU prefill that announced PUSHES to copy the pages into
    /// this pool itself (`STRATA_PD_PUSH=1`). Off by default: on one shared H200 the prefill's
    /// copy waited longer behind its own forwards than the decode's copy waits for its time
    /// slice (docs/perf.md, "PD on one H200").
    pub push: bool,
    /// RDMA devices from `--disaggregation-ib-device` (SGLang's and Mooncake's list, e.g.
    /// `mlx5_0,mlx5_1`; empty: none): with the `rdma` build, the first that opens carries the
    /// page bytes of TCP connections whose peer accepts ([`rdma`]).
    pub ib_devices: Vec<String>,
}

impl PdConfig {
    /// How long a decode waits without hearing from the prefill before it gives up.
    pub fn silence_limit(&self) -> Duration {
        self.heartbeat * self.heartbeat_failures
    }

    /// Whether this side breaks the transfer of `room` on purpose (see `failure_prob`).
    pub fn inject_fault(&self, room: u64) -> bool {
        if self.failure_prob <= 0.0 {
            return false;
        }
        let salt = match self.mode {
            Mode::Decode => 0xDEC0,
            _ => 0x9F11,
        };
        let x = crate::seeded::SplitMix64(room ^ salt).next_u64();
        ((x >> 11) as f64 / (1u64 << 53) as f64) < self.failure_prob
    }
}

impl PdConfig {
    /// Defaults with SGLang's environment overrides.
    pub fn new(mode: Mode, bootstrap_port: u16, bind_host: &str, token: &str) -> Self {
        let secs = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(Duration::from_secs(d), Duration::from_secs_f64)
        };
        PdConfig {
            mode,
            bootstrap_port,
            bind_host: bind_host.to_string(),
            timeout: secs("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", 300)
                .min(secs("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", 300)),
            token: token.to_string(),
            heartbeat: secs("SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", 5)
                .max(Duration::from_millis(50)),
            heartbeat_failures: std::env::var("SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2u32)
                .max(1),
            failure_prob: 0.0,
            same_host: std::env::var("STRATA_SAME_HOST").map_or(true, |v| v != "0"),
            test_stall: Duration::ZERO,
            push: std::env::var("STRATA_PD_PUSH").is_ok_and(|v| v == "1"),
            ib_devices: Vec::new(),
        }
    }
}

/// A request's bootstrap fields (set by the router).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub host: String,
    pub port: Option<u16>,
    pub room: u64,
}

impl Bootstrap {
    /// Whether this request really takes part in a transfer.
    pub fn is_real(&self) -> bool {
        self.host != FAKE_BOOTSTRAP_HOST
    }

    /// Sample `c` of an `n > 1` request: both legs derive the same room for each sample from the
    /// request's one room (sample 0 keeps it), so every sample's KV has a transfer of its own.
    pub fn for_sample(&self, c: usize) -> Bootstrap {
        Bootstrap {
            room: sample_room(self.room, c),
            ..self.clone()
        }
    }
}

/// The room of sample `c` under `room`: `room` itself for sample 0, else a SplitMix64 draw from
/// both (63 bits, as a router's rooms), so that the rooms of one request's samples, and of two
/// requests, do not meet by more than chance.
pub fn sample_room(room: u64, c: usize) -> u64 {
    if c == 0 {
        return room;
    }
    crate::seeded::SplitMix64(room ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64() >> 1
}

#[cfg(test)]
mod sample_room_tests {
    use super::sample_room;

    #[test]
    fn each_sample_has_its_own_room_of_63_bits() {
        for room in [0u64, 1, 12345, (1 << 63) - 1] {
            assert_eq!(sample_room(room, 0), room);
            let rooms: Vec<u64> = (0..64).map(|c| sample_room(room, c)).collect();
            let mut distinct = rooms.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), rooms.len(), "room {room}: {rooms:?}");
            assert!(rooms.iter().all(|&r| r < 1 << 63));
        }
        // Deterministic: both legs derive the same rooms.
        assert_eq!(sample_room(99, 3), sample_room(99, 3));
        assert_ne!(sample_room(99, 3), sample_room(100, 3));
    }
}
