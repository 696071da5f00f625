//! Decode and prefill of a Llama-3-8B-shaped stack with random bf16 weights made on the GPU.
//! Decode: per-step wall time (forward + greedy sampling + token download) at each batch size,
//! every sequence holding `decode_ctx` cached tokens, against the floor weight bytes / measured
//! copy bandwidth. Prefill: one prompt per length, no cached prefix, tokens/s against the GEMM
//! floor (matrix FLOPs / measured cuBLAS rate).

use std::time::Instant;

use serde_json::{json, Value};
use strata_kernels::cuda::llama::{LlamaModel, LlamaShape, StepInput};
use strata_kernels::cuda::{AttnSeq, CudaOps, Gemm, SamplingParams};

use super::bench::{gpu_ms, median, Args};

const PAGE: usize = 16;

fn step_input(
    ops: &CudaOps,
    model: &LlamaModel,
    seqs: &[(usize, usize)],
) -> anyhow::Result<StepInput> {
    let c = ops.context();
    let mut ids = Vec::new();
    let mut pos = Vec::new();
    let mut slots = Vec::new();
    let mut last = Vec::new();
    let mut aseqs = Vec::new();
    let mut next_page = 0i32;
    for (i, &(q, kv)) in seqs.iter().enumerate() {
        let n = kv.div_ceil(PAGE) as i32;
        let pages: Vec<i32> = (next_page..next_page + n).collect();
        next_page += n;
        for j in 0..q {
            let p = kv - q + j;
            ids.push(((i * 7919 + j * 104729) % model.shape.vocab) as i32);
            pos.push(p as i32);
            slots.push(pages[p / PAGE] * PAGE as i32 + (p % PAGE) as i32);
        }
        last.push((ids.len() - 1) as i32);
        aseqs.push(AttnSeq { q_len: q, kv_len: kv, pages });
    }
    let t = ids.len();
    Ok(StepInput {
        ids: c.upload_i32(&[t], &ids)?,
        pos: c.upload_i32(&[t], &pos)?,
        slots: c.upload_i32(&[t], &slots)?,
        host_slots: slots,
        plan: ops.attention_plan(model.attn_shape(), &aseqs, None)?,
        last_rows: c.upload_i32(&[last.len()], &last)?,
    })
}

pub fn run(
    ops: &CudaOps,
    gemm: &Gemm,
    args: &Args,
    copy_bw: Option<f64>,
    gemm_rate: Option<f64>,
    summary: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let mut shape = LlamaShape::llama3_8b();
    if let Some(l) = args.layers {
        shape.layers = l;
    }
    let max_b = args.decode_batches.iter().copied().max().unwrap_or(1);
    let max_p = args.prefill_lens.iter().copied().max().unwrap_or(0);
    let pages = (max_b * args.decode_ctx.div_ceil(PAGE)).max(max_p.div_ceil(PAGE)) + 1;
    let t0 = Instant::now();
    let model = LlamaModel::random(ops, shape, PAGE, pages, 42)?;
    ops.context().synchronize()?;
    println!("model: {} layers, random weights + {pages}-page KV pool in {:.1}s", shape.layers, t0.elapsed().as_secs_f64());
    let wbytes = shape.decode_weight_bytes() as f64;
    let mut out = json!({"layers": shape.layers, "weight_bytes": wbytes, "decode_ctx": args.decode_ctx});
    let want = |s: &str| args.only.iter().any(|o| o == s);
    if want("decode") {
        let floor_ms = copy_bw.map(|bw| wbytes / bw * 1e3);
        let mut rows = Vec::new();
        for &b in &args.decode_batches {
            let seqs: Vec<(usize, usize)> = (0..b).map(|_| (1, args.decode_ctx)).collect();
            let input = step_input(ops, &model, &seqs)?;
            let ws = model.workspace(ops, b, b)?;
            let params = vec![SamplingParams::GREEDY; b];
            let unif = vec![0.5f32; b];
            let step = || -> anyhow::Result<Vec<i32>> {
                model.forward(ops, gemm, &ws, &input)?;
                Ok(ops.sample(&ws.logits, &ws.probs, &params, &unif)?)
            };
            for _ in 0..3 {
                step()?;
            }
            let mut wall = Vec::new();
            for _ in 0..15 {
                let t = Instant::now();
                step()?;
                wall.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let wall = median(wall);
            let fwd = gpu_ms(ops.context(), false, 1, 7, || Ok(model.forward(ops, gemm, &ws, &input)?))?;
            let kv_bytes = (b * args.decode_ctx * shape.layers * 2 * shape.n_kv_heads * shape.head_dim * 2) as f64;
            let kv_floor = copy_bw.map(|bw| (wbytes + kv_bytes) / bw * 1e3);
            let ratio = floor_ms.map(|f| wall / f);
            summary.push(format!(
                "decode b{b} ctx{}: {:.2} ms/step (GPU forward {:.2} ms), {:.0} tok/s; floor weights {:.2} ms (x{:.2}), weights+KV {:.2} ms",
                args.decode_ctx, wall, fwd, b as f64 / wall * 1e3,
                floor_ms.unwrap_or(f64::NAN), ratio.unwrap_or(f64::NAN), kv_floor.unwrap_or(f64::NAN)
            ));
            rows.push(json!({"batch": b, "step_ms": wall, "forward_gpu_ms": fwd, "tokens_per_s": b as f64 / wall * 1e3,
                "floor_weights_ms": floor_ms, "floor_weights_kv_ms": kv_floor, "ratio_to_floor": ratio}));
        }
        out["decode"] = json!(rows);
    }
    if want("prefill") {
        let mut rows = Vec::new();
        for &t in &args.prefill_lens {
            let input = step_input(ops, &model, &[(t, t)])?;
            let ws = model.workspace(ops, t, 1)?;
            let ms = gpu_ms(ops.context(), false, 1, 3, || Ok(model.forward(ops, gemm, &ws, &input)?))?;
            let mat = 2.0 * t as f64 * (shape.layers * shape.layer_matrix_params()) as f64
                + 2.0 * (shape.vocab * shape.hidden) as f64;
            let attn = shape.layers as f64 * 4.0 * (shape.n_heads * shape.head_dim) as f64 * (t * (t + 1) / 2) as f64;
            let floor = gemm_rate.map(|r| mat / r * 1e3);
            let tps = t as f64 / ms * 1e3;
            summary.push(format!(
                "prefill {t}: {:.1} ms, {:.0} tok/s; GEMM floor {:.1} ms ({:.0} tok/s, we reach {:.0}%); attention {:.1} TFLOP of {:.1} total",
                ms, tps, floor.unwrap_or(f64::NAN), floor.map_or(f64::NAN, |f| t as f64 / f * 1e3),
                floor.map_or(f64::NAN, |f| f / ms * 100.0), attn / 1e12, (mat + attn) / 1e12
            ));
            rows.push(json!({"tokens": t, "ms": ms, "tokens_per_s": tps, "gemm_floor_ms": floor,
                "matrix_flops": mat, "attention_flops": attn}));
        }
        out["prefill"] = json!(rows);
    }
    Ok(out)
}
