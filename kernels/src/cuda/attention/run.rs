//! Running a plan: the chosen kernel's arguments and grid, and the combine pass of split
//! plans ([`CudaOps::paged_attention_rope`]).

use super::*;

impl CudaOps {
    /// Attention of the q heads at column `q_col` of `q` [rows, W] over one layer's pools
    /// [pool_pages * page_size, n_kv_heads * head_dim], into out [rows, n_heads * head_dim].
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        plan: &AttnPlan,
        q: &DTensor,
        q_col: usize,
        k_pool: &DTensor,
        v_pool: &DTensor,
        out: &DTensor,
        scale: f32,
    ) -> Result<()> {
        self.paged_attention_rope(plan, q, q_col, k_pool, v_pool, out, scale, None)
    }

    /// [`CudaOps::paged_attention`] on q heads not yet rotated when `rope` is given: the kernel
    /// applies RoPE to Q as it loads it, bit for bit what `rope_kv_write` would have written
    /// (only plans for which [`AttnPlan::rotates_q`] holds; the caller's `rope_kv_write` then
    /// rotates K alone).
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention_rope(
        &self,
        plan: &AttnPlan,
        q: &DTensor,
        q_col: usize,
        k_pool: &DTensor,
        v_pool: &DTensor,
        out: &DTensor,
        scale: f32,
        rope: Option<QRope<'_>>,
    ) -> Result<()> {
        let s = plan.shape;
        let (rope_pos, rope_inv) = match rope {
            None => (0, 0),
            Some(r) => {
                ensure(plan.rotates_q(), || {
                    format!("the {:?} attention kernel cannot rotate Q", plan.kernel)
                })?;
                self.on_gpu(&[("pos", r.pos), ("inv_freq", r.inv_freq)])?;
                r.pos.expect("pos", DType::I32, &[plan.total_rows])?;
                r.inv_freq
                    .expect("inv_freq", DType::F32, &[s.head_dim / 2])?;
                (r.pos.ptr(), r.inv_freq.ptr())
            }
        };
        for (w, t) in [
            ("q", q),
            ("k_pool", k_pool),
            ("v_pool", v_pool),
            ("out", out),
        ] {
            self.ctx.check_device(w, t)?;
        }
        ensure(q.shape().len() == 2, || "q must be [rows, width]".into())?;
        let w = q.shape()[1];
        q.expect("q", DType::Bf16, &[plan.total_rows, w])?;
        ensure(q_col + s.n_heads * s.head_dim <= w, || {
            "q heads past row end".into()
        })?;
        let kv_dim = s.n_kv_heads * s.head_dim;
        let slots = s.pool_pages * s.page_size;
        k_pool.expect("k_pool", DType::Bf16, &[slots, kv_dim])?;
        v_pool.expect("v_pool", DType::Bf16, &[slots, kv_dim])?;
        let ow = s.n_heads * s.head_dim;
        out.expect("out", DType::Bf16, &[plan.total_rows, ow])?;
        let hd = s.head_dim;
        let smem = ((ROWS * hd + KEY_TILE * (hd + 1) + KEY_TILE * hd) * 4) as u32;
        let (pa, pm) = match (&plan.part_acc, &plan.part_ml) {
            (Some(a), Some(m)) => (a.ptr(), m.ptr()),
            _ => (0, 0),
        };
        let args = [
            Arg::U64(q.ptr_at(q_col)?),
            Arg::I32(w as i32),
            Arg::U64(k_pool.ptr()),
            Arg::U64(v_pool.ptr()),
            Arg::U64(plan.tables.ptr()),
            Arg::I32(plan.max_pages as i32),
            Arg::I32(s.page_size as i32),
            Arg::U64(plan.tiles.ptr()),
            Arg::I32(s.n_heads as i32),
            Arg::I32(s.n_kv_heads as i32),
            Arg::I32(hd as i32),
            Arg::F32(scale),
            Arg::I32(plan.split_len as i32),
            Arg::U64(out.ptr()),
            Arg::I32(ow as i32),
            Arg::U64(pa),
            Arg::U64(pm),
            Arg::I32(plan.total_rows as i32),
        ];
        let grid = (plan.n_tiles as u32, s.n_kv_heads as u32, plan.splits as u32);
        let decode_dims = Dims {
            grid,
            block: 128,
            smem: 0,
        };
        if plan.kernel == AttnKernel::Decode2 && plan.cluster > 0 {
            let group = s.n_heads / s.n_kv_heads;
            let idx = decode2_index(group, hd).expect("planned only for supported shapes");
            // The head-split form: two clusters per (row, KV head), grid y over both halves.
            let halves = plan.halves() && !self.attention_decode2rh.is_empty();
            let dims = Dims {
                grid: (
                    plan.n_tiles as u32,
                    (s.n_kv_heads * if halves { 2 } else { 1 }) as u32,
                    plan.cluster as u32,
                ),
                ..decode_dims
            };
            let f = if halves {
                let h = decode2h_index(group, hd).expect("halves planned only for even groups");
                &self.attention_decode2rh[h]
            } else if plan.cluster_regs {
                &self.attention_decode2r[idx]
            } else {
                &self.attention_decode2c[idx]
            };
            self.go_in_clusters(f, dims, Some(plan.cluster as u32), &args)?;
        } else if plan.kernel == AttnKernel::Decode2 {
            let group = s.n_heads / s.n_kv_heads;
            let idx = decode2_index(group, hd).expect("planned only for supported shapes");
            let f = match plan.variant {
                Some(v) => &self.attention_decode2_variants[v],
                None => &self.attention_decode2[idx],
            };
            self.go(f, decode_dims, &args)?;
        } else if plan.kernel == AttnKernel::Decode {
            self.go(&self.attention_decode, decode_dims, &args)?;
        } else if plan.kernel == AttnKernel::PrefillMma {
            let idx = mma_index(hd).expect("planned only for supported head sizes");
            self.go(&self.attention_mma[idx], decode_dims, &args)?;
        } else if matches!(
            plan.kernel,
            AttnKernel::PrefillFa2 | AttnKernel::PrefillWg | AttnKernel::DecodeMma
        ) {
            // Q rows are copied 16 bytes at a time.
            ensure(q.ptr_at(q_col)? % 16 == 0 && w % 8 == 0, || {
                format!(
                    "tensor-core prefill needs 16-byte aligned q rows (width {w}, column {q_col})"
                )
            })?;
            let idx = mma_index(hd).expect("planned only for supported head sizes");
            let (f, smem, block) = if plan.kernel == AttnKernel::PrefillWg {
                let form = plan.wg_form;
                (&self.attention_wg[form as usize], wg_smem(), form.threads())
            } else if plan.kernel == AttnKernel::DecodeMma {
                (&self.attention_dmma[idx], dmma_smem(hd), 128)
            } else {
                (&self.attention_fa2[idx], fa2_smem(hd), 128)
            };
            let f = f.as_ref().expect("planned only where the kernel loaded");
            let pair = plan.wg_pair();
            let dims = Dims {
                grid: (
                    s.n_kv_heads as u32,
                    plan.n_tiles as u32,
                    (plan.splits * pair) as u32,
                ),
                block,
                smem,
            };
            if plan.kernel == AttnKernel::PrefillWg {
                let mut wg_args = args.to_vec();
                wg_args.extend([Arg::U64(rope_pos), Arg::U64(rope_inv)]);
                // The pools as TMA maps: boxes of min(page, 32) keys x 64 dims (zeroed maps
                // for the forms that do not read them).
                let map = |p: &DTensor| {
                    crate::cuda::gemm_wg::tensor_map(p.ptr(), slots, kv_dim, s.page_size.min(32))
                };
                let maps = if plan.wg_form.tma() {
                    [map(k_pool)?, map(v_pool)?]
                } else {
                    Default::default()
                };
                wg_args.extend(maps.map(Arg::Map));
                // (the maps cover exactly the two pools checked above)
                self.go_in_clusters(f, dims, (pair > 1).then_some(pair as u32), &wg_args)?;
            } else {
                self.go(f, dims, &args)?;
            }
        } else {
            let dims = Dims {
                grid,
                block: 128,
                smem,
            };
            self.go(&self.attention, dims, &args)?;
        }
        if plan.splits > 1 {
            let args = [
                Arg::U64(pa),
                Arg::U64(pm),
                Arg::I32(plan.splits as i32),
                Arg::I32(plan.total_rows as i32),
                Arg::I32(s.n_heads as i32),
                Arg::I32(hd as i32),
                Arg::U64(out.ptr()),
                Arg::I32(ow as i32),
                // Decode2 blocks of empty splits write nothing: the combine reads only the
                // splits that hold each row's keys (tile i is row i in a decode plan). (The
                // decode MMA kernel shares a row's keys over every split: all are read.)
                Arg::U64(if plan.kernel == AttnKernel::Decode2 {
                    plan.tiles.ptr()
                } else {
                    0
                }),
                Arg::I32(plan.split_len as i32),
            ];
            let dims = Dims {
                grid: (plan.total_rows as u32, s.n_heads as u32, 1),
                block: hd as u32,
                smem: 0,
            };
            self.go(&self.combine, dims, &args)?;
        }
        Ok(())
    }
}
