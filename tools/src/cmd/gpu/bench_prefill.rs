//! `strata gpu bench --only prefill`: one prompt per length (`--prefill-lens`), no cached
//! prefix, on the random-weight model of bench_model.rs: the forward's time and tokens/s against
//! the GEMM floor (matrix FLOPs at the measured cuBLAS rate), where its time goes (an event after
//! each op, beside the GEMMs, the row ops and one layer's attention alone), and the same forward
//! with each prefill kernel, wgmma form and prefill fusion forced, side by side, and in
//! 2048-token chunks.

use serde_json::{json, Value};
use strata_kernels::cuda::llama::{LlamaModel, LlamaShape};
use strata_kernels::cuda::{AttnSeq, CudaOps, Gemm, GemmPath};

use super::bench::{gpu_ms, Args};
use super::bench_model::{op_breakdown, step_input, AttnIo};

/// Every prefill length's row of the bench's JSON, its lines in `summary`.
pub(super) fn prefill(
    ops: &CudaOps,
    gemm: &Gemm,
    args: &Args,
    model: &LlamaModel,
    gemm_rate: Option<f64>,
    summary: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let shape = model.shape;
    let mut rows = Vec::new();
    for &t in &args.prefill_lens {
        let input = step_input(ops, model, &[(t, t)], args.deterministic, false)?;
        let ws = model.workspace(ops, t, 1)?;
        let ms = gpu_ms(ops.context(), false, 1, 3, || {
            Ok(model.forward(ops, gemm, &ws, &input)?)
        })?;
        let mat = 2.0 * t as f64 * (shape.layers * shape.layer_matrix_params()) as f64
            + 2.0 * (shape.vocab * shape.hidden) as f64;
        let attn = shape.layers as f64
            * 4.0
            * (shape.n_heads * shape.head_dim) as f64
            * (t * (t + 1) / 2) as f64;
        let floor = gemm_rate.map(|r| mat / r * 1e3);
        let tps = t as f64 / ms * 1e3;
        summary.push(format!(
            "prefill {t}: {:.1} ms, {:.0} tok/s; GEMM floor {:.1} ms ({:.0} tok/s, we reach {:.0}%); attention {:.1} TFLOP of {:.1} total",
            ms, tps, floor.unwrap_or(f64::NAN), floor.map_or(f64::NAN, |f| t as f64 / f * 1e3),
            floor.map_or(f64::NAN, |f| f / ms * 100.0), attn / 1e12, (mat + attn) / 1e12
        ));
        // Where the forward's own time goes (an event after each op, eager): each op in
        // place, beside the ops alone below.
        if let Err(e) = op_breakdown(
            ops,
            gemm,
            model,
            &ws,
            &input,
            &format!("prefill {t}"),
            ms,
            false,
            summary,
        ) {
            summary.push(format!("  prefill {t} op breakdown failed: {e:#}"));
        }
        match super::bench_context::attention_in_context(ops, gemm, model, &ws, &input, t) {
            Ok(line) => summary.push(line),
            Err(e) => summary.push(format!("  prefill {t} attention in context failed: {e:#}")),
        }
        // The same forward with each prefill kernel forced, each kernel alone on one layer,
        // and the prompt prefilled in 2048-token chunks (the old --chunked-prefill-size).
        use strata_kernels::cuda::{set_prefill_kernel, PrefillKernel};
        let forward_with = |k: PrefillKernel| -> anyhow::Result<f64> {
            set_prefill_kernel(Some(k));
            let r = (|| -> anyhow::Result<f64> {
                let input = step_input(ops, model, &[(t, t)], args.deterministic, false)?;
                gpu_ms(ops.context(), false, 1, 3, || {
                    Ok(model.forward(ops, gemm, &ws, &input)?)
                })
            })();
            set_prefill_kernel(None);
            r
        };
        let fa2_ms = forward_with(PrefillKernel::Fa2)?;
        let mma_ms = forward_with(PrefillKernel::Mma)?;
        let mut line = format!(
            "  prefill {t} forward by kernel: FA2 {fa2_ms:.1} ms, first mma {mma_ms:.1} ms"
        );
        // The wgmma kernel (compute 9.0 only).
        let wg_ms = if ops.has_wgmma_prefill() {
            let f = forward_with(PrefillKernel::Wgmma)?;
            let fs = forward_with(PrefillKernel::WgmmaSmemQ)?;
            let fp = forward_with(PrefillKernel::WgmmaProducer)?;
            let fc = forward_with(PrefillKernel::WgmmaCluster)?;
            let fq = forward_with(PrefillKernel::WgmmaProducerCp)?;
            line += &format!(
                ", wgmma by cp.async {f:.1} ms, with Q from shared memory {fs:.1} ms, \
                 K/V by TMA from a producer warpgroup {fp:.1} ms, in clusters of 2 sharing \
                 K/V {fc:.1} ms, by cp.async from a producer warpgroup {fq:.1} ms"
            );
            // The default (TMA in clusters of 2 where the page size takes it, else cp.async
            // from a producer warpgroup) and the cp.async form alternated twice.
            let mut ab = [[0.0; 2]; 2];
            for i in 0..4 {
                let k = [PrefillKernel::WgmmaCluster, PrefillKernel::Wgmma][i % 2];
                ab[i % 2][i / 2] = forward_with(k)?;
            }
            let [c, w] = ab;
            let page = model.attn_shape().page_size;
            summary.push(format!(
                "  prefill {t} forward (page {page}) with the default attention form {:.1} / \
                 {:.1} ms, the cp.async form {:.1} / {:.1} ms (x{:.3})",
                c[0],
                c[1],
                w[0],
                w[1],
                (c[0] + c[1]) / (w[0] + w[1])
            ));
            Some(f)
        } else {
            None
        };
        summary.push(line + &format!(" (as planned {ms:.1} ms)"));
        // The forward with gate_up + SiLU in the wgmma GEMM and with cuBLAS + silu_mul.
        if gemm.has_wg_gemm() && t >= strata_kernels::cuda::gemm_wg::GATE_WG_MIN_ROWS {
            use strata_kernels::cuda::Fusion;
            // `set(Some(on))` for each forward, alternated twice, `set(None)` after:
            // ([on, on], [off, off]) in ms.
            let ab = |set: &dyn Fn(Option<bool>)| -> anyhow::Result<[[f64; 2]; 2]> {
                let mut ms = [[0.0; 2]; 2];
                for (i, on) in [true, false, true, false].into_iter().enumerate() {
                    set(Some(on));
                    let f = gpu_ms(ops.context(), false, 1, 3, || {
                        Ok(model.forward(ops, gemm, &ws, &input)?)
                    });
                    set(None);
                    ms[!on as usize][i / 2] = f?;
                }
                Ok(ms)
            };
            let line = |what: &str, other: &str, [on, off]: [[f64; 2]; 2]| {
                format!(
                    "  prefill {t} forward with {what} {:.1} / {:.1} ms, {other} {:.1} / {:.1} ms (x{:.3})",
                    on[0], on[1], off[0], off[1], (on[0] + on[1]) / (off[0] + off[1])
                )
            };
            let gate = ab(&|v| gemm.set_fusion(Fusion::GateGemm, v.unwrap_or(true)))?;
            summary.push(line(
                "gate_up + SiLU in the wgmma GEMM",
                "cuBLAS + silu_mul",
                gate,
            ));
        }
        // The forward with the residual added in the o and down GEMMs and in the norms, and
        // with Q rotated by the attention and by rope_kv_write: each alternated twice.
        use strata_kernels::cuda::Fusion;
        let fusions = [
            (
                Fusion::ResidGemm,
                gemm.acc_applies(t),
                "the residual added in the o and down GEMMs",
                "in the norms",
            ),
            (
                Fusion::AttnRope,
                gemm.attn_rope(&input.plan),
                "Q rotated by the attention",
                "by rope_kv_write",
            ),
        ];
        for (f, applies, with, without) in fusions {
            if !applies {
                continue;
            }
            let mut ms = [[0.0; 2]; 2];
            for (i, on) in [true, false, true, false].into_iter().enumerate() {
                gemm.set_fusion(f, on);
                let r = gpu_ms(ops.context(), false, 1, 3, || {
                    Ok(model.forward(ops, gemm, &ws, &input)?)
                });
                gemm.set_fusion(f, true);
                ms[!on as usize][i / 2] = r?;
            }
            let [on, off] = ms;
            summary.push(format!(
                "  prefill {t} forward with {with} {:.1} / {:.1} ms, {without} {:.1} / {:.1} ms (x{:.3})",
                on[0], on[1], off[0], off[1], (on[0] + on[1]) / (off[0] + off[1])
            ));
        }
        let layer_flops = attn / shape.layers as f64;
        let mut alone = serde_json::Map::new();
        let mut line = format!("  prefill {t} attention alone per layer:");
        let mut kinds = vec![("fa2", PrefillKernel::Fa2), ("mma", PrefillKernel::Mma)];
        if ops.has_wgmma_prefill() {
            kinds.push(("wgmma", PrefillKernel::Wgmma));
            kinds.push(("wgmma-smem-q", PrefillKernel::WgmmaSmemQ));
            kinds.push(("wgmma-producer", PrefillKernel::WgmmaProducer));
            kinds.push(("wgmma-cluster", PrefillKernel::WgmmaCluster));
            kinds.push(("wgmma-producer-cp", PrefillKernel::WgmmaProducerCp));
            kinds.push(("wgmma-again", PrefillKernel::Wgmma));
        }
        // (one untimed pass first: the first kernel timed after the forwards read up to
        // 35 % slow on the H200 at 20:29 UTC)
        prefill_attention_alone(ops, model, t, PrefillKernel::Fa2)?;
        for (name, k) in kinds {
            let a = prefill_attention_alone(ops, model, t, k)?;
            if a.is_finite() {
                line += &format!(" {name} {a:.3} ms ({:.0} TFLOP/s)", layer_flops / a / 1e9);
                alone.insert(name.to_string(), json!(a));
            }
        }
        summary.push(line);
        let (rows_ms, rows_line) = prefill_row_ops(ops, &shape, t)?;
        summary.push(rows_line);
        let (gemm_ms, gemm_line) = prefill_gemms(ops, gemm, &shape, t)?;
        let attn_ms = alone["fa2"].as_f64().unwrap_or(f64::NAN) * shape.layers as f64;
        summary.push(gemm_line);
        summary.push(format!(
            "  prefill {t} forward split with FA2: GEMMs {gemm_ms:.1} ms + attention {attn_ms:.1} ms (alone, x{} layers) + rest {:.1} ms (of which the row ops alone {rows_ms:.1} ms)",
            shape.layers,
            fa2_ms - gemm_ms - attn_ms
        ));
        if let (Some(w), Some(a)) = (wg_ms, alone.get("wgmma").and_then(|a| a.as_f64())) {
            let wattn = a * shape.layers as f64;
            summary.push(format!(
                "  prefill {t} forward with the wgmma kernel: {w:.1} ms (FA2 {fa2_ms:.1} ms, x{:.2} faster); split: GEMMs {gemm_ms:.1} ms + attention {wattn:.1} ms (alone) + rest {:.1} ms",
                fa2_ms / w,
                w - gemm_ms - wattn
            ));
        }
        let mut chunked = None;
        if t > 2048 {
            // (a workspace per chunk: forward wants one of exactly the chunk's rows)
            let chunks = (0..t.div_ceil(2048))
                .map(|c| {
                    let end = ((c + 1) * 2048).min(t);
                    let n = end - c * 2048;
                    Ok((
                        step_input(ops, model, &[(n, end)], args.deterministic, false)?,
                        model.workspace(ops, n, 1)?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let cms = gpu_ms(ops.context(), false, 1, 3, || {
                for (input, cws) in &chunks {
                    model.forward(ops, gemm, cws, input)?;
                }
                Ok(())
            })?;
            summary.push(format!(
                "  prefill {t} in 2048-token chunks: {cms:.1} ms (one forward {ms:.1} ms, x{:.2} faster)",
                cms / ms
            ));
            chunked = Some(cms);
        }
        rows.push(
            json!({"tokens": t, "ms": ms, "tokens_per_s": tps, "gemm_floor_ms": floor,
            "matrix_flops": mat, "attention_flops": attn, "fa2_kernel_ms": fa2_ms, "mma_kernel_ms": mma_ms,
            "wgmma_kernel_ms": wg_ms,
            "attention_layer_ms": alone, "chunked_2048_ms": chunked}),
        );
    }
    Ok(json!(rows))
}

/// One layer's prefill attention of a `t`-token prompt alone (no cached prefix, random q and
/// pools) with prefill kernel `k`, milliseconds.
fn prefill_attention_alone(
    ops: &CudaOps,
    model: &LlamaModel,
    t: usize,
    k: strata_kernels::cuda::PrefillKernel,
) -> anyhow::Result<f64> {
    let c = ops.context();
    let s = model.shape;
    let shape = model.attn_shape();
    let seqs = [AttnSeq {
        q_len: t,
        kv_len: t,
        pages: (0..t.div_ceil(shape.page_size) as i32).collect(),
    }];
    strata_kernels::cuda::set_prefill_kernel(Some(k));
    let plan = ops.attention_plan(shape, &seqs, None);
    strata_kernels::cuda::set_prefill_kernel(None);
    let plan = plan?;
    let io = AttnIo::random(ops, &s, &shape, t, 200)?;
    gpu_ms(c, false, 2, 10, || io.run(ops, &plan))
}

/// The row-wise ops of a `t`-token prefill alone (random data): the two fused residual-add +
/// RMSNorm passes, RoPE + KV write and SiLU*mul of one layer. Returns their forward total (ms:
/// each layer's four, plus the final norm) and a summary line with each op's time and bytes/s.
fn prefill_row_ops(ops: &CudaOps, s: &LlamaShape, t: usize) -> anyhow::Result<(f64, String)> {
    let c = ops.context();
    let bf = strata_kernels::cuda::DType::Bf16;
    let (h, kvw, qw) = (s.hidden, s.n_kv_heads * s.head_dim, s.n_heads * s.head_dim);
    let x = c.alloc(bf, &[t, h])?;
    let resid = c.alloc(bf, &[t, h])?;
    let out = c.alloc(bf, &[t, h])?;
    let w = c.alloc(bf, &[h])?;
    let qkv = c.alloc(bf, &[t, s.qkv_width()])?;
    let (kp, vp) = (c.alloc(bf, &[t, kvw])?, c.alloc(bf, &[t, kvw])?);
    let gu = c.alloc(bf, &[t, 2 * s.inter])?;
    let act = c.alloc(bf, &[t, s.inter])?;
    for (i, a) in [&x, &resid, &w, &qkv, &gu].into_iter().enumerate() {
        ops.fill_uniform(a, 300 + i as u64, 1.0)?;
    }
    let pos_h: Vec<i32> = (0..t as i32).collect();
    let pos = c.upload_i32(&[t], &pos_h)?;
    let slots = c.upload_i32(&[t], &pos_h)?;
    let inv = strata_kernels::reference::rope_inv_freq(
        s.head_dim,
        s.rope_theta,
        Some(strata_kernels::reference::Llama3Scaling::default()),
    );
    let inv = c.upload_f32(&[inv.len()], &inv)?;
    let norm = gpu_ms(c, false, 2, 10, || {
        Ok(ops.rmsnorm(&x, Some(&resid), &w, &out, s.eps)?)
    })?;
    let rope = gpu_ms(c, false, 2, 10, || {
        Ok(ops.rope_kv_write(
            &qkv,
            0,
            s.n_heads,
            qw,
            s.n_kv_heads,
            qw + kvw,
            s.head_dim,
            &pos,
            &inv,
            &kp,
            &vp,
            &slots,
            &pos_h,
        )?)
    })?;
    let silu = gpu_ms(c, false, 2, 10, || Ok(ops.silu_mul(&gu, &act)?))?;
    // Bytes each op must move at least (bf16): norm reads x and the residual, writes both.
    let gbs = |bytes: usize, ms: f64| bytes as f64 / ms / 1e6;
    let norm_b = 4 * t * h * 2;
    let rope_b = (2 * t * (qw + kvw) + t * kvw + 2 * t * kvw) * 2;
    let silu_b = 3 * t * s.inter * 2;
    let total = s.layers as f64 * (2.0 * norm + rope + silu) + norm;
    let line = format!(
        "  prefill {t} row ops alone per layer: rmsnorm+residual {norm:.3} ms ({:.0} GB/s) x2, rope_kv_write {rope:.3} ms ({:.0} GB/s), silu_mul {silu:.3} ms ({:.0} GB/s); {total:.1} ms per forward",
        gbs(norm_b, norm),
        gbs(rope_b, rope),
        gbs(silu_b, silu)
    );
    Ok((total, line))
}

/// The prefill GEMMs of a `t`-token prompt alone (cuBLAS through `GemmPath::Auto`): the four
/// per-layer projections and the one-row LM head; returns the forward's GEMM total (ms) and a
/// summary line with each projection's TFLOP/s.
fn prefill_gemms(
    ops: &CudaOps,
    gemm: &Gemm,
    s: &LlamaShape,
    t: usize,
) -> anyhow::Result<(f64, String)> {
    let c = ops.context();
    let bf = strata_kernels::cuda::DType::Bf16;
    let h = s.hidden;
    let (mut total, mut lt_total) = (0.0, 0.0);
    let mut line = format!("  prefill {t} GEMMs alone:");
    for (name, n, k, rows, times) in [
        ("qkv", s.qkv_width(), h, t, s.layers),
        ("o", h, s.n_heads * s.head_dim, t, s.layers),
        ("gate_up", 2 * s.inter, h, t, s.layers),
        ("down", h, s.inter, t, s.layers),
        ("lm_head", s.vocab, h, 1, 1),
    ] {
        let w = c.alloc(bf, &[n, k])?;
        let x = c.alloc(bf, &[rows, k])?;
        let y = c.alloc(bf, &[rows, n])?;
        ops.fill_uniform(&w, 9, 0.02)?;
        ops.fill_uniform(&x, 10, 1.0)?;
        let ms = gpu_ms(c, false, 2, 10, || Ok(gemm.linear(&x, &w, &y)?))?;
        total += ms * times as f64;
        let tf = 2.0 * (rows * n * k) as f64 / ms / 1e9;
        line += &format!(" {name} {:.3} ms ({tf:.0} TFLOP/s)", ms);
        // cuBLASLt with its tuned pick (the first call times the heuristic's candidates).
        if rows > 1 {
            let lt = gpu_ms(c, false, 2, 10, || {
                Ok(gemm.linear_with(&x, &w, &y, GemmPath::CublasLt)?)
            });
            match lt {
                Ok(lt) => {
                    lt_total += lt * times as f64;
                    line += &format!(" [tuned cuBLASLt {lt:.3} ms, x{:.3}]", lt / ms);
                }
                Err(e) => line += &format!(" [cuBLASLt: {e:#}]"),
            }
        } else {
            lt_total += ms * times as f64;
        }
        // gate_up with the SiLU in the wgmma GEMM's epilogue (compute 9.0) vs cuBLAS +
        // silu_mul.
        let act = c.alloc(bf, &[rows, s.inter])?;
        if name == "gate_up" && gemm.gate_silu_applies(&x, &w) {
            let fused = gpu_ms(c, false, 2, 10, || {
                gemm.gate_silu(&x, &w, &act)?;
                Ok(())
            })?;
            let apart = gpu_ms(c, false, 2, 10, || {
                gemm.linear_with(&x, &w, &y, GemmPath::Cublas)?;
                Ok(ops.silu_mul(&y, &act)?)
            })?;
            line += &format!(
                " [+ SiLU: wgmma {fused:.3} ms ({:.0} TFLOP/s) vs cuBLAS + silu_mul {apart:.3} ms, x{:.3}]",
                2.0 * (rows * n * k) as f64 / fused / 1e9,
                fused / apart
            );
        }
    }
    line += &format!(
        "; total cuBLAS {total:.1} ms, tuned cuBLASLt {lt_total:.1} ms (x{:.3})",
        lt_total / total
    );
    Ok((total, line))
}
