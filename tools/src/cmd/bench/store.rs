//! `strata bench store`: the workload of the peer script `mooncake_store_bench.py`, same parameters
//! and same columns, against a Strata cluster.
//!
//! Roles: `client` (a pure client; a `strata store` process holds the data and every byte crosses
//! TCP), `single` (the quick-start shape: this process contributes the segment and is the client, so
//! data moves by a direct engine call), `tcp-copy` (a plain single-stream loopback TCP copy, the
//! ceiling the client role is measured against) and `cma-copy` (the same-host path's cross-memory
//! copy); the two copies live in [`super::copy`].

use std::path::PathBuf;
use std::time::Instant;

use rand::RngCore;
use strata_cluster::{Client, ClientConfig};
use strata_engine::{AlignedBuf, StoreConfig};

const MB: usize = 1 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// client, single, tcp-copy or cma-copy.
    #[arg(long, default_value = "single")]
    role: String,
    /// Master RPC address.
    #[arg(long, env = "STRATA_MASTER", default_value = "127.0.0.1:50051")]
    master: String,
    /// Local segment size for `single` (MiB of device; the DRAM tier gets the same).
    #[arg(long, default_value_t = 1024)]
    segment_mb: u64,
    /// Device file for the `single` role's segment (default: a file in the temp dir).
    #[arg(long)]
    device: Option<PathBuf>,
    /// Value sizes in bytes, comma-separated; one table row each.
    #[arg(long, default_value = "65536,262144,1048576,4194304")]
    sizes: String,
    /// Bytes written per value size.
    #[arg(long, default_value_t = 256)]
    round_mb: usize,
    /// Bytes per batch call (keys per batch = this / size, at most 128).
    #[arg(long, default_value_t = 32)]
    batch_bytes_mb: usize,
    /// Times every key is read back per size.
    #[arg(long, default_value_t = 3)]
    read_passes: usize,
    /// Single-key put/get operations for latency.
    #[arg(long, default_value_t = 200)]
    lat_ops: usize,
    /// Bytes moved by `tcp-copy` / `cma-copy` (per round).
    #[arg(long, default_value_t = 4096)]
    copy_mb: usize,
    /// `tcp-copy` / `cma-copy`: rounds of `copy_mb` on one connection (one buffer), each
    /// acknowledged before the next; more than one reports the first and the median of the others.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// `cma-copy`: each round copies between a different pair of buffers (pre-faulted, 512 MiB
    /// in all), so the bytes come from memory, not from the caches, as a PD transfer's do.
    #[arg(long)]
    cold: bool,
    /// Check every value read back byte for byte.
    #[arg(long)]
    verify: bool,
    /// `single` role: the local segment's write-back buffer (as `strata store --write-back`).
    #[arg(long, default_value = "0", value_parser = crate::cmd::size::parse_size)]
    write_back: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    super::super::logging::init("warn");
    match a.role.as_str() {
        "tcp-copy" => return super::copy::tcp(a.copy_mb, a.batch_bytes_mb * MB, a.rounds),
        "cma-copy" => return super::copy::cma(a.copy_mb, a.batch_bytes_mb * MB, a.rounds, a.cold),
        _ => {}
    }
    let mut cfg = ClientConfig::new(a.master.clone());
    let _tmp;
    let seg = match a.role.as_str() {
        "client" => 0,
        "single" => {
            let dev = match &a.device {
                Some(d) => d.clone(),
                None => {
                    _tmp = tempfile_dir()?;
                    _tmp.join("bench-segment.strata")
                }
            };
            let bytes = a.segment_mb << 20;
            cfg.local_segment = Some(
                StoreConfig::new(dev)
                    .with_capacity(bytes)
                    .with_memory(bytes)
                    .with_write_back(a.write_back)
                    .with_segment_size(64 << 20),
            );
            a.segment_mb
        }
        r => anyhow::bail!("unknown role {r:?} (client, single, tcp-copy or cma-copy)"),
    };
    let t0 = Instant::now();
    let store = Client::connect(cfg)?;
    println!(
        "setup rc=0 in {:.3}s role={} segment={}MiB local_buffer={}MiB",
        t0.elapsed().as_secs_f64(),
        a.role,
        seg,
        a.batch_bytes_mb * 2
    );
    workload(&store, &a)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("strata-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn pct(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((q * v.len() as f64) as usize).min(v.len() - 1)]
}

/// Median as Python's `statistics.median` computes it.
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn workload(store: &Client, a: &Args) -> anyhow::Result<()> {
    let sizes: Vec<usize> = a
        .sizes
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let batch_bytes = a.batch_bytes_mb * MB;
    let mut src = AlignedBuf::new(batch_bytes);
    let mut dst = AlignedBuf::new(batch_bytes);
    let mut one = vec![0u8; MB];
    rand::rng().fill_bytes(&mut one);
    for c in src.chunks_mut(MB) {
        let n = c.len();
        c.copy_from_slice(&one[..n]);
    }
    store.register_buffer(&src);
    store.register_buffer(&dst);
    let run = std::process::id();

    // Warm-up: touch the whole round's worth of space once, then free it.
    let wsz = (4 * MB).min(batch_bytes);
    let wkeys: Vec<String> = (0..(a.round_mb * MB) / wsz)
        .map(|i| format!("warm_{run}_{i}"))
        .collect();
    for ks in wkeys.chunks((batch_bytes / wsz).clamp(1, 8)) {
        let vals: Vec<&[u8]> = (0..ks.len())
            .map(|j| &src[j * wsz..(j + 1) * wsz])
            .collect();
        store.batch_put_from(ks, &vals);
    }
    store.batch_remove(&wkeys);

    println!(
        "{:>8} {:>6} {:>9} {:>9} {:>10} {:>10} {:>11} {:>21} {:>21} fails",
        "size",
        "keys/b",
        "PUT GB/s",
        "GET GB/s",
        "put p50 ms",
        "get p50 ms",
        "exist128 ms",
        "1-key put p50/p99 us",
        "1-key get p50/p99 us"
    );
    for &size in &sizes {
        let kpb = (batch_bytes / size).clamp(1, 128);
        let nbatches = ((a.round_mb * MB) / (size * kpb)).max(1);
        let mut fails = 0usize;
        let mut all_keys: Vec<Vec<String>> = Vec::with_capacity(nbatches);
        // PUT
        let vals: Vec<&[u8]> = (0..kpb).map(|i| &src[i * size..(i + 1) * size]).collect();
        let mut put_lat = Vec::with_capacity(nbatches);
        let tp = Instant::now();
        for b in 0..nbatches {
            let keys: Vec<String> = (0..kpb)
                .map(|i| format!("bench_{run}_{size}_{b}_{i}"))
                .collect();
            let t = Instant::now();
            let res = store.batch_put_from(&keys, &vals);
            put_lat.push(t.elapsed().as_secs_f64());
            fails += res.iter().filter(|&&r| r != 0).count();
            all_keys.push(keys);
        }
        let put_gbs = (nbatches * kpb * size) as f64 / tp.elapsed().as_secs_f64() / 1e9;
        // EXISTS on one batch
        let t = Instant::now();
        store.batch_is_exist(&all_keys[0]);
        let ex_ms = t.elapsed().as_secs_f64() * 1e3;
        // GET
        let mut get_lat = Vec::new();
        let tg = Instant::now();
        for _ in 0..a.read_passes {
            for keys in &all_keys {
                let mut bufs: Vec<&mut [u8]> = dst[..kpb * size].chunks_mut(size).collect();
                let t = Instant::now();
                let res = store.batch_get_into(keys, &mut bufs);
                get_lat.push(t.elapsed().as_secs_f64());
                fails += res.iter().filter(|&&r| r != size as i64).count();
            }
        }
        let get_gbs =
            (a.read_passes * nbatches * kpb * size) as f64 / tg.elapsed().as_secs_f64() / 1e9;
        if a.verify && src[..kpb * size] != dst[..kpb * size] {
            println!("VERIFY FAILED");
        }
        for keys in &all_keys {
            store.batch_remove(keys);
        }
        // Single-key latency
        let n_lat = a.lat_ops.min((a.round_mb * MB) / size).max(1);
        let lat_keys: Vec<String> = (0..n_lat)
            .map(|i| format!("lat_{run}_{size}_{i}"))
            .collect();
        let (mut p1, mut g1) = (Vec::new(), Vec::new());
        for k in &lat_keys {
            let t = Instant::now();
            if store.put_from(k, &src[..size]) != 0 {
                fails += 1;
            }
            p1.push(t.elapsed().as_secs_f64());
        }
        for k in &lat_keys {
            let t = Instant::now();
            if store.get_into(k, &mut dst[..size]) != size as i64 {
                fails += 1;
            }
            g1.push(t.elapsed().as_secs_f64());
        }
        store.batch_remove(&lat_keys);
        println!(
            "{:>8} {:>6} {:>9.2} {:>9.2} {:>10.2} {:>10.2} {:>11.2} {:>10.0}/{:<10.0} {:>10.0}/{:<10.0} {}",
            size,
            kpb,
            put_gbs,
            get_gbs,
            median(&put_lat) * 1e3,
            median(&get_lat) * 1e3,
            ex_ms,
            pct(&p1, 0.5) * 1e6,
            pct(&p1, 0.99) * 1e6,
            pct(&g1, 0.5) * 1e6,
            pct(&g1, 0.99) * 1e6,
            fails
        );
    }
    store.unregister_buffer(&src);
    store.unregister_buffer(&dst);
    Ok(())
}
