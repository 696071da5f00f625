//! `strata gpu bench`: the page path (kernel gather/scatter vs one plain pinned memcpy of the same
//! bytes), device-to-device copy bandwidth, the cuBLAS bf16 GEMM rate, then decode and prefill of
//! a Llama-3-8B-shaped stack (bench_model.rs) against floors measured in the same run, and the
//! GPU sampler (bench_sampling.rs).
//! GPU times come from CUDA events (median of repeats after warm-up); inputs are random.

use std::ffi::c_void;
use std::sync::Arc;

use anyhow::Context;
use clap::Args as ClapArgs;
use cudarc::driver::sys;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use strata_kernels::cuda::{CudaOps, DType, Gemm, GpuContext, PageLayout, PageMover, PinnedBuf};

use super::{bench_model, check::shuffle, Common};

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Which parts to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "transfer,copy,gemm,decode,prefill,sampling"
    )]
    pub only: Vec<String>,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub decode_batches: Vec<usize>,
    /// Context length (tokens already cached) of every decoding sequence.
    #[arg(long, default_value_t = 1024)]
    pub decode_ctx: usize,
    /// Prefill prompt lengths.
    #[arg(long, value_delimiter = ',', default_value = "2048,8192")]
    pub prefill_lens: Vec<usize>,
    /// Tokens per KV page of the decode/prefill benchmark's pools (SGLang's default is 1; the
    /// TMA attention forms need powers of two from 8).
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    /// Override the layer count (default: Llama-3-8B's 32).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Model shape of the decode/prefill benchmark: llama-3.1-8b or llama-3.2-1b.
    #[arg(long, default_value = "llama-3.1-8b")]
    pub shape: String,
    /// `pd-copy`: transfer sizes in MB (one PD transfer's bytes): the raw device-to-device copy
    /// and the pool-to-pool page copy of a CUDA IPC pull, timed on the host like a transfer.
    #[arg(long, value_delimiter = ',', default_value = "55,219")]
    pub pd_copy_mb: Vec<f64>,
    /// Write all numbers as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Batch-invariant mode (`strata serve --enable-deterministic-inference`): every GEMM on the
    /// weight shape's one cuBLASLt algorithm, fixed decode splits.
    #[arg(long)]
    pub deterministic: bool,
}

/// Median GPU time in ms of `f` on `stream`, timed with events, after `warm` unmeasured runs.
pub fn gpu_ms(
    ctx: &GpuContext,
    on_copy: bool,
    warm: usize,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let stream = if on_copy {
        ctx.copy_stream()
    } else {
        ctx.stream()
    };
    for _ in 0..warm {
        f()?;
    }
    ctx.synchronize()?;
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let a = ctx.cuda().new_event(flags)?;
        let b = ctx.cuda().new_event(flags)?;
        a.record(stream)?;
        f()?;
        b.record(stream)?;
        b.synchronize()?;
        v.push(a.elapsed_ms(&b)? as f64);
    }
    Ok(median(v))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ctx = GpuContext::new(args.common.base_gpu_id).context("opening the GPU")?;
    println!(
        "gpu bench on {} ({}, {} SMs, driver {})",
        ctx.name(),
        ctx.arch(),
        ctx.sm_count(),
        ctx.driver()
    );
    let ops = CudaOps::new(ctx.clone())?;
    let gemm = Gemm::new(ctx.clone())?.with_deterministic(args.deterministic)?;
    if args.deterministic {
        println!(
            "batch-invariant mode: one cuBLASLt algorithm per weight shape, fixed decode splits"
        );
    }
    let mut doc =
        json!({"device": ctx.name(), "arch": ctx.arch(), "deterministic": args.deterministic});
    let want = |s: &str| args.only.iter().any(|o| o == s);
    let mut summary: Vec<String> = Vec::new();
    if want("transfer") {
        let t = transfer(&ctx, &mut summary)?;
        doc["transfer"] = t;
    }
    let mut copy_bw = None;
    if want("copy") || want("decode") {
        let bw = copy_bandwidth(&ctx)?;
        summary.push(format!("d2d copy: {:.0} GB/s (read+write)", bw / 1e9));
        doc["copy_bw_bytes_per_s"] = json!(bw);
        copy_bw = Some(bw);
    }
    let mut rate = None;
    if want("gemm") || want("prefill") {
        let r = gemm_rate(&ops, &gemm)?;
        summary.push(format!("cuBLAS bf16 GEMM 8192^3: {:.0} TFLOP/s", r / 1e12));
        doc["gemm_flops_per_s"] = json!(r);
        rate = Some(r);
    }
    if want("decode") || want("prefill") {
        let m = bench_model::run(&ops, &gemm, &args, copy_bw, rate, &mut summary)?;
        doc["model"] = m;
    }
    if want("sampling") {
        doc["sampling"] = super::bench_sampling::run(&ops, &mut summary)?;
    }
    if want("pd-copy") {
        doc["pd_copy"] = pd_copy(&ctx, &args, &mut summary)?;
    }
    if want("handoff") {
        doc["handoff"] = super::bench_handoff::run(&ctx, &mut summary)?;
    }
    if want("stream") {
        doc["stream"] = super::bench_stream::run(&ctx, &mut summary)?;
    }
    println!("\n== summary ({}) ==", ctx.name());
    for s in &summary {
        println!("{s}");
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

fn copy_bandwidth(ctx: &Arc<GpuContext>) -> anyhow::Result<f64> {
    let bytes = 2usize << 30;
    let a = ctx.alloc(DType::U8, &[bytes])?;
    let b = ctx.alloc(DType::U8, &[bytes])?;
    ctx.memset(&a, 0x5A)?;
    let ms = gpu_ms(ctx, false, 2, 10, || {
        // SAFETY: both buffers hold `bytes` bytes; ordered on the compute stream.
        unsafe { sys::cuMemcpyDtoDAsync_v2(b.ptr(), a.ptr(), bytes, ctx.stream().cu_stream()) }
            .result()?;
        Ok(())
    })?;
    Ok(2.0 * bytes as f64 / (ms / 1e3))
}

/// The device-to-device side of a PD transfer over CUDA IPC, in one process: a plain
/// `cuMemcpyDtoDAsync` of one transfer's bytes (the raw copy rate the transfer is compared with)
/// and the copy a decode runs from an opened prefill pool straight into its own pool (`PeerCopy`:
/// the shape's pages of 64 tokens at random places in one pool to random places in another, one
/// launch on the PD stream, page lists in its reused buffer, queued as a PD transfer queues it:
/// after a fence, between timing events), both timed on the host from launch (the fence, for the
/// pool copy) to completion (the event the decode waits for), median of 9 after 3 warm-ups; and
/// how long queuing the pool copy takes on the host, with nothing else running.
fn pd_copy(ctx: &Arc<GpuContext>, args: &Args, summary: &mut Vec<String>) -> anyhow::Result<Value> {
    use strata_kernels::cuda::PeerCopy;
    let (layers, kv_dim) = match args.shape.as_str() {
        "llama-3.2-1b" => (16, 512),
        _ => (32, 1024),
    };
    let page = 64;
    let chunk = page * kv_dim * 2;
    let page_bytes = layers * 2 * chunk;
    let g = PeerCopy::new(ctx.clone())?;
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = Vec::new();
    for &mb in &args.pd_copy_mb {
        let n = ((mb * 1e6 / page_bytes as f64).ceil() as usize).max(1);
        let bytes = n * page_bytes;
        let layout = |pool_pages| PageLayout {
            layers,
            pool_pages,
            chunk_bytes: chunk,
        };
        let (sl, dl) = (layout(2 * n + 7), layout(2 * n + 3));
        let src_pool = ctx.alloc(DType::U8, &[sl.pool_bytes()])?;
        let dst_pool = ctx.alloc(DType::U8, &[dl.pool_bytes()])?;
        ctx.memset(&src_pool, 0x3C)?;
        let src = ctx.alloc(DType::U8, &[bytes])?;
        let dst = ctx.alloc(DType::U8, &[bytes])?;
        ctx.memset(&src, 0x5A)?;
        ctx.synchronize()?;
        let pick = |rng: &mut StdRng, pages: usize| -> Vec<u32> {
            let mut ids: Vec<i32> = (0..pages as i32).collect();
            shuffle(rng, &mut ids);
            ids[..n].iter().map(|&p| p as u32).collect()
        };
        // Timed as a PD transfer queues it (a fence, the copy between timing events): how long
        // queuing takes on the host, and launch to completion.
        let (mut direct, mut calls) = (Vec::new(), Vec::new());
        for i in 0..12 {
            let (sp, dp) = (pick(&mut rng, sl.pool_pages), pick(&mut rng, dl.pool_pages));
            let t = std::time::Instant::now();
            let fence = ctx.stream().record_event(None)?;
            let (_, done) = g.copy(
                (&src_pool, sl),
                (&dst_pool, dl),
                &sp,
                &dp,
                Some(&fence),
                true,
            )?;
            let called = t.elapsed().as_secs_f64();
            done.synchronize()?;
            if i >= 3 {
                direct.push(t.elapsed().as_secs_f64());
                calls.push(called);
            }
        }
        let memcpy = g.memcpy_rounds(&src, &dst, 12)?[3..].to_vec();
        let (ds, ms, cs) = (median(direct), median(memcpy), median(calls));
        let line = format!(
            "pd-copy {:.0} MB ({n} pages of {} KiB): raw d2d memcpy {:.3} ms = {:.1} GB/s; IPC pool-to-pool page copy {:.3} ms = {:.1} GB/s = {:.2}x the memcpy; fence + timed copy queued in {:.1} us",
            bytes as f64 / 1e6,
            page_bytes >> 10,
            ms * 1e3,
            bytes as f64 / ms / 1e9,
            ds * 1e3,
            bytes as f64 / ds / 1e9,
            ms / ds,
            cs * 1e6
        );
        println!("{line}");
        summary.push(line);
        out.push(json!({"bytes": bytes, "memcpy_s": ms, "direct_s": ds, "queue_s": cs}));
    }
    Ok(Value::Array(out))
}

fn gemm_rate(ops: &CudaOps, gemm: &Gemm) -> anyhow::Result<f64> {
    let c = ops.context();
    let n = 8192;
    let x = c.alloc(DType::Bf16, &[n, n])?;
    let w = c.alloc(DType::Bf16, &[n, n])?;
    let y = c.alloc(DType::Bf16, &[n, n])?;
    ops.fill_uniform(&x, 1, 1.0)?;
    ops.fill_uniform(&w, 2, 0.01)?;
    let ms = gpu_ms(c, false, 3, 10, || Ok(gemm.linear(&x, &w, &y)?))?;
    Ok(2.0 * (n as f64).powi(3) / (ms / 1e3))
}

/// Kernel gather/scatter of Llama-3-8B-shaped pages vs one plain pinned memcpy of the same bytes.
fn transfer(ctx: &Arc<GpuContext>, summary: &mut Vec<String>) -> anyhow::Result<Value> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = Vec::new();
    for page_tokens in [16usize, 64] {
        let chunk = page_tokens * 8 * 128 * 2;
        let layers = 32;
        let n = (1usize << 30) / (layers * 2 * chunk);
        let layout = PageLayout {
            layers,
            pool_pages: 2 * n,
            chunk_bytes: chunk,
        };
        let mover = PageMover::new(ctx.clone(), layout)?;
        let bytes = n * layout.host_page_bytes();
        let mut host = PinnedBuf::new(ctx, bytes)?;
        rng.fill(&mut host.as_mut_slice()[..1 << 20]);
        let pool = ctx.alloc(DType::U8, &[layout.pool_bytes()])?;
        ctx.memset(&pool, 0x33)?;
        let contig = ctx.alloc(DType::U8, &[bytes])?;
        let mut gp: Vec<i32> = (0..2 * n as i32).collect();
        shuffle(&mut rng, &mut gp);
        gp.truncate(n);
        let mut hp: Vec<i32> = (0..n as i32).collect();
        shuffle(&mut rng, &mut hp);
        let pairs = mover.pairs(&gp, &hp, &host)?;
        let cs = ctx.copy_stream().cu_stream();
        let h2d = gpu_ms(ctx, true, 2, 7, || {
            // SAFETY: `contig` and `host` both hold `bytes` bytes; pinned source.
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(contig.ptr(), host.host_ptr() as *const c_void, bytes, cs)
            }
            .result()?;
            Ok(())
        })?;
        let d2h = gpu_ms(ctx, true, 2, 7, || {
            // SAFETY: as above, reversed.
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(host.host_ptr() as *mut c_void, contig.ptr(), bytes, cs)
            }
            .result()?;
            Ok(())
        })?;
        let load = gpu_ms(ctx, true, 2, 7, || {
            mover.load(&pool, &host, &pairs)?;
            Ok(())
        })?;
        let store = gpu_ms(ctx, true, 2, 7, || {
            mover.store(&pool, &host, &pairs)?;
            Ok(())
        })?;
        let gbs = |ms: f64| bytes as f64 / (ms / 1e3) / 1e9;
        summary.push(format!(
            "page {page_tokens} tok ({} KiB chunks, {:.2} GiB): load {:.1} GB/s vs memcpy H2D {:.1} ({:.2}x); store {:.1} GB/s vs D2H {:.1} ({:.2}x)",
            chunk / 1024,
            bytes as f64 / (1u64 << 30) as f64,
            gbs(load), gbs(h2d), h2d / load, gbs(store), gbs(d2h), d2h / store
        ));
        out.push(json!({"page_tokens": page_tokens, "chunk_bytes": chunk, "bytes": bytes,
            "load_gbs": gbs(load), "memcpy_h2d_gbs": gbs(h2d), "store_gbs": gbs(store), "memcpy_d2h_gbs": gbs(d2h)}));
    }
    Ok(json!(out))
}
