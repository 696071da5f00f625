//! Fixed-shape decode plans for CUDA-graph replay: planned once per bucket, their device
//! tables rewritten in place before each replay (only the entries that changed).

use super::*;

impl CudaOps {
    /// A decode plan of fixed shape for CUDA-graph replay: `batch` one-token sequences with page
    /// tables of up to `max_pages` pages and up to `max_pages * page_size` keys. Split count and
    /// split length are chosen for the longest sequence; shorter ones leave later splits empty.
    /// Rewrite its device tables with [`CudaOps::update_decode_plan`] before each replay.
    pub fn decode_plan_fixed(
        &self,
        shape: AttnShape,
        batch: usize,
        max_pages: usize,
    ) -> Result<AttnPlan> {
        self.decode_plan_fixed_with(shape, batch, max_pages, PlanOpts::default())
    }

    /// [`CudaOps::decode_plan_fixed`] with the batch-invariant options of `opts`
    /// (`deterministic`, `det_split_len`, as every eager decode plan of the runner must use).
    pub fn decode_plan_fixed_with(
        &self,
        shape: AttnShape,
        batch: usize,
        max_pages: usize,
        opts: PlanOpts,
    ) -> Result<AttnPlan> {
        ensure(batch > 0 && max_pages > 0, || "empty fixed plan".into())?;
        let seq = AttnSeq {
            q_len: 1,
            kv_len: max_pages * shape.page_size,
            pages: vec![0; max_pages],
        };
        // `opts.prefill`: decode rows on the prefill kernel (batch-invariant mode with
        // STRATA_DET_ATTN=prefill); its tiles are one row each here, as the decode kernels'.
        let opts = PlanOpts {
            splits: None,
            ..opts
        };
        self.attention_plan_with(shape, &vec![seq; batch], opts)
    }

    /// [`CudaOps::decode_plan_fixed_with`] with its tile list in `tiles`, the caller's i32 view
    /// (of at least `4 * batch` words), e.g. beside the caller's own per-replay words in one
    /// allocation, so that one copy writes both ([`CudaOps::decode_plan_rows`]).
    pub fn decode_plan_fixed_in(
        &self,
        shape: AttnShape,
        batch: usize,
        max_pages: usize,
        opts: PlanOpts,
        tiles: &DTensor,
    ) -> Result<AttnPlan> {
        let mut plan = self.decode_plan_fixed_with(shape, batch, max_pages, opts)?;
        let words = plan.tiles.numel();
        ensure(
            tiles.dtype() == DType::I32 && tiles.numel() >= words,
            || {
                format!(
                    "plan tiles: {words} i32 words into {:?} {:?}",
                    tiles.dtype(),
                    tiles.shape()
                )
            },
        )?;
        self.ctx.copy_words(tiles, 0, &plan.tiles, 0, words)?;
        plan.tiles = tiles.view(0, plan.tiles.shape())?;
        Ok(plan)
    }

    /// Points a fixed decode plan at `rows` (at most the plan's batch, one new token each); the
    /// plan's remaining rows attend to key 0 of page 0 (padding, discarded by the caller).
    /// Stream-ordered: launches queued after this call see the new tables.
    ///
    /// Only the table entries that differ from the previous update's go up (the first update
    /// writes every sequence's pages): a decode step changes a row's table once per page of
    /// new tokens, while the whole table is `max_pages` (the context length) wide per row. Up to
    /// two runs of changes are copied as they are; more (at page size 1 every row gains an
    /// entry per step) go up as (index, page) pairs that `scatter_i32` writes. The host work is
    /// one comparison of each row's known entries plus the new ones (`plan_tables.rs`).
    pub fn update_decode_plan(&self, plan: &AttnPlan, rows: &[DecodeRow<'_>]) -> Result<()> {
        let tiles = self.decode_plan_rows(plan, rows)?;
        self.ctx.write_i32(&plan.tiles, &tiles)
    }

    /// [`CudaOps::update_decode_plan`] but for the tile list: the page tables' changes are
    /// written and the tile words returned, for the caller to write into the plan's tiles (the
    /// view given to [`CudaOps::decode_plan_fixed_in`]) before the next launch, in its own copy.
    pub fn decode_plan_rows(&self, plan: &AttnPlan, rows: &[DecodeRow<'_>]) -> Result<Vec<i32>> {
        let s = plan.shape;
        let batch = plan.total_rows;
        ensure(plan.n_tiles == batch && rows.len() <= batch, || {
            format!(
                "{} sequences for a fixed plan of {batch} decode rows",
                rows.len()
            )
        })?;
        let cap = plan.splits * plan.split_len;
        let mut tiles = Vec::with_capacity(4 * batch);
        for (si, q) in rows.iter().enumerate() {
            ensure(q.kv_len >= 1 && q.kv_len <= cap, || {
                format!(
                    "seq {si}: kv_len {} (fixed plan holds {cap} keys)",
                    q.kv_len
                )
            })?;
            ensure(
                q.pages.len() <= plan.max_pages && q.pages.len() * s.page_size >= q.kv_len,
                || format!("seq {si}: {} pages for {} keys", q.pages.len(), q.kv_len),
            )?;
            tiles.extend_from_slice(&[si as i32, si as i32, 1, q.kv_len as i32 - 1]);
        }
        for si in rows.len()..batch {
            tiles.extend_from_slice(&[si as i32, si as i32, 1, 0]);
        }
        let mut mirror = plan.table_mirror.lock().expect("plan table mirror");
        if mirror.is_none() {
            *mirror = Some(crate::cuda::plan_tables::TableMirror::new(
                &self.ctx, batch,
            )?);
        }
        let m = mirror.as_mut().expect("made above");
        let written = crate::cuda::plan_tables::table_changes(
            &mut m.rows,
            plan.max_pages,
            s.pool_pages,
            rows.iter().map(|q| q.pages),
        )
        .map_err(|(si, p)| {
            crate::cuda::error::CudaError::Shape(format!(
                "seq {si}: page id {p} outside pool of {}",
                s.pool_pages
            ))
        })
        .and_then(|ch| self.write_table_changes(&plan.tables, plan.max_pages, m, ch));
        if written.is_err() {
            // The mirror no longer says what the GPU holds: the next update writes every row.
            *mirror = None;
        }
        written.map(|()| tiles)
    }
}

/// One row of a fixed decode plan's update ([`CudaOps::update_decode_plan`]): one new token
/// attending to `kv_len` keys (its own included) on `pages`.
#[derive(Clone, Copy, Debug)]
pub struct DecodeRow<'a> {
    /// Keys visible to the token.
    pub kv_len: usize,
    /// Pool page of each `page_size` block of keys, in order.
    pub pages: &'a [u32],
}
