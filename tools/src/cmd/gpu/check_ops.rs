//! The per-op comparisons of `strata gpu check` (see check.rs for the rules).

use rand::Rng;
use strata_kernels::cuda::{
    AttnPlan, AttnSeq, AttnShape, CudaOps, DTensor, DecodeRow, Gemm, GemmPath, QkvInput,
    NORM_IN_QKV,
};
use strata_kernels::reference as r;

use super::check::{shuffle, Checker};

pub(super) const BF16_TOL: f64 = 1e-2;

/// How many elements of `a` and `b` differ in their bits (the exact comparisons' metric).
/// `CudaOps::update_decode_plan` on sequences as the checks hold them (one new token each).
pub(super) fn update_plan(ops: &CudaOps, plan: &AttnPlan, seqs: &[AttnSeq]) -> anyhow::Result<()> {
    let pages: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| s.pages.iter().map(|&p| p as u32).collect())
        .collect();
    let rows: Vec<DecodeRow> = seqs
        .iter()
        .zip(&pages)
        .map(|(s, pages)| DecodeRow {
            kv_len: s.kv_len,
            pages,
        })
        .collect();
    Ok(ops.update_decode_plan(plan, &rows)?)
}

pub(super) fn bit_diffs(a: &[f32], b: &[f32]) -> usize {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
}

/// The tensors' contents as f32, in order (for comparing whole runs with [`runs_bit_diffs`]).
pub(super) fn downloads(ops: &CudaOps, ts: &[&DTensor]) -> anyhow::Result<Vec<Vec<f32>>> {
    ts.iter()
        .map(|t| Ok(ops.context().download_f32(t)?))
        .collect()
}

/// [`bit_diffs`] summed over two runs' tensors.
pub(super) fn runs_bit_diffs(a: &[Vec<f32>], b: &[Vec<f32>]) -> usize {
    a.iter().zip(b).map(|(x, y)| bit_diffs(x, y)).sum()
}

fn poisoned(ops: &CudaOps, t: DTensor) -> anyhow::Result<DTensor> {
    ops.context().memset(&t, 0xFF)?;
    Ok(t)
}

pub(super) fn bf16_out(ops: &CudaOps, shape: &[usize]) -> anyhow::Result<DTensor> {
    poisoned(
        ops,
        ops.context()
            .alloc(strata_kernels::cuda::DType::Bf16, shape)?,
    )
}

pub fn embedding(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (vocab, hidden, t) in [(1000, 64, 1), (517, 4096, 7), (1000, 1000, 33)] {
        let table = ck.bf16_vec(vocab * hidden, 1.0);
        let mut ids: Vec<i32> = (0..t)
            .map(|_| ck.rng.random_range(0..vocab as i32))
            .collect();
        if t > 2 {
            ids[1] = vocab as i32 + 5; // out of range -> zero row
        }
        let gt = c.upload_bf16(&[vocab, hidden], &table)?;
        let gi = c.upload_i32(&[t], &ids)?;
        let out = bf16_out(ops, &[t, hidden])?;
        ops.embedding(&gi, &gt, &out)?;
        let got = c.download_f32(&out)?;
        let want = r::embedding(&ids, &table, hidden);
        let bad = bit_diffs(&got, &want);
        ck.exact("embedding", format!("V{vocab} H{hidden} T{t}"), bad);
    }
    Ok(())
}

/// `add_rows` (the LoRA change added to an adapter's rows) against the host: exact, since both
/// sum two bf16 values in f32 and round once; the other rows untouched.
pub fn add_rows(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (t, width, ids) in [
        (5, 64, vec![3, 0]),
        (40, 6144, vec![7, 8, 9, 39, 1]),
        (3, 1000, vec![2]),
    ] {
        let dst = ck.bf16_vec(t * width, 2.0);
        let src = ck.bf16_vec(ids.len() * width, 0.5);
        let gd = c.upload_bf16(&[t, width], &dst)?;
        ops.add_rows(
            &c.upload_i32(&[ids.len()], &ids)?,
            &c.upload_bf16(&[ids.len(), width], &src)?,
            &gd,
        )?;
        let mut want = dst.clone();
        for (g, &row) in ids.iter().enumerate() {
            for i in 0..width {
                let v = &mut want[row as usize * width + i];
                *v = half::bf16::from_f32(*v + src[g * width + i]).to_f32();
            }
        }
        let bad = bit_diffs(&c.download_f32(&gd)?, &want);
        ck.exact("add_rows", format!("T{t} W{width} rows {}", ids.len()), bad);
    }
    Ok(())
}

pub fn rmsnorm(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (t, h, with_res) in [
        (1, 128, false),
        (5, 4096, true),
        (17, 1000, true),
        (3, 8192, false),
    ] {
        let x = ck.bf16_vec(t * h, 2.0);
        let w = ck.bf16_vec(h, 1.5);
        let res = ck.bf16_vec(t * h, 2.0);
        let gx = c.upload_bf16(&[t, h], &x)?;
        let gw = c.upload_bf16(&[h], &w)?;
        let gr = c.upload_bf16(&[t, h], &res)?;
        let out = bf16_out(ops, &[t, h])?;
        ops.rmsnorm(&gx, with_res.then_some(&gr), &gw, &out, 1e-5)?;
        let mut res_ref = res.clone();
        let want = r::rmsnorm(&x, with_res.then_some(&mut res_ref[..]), &w, 1e-5);
        let shape = format!("T{t} H{h} residual={with_res}");
        ck.rel(
            "rmsnorm",
            shape.clone(),
            r::rel_err(&c.download_f32(&out)?, &want),
            BF16_TOL,
        );
        if with_res {
            let got_res = c.download_f32(&gr)?;
            ck.rel("rmsnorm.res", shape, r::rel_err(&got_res, &res_ref), 1e-6);
        }
    }
    Ok(())
}

pub fn rope(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (t, nh, nkv, hd) in [(1, 4, 2, 64), (9, 32, 8, 128), (33, 6, 2, 96)] {
        let width = (nh + 2 * nkv) * hd;
        let x = ck.bf16_vec(t * width, 1.0);
        let pos: Vec<i32> = (0..t).map(|_| ck.rng.random_range(0..9000)).collect();
        let inv = r::rope_inv_freq(hd, 500000.0, Some(r::Llama3Scaling::default()));
        let g = c.upload_bf16(&[t, width], &x)?;
        let gp = c.upload_i32(&[t], &pos)?;
        let gi = c.upload_f32(&[hd / 2], &inv)?;
        ops.rope(&g, 0, nh, nh * hd, nkv, hd, &gp, &gi)?;
        let mut want = x.clone();
        r::rope(&mut want, width, 0, nh, hd, &pos, &inv);
        r::rope(&mut want, width, nh * hd, nkv, hd, &pos, &inv);
        let err = r::rel_err(&c.download_f32(&g)?, &want);
        ck.rel(
            "rope",
            format!("T{t} heads{nh}/{nkv} hd{hd} llama3"),
            err,
            BF16_TOL,
        );
    }
    Ok(())
}

pub fn silu_mul(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (t, inter) in [(1, 100), (13, 14336), (4, 1000)] {
        let gu = ck.bf16_vec(t * 2 * inter, 4.0);
        let g = c.upload_bf16(&[t, 2 * inter], &gu)?;
        let out = bf16_out(ops, &[t, inter])?;
        ops.silu_mul(&g, &out)?;
        let err = r::rel_err(&c.download_f32(&out)?, &r::silu_mul(&gu, inter));
        ck.rel("silu_mul", format!("T{t} I{inter}"), err, BF16_TOL);
    }
    Ok(())
}

pub fn kv_write(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (t, kv_dim, slots, width) in [(13, 1024, 64, 6144), (1, 96, 5, 300)] {
        let src = ck.bf16_vec(t * width, 1.0);
        let pool0 = ck.bf16_vec(slots * kv_dim, 1.0);
        let mut ids: Vec<i32> = (0..slots as i32).collect();
        shuffle(&mut ck.rng, &mut ids);
        ids.truncate(t);
        if t > 3 {
            ids[2] = -1;
        }
        let (k_col, v_col) = (width - 2 * kv_dim, width - kv_dim);
        let gs = c.upload_bf16(&[t, width], &src)?;
        let kp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
        let vp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
        let gi = c.upload_i32(&[t], &ids)?;
        ops.kv_write(&gs, k_col, v_col, &kp, &vp, &gi, &ids)?;
        let (mut wk, mut wv) = (pool0.clone(), pool0.clone());
        for (ti, &s) in ids.iter().enumerate() {
            if s < 0 {
                continue;
            }
            let s = s as usize;
            wk[s * kv_dim..][..kv_dim].copy_from_slice(&src[ti * width + k_col..][..kv_dim]);
            wv[s * kv_dim..][..kv_dim].copy_from_slice(&src[ti * width + v_col..][..kv_dim]);
        }
        let n = bit_diffs(&c.download_f32(&kp)?, &wk) + bit_diffs(&c.download_f32(&vp)?, &wv);
        ck.exact("kv_write", format!("T{t} kv_dim{kv_dim} slots{slots}"), n);
    }
    Ok(())
}

/// The fused RoPE + K/V write against `rope` then `kv_write` on the same input: bit-identical
/// qkv rows and pools (one skipped slot included).
pub fn rope_kv_write(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (t, nh, nkv, hd, slots) in [(1, 32, 8, 128, 40), (7, 4, 2, 64, 9), (5, 6, 2, 96, 12)] {
        let (q_w, kv_dim) = (nh * hd, nkv * hd);
        let width = q_w + 2 * kv_dim;
        let x = ck.bf16_vec(t * width, 1.0);
        let pool0 = ck.bf16_vec(slots * kv_dim, 1.0);
        let pos: Vec<i32> = (0..t).map(|_| ck.rng.random_range(0..9000)).collect();
        let mut ids: Vec<i32> = (0..slots as i32).collect();
        shuffle(&mut ck.rng, &mut ids);
        ids.truncate(t);
        if t > 3 {
            ids[1] = -1;
        }
        let inv = r::rope_inv_freq(hd, 500000.0, Some(r::Llama3Scaling::default()));
        let gp = c.upload_i32(&[t], &pos)?;
        let gi = c.upload_f32(&[hd / 2], &inv)?;
        let gs = c.upload_i32(&[t], &ids)?;
        let run = |fused: bool| -> anyhow::Result<Vec<Vec<f32>>> {
            let g = c.upload_bf16(&[t, width], &x)?;
            let kp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
            let vp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
            if fused {
                ops.rope_kv_write(
                    &g,
                    0,
                    nh,
                    q_w,
                    nkv,
                    q_w + kv_dim,
                    hd,
                    &gp,
                    &gi,
                    &kp,
                    &vp,
                    &gs,
                    &ids,
                )?;
            } else {
                ops.rope(&g, 0, nh, q_w, nkv, hd, &gp, &gi)?;
                ops.kv_write(&g, q_w, q_w + kv_dim, &kp, &vp, &gs, &ids)?;
            }
            downloads(ops, &[&g, &kp, &vp])
        };
        let (a, b) = (run(true)?, run(false)?);
        let n = runs_bit_diffs(&a, &b);
        ck.exact(
            "rope_kv_write",
            format!("T{t} heads{nh}/{nkv} hd{hd} slots{slots}"),
            n,
        );
    }
    Ok(())
}

pub fn gemm(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    use GemmPath::{Cublas, CublasLt, DetGemv, Gemv, GemvT1, GemvT1Pipe, GemvT1Wide};
    for (t, k, n, f32_out, path) in [
        (1, 4096, 1024, false, Cublas),
        (33, 1000, 777, false, Cublas),
        (128, 512, 1536, false, Cublas),
        (7, 4096, 1000, true, Cublas),
        (1, 4096, 1024, false, Gemv),
        (5, 1000, 777, false, Gemv),
        (8, 14336, 300, false, Gemv),
        (3, 4096, 1000, true, Gemv),
        (1, 4096, 1024, false, CublasLt),
        (33, 1000, 777, false, CublasLt),
        (32, 4096, 1536, false, CublasLt),
        (7, 4096, 1000, true, CublasLt),
        (1, 4096, 1000, false, GemvT1),
        (1, 14336, 300, false, GemvT1),
        (1, 1000, 777, true, GemvT1),
        (1, 4096, 1000, false, GemvT1Wide),
        (1, 14336, 300, true, GemvT1Wide),
        (1, 1000, 777, false, GemvT1Wide),
        // Two steps in flight: rows of 1, 2, 4 and 7 steps and a partial one, the 1B down shape.
        (1, 2048, 3072, false, GemvT1Pipe),
        (1, 4096, 1000, false, GemvT1Pipe),
        (1, 8192, 2048, false, GemvT1Pipe),
        (1, 14336, 300, true, GemvT1Pipe),
        (1, 1000, 777, false, GemvT1Pipe),
        (1, 8192, 2048, false, GemvT1),
        // The batch-invariant fallback: gemv_bf16 over 8-row chunks, any row count.
        (1, 4096, 1000, false, DetGemv),
        (3, 2048, 777, true, DetGemv),
        (8, 14336, 300, false, DetGemv),
        (9, 4096, 1000, false, DetGemv),
        (17, 1000, 777, true, DetGemv),
        (100, 2048, 513, false, DetGemv),
    ] {
        let x = ck.bf16_vec(t * k, 1.0);
        let w = ck.bf16_vec(n * k, 1.0 / (k as f32).sqrt());
        let gx = c.upload_bf16(&[t, k], &x)?;
        let gw = c.upload_bf16(&[n, k], &w)?;
        let dt = if f32_out {
            strata_kernels::cuda::DType::F32
        } else {
            strata_kernels::cuda::DType::Bf16
        };
        let y = poisoned(ops, c.alloc(dt, &[t, n])?)?;
        gemm.linear_with(&gx, &gw, &y, path)?;
        let want = r::linear(&x, &w, k);
        let bound = if f32_out { 1e-3 } else { BF16_TOL };
        let err = r::rel_err(&c.download_f32(&y)?, &want);
        let ty = if f32_out { "f32" } else { "bf16" };
        ck.rel(
            "gemm",
            format!("{path:?} T{t} in{k} out{n} {ty}"),
            err,
            bound,
        );
    }
    // y += x w^T inside the GEMM (the prefill forwards' residual add), against y + linear on
    // the CPU.
    for (t, k, n) in [(65, 4096, 1024), (257, 2048, 512), (300, 1000, 777)] {
        if !gemm.acc_applies(t) {
            continue;
        }
        let (x, w, y0) = (
            ck.bf16_vec(t * k, 1.0),
            ck.bf16_vec(n * k, 1.0 / (k as f32).sqrt()),
            ck.bf16_vec(t * n, 4.0),
        );
        let y = c.upload_bf16(&[t, n], &y0)?;
        gemm.linear_acc(
            &c.upload_bf16(&[t, k], &x)?,
            &c.upload_bf16(&[n, k], &w)?,
            &y,
        )?;
        let want: Vec<f32> = r::linear(&x, &w, k)
            .iter()
            .zip(&y0)
            .map(|(a, b)| a + b)
            .collect();
        let err = r::rel_err(&c.download_f32(&y)?, &want);
        ck.rel("gemm", format!("acc T{t} in{k} out{n} bf16"), err, BF16_TOL);
    }
    Ok(())
}

/// The fused single-row SiLU-mul + GEMV against silu_mul then linear on the CPU.
pub fn silu_linear(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    // (In >= 8192: the two-steps-in-flight kernel.)
    for (k, n) in [
        (14336, 512),
        (8192, 2048),
        (4096, 100),
        (1000, 777),
        (64, 3),
    ] {
        let gu = ck.bf16_vec(2 * k, 2.0);
        let w = ck.bf16_vec(n * k, 1.0 / (k as f32).sqrt());
        let ggu = c.upload_bf16(&[1, 2 * k], &gu)?;
        let gw = c.upload_bf16(&[n, k], &w)?;
        let y = poisoned(ops, c.alloc(strata_kernels::cuda::DType::Bf16, &[1, n])?)?;
        anyhow::ensure!(gemm.silu_linear_t1(&ggu, &gw, &y)?, "shape {k}x{n} refused");
        // The fused kernel rounds silu*up to bf16 as silu_mul does before the GEMV.
        let act = r::round_bf16(&r::silu_mul(&gu, k));
        let want = r::linear(&act, &w, k);
        let err = r::rel_err(&c.download_f32(&y)?, &want);
        ck.rel(
            "gemm",
            format!("silu+GemvT1 in{k} out{n} bf16"),
            err,
            BF16_TOL,
        );
    }
    Ok(())
}

/// The single-row gate_up GEMV with the SiLU in its epilogue against silu_mul of the linear on
/// the CPU (gate and up rounded to bf16 first), and bit for bit against the GPU's own
/// single-row GEMV + silu_mul (what it replaces).
pub fn gate_silu(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    // (in, inter): Llama-3.2-1B and -3.1-8B, a row of the two-steps-in-flight kernel, odd tails.
    for (k, n) in [
        (2048, 8192),
        (4096, 14336),
        (8192, 1024),
        (1000, 777),
        (64, 3),
    ] {
        let x = ck.bf16_vec(k, 1.0);
        let w = ck.bf16_vec(2 * n * k, 2.0 / (k as f32).sqrt());
        let gx = c.upload_bf16(&[1, k], &x)?;
        let gw = c.upload_bf16(&[2 * n, k], &w)?;
        let act = bf16_out(ops, &[1, n])?;
        anyhow::ensure!(gemm.gate_silu(&gx, &gw, &act)?, "shape {k}x{n} refused");
        let got = c.download_f32(&act)?;
        let gu = r::round_bf16(&r::linear(&x, &w, k));
        let want = r::round_bf16(&r::silu_mul(&gu, n));
        let err = r::rel_err(&got, &want);
        ck.rel(
            "gemm",
            format!("gate_up+SiLU T1 in{k} inter{n}"),
            err,
            BF16_TOL,
        );
        // The unfused GPU path: the single-row GEMV (same kernel family, same sum order), then
        // silu_mul.
        let ggu = bf16_out(ops, &[1, 2 * n])?;
        let path = if k >= strata_kernels::cuda::GEMV_T1_PIPE_MIN_IN {
            GemmPath::GemvT1Pipe
        } else {
            GemmPath::GemvT1
        };
        gemm.linear_with(&gx, &gw, &ggu, path)?;
        let unfused = bf16_out(ops, &[1, n])?;
        ops.silu_mul(&ggu, &unfused)?;
        let base = c.download_f32(&unfused)?;
        let diff = bit_diffs(&got, &base);
        ck.exact(
            "gemm",
            format!("gate_up+SiLU T1 in{k} inter{n} == GEMV + silu_mul"),
            diff,
        );
    }
    Ok(())
}

/// The wgmma gate_up GEMM with the SiLU in its epilogue (prefill-sized x, compute 9.0) against
/// silu_mul of the linear on the CPU (small shapes) and against the GPU path it replaces
/// (cuBLAS + silu_mul; its sums run in another order, so not bit for bit: no element may differ
/// by more than 1 % of the largest output). Row counts off the 128-row tile, one and several
/// groups of row tiles, the Llama-3.2-1B and -3.1-8B MLP shapes (the persistent loop over more
/// tiles than SMs).
pub fn gate_gemm(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    if !gemm.has_wg_gemm() {
        println!("gate_gemm: not on this GPU (compute 9.0 only); skipped");
        return Ok(());
    }
    // (rows, in, inter); the CPU reference only where it is cheap.
    for (t, k, n, cpu) in [
        (256, 64, 128, true),
        (300, 2048, 1024, true),
        (2100, 1000, 256, true),
        (2048, 2048, 8192, false),
        (2048, 4096, 14336, false),
        (8192, 4096, 14336, false),
    ] {
        let gx = c.alloc(strata_kernels::cuda::DType::Bf16, &[t, k])?;
        let gw = c.alloc(strata_kernels::cuda::DType::Bf16, &[2 * n, k])?;
        ops.fill_uniform(&gx, ck.rng.random(), 1.0)?;
        ops.fill_uniform(&gw, ck.rng.random(), 2.0 / (k as f32).sqrt())?;
        let act = bf16_out(ops, &[t, n])?;
        anyhow::ensure!(gemm.gate_silu(&gx, &gw, &act)?, "{t}x{k} inter {n} refused");
        let got = c.download_f32(&act)?;
        if cpu {
            let (x, w) = (c.download_f32(&gx)?, c.download_f32(&gw)?);
            let gu = r::round_bf16(&r::linear(&x, &w, k));
            let want = r::round_bf16(&r::silu_mul(&gu, n));
            ck.rel(
                "gemm",
                format!("gate_up+SiLU wgmma {t}x{k} inter{n}"),
                r::rel_err(&got, &want),
                BF16_TOL,
            );
        }
        let ggu = bf16_out(ops, &[t, 2 * n])?;
        gemm.linear_with(&gx, &gw, &ggu, GemmPath::Cublas)?;
        let unfused = bf16_out(ops, &[t, n])?;
        ops.silu_mul(&ggu, &unfused)?;
        let base = c.download_f32(&unfused)?;
        let top = base.iter().fold(0f32, |m, v| m.max(v.abs()));
        let far = got
            .iter()
            .zip(&base)
            .filter(|(a, b)| {
                // NaN counts as far.
                !matches!(
                    (*a - *b).abs().partial_cmp(&(0.01 * top)),
                    Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                )
            })
            .count();
        ck.rel(
            "gemm",
            format!("gate_up+SiLU wgmma {t}x{k} inter{n} vs cuBLAS"),
            r::rel_err(&got, &base),
            BF16_TOL,
        );
        ck.exact(
            "gemm",
            format!("gate_up+SiLU wgmma {t}x{k} inter{n}: > 1 % off cuBLAS"),
            far,
        );
    }
    Ok(())
}

/// The single-row qkv GEMV with RoPE and the K/V pool write in its epilogue, bit for bit
/// against the single-row GEMV + rope_kv_write it replaces: the qkv row and both pools (the
/// token's slot written, every other row untouched). Llama-3.2-1B and -3.1-8B head shapes, a
/// row of the two-steps-in-flight kernel, large positions (sincosf's slow path), no slot; then
/// 12 more 1B rows of fresh data (a contraction difference shows as one bf16 in thousands).
pub fn qkv_rope(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    let mut cases = vec![
        (2048, 32, 8, 64, 1000, 3),
        (4096, 32, 8, 128, 131_000, 0),
        (8192, 8, 2, 128, 77, 5),
        (1000, 6, 2, 32, 9, -1),
    ];
    cases.extend((1..=12).map(|i| (2048, 32, 8, 64, 977 * i, i % 8)));
    for (k, nh, nkv, hd, pos, slot) in cases {
        let width = (nh + 2 * nkv) * hd;
        let kv_dim = nkv * hd;
        let slots = 8;
        let x = ck.bf16_vec(k, 1.0);
        let w = ck.bf16_vec(width * k, 2.0 / (k as f32).sqrt());
        let pool0 = ck.bf16_vec(slots * kv_dim, 1.0);
        let inv = r::rope_inv_freq(hd, 500000.0, Some(r::Llama3Scaling::default()));
        let gx = c.upload_bf16(&[1, k], &x)?;
        let gw = c.upload_bf16(&[width, k], &w)?;
        let gp = c.upload_i32(&[1], &[pos])?;
        let gi = c.upload_f32(&[hd / 2], &inv)?;
        let gs = c.upload_i32(&[1], &[slot])?;
        // The input norm's operands (mode 1: rmsnorm(y + resid), mode 2: rmsnorm(resid)).
        let (yv, rv, nwv) = (
            ck.bf16_vec(k, 1.0),
            ck.bf16_vec(k, 1.0),
            ck.bf16_vec(k, 1.0),
        );
        let (gy, gnw) = (c.upload_bf16(&[1, k], &yv)?, c.upload_bf16(&[k], &nwv)?);
        let eps = 1e-5;
        // mode 0: the row given; 1 and 2: the input norm staged in the kernel (k % 2048 == 0).
        let run = |mode: usize, fused: bool| -> anyhow::Result<Vec<Vec<f32>>> {
            let qkv = bf16_out(ops, &[1, width])?;
            let kp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
            let vp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
            let resid = c.upload_bf16(&[1, k], &rv)?;
            let y = (mode == 1).then_some(&gy);
            if fused {
                let input = match mode {
                    0 => QkvInput::Row(&gx),
                    _ => QkvInput::Norm {
                        y,
                        resid: &resid,
                        weight: &gnw,
                        eps,
                    },
                };
                anyhow::ensure!(
                    gemm.qkv_rope_t1(
                        ops,
                        &input,
                        &gw,
                        &qkv,
                        (nh, nkv, hd),
                        &gp,
                        &gi,
                        (&kp, &vp),
                        &gs,
                        &[slot],
                    )?,
                    "qkv_rope_t1 refused in{k} mode {mode}"
                );
            } else {
                let h = bf16_out(ops, &[1, k])?;
                let x = if mode == 0 {
                    &gx
                } else {
                    // (rmsnorm adds y into its own copy of the residual: the staged norm
                    // leaves the residual alone, compared below.)
                    let r2 = c.upload_bf16(&[1, k], &rv)?;
                    match y {
                        Some(y) => ops.rmsnorm(y, Some(&r2), &gnw, &h, eps)?,
                        None => ops.rmsnorm(&r2, None, &gnw, &h, eps)?,
                    }
                    &h
                };
                let path = if k >= strata_kernels::cuda::GEMV_T1_PIPE_MIN_IN {
                    GemmPath::GemvT1Pipe
                } else {
                    GemmPath::GemvT1
                };
                gemm.linear_with(x, &gw, &qkv, path)?;
                ops.rope_kv_write(
                    &qkv,
                    0,
                    nh,
                    nh * hd,
                    nkv,
                    (nh + nkv) * hd,
                    hd,
                    &gp,
                    &gi,
                    &kp,
                    &vp,
                    &gs,
                    &[slot],
                )?;
            }
            downloads(ops, &[&qkv, &kp, &vp, &resid])
        };
        let modes: &[usize] = if k == NORM_IN_QKV { &[0, 1, 2] } else { &[0] };
        for &mode in modes {
            let (a, b) = (run(mode, true)?, run(mode, false)?);
            let n = runs_bit_diffs(&a, &b);
            let what = ["h", "rmsnorm(y + resid)", "rmsnorm(resid)"][mode];
            ck.exact(
                "gemm",
                format!(
                    "qkv+RoPE T1 of {what} in{k} h{nh}/{nkv} d{hd} pos{pos} slot{slot} == unfused"
                ),
                n,
            );
        }
    }
    Ok(())
}

/// rmsnorm_add2 (the second norm of a layer whose first was staged into the qkv GEMV) bit for
/// bit against two rmsnorm calls in sequence: the output and the residual.
pub fn rmsnorm_add2(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (t, h) in [(1, 2048), (1, 4096), (3, 8192), (2, 1000)] {
        let (x1, x2, r0, w) = (
            ck.bf16_vec(t * h, 1.0),
            ck.bf16_vec(t * h, 1.0),
            ck.bf16_vec(t * h, 1.0),
            ck.bf16_vec(h, 1.0),
        );
        let (g1, g2, gw) = (
            c.upload_bf16(&[t, h], &x1)?,
            c.upload_bf16(&[t, h], &x2)?,
            c.upload_bf16(&[h], &w)?,
        );
        let run = |fused: bool| -> anyhow::Result<Vec<Vec<f32>>> {
            let resid = c.upload_bf16(&[t, h], &r0)?;
            let out = bf16_out(ops, &[t, h])?;
            if fused {
                ops.rmsnorm_add2(&g1, &g2, &resid, &gw, &out, 1e-5)?;
            } else {
                ops.rmsnorm(&g1, Some(&resid), &gw, &out, 1e-5)?;
                ops.rmsnorm(&g2, Some(&resid), &gw, &out, 1e-5)?;
            }
            downloads(ops, &[&out, &resid])
        };
        let n = runs_bit_diffs(&run(true)?, &run(false)?);
        ck.exact(
            "rmsnorm",
            format!("rmsnorm_add2 T{t} H{h} == rmsnorm x2"),
            n,
        );
    }
    Ok(())
}

fn rb(x: f32) -> f32 {
    r::round_bf16(&[x])[0]
}

/// `qkv_bias_norm` (Qwen2 bias, Qwen3 per-head q/k RMSNorm) against the CPU arithmetic with
/// Hugging Face's rounding (normalised value to bf16, then times the weight).
pub fn qkv_bias_norm(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (t, nh, nkv, hd, bias, norm) in [
        (3, 4, 2, 64, true, false),
        (9, 32, 8, 128, false, true),
        (5, 14, 2, 64, true, true),
    ] {
        let width = (nh + 2 * nkv) * hd;
        let x = ck.bf16_vec(t * width, 2.0);
        let b = ck.bf16_vec(width, 0.5);
        let (qn, kn) = (ck.bf16_vec(hd, 1.5), ck.bf16_vec(hd, 1.5));
        let g = c.upload_bf16(&[t, width], &x)?;
        let gb = c.upload_bf16(&[width], &b)?;
        let (gq, gk) = (c.upload_bf16(&[hd], &qn)?, c.upload_bf16(&[hd], &kn)?);
        ops.qkv_bias_norm(
            &g,
            bias.then_some(&gb),
            norm.then_some((&gq, &gk)),
            nh,
            nkv,
            hd,
            1e-6,
        )?;
        let mut want = x.clone();
        for row in want.chunks_mut(width) {
            if bias {
                for (v, bb) in row.iter_mut().zip(&b) {
                    *v = rb(*v + bb);
                }
            }
            if norm {
                for h in 0..nh + nkv {
                    let w = if h < nh { &qn } else { &kn };
                    let v = &mut row[h * hd..(h + 1) * hd];
                    let ss: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
                    let rr = (1.0 / (ss / hd as f64 + 1e-6).sqrt()) as f32;
                    for (x, w) in v.iter_mut().zip(w) {
                        *x = rb(rb(*x * rr) * w);
                    }
                }
            }
        }
        let err = r::rel_err(&c.download_f32(&g)?, &want);
        ck.rel(
            "qkv_bias_norm",
            format!("T{t} heads{nh}/{nkv} hd{hd} bias={bias} norm={norm}"),
            err,
            BF16_TOL,
        );
    }
    Ok(())
}

/// `argmax_rows` (the CUDA runner's greedy pick) must equal the CPU `argmax` exactly, ties to
/// the lowest index included.
pub fn argmax_rows(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    for (b, v) in [(1, 1000), (7, 128256), (33, 151936)] {
        let mut logits: Vec<f32> = (0..b * v)
            .map(|_| ck.rng.random_range(-4.0f32..4.0))
            .collect();
        // Plant ties: row 0's maximum appears twice.
        let m = logits[..v].iter().copied().fold(f32::MIN, f32::max) + 1.0;
        logits[v / 3] = m;
        logits[v / 2] = m;
        let gl = c.upload_f32(&[b, v], &logits)?;
        let out = c.alloc(strata_kernels::cuda::DType::I32, &[b])?;
        ops.argmax_rows(&gl, &out)?;
        let got = c.download_i32(&out)?;
        let bad = logits
            .chunks(v)
            .zip(&got)
            .filter(|(row, &g)| strata_kernels::sampling::argmax(row) as i32 != g)
            .count();
        ck.exact("argmax_rows", format!("B{b} V{v}"), bad);
    }
    Ok(())
}

/// A fixed decode plan (CUDA-graph replay) rewritten in place must give the same attention as a
/// plan built for the batch, for batches smaller than the plan and of mixed lengths.
pub fn fixed_decode_plan(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    let (nh, nkv, hd, ps, pool_pages) = (32, 8, 128, 16, 96);
    let shape = AttnShape {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        page_size: ps,
        pool_pages,
    };
    let kv_dim = nkv * hd;
    let slots = pool_pages * ps;
    let k = c.upload_bf16(&[slots, kv_dim], &ck.bf16_vec(slots * kv_dim, 1.0))?;
    let v = c.upload_bf16(&[slots, kv_dim], &ck.bf16_vec(slots * kv_dim, 1.0))?;
    let max_pages = 24;
    // Batch 8 and batch 1 fixed plans (on sm_90 the decode2 cluster form with 4 and 16 blocks),
    // then batch 8 and 32 on the tensor cores (`set_decode_attn`): the decode MMA kernel, and the
    // prefill kernel (`set_decode_dmma(false)`), each against a fresh decode2 plan of the live rows.
    use strata_kernels::cuda::{set_decode_attn, set_decode_dmma};
    for (fixed, n, mma, dmma) in [
        (8usize, 1usize, false, false),
        (8, 5, false, false),
        (8, 8, false, false),
        (1, 1, false, false),
        (8, 5, true, true),
        (32, 32, true, true),
        (32, 3, true, true),
        (8, 5, true, false),
        (32, 32, true, false),
    ] {
        set_decode_attn(Some(mma));
        set_decode_dmma(Some(dmma));
        let plan = ops.decode_plan_fixed(shape, fixed, max_pages);
        set_decode_dmma(None);
        set_decode_attn(Some(false));
        let plan = plan?;
        let mut kept: Vec<AttnSeq> = Vec::new();
        // Two updates of the same plan: the second replaces every other row's pages and lengths
        // (the plan then writes only the entries that changed).
        for round in 0..2 {
            let mut pages: Vec<i32> = (0..pool_pages as i32).collect();
            shuffle(&mut ck.rng, &mut pages);
            let mut seqs: Vec<AttnSeq> = (0..n)
                .map(|i| {
                    let kv_len = ck.rng.random_range(1..=max_pages * ps);
                    let np = kv_len.div_ceil(ps);
                    AttnSeq {
                        q_len: 1,
                        kv_len,
                        pages: pages[i * 12 % 72..][..np.min(24)].to_vec(),
                    }
                })
                .collect();
            if round == 1 {
                for (i, s) in seqs.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
                    s.clone_from(&kept[i]);
                }
            }
            let q_host = ck.bf16_vec(fixed * nh * hd, 1.0);
            let q = c.upload_bf16(&[fixed, nh * hd], &q_host)?;
            let q_n = c.upload_bf16(&[n, nh * hd], &q_host[..n * nh * hd])?;
            let out_fixed = bf16_out(ops, &[fixed, nh * hd])?;
            let out_ref = bf16_out(ops, &[n, nh * hd])?;
            update_plan(ops, &plan, &seqs)?;
            ops.paged_attention(&plan, &q, 0, &k, &v, &out_fixed, 0.088)?;
            let fresh = ops.attention_plan(shape, &seqs, None);
            set_decode_attn(None);
            let fresh = fresh?;
            ops.paged_attention(&fresh, &q_n, 0, &k, &v, &out_ref, 0.088)?;
            let got = c.download_f32(&out_fixed)?;
            let want = c.download_f32(&out_ref)?;
            let err = r::rel_err(&got[..n * nh * hd], &want);
            ck.rel(
                "fixed_decode_plan",
                format!(
                    "{n} of {fixed} rows, pages<=24, {:?}, {} splits, cluster {}, update {round}",
                    plan.kernel(),
                    plan.splits(),
                    plan.cluster()
                ),
                err,
                BF16_TOL,
            );
            kept = seqs;
        }
    }
    Ok(())
}
