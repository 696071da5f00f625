//! `strata gpu check --only post_attn`: the single-row post-attention kernel
//! (kernels/src/cuda/post_attn.rs: o, the residual add with the MLP's input norm, gate_up +
//! SiLU in one persistent launch) against the three kernels it replaces on the same GPU.

use strata_kernels::cuda::post_attn::PA_K;
use strata_kernels::cuda::{CudaOps, Gemm, GemmPath, PostAttnArgs};

use super::check::Checker;
use super::check_ops::{bf16_out, downloads, runs_bit_diffs};

/// y_o, the residual and act bit for bit against the o GEMV, `rmsnorm_add2` (`rmsnorm` of y_o
/// into the residual without y, as in layer 0) and the gate GEMV: Llama-3.2-1B's MLP and a
/// short one, each fused launch repeated three times in a row (the grid barrier's counters must
/// come back to zero between launches). Skipped where the kernel does not apply (before compute
/// 9.0, PDL off, an MPS share).
pub fn post_attn(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    let k = PA_K;
    for (inter, with_y) in [(8192, true), (8192, false), (1000, true)] {
        let attn = c.upload_bf16(&[1, k], &ck.bf16_vec(k, 1.0))?;
        let o_w = c.upload_bf16(&[k, k], &ck.bf16_vec(k * k, 2.0 / (k as f32).sqrt()))?;
        let y = c.upload_bf16(&[1, k], &ck.bf16_vec(k, 1.0))?;
        let norm_w = c.upload_bf16(&[k], &ck.bf16_vec(k, 1.0))?;
        let gu_w = c.upload_bf16(
            &[2 * inter, k],
            &ck.bf16_vec(2 * inter * k, 2.0 / (k as f32).sqrt()),
        )?;
        let r0 = ck.bf16_vec(k, 1.0);
        let y = with_y.then_some(&y);
        // (y_o, residual, act) of the three kernels, or of the fused one.
        let run = |fused: bool| -> anyhow::Result<Option<Vec<Vec<f32>>>> {
            let resid = c.upload_bf16(&[1, k], &r0)?;
            let (y_o, act) = (bf16_out(ops, &[1, k])?, bf16_out(ops, &[1, inter])?);
            if fused {
                let a = PostAttnArgs {
                    attn: &attn,
                    o_w: &o_w,
                    y_o: &y_o,
                    y,
                    resid: &resid,
                    norm_w: &norm_w,
                    eps: 1e-5,
                    gu_w: &gu_w,
                    act: &act,
                };
                if !gemm.post_attn_t1(&a)? {
                    return Ok(None);
                }
            } else {
                let h = bf16_out(ops, &[1, k])?;
                gemm.linear_with(&attn, &o_w, &y_o, GemmPath::GemvT1)?;
                match y {
                    Some(y) => ops.rmsnorm_add2(y, &y_o, &resid, &norm_w, &h, 1e-5)?,
                    None => ops.rmsnorm(&y_o, Some(&resid), &norm_w, &h, 1e-5)?,
                }
                anyhow::ensure!(gemm.gate_silu(&h, &gu_w, &act)?, "gate GEMV refused");
            }
            Ok(Some(downloads(ops, &[&y_o, &resid, &act])?))
        };
        let want = run(false)?.expect("the unfused path always runs");
        for rep in 0..3 {
            let Some(got) = run(true)? else {
                println!("post_attn: not on this GPU (compute 9.0+, PDL, no MPS share); skipped");
                return Ok(());
            };
            ck.exact(
                "gemm",
                format!(
                    "post_attn inter{inter} {} launch {rep} == o GEMV + norm + gate GEMV",
                    if with_y { "y + resid" } else { "resid" }
                ),
                runs_bit_diffs(&got, &want),
            );
        }
    }
    Ok(())
}
