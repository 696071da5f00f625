//! `strata gpu bench --only stream`: how fast a grid shape streams a weight matrix from memory
//! with the GEMVs' loads (`stream_probe`, kernels/cuda/gemv.cu). The question a decode kernel
//! with one block per SM (qkv and the attention in one cluster per KV group, docs/perf.md next
//! steps item 1) must answer first: does 128 blocks x 96 KB stream the 1B qkv matrix as fast as
//! the qkv GEMV's grid (192 blocks of 256 threads, 64 KB each)? Each call reads its matrix at
//! another offset of a buffer larger than the L2, so every byte comes from memory, as in a
//! decode step; 32 calls per graph (`bench_model::graph_us`).

use serde_json::{json, Value};
use strata_kernels::cuda::launch::{launch, Arg, Dims};
use strata_kernels::cuda::nvrtc::Program;
use strata_kernels::cuda::{DType, GpuContext};

use super::bench_model::graph_us;

/// The matrices (name, bytes): Llama-3.2-1B qkv and gate_up, Llama-3.1-8B qkv.
const MATS: [(&str, usize); 3] = [
    ("1B qkv", 3072 * 2048 * 2),
    ("1B gate_up", 16384 * 2048 * 2),
    ("8B qkv", 6144 * 4096 * 2),
];
/// The rotating buffer (bf16 elements, 1 GiB): far larger than any L2.
const BUF_ELEMS: usize = 512 << 20;

pub fn run(ctx: &GpuContext, summary: &mut Vec<String>) -> anyhow::Result<Value> {
    let f = ctx.function(Program::Gemv, "stream_probe")?;
    let buf = ctx.alloc(DType::Bf16, &[BUF_ELEMS])?;
    ctx.memset(&buf, 0x3c)?;
    let sms = ctx.sm_count();
    let out = ctx.alloc(DType::F32, &[16 * sms.max(192)])?;
    let cs = ctx.stream().cu_stream();
    // (blocks, threads): the qkv GEMV's grid at 1B, one block per KV-group cluster block (8 x 16)
    // at three widths, one and two blocks per SM, many small blocks.
    let shapes = [
        (192, 256),
        (128, 256),
        (128, 512),
        (128, 1024),
        (sms, 256),
        (2 * sms, 256),
        (16 * sms, 256),
    ];
    let mut rows = Vec::new();
    for (name, bytes) in MATS {
        let mut line = format!("  stream {name} ({:.1} MB):", bytes as f64 / 1e6);
        for (blocks, threads) in shapes {
            let slots = (BUF_ELEMS * 2 / bytes).max(1);
            let mut k = 0usize;
            ctx.cuda().bind_to_thread()?;
            let us = graph_us(ctx, || {
                let off = (k % slots) * bytes;
                k += 1;
                let args = [
                    Arg::U64(buf.ptr() + off as u64),
                    Arg::U64((bytes / 16) as u64),
                    Arg::U64(out.ptr()),
                ];
                // SAFETY: the slice [off, off + bytes) lies inside `buf` (slots * bytes <= its
                // size); block b writes out[b], b < blocks <= out's length.
                unsafe { launch(&f, cs, Dims::rows(blocks, threads), &args)? };
                Ok(())
            })?;
            let gbs = bytes as f64 / us / 1e3;
            line.push_str(&format!(" {blocks}x{threads} {us:.1} us ({gbs:.0} GB/s);"));
            rows.push(json!({"matrix": name, "bytes": bytes, "blocks": blocks,
                "threads": threads, "us": us, "bytes_per_s": gbs * 1e9}));
        }
        summary.push(line);
    }
    Ok(json!(rows))
}
