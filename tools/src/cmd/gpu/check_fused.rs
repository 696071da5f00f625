//! `strata gpu check` cases of the fused single-row decode kernels (kernels `fused.rs`):
//! `gemv_bf16_t1_norm` (residual add + RMSNorm + GEMV), `gemv_bf16_t1_norm_rope` (the same
//! with RoPE + the K/V pool write) and `gemv_bf16_t1_norm_silu` (with SiLU-mul), against the CPU reference (bf16 tolerance) and bitwise against
//! the separate kernels they replace (rmsnorm, gemv_bf16_t1, rope_kv_write, silu_mul), for the Llama-3.2-1B
//! and Llama-3.1-8B shapes and an odd one (head_dim 96), with and without the residual add, with
//! a pool slot and with slot -1 (no write).

use rand::Rng;
use strata_kernels::cuda::fused::{self, Epilogue, NormIn, RopeKv};
use strata_kernels::cuda::{CudaOps, DType, Gemm, GemmPath};
use strata_kernels::reference as r;

use super::check::Checker;

const BF16_TOL: f64 = 1e-2;

fn bits_differing(a: &[f32], b: &[f32]) -> usize {
    a.iter()
        .zip(b)
        .filter(|(p, q)| p.to_bits() != q.to_bits())
        .count()
        + a.len().abs_diff(b.len())
}

/// The fused kernels are checked whatever `STRATA_FUSE` says (they are opt-in for serving).
pub fn fused_t1(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let was = fused::fusion();
    fused::set_fusion(fused::FUSE_ALL);
    let r = fused_t1_all(ops, gemm, ck);
    fused::set_fusion(was);
    r
}

fn fused_t1_all(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    // (hidden, q heads, kv heads, head_dim, plain out rows, gate_up inter)
    for (h, nh, nkv, hd, n_mlp, inter) in [
        (2048, 32, 8, 64, 2048, 1024),
        (4096, 32, 8, 128, 3000, 1500),
        (1152, 6, 2, 96, 777, 388),
    ] {
        let qkv_n = (nh + 2 * nkv) * hd;
        let kv_dim = nkv * hd;
        let slots = 24;
        let inv = r::rope_inv_freq(hd, 500000.0, Some(r::Llama3Scaling::default()));
        let gi = c.upload_f32(&[hd / 2], &inv)?;
        for (add, slot) in [(false, 5i32), (true, 17), (true, -1)] {
            let y = ck.bf16_vec(h, 2.0);
            let res = ck.bf16_vec(h, 2.0);
            let nw = ck.bf16_vec(h, 1.5);
            let wq = ck.bf16_vec(qkv_n * h, 1.0 / (h as f32).sqrt());
            let wm = ck.bf16_vec(n_mlp * h, 1.0 / (h as f32).sqrt());
            let wg = ck.bf16_vec(2 * inter * h, 1.0 / (h as f32).sqrt());
            let pool0 = ck.bf16_vec(slots * kv_dim, 1.0);
            let pos: i32 = ck.rng.random_range(0..9000);
            let (gy, gnw) = (c.upload_bf16(&[1, h], &y)?, c.upload_bf16(&[h], &nw)?);
            let (gwq, gwm, gwg) = (
                c.upload_bf16(&[qkv_n, h], &wq)?,
                c.upload_bf16(&[n_mlp, h], &wm)?,
                c.upload_bf16(&[2 * inter, h], &wg)?,
            );
            let gp = c.upload_i32(&[1], &[pos])?;
            let gs = c.upload_i32(&[1], &[slot])?;
            let tag = format!("H{h} heads{nh}/{nkv} hd{hd} add={add} slot{slot}");
            // CPU reference: h = bf16(rmsnorm(y + res)), qkv = bf16(h w^T), rope on q and k.
            let mut res_ref = res.clone();
            let hn = r::round_bf16(&r::rmsnorm(&y, add.then_some(&mut res_ref[..]), &nw, 1e-5));
            let hn = if add {
                hn
            } else {
                r::round_bf16(&r::rmsnorm(&res, None, &nw, 1e-5))
            };
            let mut qkv_ref = r::round_bf16(&r::linear(&hn, &wq, h));
            r::rope(&mut qkv_ref, qkv_n, 0, nh, hd, &[pos], &inv);
            r::rope(&mut qkv_ref, qkv_n, nh * hd, nkv, hd, &[pos], &inv);
            let mlp_ref = r::linear(&hn, &wm, h);
            let act_ref = r::silu_mul(&r::round_bf16(&r::linear(&hn, &wg, h)), inter);
            // Fused, then unfused, from the same inputs.
            let mut runs = Vec::new();
            for fused in [true, false] {
                let r_in = c.upload_bf16(&[1, h], &res)?;
                let r_out = c.alloc(DType::Bf16, &[1, h])?;
                let kp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
                let vp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
                let qkv = c.alloc(DType::Bf16, &[1, qkv_n])?;
                let mlp = c.alloc(DType::Bf16, &[1, n_mlp])?;
                let gu = c.alloc(DType::Bf16, &[1, 2 * inter])?;
                let act = c.alloc(DType::Bf16, &[1, inter])?;
                for t in [&r_out, &qkv, &mlp, &act] {
                    c.memset(t, 0xff)?;
                }
                let rope = RopeKv {
                    n_q: nh,
                    n_kv: nkv,
                    head_dim: hd,
                    pos: &gp,
                    inv_freq: &gi,
                    k_pool: &kp,
                    v_pool: &vp,
                    slots: &gs,
                    host_slots: &[slot],
                };
                if fused {
                    let input = NormIn {
                        y: add.then_some(&gy),
                        resid: &r_in,
                        resid_out: add.then_some(&r_out),
                        weight: &gnw,
                        eps: 1e-5,
                    };
                    // The qkv kernel writes resid_out; the others write the same values again.
                    anyhow::ensure!(
                        gemm.norm_linear_t1(ops, &input, &gwq, &qkv, Epilogue::Rope(&rope))?,
                        "fused qkv refused for {tag}"
                    );
                    anyhow::ensure!(
                        gemm.norm_linear_t1(ops, &input, &gwm, &mlp, Epilogue::Store)?,
                        "fused norm GEMV refused for {tag}"
                    );
                    anyhow::ensure!(
                        gemm.norm_linear_t1(ops, &input, &gwg, &gu, Epilogue::SiluMul(&act))?,
                        "fused gate_up + SiLU refused for {tag}"
                    );
                } else {
                    let hb = c.alloc(DType::Bf16, &[1, h])?;
                    if add {
                        ops.rmsnorm(&gy, Some(&r_in), &gnw, &hb, 1e-5)?;
                    } else {
                        ops.rmsnorm(&r_in, None, &gnw, &hb, 1e-5)?;
                    }
                    gemm.linear_with(&hb, &gwq, &qkv, GemmPath::GemvT1)?;
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
                    gemm.linear_with(&hb, &gwm, &mlp, GemmPath::GemvT1)?;
                    gemm.linear_with(&hb, &gwg, &gu, GemmPath::GemvT1)?;
                    ops.silu_mul(&gu, &act)?;
                }
                let resid_now = if fused && add { &r_out } else { &r_in };
                runs.push([
                    c.download_f32(&qkv)?,
                    c.download_f32(&mlp)?,
                    c.download_f32(&kp)?,
                    c.download_f32(&vp)?,
                    c.download_f32(resid_now)?,
                    c.download_f32(&act)?,
                ]);
            }
            let f = &runs[0];
            ck.rel(
                "fused_t1",
                format!("norm+qkv+rope {tag}"),
                r::rel_err(&f[0], &qkv_ref),
                BF16_TOL,
            );
            ck.rel(
                "fused_t1",
                format!("norm+gemv {tag}"),
                r::rel_err(&f[1], &mlp_ref),
                BF16_TOL,
            );
            ck.rel(
                "fused_t1",
                format!("norm+gate_up+silu inter{inter} {tag}"),
                r::rel_err(&f[5], &act_ref),
                BF16_TOL,
            );
            // Pools: the K and V rows of the slot are the rotated k / the v of the row; the rest
            // untouched.
            let mut kp_ref = r::round_bf16(&pool0);
            let mut vp_ref = kp_ref.clone();
            if slot >= 0 {
                let s = slot as usize * kv_dim;
                kp_ref[s..s + kv_dim].copy_from_slice(&f[0][nh * hd..nh * hd + kv_dim]);
                vp_ref[s..s + kv_dim].copy_from_slice(&f[0][nh * hd + kv_dim..]);
            }
            ck.exact(
                "fused_t1",
                format!("pools {tag}"),
                bits_differing(&f[2], &kp_ref) + bits_differing(&f[3], &vp_ref),
            );
            if add {
                ck.rel(
                    "fused_t1",
                    format!("resid_out {tag}"),
                    r::rel_err(&f[4], &res_ref),
                    1e-6,
                );
            }
            // The o/down projection adding into the residual (gemv_bf16_t1_res) against
            // gemv_bf16_t1 + rmsnorm's residual add, and the CPU.
            {
                let x = c.upload_bf16(&[1, h], &hn)?;
                let r0 = ck.bf16_vec(n_mlp, 2.0);
                let (ra, rb) = (
                    c.upload_bf16(&[1, n_mlp], &r0)?,
                    c.upload_bf16(&[1, n_mlp], &r0)?,
                );
                let yo = c.alloc(DType::Bf16, &[1, n_mlp])?;
                let ones = c.upload_bf16(&[n_mlp], &vec![1.0; n_mlp])?;
                let scratch = c.alloc(DType::Bf16, &[1, n_mlp])?;
                gemm.linear_with(&x, &gwm, &yo, GemmPath::GemvT1)?;
                ops.rmsnorm(&yo, Some(&ra), &ones, &scratch, 1e-5)?;
                anyhow::ensure!(gemm.linear_add_t1(&x, &gwm, &rb)?, "linear_add_t1 refused");
                let (a, b) = (c.download_f32(&ra)?, c.download_f32(&rb)?);
                let want: Vec<f32> = r::round_bf16(&r::linear(&hn, &wm, h))
                    .iter()
                    .zip(&r0)
                    .map(|(y, r)| half::bf16::from_f32(y + r).to_f32())
                    .collect();
                ck.rel(
                    "fused_t1",
                    format!("gemv+residual add {tag}"),
                    r::rel_err(&b, &want),
                    BF16_TOL,
                );
                ck.exact(
                    "fused_t1",
                    format!("gemv+residual add vs gemv + rmsnorm add bits {tag}"),
                    bits_differing(&a, &b),
                );
            }
            let differing: usize = (0..6)
                .map(|i| bits_differing(&runs[0][i], &runs[1][i]))
                .sum();
            ck.exact(
                "fused_t1",
                format!("fused vs unfused bits {tag}"),
                differing,
            );
        }
    }
    Ok(())
}

/// Decode attention with the in-kernel split merge (decode2 plans, the default) against the same
/// plan shape with the separate `attention_combine` launch: bitwise equal, for GQA groups 1/4/8 at
/// head_dim 128 and 4 at 64, batches of 1/3/8 sequences of mixed lengths (short ones leave
/// splits empty), planner and forced split counts; a second launch of the same plan checks that
/// the counters were reset. Also a fixed (graph) plan rewritten for fewer rows.
pub fn fused_combine(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    use strata_kernels::cuda::{set_fused_combine, AttnSeq, AttnShape};
    let c = ops.context();
    for (nh, nkv, hd) in [(32, 8, 128), (8, 8, 128), (64, 8, 128), (32, 8, 64)] {
        let (ps, pool_pages) = (16, 800);
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
        for (b, splits) in [(1usize, None), (3, None), (8, None), (3, Some(7))] {
            let mut next = 0i32;
            let seqs: Vec<AttnSeq> = (0..b)
                .map(|i| {
                    let kv_len: usize = if i == 0 {
                        1024
                    } else {
                        ck.rng.random_range(1..=1500)
                    };
                    let np = kv_len.div_ceil(ps) as i32;
                    let pages = (next..next + np).collect();
                    next += np;
                    AttnSeq {
                        q_len: 1,
                        kv_len,
                        pages,
                    }
                })
                .collect();
            let q = c.upload_bf16(&[b, nh * hd], &ck.bf16_vec(b * nh * hd, 1.0))?;
            let mut outs = Vec::new();
            let mut nsplits = 0;
            for fused in [true, false] {
                set_fused_combine(Some(fused));
                let plan = ops.attention_plan(shape, &seqs, splits);
                set_fused_combine(None);
                let plan = plan?;
                nsplits = plan.splits();
                for _ in 0..2 {
                    let o = c.alloc(DType::Bf16, &[b, nh * hd])?;
                    c.memset(&o, 0xff)?;
                    ops.paged_attention(&plan, &q, 0, &k, &v, &o, 0.088)?;
                    outs.push(c.download_f32(&o)?);
                }
            }
            let bad = bits_differing(&outs[0], &outs[2])
                + bits_differing(&outs[1], &outs[2])
                + bits_differing(&outs[3], &outs[2]);
            ck.exact(
                "fused_combine",
                format!(
                    "heads {nh}/{nkv} hd{hd} b{b} {nsplits} splits, in-kernel vs combine launch"
                ),
                bad,
            );
        }
    }
    Ok(())
}
