//! `strata gpu bench --only handoff`: what one kernel boundary of the batch-1 decode chain costs.
//! A graph of [`CHAIN`] `handoff_probe` kernels (kernels/cuda/elementwise.cu), each reading the
//! row its predecessor's blocks wrote, is replayed with each way of waiting for the predecessor:
//! PDL's `griddepcontrol.wait` after or before the trigger, and an arrival counter per kernel
//! (spin on the predecessor's count, no grid-completion wait). Per-kernel microseconds at a few
//! grid sizes (1 block: the row norm of one token; 128: the decode GEMVs and attention). The
//! rows and counters are cleared at the start of each replay, and the last row is compared
//! across the ways of waiting: a kernel that read its input before it was written would change
//! it.

use cudarc::driver::sys;
use serde_json::{json, Value};
use strata_kernels::cuda::launch::{launch, Arg, Dims};
use strata_kernels::cuda::nvrtc::Program;
use strata_kernels::cuda::{DType, GpuContext};

use super::bench::gpu_ms;

/// Kernels per chain.
const CHAIN: usize = 64;
/// Floats per row (the 1B hidden size).
const ROW: usize = 2048;

/// (mode, counter stride in words, poll interval in ns, name)
const MODES: [(i32, usize, i32, &str); 6] = [
    (0, 1, 0, "griddepcontrol.wait, then trigger"),
    (1, 1, 0, "trigger, then griddepcontrol.wait"),
    (
        2,
        1,
        20,
        "trigger, then spin on an arrival counter (adjacent counters, polled every 20 ns)",
    ),
    (2, 32, 20, "counters 128 B apart, polled every 20 ns"),
    (2, 32, 100, "counters 128 B apart, polled every 100 ns"),
    (2, 32, 400, "counters 128 B apart, polled every 400 ns"),
];
/// Words of the counter array (the widest stride).
const SYNC_WORDS: usize = (CHAIN + 1) * 32;

pub fn run(ctx: &GpuContext, summary: &mut Vec<String>) -> anyhow::Result<Value> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let f = ctx.function(Program::Elementwise, "handoff_probe")?;
    let rows = ctx.alloc(DType::F32, &[CHAIN + 1, ROW])?;
    let sync = ctx.alloc(DType::I32, &[SYNC_WORDS])?;
    let first: Vec<f32> = (0..(CHAIN + 1) * ROW)
        .map(|i| (i % 17) as f32 * 0.25 - 2.0)
        .collect();
    ctx.overwrite(&rows, &first)?;
    let stream = ctx.stream();
    let cs = stream.cu_stream();
    let mut out = Vec::new();
    for grid in [1usize, 8, 128, 2 * ctx.sm_count()] {
        let mut last: Option<Vec<f32>> = None;
        for (mode, stride, sleep, name) in MODES {
            ctx.cuda().bind_to_thread()?;
            stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
            let body = || -> anyhow::Result<()> {
                // SAFETY: both buffers are this many words long; captured on the compute stream.
                unsafe {
                    sys::cuMemsetD32Async(rows.ptr() + (ROW * 4) as u64, 0, CHAIN * ROW, cs)
                        .result()?;
                    sys::cuMemsetD32Async(sync.ptr(), 0, SYNC_WORDS, cs).result()?;
                }
                for k in 1..=CHAIN {
                    let args = [
                        Arg::U64(rows.ptr()),
                        Arg::U64(sync.ptr()),
                        Arg::I32(k as i32),
                        Arg::I32(grid as i32),
                        Arg::I32(ROW as i32),
                        Arg::I32(mode),
                        Arg::I32(stride as i32),
                        Arg::I32(sleep),
                    ];
                    // SAFETY: kernel k reads row k - 1 and writes row k of `rows` ([CHAIN + 1,
                    // ROW] f32) and touches counters (k - 1) * stride and k * stride of `sync`
                    // (SYNC_WORDS u32, stride <= 32).
                    unsafe { launch(&f, cs, Dims::rows(grid, 256), &args)? };
                }
                Ok(())
            };
            let r = body();
            let g = stream.end_capture(CUgraphInstantiate_flags(0));
            r?;
            let g = g?.ok_or_else(|| anyhow::anyhow!("empty graph"))?;
            let ms = gpu_ms(ctx, false, 3, 15, || Ok(g.launch()?))?;
            ctx.synchronize()?;
            let got = ctx.download_f32_range(&rows, CHAIN * ROW, ROW)?;
            let same = match &last {
                None => true,
                Some(prev) => prev
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
            };
            last.get_or_insert(got);
            let us = ms * 1e3 / CHAIN as f64;
            summary.push(format!(
                "handoff: {grid} blocks, {name}: {us:.2} us per kernel{}",
                if same {
                    ""
                } else {
                    " (LAST ROW DIFFERS from the first way's)"
                }
            ));
            out.push(json!({"blocks": grid, "mode": name, "us_per_kernel": us, "same": same}));
            anyhow::ensure!(same, "handoff: {grid} blocks, {name}: the last row differs");
        }
    }
    Ok(json!(out))
}
