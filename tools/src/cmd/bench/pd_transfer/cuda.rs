//! `strata bench pd-transfer --transports cuda-ipc,cuda-push`: the same measurement on one GPU,
//! over CUDA IPC, without a model (so no forward competes with the copies for the GPU).
//!
//! The prefill child makes a CUDA KV pool (`CudaKv`, the CUDA runner's layout, bf16; geometry
//! from `--layers`, `--kv-dim`, `--page-size`; `--elem` does not apply), fills it with a known byte pattern, exports it
//! and readies every room with a prompt's pages left in that pool (`Pages::Device`, a shuffled
//! pool-wide order), as a PD prefill server does. This process is the decode: the servers'
//! `Fetcher` with the runner's `DeviceKv` over a pool of its own, each fetch given pool pages and
//! a fence, so every transfer is the serving path's copy straight into pool pages (`cuda-ipc`:
//! the decode's `kv_pool_copy` out of the opened pool; `cuda-push`: the prefill copies into the
//! decode's pool, `STRATA_PD_PUSH=1`'s path). The raw copy of the same transport: N transfers'
//! bytes as contiguous per-layer ranges, `cuMemcpyDtoDAsync` from the prefill's pool opened over
//! CUDA IPC into this process's pool, all queued on one stream and waited for, one raw round after
//! each transfer round. The warm-up round checks every landed page against the pattern.

use std::sync::Arc;

use serde_json::json;
use strata_kernels::cuda::{DTensor, GpuContext, IpcMapping, PeerCopy};
use strata_server::kv::{FreeList, Page};
use strata_server::model::cuda::{device_kv, CudaKv};
use strata_server::pd::decode::{Dest, Fetcher, Geometry, Timing};
use strata_server::pd::prefill::{Pages, Share};
use strata_server::pd::wire::DeviceInfo;
use strata_server::pd::{Mode, PdConfig};
use strata_server::stats::Stats;

use super::{n_pages, room_pages, serve_rooms, shuffled, Args, Decode, Row};
use std::io::{Read, Write};

/// Period of the fill pattern in bytes (not a multiple of any chunk size, so a page landed in
/// the wrong place reads differently).
const PERIOD: usize = (64 << 20) + 4096;

/// Whether `transports` are the GPU ones (all of them), the CPU ones (none), or a mix (refused).
pub(super) fn wanted(transports: &[String]) -> anyhow::Result<bool> {
    let gpu = transports.iter().filter(|t| t.starts_with("cuda")).count();
    anyhow::ensure!(
        gpu == 0 || gpu == transports.len(),
        "--transports: GPU (cuda-ipc, cuda-push) and CPU (same-host, tcp) transports run separately"
    );
    for t in transports.iter().filter(|t| t.starts_with("cuda")) {
        anyhow::ensure!(
            t == "cuda-ipc" || t == "cuda-push",
            "--transports {t}: expected cuda-ipc or cuda-push"
        );
    }
    Ok(gpu > 0)
}

/// The pattern's byte at `g` bytes into a pool.
fn pattern(g: usize) -> u8 {
    let i = g % PERIOD;
    (i.wrapping_mul(31) ^ (i >> 9) ^ (i >> 17)) as u8
}

/// One period of the pattern (a pool's bytes repeat it from byte 0).
fn tile() -> Vec<u8> {
    (0..PERIOD).map(pattern).collect()
}

/// Bytes of one page of one layer's K (or V).
fn chunk(a: &Args) -> usize {
    a.page_size * a.kv_dim * 2
}

/// Pages of a pool of `--pool-mib`, at least `min`.
fn pool_pages(a: &Args, min: usize) -> usize {
    ((a.pool_mib << 20) / (2 * a.layers * chunk(a))).max(min)
}

fn context() -> anyhow::Result<Arc<GpuContext>> {
    GpuContext::new(0).map_err(|e| anyhow::anyhow!("no GPU for the cuda transports: {e}"))
}

/// The prefill child: a GPU pool filled with the pattern, exported, every room ready; prints its
/// export, then serves until its stdin closes.
pub(super) fn prefill_child(a: &Args, port: u16) -> anyhow::Result<()> {
    let ctx = context()?;
    let n = n_pages(a);
    let pages = pool_pages(a, 4 * n);
    let kv = CudaKv::new(&ctx, a.layers, a.kv_dim, pages, a.page_size)?;
    let t = kv.tensor();
    let tile = tile();
    let mut at = 0;
    while at < t.bytes() {
        let len = PERIOD.min(t.bytes() - at);
        ctx.upload_bytes(t, at, &tile[..len])?;
        at += len;
    }
    ctx.synchronize()?;
    let dk = device_kv(&kv).map_err(anyhow::Error::msg)?;
    let export = dk.export().map_err(anyhow::Error::msg)?;
    let share = Share {
        device: Some(export.clone()),
        kv: Some(dk),
    };
    let _reg = serve_rooms(a, port, share, pages, &|pages| {
        Pages::Device(DeviceInfo {
            pages,
            ..export.clone()
        })
    })?;
    let hex: String = export.handle.iter().map(|b| format!("{b:02x}")).collect();
    let info = json!({"pid": std::process::id(), "handle": hex, "pool_pages": export.pool_pages});
    println!("{info}");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(kv);
    Ok(())
}

/// The decode side: every row of every GPU transport.
pub(super) fn measure(a: &Args, port: u16, info: &serde_json::Value) -> anyhow::Result<()> {
    let ctx = context()?;
    let n = n_pages(a);
    let max_c = a.concurrency.iter().copied().max().unwrap_or(1);
    let hex = info["handle"].as_str().unwrap_or_default();
    let mut handle = [0u8; 64];
    anyhow::ensure!(hex.len() == 128, "the prefill child sent no pool handle");
    for (i, b) in handle.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    let theirs_pages = info["pool_pages"].as_u64().unwrap_or(0) as usize;
    let mine_pages = n * max_c;
    let kv = CudaKv::new(&ctx, a.layers, a.kv_dim, mine_pages, a.page_size)?;
    let dk = device_kv(&kv).map_err(anyhow::Error::msg)?;
    let peer = DeviceInfo {
        handle,
        pool_pages: theirs_pages as u64,
        layers: a.layers as u32,
        chunk_bytes: chunk(a) as u64,
        pages: Vec::new(),
    };
    let opened = dk.open(&peer).map_err(anyhow::Error::msg)?;
    let theirs = opened
        .clone()
        .downcast::<IpcMapping>()
        .map_err(|_| anyhow::anyhow!("not an IPC mapping"))?
        .tensor();
    let raw = PeerCopy::new(ctx.clone())?;
    let free = FreeList::new(mine_pages);
    let expected = Expected::new(theirs_pages);
    let bytes = n * 2 * a.layers * chunk(a);
    let geo = Geometry {
        page_size: a.page_size,
        layers: a.layers,
        kv_dim: a.kv_dim,
        elem: 2,
    };
    println!(
        "# pd-transfer on {} (GPU {}): {} tokens per transfer = {n} pages of {} KiB = {:.1} MB ({} layers x {} values x 2 B, page {}); pools of {} (prefill) and {} (decode) pages",
        ctx.name(),
        ctx.ordinal(),
        a.tokens,
        (2 * a.layers * chunk(a)) >> 10,
        bytes as f64 / 1e6,
        a.layers,
        a.kv_dim,
        a.page_size,
        theirs_pages,
        mine_pages,
    );
    println!("| transport | in flight | transfer, aggregate | raw d2d memcpy (IPC mapping), same bytes, one call per transfer | transfer / raw (median of rounds) | per transfer (median ms): starting / waiting / moving / ACK | per copy (mean us): host queue / wait / device |");
    println!("|---|---|---|---|---|---|---|");
    let mut room = 0u64;
    for t in &a.transports {
        let mut cfg = PdConfig::new(Mode::Decode, port, "127.0.0.1", "");
        cfg.same_host = true;
        cfg.push = t == "cuda-push";
        let stats = Arc::new(Stats::default());
        let fetcher = Fetcher::new(cfg, geo, stats.clone()).with_device(Some(dk.clone()));
        let decode = Decode::new(fetcher, free.clone(), a, port);
        for &c in &a.concurrency {
            let mut row = Row::default();
            let mut before = Copies::read(&stats);
            for round in 0..=a.rounds {
                let (wall, done) = decode.round(c, &mut room, &|pages| {
                    Ok(Dest {
                        pages,
                        spans: None,
                        fence: Some(dk.fence().map_err(anyhow::Error::msg)?),
                    })
                })?;
                if round == 0 {
                    for (i, (room, f)) in done.iter().enumerate() {
                        let got = f.pages.as_ref().expect("dest pages");
                        let (t, full) = (kv.tensor(), i == 0);
                        expected.check(&ctx, (t, mine_pages), a, *room, got, full)?;
                    }
                }
                let timings: Vec<Timing> = done.iter().map(|(_, f)| f.timing).collect();
                drop(done);
                let ranges = raw_ranges(a, &theirs, kv.tensor(), round, c);
                // SAFETY: every range lies inside the opened peer pool or this pool (checked in
                // raw_ranges), and no transfer is in flight now.
                let secs = unsafe { raw.memcpy_ranges(&ranges)? };
                if round > 0 {
                    row.add(wall, (c * bytes) as f64, secs, timings);
                } else {
                    // The warm-up's copies open the pool and load the kernel: not counted.
                    before = Copies::read(&stats);
                }
            }
            let per = Copies::read(&stats).since(&before);
            row.print_with(t, c, &per.describe());
        }
    }
    drop(opened);
    Ok(())
}

/// The raw round's copies: transfer `i`'s bytes as one contiguous range, from a rotating slot of
/// the peer's pool into slot `i` of this one (the transport's best case: one call, no page
/// gather).
fn raw_ranges(
    a: &Args,
    theirs: &DTensor,
    mine: &DTensor,
    round: usize,
    c: usize,
) -> Vec<(u64, u64, usize)> {
    let bytes = n_pages(a) * 2 * a.layers * chunk(a);
    let slots = (theirs.bytes() / bytes).max(1);
    (0..c)
        .map(|i| {
            let src = ((round * c + i) % slots) * bytes;
            let dst = i * bytes;
            assert!(src + bytes <= theirs.bytes() && dst + bytes <= mine.bytes());
            (mine.ptr() + dst as u64, theirs.ptr() + src as u64, bytes)
        })
        .collect()
}

/// The prefill pool's contents as this process knows them: the fill pattern's period and the
/// pool's shuffled page order (the rooms' pages).
struct Expected {
    tile: Vec<u8>,
    order: Vec<u32>,
    pages: usize,
}

impl Expected {
    fn new(pages: usize) -> Self {
        Expected {
            tile: tile(),
            order: shuffled(pages),
            pages,
        }
    }

    /// The decode pool's (`mine`, of that many pages) pages `got` hold the prefill's pages of
    /// `room`, byte for byte (`full`), or in the first 4 KiB of every page's K and V of each
    /// layer (enough to see a page landed in the wrong place or not at all, at a fraction of the
    /// download).
    fn check(
        &self,
        ctx: &GpuContext,
        (mine, mine_pages): (&DTensor, usize),
        a: &Args,
        room: u64,
        got: &[Page],
        full: bool,
    ) -> anyhow::Result<()> {
        let (n, ch, tile) = (n_pages(a), chunk(a), &self.tile);
        let theirs = room_pages(&self.order, room, n);
        let mut buf = vec![0u8; if full { ch } else { ch.min(4096) }];
        for (p, &t) in got.iter().zip(&theirs) {
            for lk in 0..2 * a.layers {
                ctx.download_bytes(mine, (lk * mine_pages + p.id() as usize) * ch, &mut buf)?;
                let from = (lk * self.pages + t as usize) * ch;
                let same = buf.chunks(4096).enumerate().all(|(i, b)| {
                    let at = (from + i * 4096) % PERIOD;
                    let first = b.len().min(PERIOD - at);
                    b[..first] == tile[at..at + first] && b[first..] == tile[..b.len() - first]
                });
                anyhow::ensure!(
                    same,
                    "room {room}: page {} (theirs {t}) layer {} {} differs",
                    p.id(),
                    lk / 2,
                    if lk % 2 == 0 { "K" } else { "V" }
                );
            }
        }
        Ok(())
    }
}

/// The decode's per-copy counters (CUDA IPC copies it queued itself).
struct Copies {
    n: u64,
    queue: u64,
    wait: u64,
    device: u64,
    pushed: u64,
}

impl Copies {
    fn read(s: &Stats) -> Self {
        Copies {
            n: Stats::get(&s.pd_recv_ipc_copies),
            queue: Stats::get(&s.pd_recv_ipc_enqueue_micros),
            wait: Stats::get(&s.pd_recv_ipc_wait_micros),
            device: Stats::get(&s.pd_recv_ipc_device_micros),
            pushed: Stats::get(&s.pd_recv_pushed),
        }
    }

    fn since(&self, b: &Self) -> Self {
        Copies {
            n: self.n - b.n,
            queue: self.queue - b.queue,
            wait: self.wait - b.wait,
            device: self.device - b.device,
            pushed: self.pushed - b.pushed,
        }
    }

    fn describe(&self) -> String {
        if self.n == 0 {
            return format!("{} pushed by the prefill", self.pushed);
        }
        let m = |x: u64| x as f64 / self.n as f64;
        format!(
            "{:.0} / {:.0} / {:.0} ({} copies)",
            m(self.queue),
            m(self.wait),
            m(self.device),
            self.n
        )
    }
}
