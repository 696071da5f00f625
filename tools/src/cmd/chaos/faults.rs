//! The fault loop: at seeded random times it injects one fault, ends it, and measures the time
//! from injection until the deployment is healthy again; in between it watches for processes that
//! exit without being killed. Kinds come in seeded shuffled rounds (every enabled kind once per
//! round), so a short run still injects each kind.
//!
//! - `kill`: SIGKILL any role, restart it after a short down time.
//! - `pause`: SIGSTOP any role for longer than the master's heartbeat timeout, then SIGCONT.
//! - `disk-full`: fill the size-limited file system under store 0 for a while.
//! - `net`: delay, drop or partition one proxied link (router to a server, a store to the master).
//! - `corrupt`: stop a store with SIGKILL, flip bytes in its device file's written extents, restart
//!   it; the engine's checksums must turn the damage into misses.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use strata_server::seeded::SplitMix64;

use super::deploy::{Deployment, Kind, HEARTBEAT_TIMEOUT};
use super::proxy::Mode;
use super::report::Report;

pub const KINDS: [&str; 5] = ["kill", "pause", "disk-full", "net", "corrupt"];

/// Longest wait for the deployment to be healthy again after a fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.0.next_u64() % (hi - lo + 1))
    }
}

/// Injects faults of `kinds` until `until` or a violation; returns when the last fault has ended
/// and the deployment was checked healthy.
pub fn run(d: &mut Deployment, rep: &Report, kinds: &[String], until: Instant) {
    let mut rng = Rng(SplitMix64(rep.seed ^ 0xFA17_FA17));
    let mut round: Vec<String> = Vec::new();
    while !rep.stopped() {
        let gap = rng.ms(300, 1500);
        if !watch(d, rep, gap) || Instant::now() + gap > until {
            break;
        }
        if round.is_empty() {
            round = kinds.to_vec();
            // Fisher-Yates with the fault stream.
            for i in (1..round.len()).rev() {
                round.swap(i, rng.below(i + 1));
            }
        }
        let kind = round.pop().expect("a kind");
        let t0 = Instant::now();
        let injected = match kind.as_str() {
            "kill" => kill(d, rep, &mut rng),
            "pause" => pause(d, rep, &mut rng),
            "disk-full" => disk_full(d, rep, &mut rng),
            "net" => net(d, rep, &mut rng),
            "corrupt" => corrupt(d, rep, &mut rng),
            other => unreachable!("fault kind {other}"),
        };
        if !injected {
            continue;
        }
        // Every injection ends its fault (restart, SIGCONT, filler deleted, link healed) last.
        let ended = Instant::now();
        rep.faults.add(&kind, 1);
        match wait_healthy(d, rep) {
            Ok(()) => {
                let (secs, after) = (t0.elapsed().as_secs_f64(), ended.elapsed().as_secs_f64());
                rep.event(format!(
                    "healthy {secs:.2} s after the {kind} fault ({after:.2} s after it ended)"
                ));
                rep.recovered(&kind, secs, after);
            }
            Err(why) => rep.violation(
                "not_recovered",
                format!("not healthy {RECOVERY_LIMIT:?} after the {kind} fault: {why}"),
            ),
        }
    }
}

/// Sleeps `for_` while checking that no process exited on its own; false once the run stops.
pub fn watch(d: &mut Deployment, rep: &Report, for_: Duration) -> bool {
    let end = Instant::now() + for_;
    loop {
        check_exits(d, rep);
        if rep.stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn check_exits(d: &mut Deployment, rep: &Report) {
    for (i, st) in d.stack.exited() {
        let p = &d.stack.procs[i];
        let tail = std::fs::read_to_string(p.log()).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        rep.violation(
            "unexpected_exits",
            format!(
                "{} exited on its own ({st}); last log lines: {}",
                p.name,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
        );
    }
}

/// Waits until [`Deployment::unhealthy`] finds nothing (or a process dies, or the limit passes).
pub fn wait_healthy(d: &mut Deployment, rep: &Report) -> Result<(), String> {
    let t = Instant::now();
    loop {
        check_exits(d, rep);
        let why = d.unhealthy();
        match why {
            None => return Ok(()),
            Some(w) if t.elapsed() > RECOVERY_LIMIT => return Err(w),
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn kill(d: &mut Deployment, rep: &Report, rng: &mut Rng) -> bool {
    let r = rng.below(d.roles.len());
    let down = rng.ms(0, 1000);
    let proc = d.roles[r].proc;
    rep.event(format!(
        "fault kill: SIGKILL {} (restart after {down:?})",
        d.name(r)
    ));
    d.stack.kill9(proc);
    watch(d, rep, down);
    restart(d, rep, proc)
}

fn restart(d: &mut Deployment, rep: &Report, proc: usize) -> bool {
    match d.stack.start(proc) {
        Ok(()) => true,
        Err(e) => {
            rep.violation("not_recovered", format!("restart failed: {e:#}"));
            false
        }
    }
}

fn pause(d: &mut Deployment, rep: &Report, rng: &mut Rng) -> bool {
    let r = rng.below(d.roles.len());
    let hb = HEARTBEAT_TIMEOUT.as_millis() as u64;
    let t = rng.ms(hb + 500, 2 * hb + 1000);
    rep.event(format!("fault pause: SIGSTOP {} for {t:?}", d.name(r)));
    let proc = d.roles[r].proc;
    d.stack.signal(proc, libc::SIGSTOP);
    watch(d, rep, t);
    d.stack.signal(proc, libc::SIGCONT);
    rep.event(format!("SIGCONT {}", d.name(r)));
    true
}

fn disk_full(d: &mut Deployment, rep: &Report, rng: &mut Rng) -> bool {
    let t = rng.ms(1500, 4000);
    let fs = match &d.small_fs {
        Ok(fs) => fs,
        Err(why) => {
            rep.not_injected
                .lock()
                .insert("disk-full".into(), why.clone());
            return false;
        }
    };
    match fs.fill() {
        Ok(n) => rep.event(format!(
            "fault disk-full: store0's file system filled ({} MiB of filler) for {t:?}",
            n >> 20
        )),
        Err(e) => {
            rep.not_injected
                .lock()
                .insert("disk-full".into(), format!("filling failed: {e:#}"));
            fs.unfill();
            return false;
        }
    }
    watch(d, rep, t);
    if let Ok(fs) = &d.small_fs {
        fs.unfill();
    }
    rep.event("store0's file system has free space again");
    true
}

fn net(d: &mut Deployment, rep: &Report, rng: &mut Rng) -> bool {
    let p = d.proxies[rng.below(d.proxies.len())].clone();
    let t = rng.ms(1500, 4000);
    let mode = match rng.below(3) {
        0 => Mode::Delay(rng.ms(50, 400)),
        1 => Mode::Drop(0.05 + rng.below(25) as f64 / 100.0),
        _ => Mode::Partition,
    };
    let label = match mode {
        Mode::Delay(_) => "delay",
        Mode::Drop(_) => "drop",
        _ => "partition",
    };
    rep.faults.add(&format!("net/{label}"), 1);
    rep.event(format!("fault net: {} {mode:?} for {t:?}", p.name));
    p.set(mode);
    watch(d, rep, t);
    p.set(Mode::Normal);
    rep.event(format!("{} healed", p.name));
    true
}

fn corrupt(d: &mut Deployment, rep: &Report, rng: &mut Rng) -> bool {
    let stores: Vec<usize> = (0..d.roles.len())
        .filter(|&r| d.roles[r].kind == Kind::Store)
        .collect();
    let r = stores[rng.below(stores.len())];
    let j = stores.iter().position(|&x| x == r).expect("a store");
    let proc = d.roles[r].proc;
    d.stack.kill9(proc);
    let dev = d.devices[j].clone();
    let flipped = flip_bytes(&dev, 16, rng);
    rep.event(format!(
        "fault corrupt: SIGKILL {}, flipped bytes at {flipped:?} of {}, restart",
        d.name(r),
        dev.display()
    ));
    restart(d, rep, proc)
}

/// XORs `n` random written bytes of `path` (chosen within its data extents, holes skipped) with a
/// random non-zero value; returns their offsets.
fn flip_bytes(path: &std::path::Path, n: usize, rng: &mut Rng) -> Vec<u64> {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    else {
        return Vec::new();
    };
    let fd = f.as_raw_fd();
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    loop {
        // SAFETY: lseek(2) on a file descriptor we own.
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            break;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end <= start {
            break;
        }
        extents.push((start as u64, end as u64));
        pos = end;
    }
    let total: u64 = extents.iter().map(|(a, b)| b - a).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let mut k = rng.0.next_u64() % total;
        let off = extents
            .iter()
            .find_map(|&(a, b)| {
                if k < b - a {
                    Some(a + k)
                } else {
                    k -= b - a;
                    None
                }
            })
            .expect("within the extents");
        let mut b = [0u8];
        if f.read_exact_at(&mut b, off).is_ok() {
            b[0] ^= 1 + (rng.0.next_u64() % 255) as u8;
            if f.write_all_at(&b, off).is_ok() {
                out.push(off);
            }
        }
    }
    let _ = f.sync_all();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_land_only_in_written_extents() {
        let path = std::env::temp_dir().join(format!("strata-chaos-flip-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        let (a, b) = (0u64, 2u64 << 20);
        f.write_all_at(&[0xAAu8; 8192], a).unwrap();
        f.write_all_at(&[0xAAu8; 8192], b).unwrap();
        f.sync_all().unwrap();
        let mut rng = Rng(SplitMix64(5));
        let offs = flip_bytes(&path, 16, &mut rng);
        let data = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(offs.len(), 16);
        for &o in &offs {
            // File systems may report a larger data extent than written, never a smaller one.
            assert_ne!(data[o as usize], 0xAA, "offset {o} not flipped");
        }
        let changed = data
            .iter()
            .enumerate()
            .filter(|&(i, &x)| {
                x != if (i as u64 % (2 << 20)) < 8192 {
                    0xAA
                } else {
                    0
                }
            })
            .count();
        assert!(changed <= 16 && changed > 0, "{changed} bytes changed");
    }
}
