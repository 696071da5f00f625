//! `strata gpu check --only qkv_attn`: the input norm, qkv and the decode attention in one
//! cluster kernel per KV group (`Gemm::qkv_attention_t1`), bit for bit against the staged qkv
//! GEMV (`Gemm::qkv_rope_t1`) and the register cluster attention it replaces: the qkv row, both
//! pools (the token's slot written, every other row untouched) and the attention's output;
//! every form of the kernel (`QkvAttnForm`).

use strata_kernels::cuda::{
    set_qkv_attn_form, AttnSeq, AttnShape, CudaOps, Fusion, Gemm, QRope, QkvAttnForm, QkvInput,
    NORM_IN_QKV,
};
use strata_kernels::reference as r;

use super::check::{shuffle, Checker};
use super::check_ops::{bf16_out, downloads, runs_bit_diffs, update_plan};

/// Llama-3.2-1B's shape (hidden 2048, 32 / 8 heads of 64 dims) at context lengths from the
/// smallest that plans clusters of 16 (256 keys) to 4K, pages of 16 and 1, the norm of y +
/// resid and of resid alone, a fresh plan and a fixed one (the graphs' plan, updated in place).
pub fn qkv_attn(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let was = gemm.fusion(Fusion::QkvAttn);
    gemm.set_fusion(Fusion::QkvAttn, true);
    let r = cases(ops, gemm, ck);
    gemm.set_fusion(Fusion::QkvAttn, was);
    r
}

fn cases(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    let (k, nh, nkv, hd) = (NORM_IN_QKV, 32, 8, 64);
    let width = (nh + 2 * nkv) * hd;
    let kv_dim = nkv * hd;
    let inv = r::rope_inv_freq(hd, 500000.0, Some(r::Llama3Scaling::default()));
    let gi = c.upload_f32(&[hd / 2], &inv)?;
    let w = ck.bf16_vec(width * k, 2.0 / (k as f32).sqrt());
    let gw = c.upload_bf16(&[width, k], &w)?;
    let nwv = ck.bf16_vec(k, 1.0);
    let gnw = c.upload_bf16(&[k], &nwv)?;
    let eps = 1e-5;
    let scale = 1.0 / (hd as f32).sqrt();
    for (kv_len, page, fixed) in [
        (256usize, 16usize, false),
        (1000, 16, false),
        (1000, 1, false),
        (4096, 16, false),
        (777, 16, true),
        (3001, 1, true),
    ] {
        let pool_pages = (4096 / page).max(kv_len.div_ceil(page)) + 8;
        let slots = pool_pages * page;
        let shape = AttnShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            page_size: page,
            pool_pages,
        };
        let mut pages: Vec<i32> = (0..pool_pages as i32).collect();
        shuffle(&mut ck.rng, &mut pages);
        pages.truncate(kv_len.div_ceil(page));
        let seqs = [AttnSeq {
            q_len: 1,
            kv_len,
            pages: pages.clone(),
        }];
        let p = kv_len - 1;
        let slot = pages[p / page] * page as i32 + (p % page) as i32;
        let plan = if fixed {
            let max_pages = 4096 / page;
            let plan = ops.decode_plan_fixed(shape, 1, max_pages)?;
            update_plan(ops, &plan, &seqs)?;
            plan
        } else {
            ops.attention_plan(shape, &seqs, None)?
        };
        if plan.cluster() != 16 || !plan.cluster_regs() {
            ck.exact(
                "qkv_attn",
                format!(
                    "kv{kv_len} page{page}: no register cluster plan of 16 (cluster {})",
                    plan.cluster()
                ),
                1,
            );
            continue;
        }
        let pool0 = ck.bf16_vec(slots * kv_dim, 1.0);
        let (yv, rv) = (ck.bf16_vec(k, 1.0), ck.bf16_vec(k, 1.0));
        let (gy, gr) = (c.upload_bf16(&[1, k], &yv)?, c.upload_bf16(&[1, k], &rv)?);
        let gp = c.upload_i32(&[1], &[p as i32])?;
        let gs = c.upload_i32(&[1], &[slot])?;
        for with_y in [true, false] {
            // fused: None the two kernels, else the fused kernel's form.
            let run = |fused: Option<QkvAttnForm>| -> anyhow::Result<Vec<Vec<f32>>> {
                let qkv = bf16_out(ops, &[1, width])?;
                let out = bf16_out(ops, &[1, nh * hd])?;
                let kp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
                let vp = c.upload_bf16(&[slots, kv_dim], &pool0)?;
                let input = QkvInput::Norm {
                    y: with_y.then_some(&gy),
                    resid: &gr,
                    weight: &gnw,
                    eps,
                };
                let dims = (nh, nkv, hd);
                let pools = (&kp, &vp);
                if let Some(form) = fused {
                    set_qkv_attn_form(Some(form));
                    let ran = gemm.qkv_attention_t1(
                        ops,
                        &input,
                        &gw,
                        &qkv,
                        dims,
                        &gp,
                        &gi,
                        pools,
                        &gs,
                        &[slot],
                        &plan,
                        &out,
                        scale,
                    );
                    set_qkv_attn_form(None);
                    anyhow::ensure!(ran?, "qkv_attention_t1 refused kv{kv_len} page{page}");
                } else {
                    anyhow::ensure!(
                        gemm.qkv_rope_t1(
                            ops,
                            &input,
                            &gw,
                            &qkv,
                            dims,
                            &gp,
                            &gi,
                            pools,
                            &gs,
                            &[slot]
                        )?,
                        "qkv_rope_t1 refused"
                    );
                    ops.paged_attention_rope(&plan, &qkv, 0, &kp, &vp, &out, scale, None::<QRope>)?;
                }
                downloads(ops, &[&qkv, &kp, &vp, &out, &gr])
            };
            let b = run(None)?;
            for form in QkvAttnForm::ALL {
                let a = run(Some(form))?;
                let what = if with_y {
                    "rmsnorm(y + resid)"
                } else {
                    "rmsnorm(resid)"
                };
                let plan_form = if fixed { "fixed plan" } else { "plan" };
                let w = form.name();
                ck.exact(
                    "qkv_attn",
                    format!("qkv+attention ({w}) of {what} kv{kv_len} page{page} {plan_form} == qkv GEMV, attention"),
                    runs_bit_diffs(&a, &b),
                );
            }
        }
    }
    Ok(())
}
