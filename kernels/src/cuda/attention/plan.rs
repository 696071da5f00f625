//! Planning: a batch's host-side page tables checked and uploaded with its tile list, the
//! kernel, splits and split workspace chosen ([`CudaOps::attention_plan_with`]).

use super::*;

impl CudaOps {
    /// Plans attention for `seqs`. `splits` forces the split count (None picks one that fills the
    /// GPU: decode of few sequences is split, prefill is not).
    pub fn attention_plan(
        &self,
        shape: AttnShape,
        seqs: &[AttnSeq],
        splits: Option<usize>,
    ) -> Result<AttnPlan> {
        let opts = PlanOpts {
            splits,
            ..PlanOpts::default()
        };
        self.attention_plan_with(shape, seqs, opts)
    }

    /// Plans attention for `seqs` with `opts` (see [`PlanOpts`]).
    pub fn attention_plan_with(
        &self,
        shape: AttnShape,
        seqs: &[AttnSeq],
        opts: PlanOpts,
    ) -> Result<AttnPlan> {
        let s = shape;
        ensure(
            s.head_dim % 32 == 0 && s.head_dim <= 128 && s.head_dim > 0,
            || {
                format!(
                    "head_dim {} must be a multiple of 32, at most 128",
                    s.head_dim
                )
            },
        )?;
        ensure(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0, || {
            "n_heads must be a multiple of n_kv_heads".into()
        })?;
        let group = s.n_heads / s.n_kv_heads;
        ensure(ROWS % group == 0, || {
            format!("GQA group {group} must divide {ROWS}")
        })?;
        ensure(s.page_size > 0 && !seqs.is_empty(), || {
            "empty batch or page size".into()
        })?;
        // A default-mode decode batch may go to the tensor cores (decode_on_mma): the decode MMA
        // kernel where it loaded and takes the group, else the prefill kernel.
        let one_token = seqs.iter().all(|q| q.q_len == 1);
        let on_mma = !opts.deterministic
            && one_token
            && mma_index(s.head_dim).is_some()
            && decode_on_mma(seqs.len());
        let dmma = on_mma
            && !opts.prefill
            && group <= DMMA_MAX_GROUP
            && decode_dmma()
            && mma_index(s.head_dim).is_some_and(|i| self.attention_dmma[i].is_some());
        let decode = !opts.prefill && !on_mma && one_token && group <= DECODE_MAX_GROUP;
        let kernel = match (decode, decode2_index(group, s.head_dim)) {
            (true, Some(_)) => AttnKernel::Decode2,
            (true, None) => AttnKernel::Decode,
            (false, _) if dmma => AttnKernel::DecodeMma,
            (false, _) => match (prefill_kernel(), mma_index(s.head_dim)) {
                (pk, Some(_))
                    if s.head_dim == 128
                        && WgForm::of(pk)
                            .is_some_and(|f| self.attention_wg[f as usize].is_some()) =>
                {
                    AttnKernel::PrefillWg
                }
                (pk, Some(i))
                    if (pk == PrefillKernel::Fa2 || WgForm::of(pk).is_some())
                        && self.attention_fa2[i].is_some() =>
                {
                    AttnKernel::PrefillFa2
                }
                (pk, Some(_)) if pk != PrefillKernel::General => AttnKernel::PrefillMma,
                _ => AttnKernel::General,
            },
        };
        let decode_role = !opts.prefill && seqs.iter().all(|q| q.q_len == 1);
        let wg_form = WgForm::of(prefill_kernel())
            .unwrap_or(WgForm::Regs)
            .planned(s.page_size, group);
        let qt = match kernel {
            AttnKernel::PrefillMma => MMA_ROWS / group,
            AttnKernel::PrefillWg => FA2_ROWS * wg_form.cluster() / group,
            AttnKernel::PrefillFa2 | AttnKernel::DecodeMma => FA2_ROWS / group,
            _ => ROWS / group,
        };
        let max_pages = seqs.iter().map(|q| q.pages.len()).max().unwrap_or(1).max(1);
        let mut tiles = Vec::new();
        let mut tables = vec![0i32; seqs.len() * max_pages];
        let mut row = 0usize;
        let mut max_kv = 1usize;
        for (si, q) in seqs.iter().enumerate() {
            ensure(q.q_len >= 1 && q.kv_len >= q.q_len, || {
                format!("seq {si}: q_len {} kv_len {}", q.q_len, q.kv_len)
            })?;
            ensure(q.pages.len() * s.page_size >= q.kv_len, || {
                format!(
                    "seq {si}: {} pages hold fewer than {} keys",
                    q.pages.len(),
                    q.kv_len
                )
            })?;
            ensure(
                q.pages
                    .iter()
                    .all(|&p| p >= 0 && (p as usize) < s.pool_pages),
                || format!("seq {si}: page id outside pool of {}", s.pool_pages),
            )?;
            tables[si * max_pages..si * max_pages + q.pages.len()].copy_from_slice(&q.pages);
            let prefix = q.kv_len - q.q_len;
            let mut i = 0;
            while i < q.q_len {
                let n = qt.min(q.q_len - i);
                tiles.extend_from_slice(&[
                    si as i32,
                    (row + i) as i32,
                    n as i32,
                    (prefix + i) as i32,
                ]);
                i += n;
            }
            row += q.q_len;
            max_kv = max_kv.max(q.kv_len);
        }
        let n_tiles = tiles.len() / 4;
        ensure(
            !matches!(
                kernel,
                AttnKernel::PrefillFa2 | AttnKernel::PrefillWg | AttnKernel::DecodeMma
            ) || n_tiles <= FA2_MAX_TILES,
            || format!("{n_tiles} prefill tiles in one batch (at most {FA2_MAX_TILES})"),
        )?;
        // Batch-invariant mode: a decode batch on the general kernel (GQA group past
        // DECODE_MAX_GROUP) keeps the decode split policy.
        let policy_kernel = if opts.deterministic && decode_role && kernel == AttnKernel::General {
            AttnKernel::Decode
        } else {
            kernel
        };
        let pair = if kernel == AttnKernel::PrefillWg {
            wg_form.cluster()
        } else {
            1
        };
        let (splits, split_len) = choose_splits(
            policy_kernel,
            n_tiles * s.n_kv_heads * pair,
            self.ctx.sm_count(),
            max_kv,
            opts.splits,
            opts.deterministic.then_some(opts.det_split_len),
            fa2_tile(s.head_dim).0,
        );
        // Small decode batches in default mode (not forced splits): the cluster form, split by
        // query heads where asked for and it keeps the cluster size.
        let (cluster, halves) = if kernel == AttnKernel::Decode2
            && !opts.deterministic
            && !opts.no_cluster
            && opts.splits.is_none()
        {
            cluster_and_halves(
                n_tiles * s.n_kv_heads,
                self.ctx.sm_count(),
                max_kv,
                self.decode2_max_cluster,
                halves_default(s),
            )
        } else {
            (0, false)
        };
        let (splits, split_len) = if cluster > 0 {
            (1, max_kv.div_ceil(KEY_TILE) * KEY_TILE)
        } else {
            (splits, split_len)
        };
        let (part_acc, part_ml) = if splits > 1 {
            let n = splits * row * s.n_heads;
            (
                Some(self.ctx.alloc(DType::F32, &[n * s.head_dim])?),
                Some(self.ctx.alloc(DType::F32, &[n * 2])?),
            )
        } else {
            (None, None)
        };
        Ok(AttnPlan {
            shape,
            tiles: self.ctx.upload_i32(&[tiles.len()], &tiles)?,
            n_tiles,
            tables: self.ctx.upload_i32(&[tables.len()], &tables)?,
            max_pages,
            total_rows: row,
            splits,
            split_len,
            part_acc,
            part_ml,
            kernel,
            variant: None,
            cluster,
            cluster_regs: cluster_regs_default(),
            halves,
            max_cluster: self.decode2_max_cluster,
            wg_form,
            table_mirror: Default::default(),
        })
    }
}
