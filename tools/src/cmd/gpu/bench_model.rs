//! Decode and prefill of a Llama-3-8B-shaped stack with random bf16 weights made on the GPU.
//! Decode (here): per-step wall time (forward with its greedy picks + their download) at each
//! batch size, every sequence holding `decode_ctx` cached tokens, against the floor weight bytes
//! / measured copy bandwidth. Prefill (bench_prefill.rs): one prompt per length, no cached
//! prefix, tokens/s against the GEMM floor (matrix FLOPs / measured cuBLAS rate).

use std::time::Instant;

use serde_json::{json, Value};
use strata_kernels::cuda::llama::{LlamaModel, LlamaShape, StepInput, Workspace};
use strata_kernels::cuda::{
    launch, AttnKernel, AttnPlan, AttnSeq, AttnShape, CudaOps, DTensor, Gemm, GemmPath, PlanOpts,
    RowsMode,
};

use super::bench::{gpu_ms, median, Args};

/// The forward input of `seqs` ((new tokens, keys) each); `det`: batch-invariant attention plan
/// (`--deterministic`).
pub(super) fn step_input(
    ops: &CudaOps,
    model: &LlamaModel,
    seqs: &[(usize, usize)],
    det: bool,
    no_cluster: bool,
) -> anyhow::Result<StepInput> {
    let c = ops.context();
    let mut ids = Vec::new();
    let mut pos = Vec::new();
    let mut slots = Vec::new();
    let mut last = Vec::new();
    let mut aseqs = Vec::new();
    let mut next_page = 0i32;
    let page = model.attn_shape().page_size;
    for (i, &(q, kv)) in seqs.iter().enumerate() {
        let n = kv.div_ceil(page) as i32;
        let pages: Vec<i32> = (next_page..next_page + n).collect();
        next_page += n;
        for j in 0..q {
            let p = kv - q + j;
            ids.push(((i * 7919 + j * 104729) % model.shape.vocab) as i32);
            pos.push(p as i32);
            slots.push(pages[p / page] * page as i32 + (p % page) as i32);
        }
        last.push((ids.len() - 1) as i32);
        aseqs.push(AttnSeq {
            q_len: q,
            kv_len: kv,
            pages,
        });
    }
    let t = ids.len();
    Ok(StepInput {
        ids: c.upload_i32(&[t], &ids)?,
        pos: c.upload_i32(&[t], &pos)?,
        slots: c.upload_i32(&[t], &slots)?,
        host_slots: slots,
        plan: ops.attention_plan_with(
            model.attn_shape(),
            &aseqs,
            strata_kernels::cuda::PlanOpts {
                deterministic: det,
                no_cluster,
                ..Default::default()
            },
        )?,
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
    let mut shape = match args.shape.as_str() {
        "llama-3.2-1b" | "1b" => LlamaShape::llama32_1b(),
        "llama-3.1-8b" | "8b" => LlamaShape::llama3_8b(),
        o => anyhow::bail!("--shape {o}: expected llama-3.1-8b or llama-3.2-1b"),
    };
    if let Some(l) = args.layers {
        shape.layers = l;
    }
    let max_b = args.decode_batches.iter().copied().max().unwrap_or(1);
    let max_p = args.prefill_lens.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(args.page_size >= 1, "--page-size must be at least 1");
    let page = args.page_size;
    let pages = (max_b * args.decode_ctx.div_ceil(page)).max(max_p.div_ceil(page)) + 1;
    let t0 = Instant::now();
    let model = LlamaModel::random(ops, shape, page, pages, 42)?;
    ops.context().synchronize()?;
    println!(
        "model: {} layers, random weights + {pages}-page KV pool in {:.1}s",
        shape.layers,
        t0.elapsed().as_secs_f64()
    );
    let wbytes = shape.decode_weight_bytes() as f64;
    let mut out =
        json!({"layers": shape.layers, "weight_bytes": wbytes, "decode_ctx": args.decode_ctx});
    let want = |s: &str| args.only.iter().any(|o| o == s);
    if want("decode") {
        decode(ops, gemm, args, &model, copy_bw, summary, &mut out)?;
    }
    if want("prefill") {
        out["prefill"] =
            super::bench_prefill::prefill(ops, gemm, args, &model, gemm_rate, summary)?;
    }
    Ok(out)
}

/// The decode part of [`run`]: every batch size's step (eager, graphed, pipelined, each
/// side-by-side variant at its batch sizes, the per-op and per-layer-op breakdowns, attention
/// alone), its row of `out["decode"]`, and the cuBLASLt tuning the steps left.
fn decode(
    ops: &CudaOps,
    gemm: &Gemm,
    args: &Args,
    model: &LlamaModel,
    copy_bw: Option<f64>,
    summary: &mut Vec<String>,
    out: &mut Value,
) -> anyhow::Result<()> {
    let shape = model.shape;
    let wbytes = shape.decode_weight_bytes() as f64;

    let floor_ms = copy_bw.map(|bw| wbytes / bw * 1e3);
    let mut rows = Vec::new();
    for &b in &args.decode_batches {
        let seqs: Vec<(usize, usize)> = (0..b).map(|_| (1, args.decode_ctx)).collect();
        let input = step_input(ops, model, &seqs, args.deterministic, false)?;
        let ws = model.workspace(ops, b, b)?;
        // A step: the forward (its greedy picks included) and the picks' download.
        let step = || -> anyhow::Result<Vec<i32>> {
            model.forward(ops, gemm, &ws, &input)?;
            Ok(ops.context().download_i32(&ws.picks)?)
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
        let fwd = gpu_ms(ops.context(), false, 1, 7, || {
            Ok(model.forward(ops, gemm, &ws, &input)?)
        })?;
        // A captured step's wall time per replay (ms, median of 15 after 3), the picks'
        // download after each.
        let replay_ms = |g: &cudarc::driver::CudaGraph| -> anyhow::Result<f64> {
            let mut w = Vec::new();
            for k in 0..18 {
                let t = Instant::now();
                g.launch()?;
                ops.context().download_i32(&ws.picks)?;
                if k >= 3 {
                    w.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            Ok(median(w))
        };
        // The same step replayed from a CUDA graph (the picks' download stays outside).
        let replay_with = |input: &StepInput| -> anyhow::Result<Option<f64>> {
            Ok(match model.capture(ops, gemm, &ws, input) {
                Ok(g) => Some(replay_ms(&g)?),
                Err(e) => {
                    println!("graph capture failed: {e}");
                    None
                }
            })
        };
        let replay = || replay_with(&input);
        let graphed = replay()?;
        // The same graph without programmatic dependent launch, side by side.
        let graphed_no_pdl = if launch::pdl() {
            launch::set_pdl(false);
            let r = replay();
            launch::set_pdl(true);
            r?
        } else {
            None
        };
        if let (Some(a), Some(n)) = (graphed, graphed_no_pdl) {
            summary.push(format!(
                "  b{b} graph step with PDL {a:.3} ms, without {n:.3} ms (x{:.3})",
                a / n
            ));
        }
        // The same graph queued back to back as the overlap scheduler runs it, without and
        // with the runner's per-step copies (bench_pipelined.rs).
        if let Some(a) = graphed {
            use super::bench_pipelined::{pipelined_step_ms, StepCopies};
            let g = model.capture(ops, gemm, &ws, &input)?;
            let ms = |c| pipelined_step_ms(ops, &g, &ws.picks, c);
            let bare = ms(StepCopies::Bare)?;
            let runner = ms(StepCopies::Runner)?;
            let back = ms(StepCopies::Readback)?;
            // (Not fatal: the lines above stand without it.)
            let lean = match super::bench_pipelined::lean_step_ms(ops, gemm, model, &ws, &input) {
                Ok(Some(l)) => format!(", the lean step {l:.3} ms (x{:.3})", l / bare),
                Ok(None) => String::new(),
                Err(e) => format!(", the lean step failed: {e}"),
            };
            summary.push(format!(
                "  b{b} graph step waited for on the host {a:.3} ms; queued back to back {bare:.3} ms, with the runner's per-step copies {runner:.3} ms (x{:.3}), the token copy back alone {back:.3} ms{lean}",
                runner / bare
            ));
        }
        // The same step with the decode attention on the tensor-core prefill kernel and on
        // decode2, side by side (default mode).
        if !args.deterministic {
            use strata_kernels::cuda::{set_decode_attn, set_decode_dmma};
            let mut t = [None, None, None];
            for (i, (mma, dmma)) in [(true, true), (true, false), (false, false)]
                .into_iter()
                .enumerate()
            {
                set_decode_attn(Some(mma));
                set_decode_dmma(Some(dmma));
                let forced = step_input(ops, model, &seqs, false, false);
                set_decode_attn(None);
                set_decode_dmma(None);
                t[i] = replay_with(&forced?)?;
            }
            if let [Some(d), Some(a), Some(n)] = t {
                summary.push(format!(
                    "  b{b} graph step with decode attention on the decode MMA kernel {d:.3} ms, the prefill kernel {a:.3} ms (x{:.3}), decode2 {n:.3} ms (x{:.3})",
                    d / a,
                    d / n
                ));
            }
        }
        // One row: the same graph with each single-row fusion turned off, side by side.
        if b == 1 {
            use strata_kernels::cuda::Fusion;
            for f in Fusion::ALL.into_iter().filter(|f| !f.prefill()) {
                gemm.set_fusion(f, false);
                let apart = replay();
                gemm.set_fusion(f, true);
                let (with, without) = match f {
                    Fusion::GateSilu => ("the SiLU in gate_up's epilogue", "staged in down"),
                    Fusion::QkvRope => {
                        ("RoPE + K/V write in qkv's epilogue", "rope_kv_write apart")
                    }
                    Fusion::QkvNorm => ("the input norm staged in qkv", "rmsnorm apart"),
                    Fusion::GateNorm => (
                        "o into the residual, the MLP norm staged in gate",
                        "o, norm2, gate apart",
                    ),
                    Fusion::HeadArgmax => ("the argmax in lm_head's epilogue", "argmax_rows apart"),
                    Fusion::GateGemm | Fusion::ResidGemm | Fusion::AttnRope => {
                        unreachable!("prefill only")
                    }
                };
                if let (Some(a), Some(n)) = (graphed, apart?) {
                    summary.push(format!(
                        "  b{b} graph step with {with} {a:.3} ms, {without} {n:.3} ms (x{:.3})",
                        a / n
                    ));
                }
            }
        }
        // 2-8 rows: the same graph with each family of few-row GEMVs and without any.
        if (2..=8).contains(&b) && !args.deterministic {
            let was = gemm.rows_mode();
            let ms = [RowsMode::Exact, RowsMode::Mma, RowsMode::Off]
                .into_iter()
                .map(|m| {
                    gemm.set_rows_mode(m);
                    replay()
                })
                .collect::<anyhow::Result<Vec<_>>>();
            gemm.set_rows_mode(was);
            if let [Some(e), Some(m), Some(n)] = ms?[..] {
                summary.push(format!(
                    "  b{b} graph step with the few-row GEMVs: exact {e:.3} ms (x{:.3}), mma {m:.3} ms (x{:.3}), without {n:.3} ms",
                    e / n,
                    m / n
                ));
            }
        }
        // Small batches plan the decode2 cluster form: the same graph with the split kernel
        // (and its combine launch), side by side.
        // The cluster form's two kernels, side by side: registers (the default) and
        // cp.async tiles.
        if input.plan.cluster() > 0 {
            let mut tiles = step_input(ops, model, &seqs, args.deterministic, false)?;
            tiles.plan.set_cluster_regs(false);
            let mut regs = step_input(ops, model, &seqs, args.deterministic, false)?;
            regs.plan.set_cluster_regs(true);
            let (r, t) = (replay_with(&regs)?, replay_with(&tiles)?);
            if let (Some(r), Some(t)) = (r, t) {
                summary.push(format!(
                    "  b{b} graph step with the cluster attention in registers {r:.3} ms, in cp.async tiles {t:.3} ms (x{:.3})",
                    r / t
                ));
            }
        }
        let graphed_split = if input.plan.cluster() > 0 {
            let split_input = step_input(ops, model, &seqs, args.deterministic, true)?;
            let n = replay_with(&split_input)?;
            if let (Some(a), Some(n)) = (graphed, n) {
                summary.push(format!(
                    "  b{b} graph step with the cluster attention ({} blocks) {a:.3} ms, split kernel ({} splits) {n:.3} ms (x{:.3})",
                    input.plan.cluster(),
                    split_input.plan.splits(),
                    a / n
                ));
            }
            n
        } else {
            None
        };
        // What each layer op adds to the graph step: the step's graph without it (every
        // layer's), against the whole step, per layer.
        let mut minus = serde_json::Map::new();
        if let Some(full) = graphed {
            let mut parts = Vec::new();
            for op in LlamaModel::LAYER_OPS {
                let g = model.capture_skipping(ops, gemm, &ws, &input, &|o| o == op)?;
                let us = (full - replay_ms(&g)?) * 1e3 / shape.layers as f64;
                parts.push(format!("{op} {us:.1}"));
                minus.insert(op.to_string(), json!(us));
            }
            summary.push(format!(
                "  b{b} graph step minus each layer op (us per layer): {}",
                parts.join(", ")
            ));
            // Composite graphs: what is left of the step without any layer op (embedding,
            // final norm, lm_head, sampling, launch and download), and the layers' GEMVs
            // alone (no attention, no norms apart), whole-step milliseconds.
            type Skip<'a> = &'a dyn Fn(&str) -> bool;
            let sets: [(&str, Skip); 3] = [
                ("no layer op", &|_| true),
                ("GEMVs only", &|o| {
                    !matches!(o, "qkv" | "o" | "gate_up" | "silu+down")
                }),
                ("no attention, no norm2", &|o| {
                    matches!(o, "attention" | "norm2")
                }),
            ];
            let mut parts = Vec::new();
            for (name, skip) in sets {
                let ms = replay_ms(&model.capture_skipping(ops, gemm, &ws, &input, skip)?)?;
                parts.push(format!("{name} {ms:.3}"));
                minus.insert(format!("step_ms {name}"), json!(ms));
            }
            summary.push(format!(
                "  b{b} graph step of a subset (ms, whole step = {full:.3}): {}",
                parts.join(", ")
            ));
        }
        // (A failed breakdown is reported and the bench goes on.)
        let soft = |r: anyhow::Result<Value>, summary: &mut Vec<String>| match r {
            Ok(v) => v,
            Err(e) => {
                summary.push(format!("  b{b} op breakdown failed: {e:#}"));
                Value::Null
            }
        };
        // (Eager: events recorded inside a captured graph cannot be timed on the H200 driver,
        // cuEventElapsedTime gave CUDA_ERROR_INVALID_VALUE at 16:58 UTC.)
        let r = op_breakdown(
            ops,
            gemm,
            model,
            &ws,
            &input,
            &format!("b{b}"),
            fwd,
            false,
            summary,
        );
        let ops_on = soft(r, summary);
        // Attention alone: one launch timed eagerly (with the host's launch gap), and the
        // per-call time of 32 calls replayed from a graph (as in a step, PDL between them).
        let (attn_layer_us, attn_graph_us) = attention_alone_as(
            ops,
            model,
            b,
            args.decode_ctx,
            None,
            AttnAs::Planned,
            &|_| true,
        )?;
        summary.push(format!(
            "  b{b} attention as planned: {attn_layer_us:.1} us (in a graph {attn_graph_us:.1} us)"
        ));
        for sp in [1, 2, 4, 8, 16, 32] {
            let (us, g) = attention_alone(ops, model, b, args.decode_ctx, Some(sp), &|_| true)?;
            summary.push(format!(
                "  b{b} attention with {sp} splits: {us:.1} us (in a graph {g:.1} us)"
            ));
        }
        for n in [2, 4, 8, 16] {
            for regs in [true, false] {
                let (us, g) = attention_alone(ops, model, b, args.decode_ctx, None, &|p| {
                    p.set_cluster_regs(regs);
                    p.set_cluster(n)
                })?;
                let form = if regs { "registers" } else { "cp.async tiles" };
                if us.is_finite() {
                    summary.push(format!(
                        "  b{b} attention cluster of {n} ({form}): {us:.1} us (in a graph {g:.1} us)"
                    ));
                }
            }
        }
        // Longer rows (the register form has no cp.async ring): each form as planned.
        for kv in [4 * args.decode_ctx, 16 * args.decode_ctx] {
            for regs in [true, false] {
                let r = attention_alone(ops, model, b, kv, None, &|p| {
                    p.set_cluster_regs(regs);
                    true
                });
                let form = if regs { "registers" } else { "cp.async tiles" };
                summary.push(match r {
                    Ok((us, g)) => format!(
                        "  b{b} attention at {kv} keys as planned ({form}): {us:.1} us (in a graph {g:.1} us)"
                    ),
                    Err(e) => format!("  b{b} attention at {kv} keys ({form}) failed: {e:#}"),
                });
            }
        }
        // The decode rows on the tensor-core decode kernel and on the prefill kernels (GQA
        // groups as rows of the MMA tiles), side by side.
        match attention_alone_as(
            ops,
            model,
            b,
            args.decode_ctx,
            None,
            AttnAs::DecodeMma,
            &|p| p.kernel() == AttnKernel::DecodeMma,
        ) {
            Ok((us, g)) if us.is_finite() => summary.push(format!(
                "  b{b} attention on the decode MMA kernel: {us:.1} us (in a graph {g:.1} us)"
            )),
            Ok(_) => {}
            Err(e) => summary.push(format!("  b{b} attention on the decode MMA kernel: {e:#}")),
        }
        {
            use strata_kernels::cuda::{set_prefill_kernel, PrefillKernel};
            for (name, k) in [("wgmma", PrefillKernel::Wgmma), ("fa2", PrefillKernel::Fa2)] {
                set_prefill_kernel(Some(k));
                let r = attention_alone_as(
                    ops,
                    model,
                    b,
                    args.decode_ctx,
                    None,
                    AttnAs::Prefill,
                    &|p| p.kernel() != AttnKernel::Decode2,
                );
                set_prefill_kernel(None);
                match r {
                    Ok((us, g)) if us.is_finite() => summary.push(format!(
                        "  b{b} attention on the {name} prefill kernel: {us:.1} us (in a graph {g:.1} us)"
                    )),
                    Ok(_) => {}
                    Err(e) => summary.push(format!("  b{b} attention on {name}: {e:#}")),
                }
            }
        }
        let (attn_v1_us, _) = attention_alone(ops, model, b, args.decode_ctx, None, &|p| {
            p.force_decode_v1();
            true
        })?;
        let mut variants = serde_json::Map::new();
        for (i, name) in strata_kernels::cuda::DECODE2_VARIANTS.iter().enumerate() {
            for sp in [None, Some(2), Some(3), Some(4), Some(6)] {
                let (us, _) = attention_alone(ops, model, b, args.decode_ctx, sp, &|p| {
                    p.set_decode2_variant(i)
                })?;
                if us.is_finite() {
                    let label = sp.map_or("planner".to_string(), |n| format!("{n} splits"));
                    summary.push(format!("  b{b} attention {name} ({label}): {us:.1} us"));
                    variants.insert(format!("{name}/{label}"), json!(us));
                }
            }
        }
        let kv_bytes =
            (b * args.decode_ctx * shape.layers * 2 * shape.n_kv_heads * shape.head_dim * 2) as f64;
        let kv_floor = copy_bw.map(|bw| (wbytes + kv_bytes) / bw * 1e3);
        let best = graphed.map_or(wall, |g| g.min(wall));
        let ratio = floor_ms.map(|f| best / f);
        summary.push(format!(
            "decode b{b} ctx{}: {:.2} ms/step eager, {} graph (GPU forward {:.2} ms, attention {:.0} us/layer, first decode kernel {:.0} us), {:.0} tok/s; floor weights {:.2} ms (best x{:.2}), weights+KV {:.2} ms",
            args.decode_ctx, wall, graphed.map_or("-".to_string(), |g| format!("{g:.2} ms")), fwd, attn_layer_us, attn_v1_us,
            b as f64 / best * 1e3, floor_ms.unwrap_or(f64::NAN), ratio.unwrap_or(f64::NAN), kv_floor.unwrap_or(f64::NAN)
        ));
        rows.push(json!({"batch": b, "step_ms": wall, "graph_step_ms": graphed, "graph_step_ms_no_pdl": graphed_no_pdl, "graph_step_ms_split_attention": graphed_split, "graph_step_minus_op_us_per_layer": minus,
            "ops_us": ops_on, "forward_gpu_ms": fwd,
            "attention_us_per_layer": attn_layer_us, "attention_graph_us_per_layer": attn_graph_us, "attention_v1_us_per_layer": attn_v1_us, "attention_variants_us": variants, "tokens_per_s": b as f64 / best * 1e3,
            "floor_weights_ms": floor_ms, "floor_weights_kv_ms": kv_floor, "ratio_to_floor": ratio}));
        if b == 1 {
            gemv_breakdown(ops, gemm, &shape, copy_bw, summary, out)?;
        }
    }
    out["decode"] = json!(rows);
    let mut tuned = Vec::new();
    for t in gemm.lt_tuned() {
        summary.push(format!(
            "  cuBLASLt tuning [{}x{}x{}]: heuristic pick {:.1} us, best of {} {:.1} us (x{:.2})",
            t.shape.0,
            t.shape.1,
            t.shape.2,
            t.heuristic_us,
            t.candidates,
            t.best_us,
            t.best_us / t.heuristic_us
        ));
        tuned.push(
            json!({"shape": [t.shape.0, t.shape.1, t.shape.2], "candidates": t.candidates,
            "heuristic_us": t.heuristic_us, "best_us": t.best_us}),
        );
    }
    out["cublaslt_tuning"] = json!(tuned);
    Ok(())
}

/// Where one decode step's GPU time goes: a CUDA event after every op of `forward_marked`,
/// medians of 5 steps after a warm-up, summed per op over the layers. `graph`: the events are
/// captured with the forward into a CUDA graph and the graph is replayed (no host launch gaps;
/// the event nodes still keep consecutive kernels from overlapping under PDL, so the sum exceeds
/// the plain graph step); else an eager step, where small kernels also show the host's launch
/// rate. One summary line, largest first.
#[allow(clippy::too_many_arguments)]
pub(super) fn op_breakdown(
    ops: &CudaOps,
    gemm: &Gemm,
    model: &LlamaModel,
    ws: &Workspace,
    input: &StepInput,
    b: &str,
    fwd_ms: f64,
    graph: bool,
    summary: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let stream = ops.context().stream();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    // label -> (calls per step, per-step totals in us), in first-seen order.
    let mut per: Vec<(&'static str, usize, Vec<f64>)> = Vec::new();
    let record = |evs: &mut Vec<(&'static str, cudarc::driver::CudaEvent)>| -> anyhow::Result<()> {
        evs.push(("start", stream.record_event(flags)?));
        model.forward_marked(ops, gemm, ws, input, &mut |l| {
            evs.push((l, stream.record_event(flags)?));
            Ok(())
        })?;
        Ok(())
    };
    let mut captured = None;
    let mut graph_evs = Vec::new();
    if graph {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let r = record(&mut graph_evs);
        let g = stream.end_capture(CUgraphInstantiate_flags(0));
        match (r, g) {
            (Ok(()), Ok(Some(g))) => captured = Some(g),
            (r, g) => {
                let why = r
                    .err()
                    .map(|e| e.to_string())
                    .or(g.err().map(|e| e.to_string()));
                summary.push(format!(
                    "  {b} op breakdown: graph capture with events failed ({}); eager below",
                    why.unwrap_or_else(|| "empty graph".into())
                ));
                return op_breakdown(ops, gemm, model, ws, input, b, fwd_ms, false, summary);
            }
        }
    }
    for rep in 0..6 {
        let mut eager_evs = Vec::new();
        match &captured {
            Some(g) => g.launch()?,
            None => record(&mut eager_evs)?,
        }
        ops.context().synchronize()?;
        if rep == 0 {
            continue;
        }
        let evs = if captured.is_some() {
            &graph_evs
        } else {
            &eager_evs
        };
        let mut step: Vec<(&'static str, usize, f64)> = Vec::new();
        for w in evs.windows(2) {
            let us = w[0].1.elapsed_ms(&w[1].1)? as f64 * 1e3;
            match step.iter_mut().find(|e| e.0 == w[1].0) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += us;
                }
                None => step.push((w[1].0, 1, us)),
            }
        }
        for (l, n, us) in step {
            match per.iter_mut().find(|e| e.0 == l) {
                Some(e) => e.2.push(us),
                None => per.push((l, n, vec![us])),
            }
        }
    }
    let mut rows: Vec<(&'static str, usize, f64)> =
        per.into_iter().map(|(l, n, v)| (l, n, median(v))).collect();
    let total: f64 = rows.iter().map(|r| r.2).sum();
    rows.sort_by(|a, c| c.2.total_cmp(&a.2));
    let mut line = format!(
        "  {b} op breakdown ({}, an event after each op; sum {:.2} ms vs eager forward {fwd_ms:.2} ms):",
        if captured.is_some() { "graph" } else { "eager" },
        total / 1e3
    );
    let mut doc = serde_json::Map::new();
    for (l, n, us) in &rows {
        line += &format!(" {l} {:.0} us ({n} x {:.1});", us, us / *n as f64);
        doc.insert(l.to_string(), json!({"calls": n, "us": us}));
    }
    summary.push(line);
    Ok(Value::Object(doc))
}

/// One layer's decode attention alone (fresh random pools of the same size), microseconds, with
/// the plan adjusted by `tweak` (which returns false when the tweak does not apply: NaN then).
fn attention_alone(
    ops: &CudaOps,
    model: &LlamaModel,
    b: usize,
    ctx_len: usize,
    splits: Option<usize>,
    tweak: &dyn Fn(&mut strata_kernels::cuda::AttnPlan) -> bool,
) -> anyhow::Result<(f64, f64)> {
    attention_alone_as(ops, model, b, ctx_len, splits, AttnAs::Decode2, tweak)
}

/// How [`attention_alone_as`] plans the decode rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttnAs {
    /// As the runner would (decode2 below `DECODE_MMA_MIN_ROWS` rows, the prefill kernel from
    /// there).
    Planned,
    /// On a decode kernel whatever the batch (the decode2 alternatives' lines).
    Decode2,
    /// As prompt rows: the tensor-core prefill kernel.
    Prefill,
    /// On the tensor-core decode kernel whatever the batch.
    DecodeMma,
}

/// [`attention_alone`] with the decode rows planned as `how` says.
fn attention_alone_as(
    ops: &CudaOps,
    model: &LlamaModel,
    b: usize,
    ctx_len: usize,
    splits: Option<usize>,
    how: AttnAs,
    tweak: &dyn Fn(&mut strata_kernels::cuda::AttnPlan) -> bool,
) -> anyhow::Result<(f64, f64)> {
    let c = ops.context();
    let s = model.shape;
    // A pool of its own, as large as the rows need (longer than the model's is allowed).
    let mut shape = model.attn_shape();
    let n = ctx_len.div_ceil(shape.page_size);
    shape.pool_pages = shape.pool_pages.max(b * n + 1);
    let seqs: Vec<AttnSeq> = (0..b)
        .map(|i| AttnSeq {
            q_len: 1,
            kv_len: ctx_len,
            pages: ((i * n) as i32..((i + 1) * n) as i32).collect(),
        })
        .collect();
    let opts = PlanOpts {
        splits,
        prefill: how == AttnAs::Prefill,
        ..PlanOpts::default()
    };
    let forced = match how {
        AttnAs::Decode2 => Some(false),
        AttnAs::DecodeMma => Some(true),
        _ => None,
    };
    strata_kernels::cuda::set_decode_attn(forced);
    strata_kernels::cuda::set_decode_dmma(forced);
    let plan = ops.attention_plan_with(shape, &seqs, opts);
    strata_kernels::cuda::set_decode_attn(None);
    strata_kernels::cuda::set_decode_dmma(None);
    let mut plan = plan?;
    if !tweak(&mut plan) {
        return Ok((f64::NAN, f64::NAN));
    }
    let io = AttnIo::random(ops, &s, &shape, b, 100)?;
    let ms = gpu_ms(c, false, 2, 10, || io.run(ops, &plan))?;
    let g = graph_us(c, || io.run(ops, &plan)).unwrap_or(f64::NAN);
    Ok((ms * 1e3, g))
}

/// One layer's attention operands for timing it alone: random K/V pools of `shape`'s size and
/// q rows (`rows` of the model's qkv width, fills seeded from `seed`), an output, the scale.
pub(super) struct AttnIo {
    k: DTensor,
    v: DTensor,
    q: DTensor,
    o: DTensor,
    scale: f32,
}

impl AttnIo {
    pub(super) fn random(
        ops: &CudaOps,
        s: &LlamaShape,
        shape: &AttnShape,
        rows: usize,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let c = ops.context();
        let kvw = s.n_kv_heads * s.head_dim;
        let slots = shape.pool_pages * shape.page_size;
        let bf = strata_kernels::cuda::DType::Bf16;
        let (k, v) = (c.alloc(bf, &[slots, kvw])?, c.alloc(bf, &[slots, kvw])?);
        let q = c.alloc(bf, &[rows, s.qkv_width()])?;
        let o = c.alloc(bf, &[rows, s.n_heads * s.head_dim])?;
        for (i, t) in [&k, &v, &q].into_iter().enumerate() {
            ops.fill_uniform(t, seed + i as u64, 1.0)?;
        }
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        Ok(Self { k, v, q, o, scale })
    }

    /// `plan`'s attention on these operands.
    pub(super) fn run(&self, ops: &CudaOps, plan: &AttnPlan) -> anyhow::Result<()> {
        let (q, k, v, o) = (&self.q, &self.k, &self.v, &self.o);
        Ok(ops.paged_attention(plan, q, 0, k, v, o, self.scale)?)
    }
}

/// Per-call microseconds of `f` captured 32 times into one CUDA graph and replayed (the launch
/// gaps of a step's graph, PDL between the calls as in a step).
pub(super) fn graph_us(
    c: &strata_kernels::cuda::GpuContext,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    const REPS: usize = 32;
    let stream = c.stream();
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let mut r = Ok(());
    for _ in 0..REPS {
        r = f();
        if r.is_err() {
            break;
        }
    }
    let g = stream.end_capture(CUgraphInstantiate_flags(0));
    r?;
    let g = g?.ok_or_else(|| anyhow::anyhow!("empty graph"))?;
    let ms = gpu_ms(c, false, 2, 7, || Ok(g.launch()?))?;
    Ok(ms * 1e3 / REPS as f64)
}

/// Decode GEMMs of one layer and the LM head alone at batch 1 and 32, every implementation:
/// achieved weight bandwidth against the copy rate.
fn gemv_breakdown(
    ops: &CudaOps,
    gemm: &Gemm,
    s: &LlamaShape,
    copy_bw: Option<f64>,
    summary: &mut Vec<String>,
    out: &mut Value,
) -> anyhow::Result<()> {
    let c = ops.context();
    let bf = strata_kernels::cuda::DType::Bf16;
    let h = s.hidden;
    let mut rows = Vec::new();
    for (name, n, k) in [
        ("qkv", s.qkv_width(), h),
        ("o", h, s.n_heads * s.head_dim),
        ("gate_up", 2 * s.inter, h),
        ("down", h, s.inter),
        ("lm_head", s.vocab, h),
    ] {
        let w = c.alloc(bf, &[n, k])?;
        ops.fill_uniform(&w, 7, 0.02)?;
        for t in [1usize, 2, 4, 8, 32] {
            let x = c.alloc(bf, &[t, k])?;
            let y = c.alloc(bf, &[t, n])?;
            ops.fill_uniform(&x, 8, 1.0)?;
            let paths: &[GemmPath] = if t == 1 {
                &[
                    GemmPath::Cublas,
                    GemmPath::CublasLt,
                    GemmPath::Gemv,
                    GemmPath::GemvT1,
                    GemmPath::GemvT1Pipe,
                    GemmPath::GemvT1Wide,
                    GemmPath::CublasLtDet,
                    GemmPath::DetGemv,
                ]
            } else if t <= 8 {
                &[GemmPath::CublasLt, GemmPath::GemvRows, GemmPath::GemvMma]
            } else {
                &[
                    GemmPath::Cublas,
                    GemmPath::CublasLt,
                    GemmPath::CublasLtDet,
                    GemmPath::DetGemv,
                ]
            };
            for &path in paths {
                let ms = match gpu_ms(c, false, 3, 20, || Ok(gemm.linear_with(&x, &w, &y, path)?)) {
                    Ok(ms) => ms,
                    Err(e) => {
                        summary.push(format!("  b{t} {path:?} {name}: {e}"));
                        continue;
                    }
                };
                let gbs = (n * k * 2) as f64 / (ms / 1e3) / 1e9;
                let frac = copy_bw.map_or(f64::NAN, |bw| gbs * 1e9 / bw);
                let g = graph_us(c, || Ok(gemm.linear_with(&x, &w, &y, path)?)).unwrap_or(f64::NAN);
                let gfrac = copy_bw.map_or(f64::NAN, |bw| (n * k * 2) as f64 / (g / 1e6) / bw);
                summary.push(format!(
                    "  b{t} {path:?} {name} [{n}x{k}]: {:.1} us, {:.0} GB/s ({:.0}% of copy rate); in a graph {g:.1} us ({:.0}%)",
                    ms * 1e3,
                    gbs,
                    frac * 100.0,
                    gfrac * 100.0
                ));
                rows.push(json!({"rows": t, "name": name, "path": format!("{path:?}"), "n": n, "k": k, "us": ms * 1e3, "gbs": gbs, "graph_us": g}));
            }
        }
    }
    out["gemv_b1"] = json!(rows);
    Ok(())
}
