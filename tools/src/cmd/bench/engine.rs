//! `strata bench engine`: put and random-get throughput, get latency and recovery time of the page
//! store on a file or device. With no arguments it runs on a temporary file (the README's demo).
//!
//! Queue depth = `--threads` x `--batch`: each thread keeps one batch of requests in flight, which is
//! the shape fio's `iodepth` measures. Throughput counts value bytes only.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use strata_engine::{AlignedBuf, IoEngineKind, Store, StoreConfig};

use crate::cmd::size::parse_size;

#[derive(clap::Args)]
pub struct Args {
    /// Store file or block device (default: a temporary file, removed afterwards).
    #[arg(long)]
    path: Option<PathBuf>,
    /// Device bytes for the store.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    capacity: u64,
    /// Segment size.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    segment_size: u64,
    /// Value (page) size.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    value_size: u64,
    /// Bytes of values to write.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    total: u64,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Keys per batched call (each thread issues one call at a time).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Requests each thread keeps in the kernel (its io_uring ring's depth): within a batch the
    /// engine slides a window of this many, so the device sees `threads x queue-depth`.
    #[arg(long, default_value_t = 8)]
    queue_depth: u32,
    /// Random-read passes over the written bytes.
    #[arg(long, default_value_t = 1.0)]
    read_passes: f64,
    /// Single-key gets timed for the latency percentiles.
    #[arg(long, default_value_t = 2000)]
    latency_samples: usize,
    /// I/O engine: auto, uring or psync.
    #[arg(long, default_value = "auto")]
    io_engine: IoEngineKind,
    /// Most bytes per combined write of consecutive records (0: one write per record).
    #[arg(long, default_value = "512KiB", value_parser = parse_size)]
    write_combine: u64,
    /// DRAM tier bytes (0 measures the device path).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    memory: u64,
    /// Reopen the store afterwards and report recovery time.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    recovery: bool,
    /// Only reopen an existing store and report recovery time (no writes).
    #[arg(long)]
    recovery_only: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seed for the random read order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Serialize, Default)]
struct Report {
    io_engine: String,
    value_size: u64,
    queue_depth: usize,
    pages: u64,
    put_gbps: f64,
    get_gbps: f64,
    get_p50_us: f64,
    get_p99_us: f64,
    recovery_ms: f64,
    recovered_keys: u64,
}

fn key(i: u64) -> Vec<u8> {
    format!("{i:016x}{:048x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).into_bytes()
}

pub fn run(mut a: Args) -> anyhow::Result<()> {
    crate::cmd::logging::init("warn");
    // Every thread gets work: with few large pages, a batch larger than a thread's share would leave
    // the other threads idle and the device at one thread's queue depth.
    let share = (a.total / a.value_size.max(1)).div_ceil(a.threads.max(1) as u64) as usize;
    a.batch = a.batch.min(share.max(1));
    let tmp;
    let path = match &a.path {
        Some(p) => p.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.join("bench.strata")
        }
    };
    let cfg = StoreConfig::new(&path)
        .with_capacity(a.capacity)
        .with_segment_size(a.segment_size)
        .with_memory(a.memory)
        .with_io_engine(a.io_engine)
        .with_queue_depth(a.queue_depth)
        .with_write_combine(a.write_combine.min(u32::MAX as u64) as u32)
        .with_io_threads(a.threads.clamp(1, 4))
        .with_registered_memory({
            // Every thread's window of writes in flight, each a record or a combined run of
            // records, twice over; at least the store's default. A smaller arena sends the
            // overflow through unregistered heap buffers.
            let unit = (a.value_size + 8192).max(a.write_combine);
            let want = unit * a.queue_depth as u64 * a.threads as u64 * 2;
            want.next_power_of_two().clamp(64 << 20, 256 << 20)
        });
    let mut rep = Report {
        value_size: a.value_size,
        queue_depth: a.threads * a.queue_depth as usize,
        ..Report::default()
    };
    if !a.recovery_only {
        // The readers' buffers, registered with the store as a server registers its host KV pool
        // (declared before the store, so they outlive it).
        let mut pool = AlignedBuf::new(a.value_size as usize * a.batch * a.threads);
        let store = Arc::new(Store::open(cfg.clone()).context("opening the store")?);
        // SAFETY: `pool` is dropped after `store` (declared first) and not otherwise touched while
        // the store is open except through the reads below.
        unsafe { store.register_buffer(pool.as_mut_ptr(), pool.len()) }?;
        rep.io_engine = store.stats().io_engine.to_string();
        let pages = (a.total / a.value_size).max(1);
        rep.pages = pages;
        rep.put_gbps = put_phase(&store, &a, pages)?;
        rep.get_gbps = get_phase(&store, &a, pages, &mut pool)?;
        let (p50, p99) = latency_phase(&store, &a, pages)?;
        rep.get_p50_us = p50;
        rep.get_p99_us = p99;
        store.sync()?;
    }
    if a.recovery || a.recovery_only {
        let t = Instant::now();
        let store = Store::open(cfg.with_create(false))?;
        rep.recovery_ms = t.elapsed().as_secs_f64() * 1e3;
        rep.recovered_keys = store.stats().keys;
        if rep.io_engine.is_empty() {
            rep.io_engine = store.stats().io_engine.to_string();
        }
    }
    if a.path.is_none() {
        let _ = std::fs::remove_file(&path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        println!(
            "engine {}  value {} B  queue depth {}  pages {}",
            rep.io_engine, rep.value_size, rep.queue_depth, rep.pages
        );
        println!("put        {:8.3} GB/s", rep.put_gbps);
        println!("random get {:8.3} GB/s", rep.get_gbps);
        println!(
            "get latency (QD1) p50 {:.1} us  p99 {:.1} us",
            rep.get_p50_us, rep.get_p99_us
        );
        println!(
            "recovery   {:.1} ms ({} keys)",
            rep.recovery_ms, rep.recovered_keys
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    // The system temp dir is often tmpfs (no O_DIRECT); prefer the working directory's file system.
    let base = std::env::var_os("STRATA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = base.join(format!(".strata-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn bar(len: u64, msg: &'static str, hidden: bool) -> ProgressBar {
    let b = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    b.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )
        .expect("template"),
    );
    b.set_message(msg);
    b
}

fn put_phase(store: &Arc<Store>, a: &Args, pages: u64) -> anyhow::Result<f64> {
    let next = AtomicU64::new(0);
    let pb = bar(pages * a.value_size, "put", a.json);
    // Eight distinct random values, made before the clock starts, cycled through the batches.
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let values: Vec<Vec<u8>> = (0..8)
        .map(|_| {
            let mut v = vec![0u8; a.value_size as usize];
            rng.fill(&mut v[..]);
            v
        })
        .collect();
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut hs = Vec::new();
        for _ in 0..a.threads {
            let (store, next, pb, values) = (store.clone(), &next, &pb, &values);
            hs.push(s.spawn(move || -> anyhow::Result<()> {
                loop {
                    let start = next.fetch_add(a.batch as u64, Ordering::Relaxed);
                    if start >= pages {
                        return Ok(());
                    }
                    let end = (start + a.batch as u64).min(pages);
                    let keys: Vec<Vec<u8>> = (start..end).map(key).collect();
                    let items: Vec<(&[u8], &[u8])> = keys
                        .iter()
                        .zip(values.iter().cycle())
                        .map(|(k, v)| (k.as_slice(), v.as_slice()))
                        .collect();
                    for r in store.batch_put(&items) {
                        r?;
                    }
                    pb.inc((end - start) * a.value_size);
                }
            }));
        }
        for h in hs {
            h.join().expect("put thread")?;
        }
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok((pages * a.value_size) as f64 / secs / 1e9)
}

fn get_phase(store: &Arc<Store>, a: &Args, pages: u64, pool: &mut [u8]) -> anyhow::Result<f64> {
    let reads = ((pages as f64 * a.read_passes) as u64).max(1);
    // Every page once per pass, in a random order made before the clock starts (the same work as
    // fio's random read with its random map: each block once).
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut order: Vec<u64> = Vec::with_capacity(reads as usize);
    while (order.len() as u64) < reads {
        let mut pass: Vec<u64> = (0..pages).collect();
        pass.shuffle(&mut rng);
        order.extend(pass);
    }
    order.truncate(reads as usize);
    let next = AtomicU64::new(0);
    let pb = bar(reads * a.value_size, "get", a.json);
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut hs = Vec::new();
        let per_thread = a.value_size as usize * a.batch;
        for mine in pool.chunks_mut(per_thread) {
            let (store, next, pb, order) = (store.clone(), &next, &pb, &order);
            hs.push(s.spawn(move || -> anyhow::Result<()> {
                let mut bufs: Vec<&mut [u8]> = mine.chunks_mut(a.value_size as usize).collect();
                loop {
                    let start = next.fetch_add(a.batch as u64, Ordering::Relaxed);
                    if start >= reads {
                        return Ok(());
                    }
                    let end = (start + a.batch as u64).min(reads);
                    let keys: Vec<Vec<u8>> = order[start as usize..end as usize]
                        .iter()
                        .map(|&i| key(i))
                        .collect();
                    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
                    let mut outs: Vec<&mut [u8]> = bufs
                        .iter_mut()
                        .take(refs.len())
                        .map(|b| &mut b[..])
                        .collect();
                    for r in store.batch_get_into(&refs, &mut outs) {
                        anyhow::ensure!(r?.is_some(), "a written page is missing");
                    }
                    pb.inc((end - start) * a.value_size);
                }
            }));
        }
        for h in hs {
            h.join().expect("get thread")?;
        }
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok((reads * a.value_size) as f64 / secs / 1e9)
}

fn latency_phase(store: &Arc<Store>, a: &Args, pages: u64) -> anyhow::Result<(f64, f64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed.wrapping_add(7));
    let mut buf = AlignedBuf::new(a.value_size as usize);
    let mut lat: Vec<Duration> = Vec::with_capacity(a.latency_samples);
    for _ in 0..a.latency_samples {
        let k = key(rng.random_range(0..pages));
        let t = Instant::now();
        anyhow::ensure!(
            store.get_into(&k, &mut buf)?.is_some(),
            "a written page is missing"
        );
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    Ok((pct(0.5), pct(0.99)))
}
