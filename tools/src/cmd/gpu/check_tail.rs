//! `strata gpu check --only o_norm_gate`: the o projection added into the residual and the MLP's
//! norm staged in the gate GEMV (`Gemm::o_norm_gate_t1`), bit for bit against o into its own
//! row, `rmsnorm_add2` (with the previous MLP output to add) or `rmsnorm`, and the gate GEMV: the
//! residual and the act row.

use strata_kernels::cuda::{CudaOps, Gemm, GemmPath, PostNorm, GEMV_T1_PIPE_MIN_IN, NORM_IN_QKV};

use super::check::Checker;
use super::check_ops::{bf16_out, downloads, runs_bit_diffs};

/// Hidden 2048 (the only staged width), q widths 2048 (Llama-3.2-1B), 8192 (the two-steps-in-
/// flight o kernel) and 1000, inter 8192 (Llama-3.2-1B) and 777, each with fresh data three
/// times.
pub fn o_norm_gate(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    let h = NORM_IN_QKV;
    for (qd, inter) in [(2048, 8192), (8192, 777), (1000, 8192)]
        .into_iter()
        .flat_map(|s| [s; 3])
    {
        let (attn, o, add, r0, nw) = (
            ck.bf16_vec(qd, 1.0),
            ck.bf16_vec(h * qd, 2.0 / (qd as f32).sqrt()),
            ck.bf16_vec(h, 1.0),
            ck.bf16_vec(h, 1.0),
            ck.bf16_vec(h, 1.0),
        );
        let gu = ck.bf16_vec(2 * inter * h, 2.0 / (h as f32).sqrt());
        let (ga, go, gadd, gnw) = (
            c.upload_bf16(&[1, qd], &attn)?,
            c.upload_bf16(&[h, qd], &o)?,
            c.upload_bf16(&[1, h], &add)?,
            c.upload_bf16(&[h], &nw)?,
        );
        let ggu = c.upload_bf16(&[2 * inter, h], &gu)?;
        for with_add in [true, false] {
            let run = |fused: bool| -> anyhow::Result<Vec<Vec<f32>>> {
                let resid = c.upload_bf16(&[1, h], &r0)?;
                let act = bf16_out(ops, &[1, inter])?;
                let add = with_add.then_some(&gadd);
                if fused {
                    let post = PostNorm {
                        resid: &resid,
                        add,
                        weight: &gnw,
                        eps: 1e-5,
                    };
                    anyhow::ensure!(
                        gemm.o_norm_gate_t1(&ga, &go, &post, &ggu, &act)?,
                        "o_norm_gate_t1 refused q{qd} inter{inter}"
                    );
                } else {
                    let (y_o, hn) = (bf16_out(ops, &[1, h])?, bf16_out(ops, &[1, h])?);
                    let path = if qd >= GEMV_T1_PIPE_MIN_IN {
                        GemmPath::GemvT1Pipe
                    } else {
                        GemmPath::GemvT1
                    };
                    gemm.linear_with(&ga, &go, &y_o, path)?;
                    match add {
                        Some(a) => ops.rmsnorm_add2(a, &y_o, &resid, &gnw, &hn, 1e-5)?,
                        None => ops.rmsnorm(&y_o, Some(&resid), &gnw, &hn, 1e-5)?,
                    }
                    anyhow::ensure!(gemm.gate_silu(&hn, &ggu, &act)?, "gate_silu refused");
                }
                downloads(ops, &[&resid, &act])
            };
            let n = runs_bit_diffs(&run(true)?, &run(false)?);
            let what = if with_add { "rmsnorm_add2" } else { "rmsnorm" };
            ck.exact(
                "gemm",
                format!("o+resid, norm staged in gate T1 q{qd} inter{inter} == o, {what}, gate"),
                n,
            );
        }
    }
    Ok(())
}
