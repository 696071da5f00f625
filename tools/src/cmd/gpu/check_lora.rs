//! `strata gpu check --only lora_rows`: the per-row LoRA kernels (`lora_shrink` +
//! `lora_expand`, kernels/cuda/lora.cu: the form the CUDA graphs with adapters hold) against the
//! host: rows of several adapters through one slot table, each row's change (x A^T) B^T added
//! to its output within bf16 tolerance, rows without an adapter (or whose adapter leaves the
//! projection alone) bit for bit untouched.

use rand::Rng;
use strata_kernels::cuda::{lora_ref, CudaOps, DType};

use super::check::Checker;
use super::check_ops::{bit_diffs, BF16_TOL};

pub fn lora_rows(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    // (rows, in, out, each slot's rank: 0 leaves the projection alone, x A^T's width)
    for (t, inw, out, ranks, cap) in [
        (1, 2048, 3072, vec![48], 64),
        (8, 2048, 16384, vec![16, 0, 32], 64),
        (33, 4096, 6144, vec![24, 8, 64, 16], 64),
        (5, 14336, 4096, vec![8], 64),
        (4, 1024, 2048, vec![200, 96], 256),
    ] {
        let (mut a, mut bt, mut table) = (Vec::new(), Vec::new(), Vec::new());
        for &r in &ranks {
            let ha = ck.bf16_vec(r.max(1) * inw, 0.05);
            let hb = ck.bf16_vec(r.max(1) * out, 0.05);
            let ga = c.upload_bf16(&[r.max(1), inw], &ha)?;
            let gb = c.upload_bf16(&[r.max(1), out], &hb)?;
            table.extend(lora_ref(ga.ptr(), gb.ptr(), r));
            a.push((ha, ga));
            bt.push((hb, gb));
        }
        let slots: Vec<i32> = (0..t)
            .map(|i| match i {
                0 => 0,
                1 => -1,
                _ => ck.rng.random_range(-1..ranks.len() as i32),
            })
            .collect();
        let x = ck.bf16_vec(t * inw, 1.0);
        let y0 = ck.bf16_vec(t * out, 1.0);
        let gy = c.upload_bf16(&[t, out], &y0)?;
        let gs = c.upload_i32(&[t], &slots)?;
        let gt = c.upload_i32(&[table.len()], &table)?;
        let mid = c.alloc(DType::F32, &[t, cap])?;
        // SAFETY: every entry holds live A [rank, in] and B^T [rank, out] of these widths.
        unsafe {
            ops.lora_shrink(&c.upload_bf16(&[t, inw], &x)?, &gs, &gt, &mid)?;
            ops.lora_expand(&mid, &gs, &gt, &gy)?;
        }
        let got = c.download_f32(&gy)?;
        let (mut num, mut den, mut kept) = (0f64, 0f64, 0usize);
        for (row, &s) in slots.iter().enumerate() {
            let ys = row * out..(row + 1) * out;
            let rank = if s < 0 { 0 } else { ranks[s as usize] };
            if rank == 0 {
                kept += bit_diffs(&got[ys.clone()], &y0[ys]);
                continue;
            }
            let (ha, hb) = (&a[s as usize].0, &bt[s as usize].0);
            let m: Vec<f64> = (0..rank)
                .map(|r| {
                    (0..inw)
                        .map(|i| x[row * inw + i] as f64 * ha[r * inw + i] as f64)
                        .sum()
                })
                .collect();
            for j in 0..out {
                let d: f64 = (0..rank).map(|r| m[r] * hb[r * out + j] as f64).sum();
                let want = y0[row * out + j] as f64 + d;
                num += (got[row * out + j] as f64 - want).powi(2);
                den += want * want;
            }
        }
        let shape = format!("T{t} in{inw} out{out} ranks {ranks:?}");
        ck.rel(
            "lora_rows",
            shape.clone(),
            (num / den.max(1e-30)).sqrt(),
            BF16_TOL,
        );
        ck.exact("lora_rows untouched", shape, kept);
    }
    Ok(())
}
