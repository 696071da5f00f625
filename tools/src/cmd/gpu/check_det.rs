//! The batch-invariance comparisons of `strata gpu check` (docs/gpu.md, "Batch-invariant mode"):
//! a row's result must be bitwise the same whatever other rows share its launch. Each case runs
//! in batch-invariant mode, where the metric (rows whose bits differ from the reference) must be
//! 0, and in the default mode, where the same count is reported (`default` in the shape, never a
//! failure) to show what the mode changes.

use rand::Rng;
use strata_kernels::cuda::{AttnSeq, AttnShape, CudaOps, DTensor, DType, Gemm, PlanOpts};
use strata_kernels::reference as r;

use super::check::{shuffle, Checker, Outcome};

/// Rows (of `width` values) whose bits differ between `a` and `b`.
fn rows_differing(a: &[f32], b: &[f32], width: usize) -> usize {
    let rows = a
        .chunks(width)
        .zip(b.chunks(width))
        .filter(|(x, y)| {
            x.iter()
                .zip(y.iter())
                .any(|(p, q)| p.to_bits() != q.to_bits())
        })
        .count();
    rows + (a.len().abs_diff(b.len())).div_ceil(width)
}

/// Records a comparison: exact in batch-invariant mode, reported in the default mode.
fn record(ck: &mut Checker, op: &str, det: bool, shape: String, differing: usize) {
    if det {
        ck.exact(op, format!("det {shape}"), differing);
    } else {
        ck.out.push(Outcome {
            op: op.into(),
            shape: format!("default {shape}"),
            metric: differing as f64,
            bound: f64::INFINITY,
            pass: true,
        });
    }
}

/// GEMM rows at M = 1, 3, 8, 32, 100 (at an offset inside the batch too) against the same rows
/// computed in one call of 2048 rows (512 for the f32 LM heads), for every decode and prefill
/// weight shape of Llama-3.2-1B and Llama-3.1-8B; in batch-invariant mode with the cuBLASLt
/// search (`det`), with the GEMV fallback forced (`det-gemv`) and in the default mode; plus each
/// batch-invariant result against the default GEMM (bf16 tolerance). A shape whose
/// batch-invariant GEMM errors (no configuration found) is a failed case, the others still run.
pub fn gemm_rows(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    let det = Gemm::new(c.clone())?.with_deterministic(true)?;
    let fallback = Gemm::new(c.clone())?
        .with_deterministic(true)?
        .with_det_fallback(true);
    let dflt = Gemm::new(c.clone())?;
    // (in, out, f32 output): Llama-3.2-1B qkv, o, gate_up, down, LM head; Llama-3.1-8B the same.
    for (k, n, f32_out) in [
        (2048, 3072, false),
        (2048, 2048, false),
        (2048, 16384, false),
        (8192, 2048, false),
        (2048, 128256, true),
        (4096, 6144, false),
        (4096, 4096, false),
        (4096, 28672, false),
        (14336, 4096, false),
        (4096, 128256, true),
    ] {
        let max: usize = if f32_out { 512 } else { 2048 };
        let x = c.alloc(DType::Bf16, &[max, k])?;
        let w = c.alloc(DType::Bf16, &[n, k])?;
        ops.fill_uniform(&x, ck.rng.random(), 1.0)?;
        ops.fill_uniform(&w, ck.rng.random(), 1.0 / (k as f32).sqrt())?;
        let dt = if f32_out { DType::F32 } else { DType::Bf16 };
        let tag = format!("N{n} K{k}{}", if f32_out { " f32" } else { "" });
        let mut full: Vec<(&str, Vec<f32>)> = Vec::new();
        for (mode, g) in [("det", &det), ("det-gemv", &fallback), ("default", &dflt)] {
            let run = |xm: &DTensor, m: usize| -> anyhow::Result<Vec<f32>> {
                let ym = c.alloc(dt, &[m, n])?;
                c.memset(&ym, 0xff)?;
                g.linear(xm, &w, &ym)?;
                Ok(c.download_f32(&ym)?)
            };
            let want = match run(&x, max) {
                Ok(v) => v,
                Err(e) => {
                    println!("gemm_rows {mode} {tag}: {e:#}");
                    ck.exact(
                        "gemm_rows",
                        format!("{mode} M{max} {tag} (error)"),
                        usize::MAX,
                    );
                    continue;
                }
            };
            for m in [1usize, 3, 8, 32, 100] {
                for off in [0, (m * 37 + 5) % (max - m)] {
                    let got = run(&x.view(off * k, &[m, k])?, m)?;
                    let bad = rows_differing(&got, &want[off * n..(off + m) * n], n);
                    let shape = format!("M{m}@{off} vs M{max} {tag}");
                    if mode == "default" {
                        record(ck, "gemm_rows", false, shape, bad);
                    } else {
                        ck.exact("gemm_rows", format!("{mode} {shape}"), bad);
                    }
                }
            }
            full.push((mode, want));
        }
        if let Some((_, d)) = full.iter().find(|f| f.0 == "default") {
            for (mode, v) in full.iter().filter(|f| f.0 != "default") {
                let err = r::rel_err(v, d);
                ck.rel(
                    "gemm_det_vs_default",
                    format!("{mode} M{max} {tag}"),
                    err,
                    1e-2,
                );
            }
        }
    }
    Ok(())
}

/// A pool of random K/V for `shape` and random page tables for sequences of `kv_lens` keys.
struct Pool {
    k: DTensor,
    v: DTensor,
    pages: Vec<Vec<i32>>,
}

fn pool(
    ops: &CudaOps,
    ck: &mut Checker,
    shape: AttnShape,
    kv_lens: &[usize],
) -> anyhow::Result<Pool> {
    let c = ops.context();
    let ps = shape.page_size;
    let mut ids: Vec<i32> = (0..shape.pool_pages as i32).collect();
    shuffle(&mut ck.rng, &mut ids);
    let mut next = 0;
    let mut pages = Vec::new();
    for &kv in kv_lens {
        let n = kv.div_ceil(ps);
        pages.push(ids[next..next + n].to_vec());
        next += n;
    }
    let slots = shape.pool_pages * ps;
    let kv_dim = shape.n_kv_heads * shape.head_dim;
    Ok(Pool {
        k: c.upload_bf16(&[slots, kv_dim], &ck.bf16_vec(slots * kv_dim, 1.0))?,
        v: c.upload_bf16(&[slots, kv_dim], &ck.bf16_vec(slots * kv_dim, 1.0))?,
        pages,
    })
}

fn opts(det: bool, prefill: bool) -> PlanOpts {
    PlanOpts {
        splits: None,
        deterministic: det,
        det_split_len: 0,
        prefill,
        no_cluster: false,
    }
}

/// Decode attention: each sequence's row computed alone vs inside eager batches of 3, 8, 32 and
/// 40 sequences (shuffled) and inside fixed graph plans of 8 / 48 rows (padded), for the decode2
/// kernel (head_dim 128 and 64), the first decode kernel (head_dim 96) and the general kernel
/// (GQA group 16); in batch-invariant mode also with the rows on the prefill kernel
/// (`STRATA_DET_ATTN=prefill`). Lengths cross the 256-key split boundaries.
pub fn attention_decode_rows(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (nh, nkv, hd) in [(32, 8, 128), (32, 8, 64), (8, 2, 96), (16, 1, 64)] {
        let ps = 16;
        let mut lens: Vec<usize> = vec![1, 2, 255, 256, 257, 512, 513, 2500];
        while lens.len() < 40 {
            lens.push(ck.rng.random_range(1..=2500));
        }
        let pool_pages = lens.iter().map(|l| l.div_ceil(ps)).sum::<usize>() + 3;
        let shape = AttnShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            page_size: ps,
            pool_pages,
        };
        let p = pool(ops, ck, shape, &lens)?;
        let w = nh * hd;
        let q_host = ck.bf16_vec(lens.len() * w, 1.0);
        let seq = |i: usize| AttnSeq {
            q_len: 1,
            kv_len: lens[i],
            pages: p.pages[i].clone(),
        };
        let max_pages = 2500usize.div_ceil(ps);
        let scale = 1.0 / (hd as f32).sqrt();
        // Runs `order` (sequence indices) through `plan` (`rows` q rows, the rest padding).
        let run = |plan: &strata_kernels::cuda::AttnPlan,
                   order: &[usize],
                   rows: usize|
         -> anyhow::Result<Vec<f32>> {
            let mut qh = vec![0f32; rows * w];
            for (r, &i) in order.iter().enumerate() {
                qh[r * w..(r + 1) * w].copy_from_slice(&q_host[i * w..(i + 1) * w]);
            }
            let q = c.upload_bf16(&[rows, w], &qh)?;
            let out = c.alloc(DType::Bf16, &[rows, w])?;
            c.memset(&out, 0xFF)?;
            ops.paged_attention(plan, &q, 0, &p.k, &p.v, &out, scale)?;
            Ok(c.download_f32(&out)?[..order.len() * w].to_vec())
        };
        // (batch-invariant, decode rows on the prefill kernel: STRATA_DET_ATTN=prefill)
        for (det, pk) in [(true, false), (true, true), (false, false)] {
            let tag = format!(
                "H{nh}/{nkv} D{hd}{}",
                if pk { " prefill-kernel" } else { "" }
            );
            let mut alone = Vec::with_capacity(lens.len());
            for i in 0..lens.len() {
                let plan = ops.attention_plan_with(shape, &[seq(i)], opts(det, pk))?;
                alone.extend(run(&plan, &[i], 1)?);
            }
            let mut order: Vec<usize> = (0..lens.len()).collect();
            for bs in [3usize, 8, 32, 40] {
                shuffle(&mut ck.rng, &mut order);
                let sub = &order[..bs];
                let seqs: Vec<AttnSeq> = sub.iter().map(|&i| seq(i)).collect();
                let plan = ops.attention_plan_with(shape, &seqs, opts(det, pk))?;
                let got = run(&plan, sub, bs)?;
                let want: Vec<f32> = sub
                    .iter()
                    .flat_map(|&i| alone[i * w..(i + 1) * w].iter().copied())
                    .collect();
                let bad = rows_differing(&got, &want, w);
                let shape_s = format!("{tag} batch {bs} ({} splits)", plan.splits());
                record(ck, "attn_decode_rows", det, shape_s, bad);
            }
            for (bucket, bs) in [(8usize, 5usize), (48, 40)] {
                shuffle(&mut ck.rng, &mut order);
                let sub = &order[..bs];
                let seqs: Vec<AttnSeq> = sub.iter().map(|&i| seq(i)).collect();
                let plan = ops.decode_plan_fixed_with(shape, bucket, max_pages, opts(det, pk))?;
                super::check_ops::update_plan(ops, &plan, &seqs)?;
                let got = run(&plan, sub, bucket)?;
                let want: Vec<f32> = sub
                    .iter()
                    .flat_map(|&i| alone[i * w..(i + 1) * w].iter().copied())
                    .collect();
                let bad = rows_differing(&got, &want, w);
                let shape_s = format!("{tag} graph {bs} of {bucket} ({} splits)", plan.splits());
                record(ck, "attn_decode_rows", det, shape_s, bad);
            }
        }
    }
    Ok(())
}

/// Prefill / prefix-extend attention: a 1100-token prompt computed whole vs extended over a
/// cached prefix (cuts at 1, 63, 64, 65, 700 and a one-token tail), in 333-token chunks, and next
/// to another sequence in one launch; tensor-core kernel (head_dim 128 and 64) and the general
/// kernel (head_dim 96).
pub fn attention_extend_rows(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    const L: usize = 1100;
    for (nh, nkv, hd) in [(32, 8, 128), (32, 8, 64), (8, 2, 96)] {
        let ps = 16;
        let other = (50usize, 300usize);
        let lens = [L, other.1];
        let pool_pages = lens.iter().map(|l| l.div_ceil(ps)).sum::<usize>() + 3;
        let shape = AttnShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            page_size: ps,
            pool_pages,
        };
        let p = pool(ops, ck, shape, &lens)?;
        let w = nh * hd;
        let q_host = ck.bf16_vec(L * w, 1.0);
        let q_other = ck.bf16_vec(other.0 * w, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let ours = |q_len: usize, kv_len: usize| AttnSeq {
            q_len,
            kv_len,
            pages: p.pages[0].clone(),
        };
        let theirs = AttnSeq {
            q_len: other.0,
            kv_len: other.1,
            pages: p.pages[1].clone(),
        };
        let run = |plan: &strata_kernels::cuda::AttnPlan, qh: &[f32]| -> anyhow::Result<Vec<f32>> {
            let rows = qh.len() / w;
            let q = c.upload_bf16(&[rows, w], qh)?;
            let out = c.alloc(DType::Bf16, &[rows, w])?;
            c.memset(&out, 0xFF)?;
            ops.paged_attention(plan, &q, 0, &p.k, &p.v, &out, scale)?;
            Ok(c.download_f32(&out)?)
        };
        let tag = format!("H{nh}/{nkv} D{hd} L{L}");
        for det in [true, false] {
            // The runner marks prompt rows only in batch-invariant mode.
            let o = opts(det, det);
            let whole = run(&ops.attention_plan_with(shape, &[ours(L, L)], o)?, &q_host)?;
            for cut in [1usize, 63, 64, 65, 700, L - 1] {
                let plan = ops.attention_plan_with(shape, &[ours(L - cut, L)], o)?;
                let got = run(&plan, &q_host[cut * w..])?;
                let bad = rows_differing(&got, &whole[cut * w..], w);
                let s = format!("{tag} extend after {cut} ({} splits)", plan.splits());
                record(ck, "attn_extend_rows", det, s, bad);
            }
            let mut bad = 0;
            let mut s = 0;
            while s < L {
                let e = (s + 333).min(L);
                let plan = ops.attention_plan_with(shape, &[ours(e - s, e)], o)?;
                let got = run(&plan, &q_host[s * w..e * w])?;
                bad += rows_differing(&got, &whole[s * w..e * w], w);
                s = e;
            }
            record(
                ck,
                "attn_extend_rows",
                det,
                format!("{tag} chunks of 333"),
                bad,
            );
            let cut = 700;
            let plan = ops.attention_plan_with(shape, &[theirs.clone(), ours(L - cut, L)], o)?;
            let mut qh = q_other.clone();
            qh.extend_from_slice(&q_host[cut * w..]);
            let got = run(&plan, &qh)?;
            let bad = rows_differing(&got[other.0 * w..], &whole[cut * w..], w);
            let s = format!("{tag} extend after {cut} beside another");
            record(ck, "attn_extend_rows", det, s, bad);
        }
    }
    Ok(())
}
