//! `strata gpu bench --only handoff`: what one kernel boundary of the batch-1 decode chain costs
//! under each way of waiting for the predecessor. Chains of [`CHAIN`] `handoff_probe` kernels
//! (kernels/cuda/elementwise.cu), each reading the row its predecessor's blocks wrote, are
//! captured into one graph (`bench_model::graph_us`) and replayed with PDL's
//! `griddepcontrol.wait` after or before the trigger, and with arrival counters in global
//! memory (full fences, or release / acquire alone): per-kernel microseconds at a few
//! grid sizes (1 block: the row norm of one token; 128: the decode attention's clusters; two per
//! SM: the GEMVs). The question a persistent decode kernel must answer first: on an H100
//! (2026-12-06, docs/perf.md) every counter form was 0.3-1.2 us slower per boundary than PDL's
//! wait, so no such kernel was written. The rows and counters
//! are cleared at the start of each chain and the last row is compared bitwise across the ways
//! of waiting: a kernel that read its input before it was written would change it.

use cudarc::driver::sys;
use serde_json::{json, Value};
use strata_kernels::cuda::launch::{launch, Arg, Dims};
use strata_kernels::cuda::nvrtc::Program;
use strata_kernels::cuda::{DType, GpuContext};

use super::bench_model::graph_us;

/// Kernels per chain.
const CHAIN: usize = 64;
/// Floats per row (the 1B hidden size).
const ROW: usize = 2048;
/// Words of the counter array (one counter per 32 words, as the kernel spaces them).
const SYNC_WORDS: usize = (CHAIN + 1) * 32;

/// The probe's modes (kernels/cuda/elementwise.cu `handoff_probe`).
const MODES: [(i32, &str); 5] = [
    (0, "griddepcontrol.wait, then trigger"),
    (1, "trigger, then griddepcontrol.wait"),
    (2, "trigger, counters with full fences"),
    (3, "trigger, counters by release / acquire"),
    (4, "counters by release / acquire, then trigger"),
];

pub fn run(ctx: &GpuContext, summary: &mut Vec<String>) -> anyhow::Result<Value> {
    let f = ctx.function(Program::Elementwise, "handoff_probe")?;
    let rows = ctx.alloc(DType::F32, &[CHAIN + 1, ROW])?;
    let sync = ctx.alloc(DType::I32, &[SYNC_WORDS])?;
    let init: Vec<f32> = (0..(CHAIN + 1) * ROW)
        .map(|i| (i % 17) as f32 * 0.25 - 2.0)
        .collect();
    ctx.overwrite(&rows, &init)?;
    let cs = ctx.stream().cu_stream();
    let mut out = Vec::new();
    for grid in [1usize, 8, 128, 2 * ctx.sm_count()] {
        let mut first: Option<Vec<f32>> = None;
        for (mode, name) in MODES {
            // One chain: rows 1.. and the counters cleared, then CHAIN kernels.
            let chain = || -> anyhow::Result<()> {
                // SAFETY: rows 1..=CHAIN and the counters lie inside their allocations; on
                // the compute stream (captured by graph_us).
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
                    ];
                    // SAFETY: kernel k reads row k - 1 and writes row k of `rows` ([CHAIN + 1,
                    // ROW] f32) and touches counters (k - 1) * 32 and k * 32 of `sync`.
                    unsafe { launch(&f, cs, Dims::rows(grid, 256), &args)? };
                }
                Ok(())
            };
            ctx.cuda().bind_to_thread()?;
            let us = graph_us(ctx, chain)? / CHAIN as f64;
            ctx.synchronize()?;
            let got = ctx.download_f32_range(&rows, CHAIN * ROW, ROW)?;
            let same = first
                .as_ref()
                .is_none_or(|f| f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()));
            first.get_or_insert(got);
            summary.push(format!(
                "handoff: {grid} blocks, {name}: {us:.2} us per kernel{}",
                if same { "" } else { " (LAST ROW DIFFERS)" }
            ));
            out.push(json!({"blocks": grid, "mode": name, "us_per_kernel": us, "same": same}));
            anyhow::ensure!(same, "handoff: {grid} blocks, {name}: the last row differs");
        }
    }
    Ok(json!(out))
}
