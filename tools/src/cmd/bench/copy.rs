//! Raw copy rates of the transports, the ceilings that transfers over them are measured against:
//! `tcp-copy` (one loopback TCP stream) and `cma-copy` (the same-host path's cross-memory copy,
//! `process_vm_readv`, as the PD decode and the store cluster's same-host path use it).
//!
//! Each round moves `total_mb` MiB and is acknowledged before the next, on one connection (one
//! pair of buffers), as PD transfers now run on a kept connection; with several rounds the first
//! (fresh connection, cold buffers) is reported apart from the median of the others.

use std::io::{Read, Write};
use std::time::Instant;

use strata_engine::AlignedBuf;

const MB: usize = 1 << 20;

/// A plain single-stream TCP copy over loopback in `chunk`-byte writes into one reader thread.
pub fn tcp(total_mb: usize, chunk: usize, rounds: usize) -> anyhow::Result<()> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let total = total_mb * MB;
    let rounds = rounds.max(1);
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = l.accept()?;
        let mut buf = AlignedBuf::new(chunk);
        let mut all = 0;
        for _ in 0..rounds {
            let mut got = 0;
            while got < total {
                let n = s.read(&mut buf[..chunk.min(total - got)])?;
                if n == 0 {
                    return Ok(all + got);
                }
                got += n;
            }
            all += got;
            s.write_all(b"k")?;
        }
        Ok(all)
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let buf = AlignedBuf::new(chunk);
    let mut secs = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut sent = 0;
        while sent < total {
            let n = chunk.min(total - sent);
            s.write_all(&buf[..n])?;
            sent += n;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        secs.push(t.elapsed().as_secs_f64());
    }
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    anyhow::ensure!(
        got == total * rounds,
        "copied {got} of {} bytes",
        total * rounds
    );
    let what = format!("single stream, loopback, {} MiB writes", chunk / MB);
    report("tcp-copy", total_mb, &secs, &what);
    Ok(())
}

/// `process_vm_readv` of `total_mb` MiB in ranges of `chunk` bytes into another buffer, the
/// kernel's cross-memory copy (here within this process: the same system call and copy loop as
/// between two processes, without a second process to start). Each round is what a same-host PD
/// transfer does: a request on a Unix socket wakes the copying thread, which copies and answers
/// on the socket. The copy alone (no socket, no wake-up) is reported too.
pub fn cma(total_mb: usize, chunk: usize, rounds: usize, cold: bool) -> anyhow::Result<()> {
    use std::os::unix::net::UnixStream;
    let total = total_mb * MB;
    let chunk = chunk.clamp(4096, total.max(4096));
    let rounds = rounds.max(1);
    // Cold: as many buffer pairs as fill 512 MiB (far beyond the caches), one per round in turn.
    let pairs = if cold {
        ((512 * MB) / (2 * total).max(1)).clamp(1, rounds)
    } else {
        1
    };
    let srcs: Vec<AlignedBuf> = (0..pairs)
        .map(|i| {
            let mut b = AlignedBuf::new(total);
            b[..].fill(0x5a ^ i as u8);
            b
        })
        .collect();
    let pid = std::process::id() as i32;
    let ranges: Vec<Vec<(u64, usize)>> = srcs
        .iter()
        .map(|src| {
            let base = src.as_ptr() as u64;
            (0..total)
                .step_by(chunk)
                .map(|o| (base + o as u64, chunk.min(total - o)))
                .collect()
        })
        .collect();
    let (mut ctl, mut peer) = UnixStream::pair()?;
    let copier = std::thread::spawn(move || -> anyhow::Result<(Vec<AlignedBuf>, Vec<f64>)> {
        let mut dsts: Vec<AlignedBuf> = (0..pairs)
            .map(|_| {
                let mut b = AlignedBuf::new(total);
                b[..].fill(0);
                b
            })
            .collect();
        let mut copy_secs = Vec::new();
        let mut b = [0u8; 1];
        for r in 0..rounds {
            peer.read_exact(&mut b)?;
            let t = Instant::now();
            let i = r % pairs;
            strata_cluster::transport::shm::read_from(pid, &ranges[i], &mut dsts[i][..])?;
            copy_secs.push(t.elapsed().as_secs_f64());
            peer.write_all(b"k")?;
        }
        Ok((dsts, copy_secs))
    });
    let mut secs = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        ctl.write_all(b"g")?;
        let mut ack = [0u8; 1];
        ctl.read_exact(&mut ack)?;
        secs.push(t.elapsed().as_secs_f64());
    }
    let (dsts, copy_secs) = copier
        .join()
        .map_err(|_| anyhow::anyhow!("copier panicked"))??;
    for (i, d) in dsts.iter().enumerate().take(rounds) {
        anyhow::ensure!(d[..] == srcs[i][..], "the copy differs");
    }
    let kind = if pairs > 1 {
        format!(", {pairs} buffer pairs in turn (cold)")
    } else {
        String::new()
    };
    let what = format!(
        "process_vm_readv, {} KiB ranges{kind}, copy only",
        chunk >> 10
    );
    report("cma-copy", total_mb, &copy_secs, &what);
    let what = format!(
        "process_vm_readv, {} KiB ranges{kind}, request and answer on a Unix socket",
        chunk >> 10
    );
    report("cma-copy", total_mb, &secs, &what);
    Ok(())
}

fn report(name: &str, total_mb: usize, secs: &[f64], what: &str) {
    let rate = |s: f64| (total_mb * MB) as f64 / s / 1e9;
    if let [s] = secs {
        println!(
            "{name} {total_mb} MiB in {s:.3}s = {:.2} GB/s ({what})",
            rate(*s)
        );
        return;
    }
    let mut rest: Vec<f64> = secs[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let med = rest[rest.len() / 2];
    println!(
        "{name} {total_mb} MiB x {} rounds, one connection ({what}): first {:.2} GB/s, median of the others = {:.2} GB/s",
        secs.len(),
        rate(secs[0]),
        rate(med)
    );
}
