//! What a chaos run did and found: counters of operations and faults, invariant violations, the
//! time-stamped event log (written to `events.log` as it happens, so a run that stops early still
//! leaves it), recovery times, and the final report (text for people, JSON for tests).
//!
//! A violation sets `stop`: the load and the fault loop end at their next step, and the report
//! names the seed that replays the run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;

/// Kinds of invariant violation; each must be 0 for a run to pass.
pub const VIOLATIONS: [&str; 6] = [
    "wrong_answers",
    "wrong_bytes",
    "hung_requests",
    "unexpected_exits",
    "not_recovered",
    "baseline",
];

/// Counters of operations (`name` -> count).
#[derive(Default)]
pub struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    pub fn add(&self, name: &str, n: u64) {
        *self.0.lock().entry(name.to_string()).or_default() += n;
    }
    pub fn get(&self, name: &str) -> u64 {
        self.0.lock().get(name).copied().unwrap_or(0)
    }
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().clone()
    }
}

/// The run's shared record.
pub struct Report {
    pub seed: u64,
    pub replay: String,
    start: Instant,
    pub stop: AtomicBool,
    interrupted: AtomicBool,
    pub ops: Counters,
    pub faults: Counters,
    pub violations: Counters,
    /// Fault kinds that could not be injected here, with why.
    pub not_injected: Mutex<BTreeMap<String, String>>,
    /// Roles that SIGTERM did not stop at the end (they were killed); reported, not a violation.
    pub not_stopped: Mutex<Vec<String>>,
    /// (fault kind, seconds from injection to healthy, seconds from the fault's end to healthy).
    pub recoveries: Mutex<Vec<(String, f64, f64)>>,
    last_sampled: AtomicU64,
    skipped: AtomicU64,
    events: Mutex<(Vec<String>, Option<std::fs::File>)>,
}

impl Report {
    pub fn new(seed: u64, replay: String, log: &Path) -> anyhow::Result<Report> {
        Ok(Report {
            seed,
            replay,
            start: Instant::now(),
            stop: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            ops: Counters::default(),
            faults: Counters::default(),
            violations: Counters::default(),
            not_injected: Mutex::new(BTreeMap::new()),
            not_stopped: Mutex::new(Vec::new()),
            recoveries: Mutex::new(Vec::new()),
            last_sampled: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            events: Mutex::new((Vec::new(), Some(std::fs::File::create(log)?))),
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Appends a line to the event log, stamped with the seconds since the start.
    pub fn event(&self, what: impl AsRef<str>) {
        let line = format!(
            "{:9.3} {}",
            self.start.elapsed().as_secs_f64(),
            what.as_ref()
        );
        let mut ev = self.events.lock();
        if let Some(f) = &mut ev.1 {
            let _ = writeln!(f, "{line}");
        }
        ev.0.push(line);
    }

    /// [`Report::event`] for frequent, expected events (failed requests under a fault): at most one
    /// every 250 ms is written, with how many were left out before it.
    pub fn event_sampled(&self, what: impl AsRef<str>) {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_sampled.load(Ordering::Relaxed);
        if now < last + 250 && last != 0 {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.last_sampled.store(now.max(1), Ordering::Relaxed);
        match self.skipped.swap(0, Ordering::Relaxed) {
            0 => self.event(what),
            n => self.event(format!(
                "{} (and {n} similar events left out before it)",
                what.as_ref()
            )),
        }
    }

    /// Ends the run early at the operator's request (not a violation).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
        self.event("interrupted (SIGINT or SIGTERM)");
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Records a violation of kind `kind` (one of [`VIOLATIONS`]) and stops the run.
    pub fn violation(&self, kind: &str, what: impl AsRef<str>) {
        debug_assert!(VIOLATIONS.contains(&kind), "{kind}");
        self.violations.add(kind, 1);
        self.event(format!("VIOLATION {kind}: {}", what.as_ref()));
        eprintln!("chaos: VIOLATION {kind}: {}", what.as_ref());
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A fault of `kind` was followed by a healthy deployment `secs` after its injection and
    /// `after_end` after it ended.
    pub fn recovered(&self, kind: &str, secs: f64, after_end: f64) {
        self.recoveries
            .lock()
            .push((kind.to_string(), secs, after_end));
    }

    pub fn passed(&self) -> bool {
        VIOLATIONS.iter().all(|v| self.violations.get(v) == 0)
    }

    /// The machine-readable report.
    pub fn json(&self, duration: Duration, faults_enabled: &[String]) -> serde_json::Value {
        let rec = self.recoveries.lock();
        let all: Vec<f64> = rec.iter().map(|r| r.1).collect();
        let all_end: Vec<f64> = rec.iter().map(|r| r.2).collect();
        let (mut per_kind, mut per_kind_end) = (serde_json::Map::new(), serde_json::Map::new());
        for k in faults_enabled {
            let v: Vec<f64> = rec.iter().filter(|r| &r.0 == k).map(|r| r.1).collect();
            per_kind.insert(k.clone(), pcts(&v));
            let v: Vec<f64> = rec.iter().filter(|r| &r.0 == k).map(|r| r.2).collect();
            per_kind_end.insert(k.clone(), pcts(&v));
        }
        let violations: BTreeMap<&str, u64> = VIOLATIONS
            .iter()
            .map(|v| (*v, self.violations.get(v)))
            .collect();
        json!({
            "seed": self.seed,
            "replay": self.replay,
            "duration_s": duration.as_secs_f64(),
            "elapsed_s": self.elapsed().as_secs_f64(),
            "passed": self.passed(),
            "ops": self.ops.snapshot(),
            "faults": self.faults.snapshot(),
            "not_injected": *self.not_injected.lock(),
            "not_stopped_by_sigterm": *self.not_stopped.lock(),
            "violations": violations,
            "recovery_s": {"all": pcts(&all), "per_kind": per_kind},
            "recovery_after_end_s": {"all": pcts(&all_end), "per_kind": per_kind_end},
        })
    }

    /// The report for people: what was done and found, every violation kind with its count.
    pub fn text(&self, duration: Duration, faults_enabled: &[String]) -> String {
        let j = self.json(duration, faults_enabled);
        let mut o = String::new();
        let c = |k: &str| self.ops.get(k);
        let _ = writeln!(
            o,
            "strata chaos: seed {} duration {:.0} s (ran {:.1} s), faults {}",
            self.seed,
            duration.as_secs_f64(),
            self.elapsed().as_secs_f64(),
            faults_enabled.join(",")
        );
        let _ = writeln!(
            o,
            "  generate   {} requests ({} plain, {} streamed): {} correct, {} failed under faults",
            c("generate"),
            c("generate_plain"),
            c("generate_stream"),
            c("generate_ok"),
            c("generate_failed"),
        );
        let _ = writeln!(
            o,
            "  store      {} puts ({} ok, {} refused), {} gets ({} exact, {} miss)",
            c("store_put"),
            c("store_put_ok"),
            c("store_put_failed"),
            c("store_get"),
            c("store_get_hit"),
            c("store_get_miss"),
        );
        let _ = writeln!(
            o,
            "  hicache    tokens written to L3 {}, prefetched from L3 {}, loaded back from host {}, \
             evicted {}, offloaded by PD decode {} (servers running at the end)",
            c("hicache_backuped_tokens"),
            c("hicache_prefetched_tokens"),
            c("hicache_load_back_tokens"),
            c("hicache_evicted_tokens"),
            c("hicache_pd_decode_offloaded_tokens"),
        );
        let faults = self.faults.snapshot();
        let _ = writeln!(
            o,
            "  faults     {}",
            faults_enabled
                .iter()
                .map(|k| format!("{k} {}", faults.get(k).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let detail: Vec<String> = faults
            .iter()
            .filter(|(k, _)| k.contains('/'))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !detail.is_empty() {
            let _ = writeln!(o, "             ({})", detail.join(", "));
        }
        for (k, why) in self.not_injected.lock().iter() {
            let _ = writeln!(o, "  {k:<10} not injected: {why}");
        }
        let _ = writeln!(
            o,
            "  violations {}",
            VIOLATIONS
                .iter()
                .map(|v| format!("{} {}", v.replace('_', " "), self.violations.get(v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let r = &j["recovery_s"]["all"];
        let e = &j["recovery_after_end_s"]["all"];
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            o,
            "  recovery   {} faults; fault to healthy p50 {:.2} s, p99 {:.2} s, max {:.2} s; \
             end of fault to healthy p50 {:.2} s, p99 {:.2} s",
            r["n"],
            f(r, "p50"),
            f(r, "p99"),
            f(r, "max"),
            f(e, "p50"),
            f(e, "p99"),
        );
        for k in faults_enabled {
            let r = &j["recovery_s"]["per_kind"][k];
            let e = &j["recovery_after_end_s"]["per_kind"][k];
            if r["n"].as_u64().unwrap_or(0) > 0 {
                let _ = writeln!(
                    o,
                    "             {k:<9} n {:>3}: p50 {:.2} s, p99 {:.2} s; after its end p50 {:.2} s, p99 {:.2} s",
                    r["n"],
                    f(r, "p50"),
                    f(r, "p99"),
                    f(e, "p50"),
                    f(e, "p99"),
                );
            }
        }
        let ns = self.not_stopped.lock();
        if !ns.is_empty() {
            let _ = writeln!(
                o,
                "  shutdown   needed SIGKILL after SIGTERM's grace (not an invariant; see their logs): {}",
                ns.join(", ")
            );
        }
        drop(ns);
        let skipped: Vec<String> = self.not_injected.lock().keys().cloned().collect();
        if self.interrupted() && self.passed() {
            let _ = writeln!(o, "  result     INTERRUPTED (no violation until then)");
        } else if self.passed() && !skipped.is_empty() {
            let _ = writeln!(
                o,
                "  result     PASS for the faults injected; {} NOT injected (see above)",
                skipped.join(", ")
            );
        } else if self.passed() {
            let _ = writeln!(o, "  result     PASS");
        } else {
            let _ = writeln!(o, "  result     FAIL; replay with: {}", self.replay);
            let ev = self.events.lock();
            let from = ev.0.len().saturating_sub(40);
            let _ = writeln!(o, "  last events:");
            for l in &ev.0[from..] {
                let _ = writeln!(o, "    {l}");
            }
        }
        o
    }
}

use std::fmt::Write as _;

/// n, p50, p99 and max of `v` (nearest rank).
fn pcts(v: &[f64]) -> serde_json::Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if s.is_empty() {
            0.0
        } else {
            s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
        }
    };
    json!({"n": s.len(), "p50": at(0.5), "p99": at(0.99), "max": s.last().copied().unwrap_or(0.0)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_stops_the_run_and_the_report_says_how_to_replay() {
        let log = std::env::temp_dir().join(format!("strata-chaos-rep-{}", std::process::id()));
        let r = Report::new(42, "strata chaos --seed 42".into(), &log).unwrap();
        r.event("fault kill: SIGKILL store1");
        assert!(r.passed() && !r.stopped());
        r.violation("wrong_bytes", "get k returned other bytes");
        assert!(!r.passed() && r.stopped());
        let kinds = vec!["kill".to_string()];
        let t = r.text(Duration::from_secs(20), &kinds);
        assert!(t.contains("wrong bytes 1"), "{t}");
        assert!(
            t.contains("FAIL; replay with: strata chaos --seed 42"),
            "{t}"
        );
        assert!(
            t.contains("SIGKILL store1") && t.contains("VIOLATION wrong_bytes"),
            "{t}"
        );
        let written = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert!(written.contains("VIOLATION wrong_bytes"), "{written}");
        assert_eq!(
            r.json(Duration::from_secs(20), &kinds)["violations"]["wrong_bytes"],
            1
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = pcts(&v);
        assert_eq!(
            (p["p50"].as_f64(), p["p99"].as_f64()),
            (Some(50.0), Some(99.0))
        );
        assert_eq!(pcts(&[])["n"], 0);
    }
}
