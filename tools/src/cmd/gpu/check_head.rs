//! `strata gpu check --only head_argmax`: the LM head of one row with the greedy pick in its
//! epilogue (`Gemm::head_argmax_t1`), bit for bit against the single-row GEMV's f32 logits and
//! `argmax_rows`' token: random rows, the largest row copied to a lower and a higher index (a
//! three-way tie: the lowest wins) and every weight zero (every logit +0: token 0), each fused
//! launch twice on the handle's scratch (which each launch must leave zero). The first launch
//! also puts the token into a next-id word and, through a cell naming a readback slot's mapped
//! host word, into the slot (`PickOut`); the second, its cell 0, must leave the slot as it was.

use strata_kernels::cuda::readback::Readback;
use strata_kernels::cuda::{CudaOps, DType, Gemm, GemmPath, PickOut, GEMV_T1_PIPE_MIN_IN};

use super::check::Checker;
use super::check_ops::runs_bit_diffs;

/// The Llama-3 vocabulary at in 2048 (Llama-3.2-1B), 32,000 at 4096, and 1,001 rows (a partial
/// last block) at 8192 (the two-steps-in-flight form).
pub fn head_argmax(ops: &CudaOps, gemm: &Gemm, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    let mut rb = Readback::new(c, 1, 1)?;
    let sentinel = c.upload_i32(&[1], &[-7])?;
    let next_id = c.alloc(DType::I32, &[1])?;
    let cell = c.alloc(DType::I32, &[2])?;
    let slot = rb.slot_device_ptr(0);
    for (vocab, k) in [(128_256, 2048), (32_000, 4096), (1001, 8192)] {
        let x = c.upload_bf16(&[1, k], &ck.bf16_vec(k, 1.0))?;
        let mut w = ck.bf16_vec(vocab * k, 2.0 / (k as f32).sqrt());
        let path = if k >= GEMV_T1_PIPE_MIN_IN {
            GemmPath::GemvT1Pipe
        } else {
            GemmPath::GemvT1
        };
        for mode in ["random", "tie", "zero"] {
            let gw = c.upload_bf16(&[vocab, k], &w)?;
            // The unfused pair: the logits and argmax_rows' pick.
            let logits = c.alloc(DType::F32, &[1, vocab])?;
            let token = c.alloc(DType::I32, &[1])?;
            gemm.linear_with(&x, &gw, &logits, path)?;
            ops.argmax_rows(&logits, &token)?;
            let want = (c.download_f32(&logits)?, c.download_i32(&token)?[0]);
            let (mut bad, mut stored) = (0, 0);
            for rep in 0..2 {
                c.memset(&logits, 0xFF)?;
                c.memset(&token, 0xFF)?;
                c.memset(&next_id, 0xFF)?;
                let dst = if rep == 0 { slot } else { 0 };
                c.write_i32(&cell, &[dst as u32 as i32, (dst >> 32) as u32 as i32])?;
                rb.queue(0, &sentinel, 1)?;
                rb.claim(0)?;
                let out = PickOut {
                    next_id: if rep == 0 { next_id.ptr() } else { 0 },
                    host_cell: cell.ptr(),
                };
                anyhow::ensure!(
                    gemm.head_argmax_t1(&x, &gw, &logits, &token, out)?,
                    "head_argmax_t1 refused V{vocab} in{k}"
                );
                rb.mark(0)?;
                bad += runs_bit_diffs(&[c.download_f32(&logits)?], std::slice::from_ref(&want.0));
                bad += usize::from(c.download_i32(&token)?[0] != want.1);
                let (host, next) = (rb.wait(0, 1)?[0], c.download_i32(&next_id)?[0]);
                stored += usize::from(if rep == 0 {
                    host != want.1 || next != want.1
                } else {
                    host != -7 || next != -1
                });
            }
            ck.exact(
                "gemm",
                format!("lm_head+argmax T1 V{vocab} in{k} {mode} == GEMV, argmax_rows"),
                bad,
            );
            ck.exact(
                "gemm",
                format!("lm_head+argmax T1 V{vocab} in{k} {mode}: token to host and next id"),
                stored,
            );
            // The next mode's weights.
            if mode == "random" {
                let top = want.1 as usize;
                for to in [top / 2, (top + 1).min(vocab - 1)] {
                    w.copy_within(top * k..(top + 1) * k, to * k);
                }
            } else {
                w.fill(0.0);
            }
        }
    }
    Ok(())
}
