//! `strata gpu check --only few_rows`: the few-row GEMVs (kernels/src/cuda/gemm_rows.rs), each
//! family alone against the single-row kernels run row by row (plain GEMV, gate_up and SiLU,
//! qkv with RoPE and the pool write, of the rows and of the staged input norm): the exact
//! kernels bit for bit, the mma ones within bf16 tolerance; the plain GEMVs also against the CPU
//! reference.

use strata_kernels::cuda::{CudaOps, DTensor, Gemm, GemmPath, QkvInput, RowsMode};
use strata_kernels::reference as r;

use super::check::Checker;
use super::check_ops::{bf16_out, downloads, runs_bit_diffs, BF16_TOL};

pub fn few_rows(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let was = gemm.rows_mode();
    let mut r = Ok(());
    for mode in [RowsMode::Exact, RowsMode::Mma] {
        gemm.set_rows_mode(mode);
        r = run(ops, gemm, ck, mode == RowsMode::Exact);
        if r.is_err() {
            break;
        }
    }
    gemm.set_rows_mode(was);
    r
}

/// The few-row result `got` against the single-row kernels' `one`: bit for bit (`exact`) or
/// within bf16 tolerance.
fn same(ck: &mut Checker, exact: bool, what: String, got: &[Vec<f32>], one: &[Vec<f32>]) {
    if exact {
        ck.exact("gemm", format!("exact {what}"), runs_bit_diffs(got, one));
    } else {
        let err = got
            .iter()
            .zip(one)
            .map(|(a, b)| r::rel_err(a, b))
            .fold(0.0, f64::max);
        ck.rel("gemm", format!("mma {what}"), err, BF16_TOL);
    }
}

/// Row `i` of x [t, k] as its own [1, k] tensor.
fn row(ops: &CudaOps, x: &[f32], i: usize, k: usize) -> anyhow::Result<DTensor> {
    Ok(ops.context().upload_bf16(&[1, k], &x[i * k..(i + 1) * k])?)
}

fn run(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker, exact: bool) -> anyhow::Result<()> {
    let c = ops.context();
    let (path, fam) = if exact {
        (GemmPath::GemvRows, "exact")
    } else {
        (GemmPath::GemvMma, "mma")
    };
    // The mma kernels need in % 32 == 0: their odd shapes are 1024 wide.
    let odd = if exact { 1000 } else { 1024 };
    // Plain: 1B qkv / gate_up / o shapes, the 8B down at 4 (mma: 7) rows, the 1B down at 8, odd
    // tails.
    for (t, k, n) in [
        (2, 2048, 3072),
        (3, 2048, 16384),
        (8, 2048, 2048),
        (if exact { 4 } else { 7 }, 14336, 4096),
        (8, 8192, 2048),
        (5, odd, 777),
        // in 256: two 128-k steps, so the mma kernels split each tile over 2 warps.
        (6, 256, 999),
    ] {
        let x = ck.bf16_vec(t * k, 1.0);
        let w = ck.bf16_vec(n * k, 2.0 / (k as f32).sqrt());
        let (gx, gw) = (c.upload_bf16(&[t, k], &x)?, c.upload_bf16(&[n, k], &w)?);
        let y = bf16_out(ops, &[t, n])?;
        gemm.linear_with(&gx, &gw, &y, path)?;
        let got = c.download_f32(&y)?;
        let want = r::linear(&x, &w, k);
        ck.rel(
            "gemm",
            format!("{fam} few-row GEMV T{t} in{k} out{n}"),
            r::rel_err(&got, &want),
            BF16_TOL,
        );
        let mut one = Vec::with_capacity(t * n);
        for i in 0..t {
            let y1 = bf16_out(ops, &[1, n])?;
            gemm.linear_with(&row(ops, &x, i, k)?, &gw, &y1, GemmPath::GemvT1)?;
            one.extend(c.download_f32(&y1)?);
        }
        same(
            ck,
            exact,
            format!("few-row GEMV T{t} in{k} out{n} == single-row GEMV per row"),
            &[got],
            &[one],
        );
    }
    // gate_up + SiLU (1B and 8B shapes, an odd one).
    for (t, k, n) in [(2, 2048, 8192), (4, 4096, 14336), (7, odd, 777)] {
        let x = ck.bf16_vec(t * k, 1.0);
        let w = ck.bf16_vec(2 * n * k, 2.0 / (k as f32).sqrt());
        let (gx, gw) = (c.upload_bf16(&[t, k], &x)?, c.upload_bf16(&[2 * n, k], &w)?);
        let act = bf16_out(ops, &[t, n])?;
        anyhow::ensure!(
            gemm.gate_silu(&gx, &gw, &act)?,
            "few-row gate {t}x{k}x{n} refused"
        );
        let got = c.download_f32(&act)?;
        let mut one = Vec::with_capacity(t * n);
        for i in 0..t {
            let a1 = bf16_out(ops, &[1, n])?;
            anyhow::ensure!(
                gemm.gate_silu(&row(ops, &x, i, k)?, &gw, &a1)?,
                "T1 gate refused"
            );
            one.extend(c.download_f32(&a1)?);
        }
        same(
            ck,
            exact,
            format!("few-row gate_up+SiLU T{t} in{k} inter{n} == single-row per row"),
            &[got],
            &[one],
        );
    }
    // qkv + RoPE + pool write, the 1B head shape (the staged norm needs in 2048), each row its
    // own position and slot (row 1 none).
    let (k, nh, nkv, hd) = (2048, 32, 8, 64);
    let width = (nh + 2 * nkv) * hd;
    let kv_dim = nkv * hd;
    let slots = 16;
    let w = ck.bf16_vec(width * k, 2.0 / (k as f32).sqrt());
    let gw = c.upload_bf16(&[width, k], &w)?;
    let inv = r::rope_inv_freq(hd, 500000.0, Some(r::Llama3Scaling::default()));
    let gi = c.upload_f32(&[hd / 2], &inv)?;
    let gnw = c.upload_bf16(&[k], &ck.bf16_vec(k, 1.0))?;
    for t in [3usize, 8] {
        let pos: Vec<i32> = (0..t as i32).map(|i| 97 + 1311 * i).collect();
        let sl: Vec<i32> = (0..t as i32)
            .map(|i| if i == 1 { -1 } else { 2 * i })
            .collect();
        let (x, yv, rv) = (
            ck.bf16_vec(t * k, 1.0),
            ck.bf16_vec(t * k, 1.0),
            ck.bf16_vec(t * k, 1.0),
        );
        let pool0 = ck.bf16_vec(slots * kv_dim, 1.0);
        for mode in 0..3 {
            // rows [lo, hi) through one call: all t at once, or one at a time.
            let call =
                |lo: usize, hi: usize, kp: &DTensor, vp: &DTensor| -> anyhow::Result<DTensor> {
                    let n = hi - lo;
                    let up = |v: &[f32]| c.upload_bf16(&[n, k], &v[lo * k..hi * k]);
                    let (gx, gy, gr) = (up(&x)?, up(&yv)?, up(&rv)?);
                    let qkv = bf16_out(ops, &[n, width])?;
                    let input = match mode {
                        0 => QkvInput::Row(&gx),
                        m => QkvInput::Norm {
                            y: (m == 1).then_some(&gy),
                            resid: &gr,
                            weight: &gnw,
                            eps: 1e-5,
                        },
                    };
                    let gp = c.upload_i32(&[n], &pos[lo..hi])?;
                    let gs = c.upload_i32(&[n], &sl[lo..hi])?;
                    let ran = gemm.qkv_rope_t1(
                        ops,
                        &input,
                        &gw,
                        &qkv,
                        (nh, nkv, hd),
                        &gp,
                        &gi,
                        (kp, vp),
                        &gs,
                        &sl[lo..hi],
                    )?;
                    anyhow::ensure!(ran, "qkv_rope refused {n} rows mode {mode}");
                    Ok(qkv)
                };
            let pools = || -> anyhow::Result<(DTensor, DTensor)> {
                Ok((
                    c.upload_bf16(&[slots, kv_dim], &pool0)?,
                    c.upload_bf16(&[slots, kv_dim], &pool0)?,
                ))
            };
            let (ka, va) = pools()?;
            let qa = call(0, t, &ka, &va)?;
            let a = downloads(ops, &[&qa, &ka, &va])?;
            let (kb, vb) = pools()?;
            let mut q1 = Vec::new();
            for i in 0..t {
                q1.extend(c.download_f32(&call(i, i + 1, &kb, &vb)?)?);
            }
            let b = vec![q1, c.download_f32(&kb)?, c.download_f32(&vb)?];
            let what = ["rows", "rmsnorm(y + resid)", "rmsnorm(resid)"][mode];
            same(
                ck,
                exact,
                format!("few-row qkv+RoPE T{t} of {what} h{nh}/{nkv} d{hd} == single-row per row (qkv, pools)"),
                &a,
                &b,
            );
        }
    }
    Ok(())
}
