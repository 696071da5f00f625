//! Decode CUDA graphs: one per batch-size bucket (`--cuda-graph-bs`, or the default buckets up to
//! `--cuda-graph-max-bs`), captured at start-up against the KV pool, each with its own
//! activations, metadata buffer and fixed attention plan.
//!
//! A replay rewrites the bucket's metadata (ids, positions, slots; padded rows get slot -1 and
//! write no KV) and the plan's block tables in place, stream-ordered before the launch, so the
//! captured kernels read the new batch. A batch is replayed only when every sequence decodes one
//! token, fits the plan's page-table width and the batch fits a bucket; otherwise it runs eagerly.
//! Under overlap scheduling a replay may take input ids from the previous forward's sampled
//! tokens, copied device to device into the ids section after the metadata write.
//!
//! Batches with LoRA adapters replay a second graph of the bucket, captured on the first such
//! batch: the same buffers, the unfused projections and the per-row LoRA kernels (lora.rs
//! `Seg`), each row's adapter slot in a fifth metadata section.
//!
//! The lean step (the default; `STRATA_LEAN_STEP=0`: the separate copies, for A/B runs): a
//! bucket's metadata, a host cell and the plan's tile list are one allocation ([`Layout`])
//! written by one copy per replay, and a one-row graph's fused LM head also puts its greedy
//! pick into the graph's own input id and, through the cell, into the readback slot the caller
//! names (a queued replay whose rows all take the argmax). So a steady batch-1 decode step queues one copy and
//! the replay: no tile copy, no device copy of the id (a replay continuing the previous lean
//! replay of the same graph skips the ids section: the head left the id there) and no readback
//! kernel. (Stream operations between two replays each hold the next one up by microseconds:
//! docs/perf.md, "Served against raw".)

use super::lora::{Run, Seg, SEG_MAX_ROWS};
use super::lora_slots::MID_CAP;
use super::{Acts, CudaKv, CudaRunner, Meta};
use crate::model::runner::{SampleReq, Sampled};
use crate::model::ForwardBatch;
use cudarc::driver::CudaGraph;
use strata_kernels::cuda::{AttnPlan, CudaError, DTensor, DType, DecodeRow, PickOut};

/// The decode batch sizes to capture (`strata serve`'s flags, SGLang's semantics): the sizes of
/// `list` (`--cuda-graph-bs`) when given, ascending and deduplicated, those above `max_bs`
/// (`--cuda-graph-max-bs`, when also given) left out; otherwise [`buckets`] up to `max_bs`, or
/// up to `default_max` without it. An error for a size of 0.
pub fn graph_sizes(
    max_bs: Option<usize>,
    list: &[usize],
    default_max: usize,
) -> Result<Vec<usize>, String> {
    if list.contains(&0) {
        return Err("--cuda-graph-bs: batch sizes must be at least 1".into());
    }
    if list.is_empty() {
        return Ok(buckets(max_bs.unwrap_or(default_max)));
    }
    let mut sizes: Vec<usize> = list
        .iter()
        .copied()
        .filter(|&b| max_bs.is_none_or(|m| b <= m))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

/// Batch-size buckets up to `max_bs` (SGLang-like: 1, 2, 4, 8, then steps of 8 to 64, of 16
/// to 256, of 32 beyond), always ending at `max_bs` itself.
pub(super) fn buckets(max_bs: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut b = 1;
    while b <= max_bs {
        out.push(b);
        b = match b {
            1 | 2 | 4 => 2 * b,
            _ if b < 64 => b + 8,
            _ if b < 256 => b + 16,
            _ => b + 32,
        };
    }
    if out.last().is_some_and(|&l| l != max_bs) {
        out.push(max_bs);
    }
    out
}

/// A captured graph executable. CUDA graph objects must not be used from two threads at once;
/// this one is owned by the runner, which lives on one thread (the scheduler's) at a time.
struct Exec(CudaGraph);
// SAFETY: see above: exclusive ownership serialises every call on the graph.
unsafe impl Send for Exec {}

struct DecodeGraph {
    bs: usize,
    acts: Acts,
    meta: Meta,
    plan: AttnPlan,
    exec: Exec,
    /// The bucket's graph with LoRA adapters (its Meta holds the per-row form's buffers).
    lora: Option<(Meta, Exec)>,
    /// The whole [`Layout`] allocation (`meta.buf` and, in the lean step, the plan's tiles are
    /// views of it).
    all: DTensor,
}

/// A bucket's per-replay words on the device, in one allocation: the metadata (ids, positions,
/// slots, logits rows, adapter slots: 5 x bs), the head's host cell (two words holding a mapped
/// host address, little-endian halves, 8-byte aligned: the allocation is) and the attention
/// plan's tile list (4 x bs). The ids come first, so a copy that leaves them as they are starts
/// one section later. (Public for the bench's lean step, `gpu bench --only decode`.)
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The bucket's batch size.
    pub bs: usize,
}

impl Layout {
    /// Where the host cell starts (words).
    pub fn cell_at(self) -> usize {
        (5 * self.bs + 1) & !1
    }
    /// Where the plan's tiles start (words).
    pub fn tiles_at(self) -> usize {
        self.cell_at() + 2
    }
    /// Words of the whole allocation.
    pub fn total_words(self) -> usize {
        self.tiles_at() + 4 * self.bs
    }
    /// Every word of the allocation: `meta` (5 x bs, extended in place), the cell naming `host`
    /// (0: none) and `tiles` (4 x bs; shorter: zeros after).
    pub fn words(self, meta: Vec<i32>, host: u64, tiles: &[i32]) -> Vec<i32> {
        debug_assert!(meta.len() == 5 * self.bs && tiles.len() <= 4 * self.bs);
        let mut out = meta;
        out.reserve_exact(self.total_words() - out.len());
        out.resize(self.cell_at(), 0);
        out.extend([host as u32 as i32, (host >> 32) as u32 as i32]);
        out.extend_from_slice(tiles);
        out.resize(self.total_words(), 0);
        out
    }
}

/// True when a replay of graph `gi` finds its input id in place: it has one row, continuing the
/// previous launch's one row (`from_prev`), and that launch was a lean replay of the same graph
/// (`ids_left`), whose head wrote its pick into the graph's ids.
fn ids_in_place(
    ids_left: Option<usize>,
    gi: usize,
    n: usize,
    from_prev: &[(usize, usize)],
) -> bool {
    ids_left == Some(gi) && n == 1 && from_prev == [(0, 0)]
}

/// The lean step unless `STRATA_LEAN_STEP=0`.
fn lean_from_env() -> bool {
    std::env::var("STRATA_LEAN_STEP").map_or(true, |v| v != "0")
}

/// A bucket's metadata with no batch in it: ids and positions 0, no KV slot (-1), logits rows
/// 0..bs, no adapter (-1).
fn blank_meta(bs: usize) -> Vec<i32> {
    let mut host = vec![0i32; 5 * bs];
    host[2 * bs..3 * bs].fill(-1);
    for (i, x) in host[3 * bs..4 * bs].iter_mut().enumerate() {
        *x = i as i32;
    }
    host[4 * bs..].fill(-1);
    host
}

/// Captures `r`'s forward of the bucket's buffers (after one eager pass: cuBLASLt times its
/// algorithms outside capture).
fn record(
    r: &CudaRunner,
    acts: &Acts,
    meta: &Meta,
    plan: &AttnPlan,
    kv: &CudaKv,
) -> Result<Exec, CudaError> {
    r.forward(acts, meta, plan, kv)?;
    r.ctx.synchronize()?;
    let g = r.ops.capture_graph(|| r.forward(acts, meta, plan, kv))?;
    g.upload()?;
    Ok(Exec(g))
}

/// A replay's metadata and plan (tiles, page-table changes) copied up, the ids of rows
/// continuing the queued forward copied on the device from `prev` (unless `ids_kept`: the
/// head left the one row's id in place). The lean step writes the metadata, the host cell
/// (`host_addr`: the mapped address the head stores its pick into, 0: none) and the tiles in one
/// copy (`lean`).
fn copy_meta(
    r: &CudaRunner,
    (g, lean): (&DecodeGraph, bool),
    batch: &ForwardBatch,
    lora_rows: Option<&[i32]>,
    prev: Option<&DTensor>,
    (host_addr, ids_kept): (u64, bool),
) -> Result<(), CudaError> {
    let bs = g.bs;
    let n = batch.tokens.len();
    // Every section in one copy: padded rows keep the blank values.
    let mut host = blank_meta(bs);
    for i in 0..n {
        host[i] = batch.tokens[i] as i32;
        host[bs + i] = batch.positions[i] as i32;
        host[2 * bs + i] = batch.slots[i] as i32;
    }
    if let Some(rows) = lora_rows {
        host[4 * bs..4 * bs + n].copy_from_slice(rows);
    }
    let rows: Vec<DecodeRow> = batch
        .seqs
        .iter()
        .map(|s| DecodeRow {
            kv_len: s.kv_len,
            pages: &s.pages,
        })
        .collect();
    if lean {
        let tiles = r.ops.decode_plan_rows(&g.plan, &rows)?;
        let words = Layout { bs }.words(host, host_addr, &tiles);
        let from = if ids_kept { bs } else { 0 };
        r.ctx
            .write_i32(&g.all.view(from, &[words.len() - from])?, &words[from..])?;
    } else {
        r.ops.update_decode_plan(&g.plan, &rows)?;
        r.ctx.write_i32(&g.meta.buf, &host)?;
    }
    if let Some(prev) = prev.filter(|_| !ids_kept) {
        // The ids section starts the buffer: runs of consecutive rows, one copy each.
        let mut k = 0;
        let fp = &batch.from_prev;
        while k < fp.len() {
            let mut e = k + 1;
            while e < fp.len() && fp[e].0 == fp[e - 1].0 + 1 && fp[e].1 == fp[e - 1].1 + 1 {
                e += 1;
            }
            r.ctx
                .copy_words(&g.meta.buf, fp[k].0, prev, fp[k].1, e - k)?;
            k = e;
        }
    }
    Ok(())
}

impl DecodeGraph {
    /// Captures the bucket's LoRA graph if it is not yet: the metadata blanked first (the
    /// eager pass must write no KV and store no pick), the slot table of `r`'s adapters.
    fn lora_exec(&mut self, r: &CudaRunner, kv: &CudaKv) -> Result<(), CudaError> {
        if self.lora.is_none() {
            let bs = self.bs;
            // The blank metadata and no host cell (the cell may still name the slot of a
            // replay in flight, which the eager pass's head must not write).
            let l = Layout { bs };
            let blank = l.words(blank_meta(bs), 0, &[]);
            r.ctx
                .write_i32(&self.all.view(0, &[l.tiles_at()])?, &blank[..l.tiles_at()])?;
            r.ops.update_decode_plan(&self.plan, &[])?;
            let mut meta = Meta::views(self.meta.buf.view(0, &[5 * bs])?, bs, bs, vec![-1; bs])?;
            meta.pick = self.meta.pick;
            meta.lora = Some(Run::Seg(Seg {
                rows: self.meta.buf.view(4 * bs, &[bs])?,
                table: r.loras.table(&r.ctx, &r.cfg)?,
                mid: r.ctx.alloc(DType::F32, &[bs, MID_CAP])?,
            }));
            let exec = record(r, &self.acts, &meta, &self.plan, kv)?;
            tracing::info!(bs, "CUDA graph with LoRA adapters captured");
            self.lora = Some((meta, exec));
        }
        Ok(())
    }
}

/// The captured graphs of one runner (empty when disabled).
#[derive(Default)]
pub(super) struct Graphs {
    graphs: Vec<DecodeGraph>,
    max_pages: usize,
    pool_ptr: u64,
    /// The lean step: one copy per replay (each bucket's plan tiles live in its `all`).
    lean: bool,
    /// The graph whose head wrote its pick into its own input id as the final token of the
    /// latest launch (a lean replay); taken by every launch.
    ids_left: Option<usize>,
}

impl Graphs {
    /// True when the buckets take the lean step.
    pub(super) fn lean(&self) -> bool {
        self.lean
    }

    /// The captured bucket sizes.
    pub(super) fn sizes(&self) -> Vec<usize> {
        self.graphs.iter().map(|g| g.bs).collect()
    }

    /// Captures one graph per bucket against `kv`.
    pub(super) fn capture(r: &CudaRunner, kv: &CudaKv) -> Result<Self, CudaError> {
        let max_pages = r
            .opts
            .context_length
            .div_ceil(kv.page_size)
            .min(kv.num_pages)
            .max(1);
        let mut graphs = Vec::new();
        let sizes = r.opts.cuda_graph_bs.clone();
        let shape = r.attn_shape(kv);
        // Batch-invariant plans have many splits (a fixed split length over the whole context):
        // every bucket uses the largest bucket's split workspace (replays never overlap).
        let shared = match sizes.last() {
            Some(&max) if r.opts.deterministic => {
                Some(
                    r.ops
                        .decode_plan_fixed_with(shape, max, max_pages, r.plan_opts())?,
                )
            }
            _ => None,
        };
        let lean = lean_from_env();
        for bs in sizes {
            let acts = r.acts(bs, bs)?;
            let layout = Layout { bs };
            let all = r.ctx.upload_i32(
                &[layout.total_words()],
                &layout.words(blank_meta(bs), 0, &[]),
            )?;
            let mut meta = Meta::views(all.view(0, &[5 * bs])?, bs, bs, vec![-1; bs])?;
            let mut plan = if lean {
                meta.pick = PickOut {
                    next_id: meta.ids.ptr(),
                    host_cell: all.ptr() + 4 * layout.cell_at() as u64,
                };
                let tiles = all.view(layout.tiles_at(), &[4 * bs])?;
                r.ops
                    .decode_plan_fixed_in(shape, bs, max_pages, r.plan_opts(), &tiles)?
            } else {
                r.ops
                    .decode_plan_fixed_with(shape, bs, max_pages, r.plan_opts())?
            };
            if let Some(s) = &shared {
                plan.share_workspace(s)?;
            }
            r.ops.update_decode_plan(&plan, &[])?;
            let exec = record(r, &acts, &meta, &plan, kv)?;
            graphs.push(DecodeGraph {
                bs,
                acts,
                meta,
                plan,
                exec,
                lora: None,
                all,
            });
        }
        r.ctx.synchronize()?;
        Ok(Graphs {
            graphs,
            max_pages,
            pool_ptr: kv.pool.ptr(),
            lean,
            ids_left: None,
        })
    }

    /// Replays the smallest fitting bucket for a decode-only batch, returning the sampled rows
    /// and when the graph was launched; None when the batch does not qualify (it then runs
    /// eagerly).
    pub(super) fn try_run(
        &mut self,
        r: &CudaRunner,
        batch: &ForwardBatch,
        sampling: &[SampleReq<'_>],
        kv: &CudaKv,
    ) -> Result<Option<(Vec<Sampled>, std::time::Instant)>, CudaError> {
        let Some((gi, launched, _)) = self.try_launch(r, batch, kv, None, None)? else {
            return Ok(None);
        };
        let (logits, tokens, _) = self.head(gi);
        r.sample(logits, tokens, sampling)
            .map(|out| Some((out, launched)))
    }

    /// Queues the replay of the smallest fitting bucket for a decode-only batch (nothing
    /// waits for it); returns the graph's index, when it was launched and whether its head
    /// stored the picks into `host` (a claimed readback slot's device address, given when every
    /// row takes the argmax: only a lean one-row graph's head does), None when the batch does
    /// not qualify. Input tokens named by `batch.from_prev` are copied on the device from `prev`
    /// (the previous forward's sampled tokens) after the metadata is written, unless the head
    /// of the previous launch, a lean replay of the same graph, left them in place.
    pub(super) fn try_launch(
        &mut self,
        r: &CudaRunner,
        batch: &ForwardBatch,
        kv: &CudaKv,
        prev: Option<&DTensor>,
        host: Option<u64>,
    ) -> Result<Option<(usize, std::time::Instant, bool)>, CudaError> {
        let ids_left = self.ids_left.take();
        let n = batch.tokens.len();
        if n == 0 || kv.pool.ptr() != self.pool_ptr || batch.logit_rows.len() != n {
            return Ok(None);
        }
        if !batch.from_prev.is_empty() && prev.is_none() {
            return Ok(None);
        }
        let Some(gi) = self.graphs.iter().position(|g| g.bs >= n) else {
            return Ok(None);
        };
        let g = &mut self.graphs[gi];
        let decode = batch.seqs.len() == n
            && batch.seqs.iter().enumerate().all(|(i, s)| {
                s.q_len == 1
                        && s.q_start == i
                        && s.pages.len() <= self.max_pages
                        // Batch-invariant mode: a one-token prompt tail is a prompt row (prefill
                        // kernel), so it runs eagerly.
                        && (s.decode || !r.opts.deterministic)
            })
            && batch.logit_rows.iter().enumerate().all(|(i, &r)| r == i);
        if !decode {
            return Ok(None);
        }
        // Rows with adapters: their slots (None when the adapters do not fit the table).
        let adapters = r.loras.adapters(&r.ctx, &r.cfg, batch)?;
        let lora_rows = if adapters.is_empty() {
            None
        } else if g.bs > SEG_MAX_ROWS {
            return Ok(None);
        } else {
            match r.loras.slot_rows(&r.ctx, &r.cfg, &adapters, n)? {
                Some(rows) => Some(rows),
                None => return Ok(None),
            }
        };
        // A graph cannot wait per layer: a pending L2 -> L1 load must land first.
        if let Some(p) = &kv.pending {
            p.wait_all(r.ctx.stream())?;
        }
        let slots_cap = kv.num_pages * kv.page_size;
        if batch.slots.iter().any(|&s| s as usize >= slots_cap) {
            return Err(CudaError::Shape(format!(
                "slot outside pool of {slots_cap}"
            )));
        }
        if lora_rows.is_some() {
            if g.lora.is_none() && !batch.from_prev.is_empty() {
                // Capturing the LoRA graph runs the bucket eagerly first, over the activations
                // that may hold the previous forward's tokens still to be copied: such a batch
                // takes its ids from the host instead (the caller's fallback). (So the eager
                // pass never overwrites an id a lean head left in place for this batch either.)
                return Ok(None);
            }
            g.lora_exec(r, kv)?;
        }
        let (meta, exec) = match (&lora_rows, &g.lora) {
            (Some(_), Some((meta, exec))) => (meta, exec),
            _ => (&g.meta, &g.exec),
        };
        // (`picked`: this graph's head takes the cell; only a lean graph's has one.)
        let host = host.filter(|_| meta.picked.get()).unwrap_or(0);
        let kept = self.lean && ids_in_place(ids_left, gi, n, &batch.from_prev);
        copy_meta(
            r,
            (g, self.lean),
            batch,
            lora_rows.as_deref(),
            prev,
            (host, kept),
        )?;
        let launched = std::time::Instant::now();
        exec.0.launch()?;
        if host != 0 {
            self.ids_left = Some(gi);
        }
        Ok(Some((gi, launched, host != 0)))
    }

    /// The logits ([bs, vocab] f32), sampled-token buffer ([bs] i32, the argmax of each row)
    /// and input ids ([bs] i32, the replay's) of graph `gi`.
    pub(super) fn head(&self, gi: usize) -> (&DTensor, &DTensor, &DTensor) {
        let g = &self.graphs[gi];
        let (_, logits, tokens) = g.acts.head.as_ref().expect("graphs have logits rows");
        (logits, tokens, &g.meta.ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_buckets_end_at_the_largest_batch() {
        assert_eq!(buckets(0), Vec::<usize>::new());
        assert_eq!(buckets(1), [1]);
        assert_eq!(buckets(20), [1, 2, 4, 8, 16, 20]);
        assert_eq!(graph_sizes(None, &[], 8).unwrap(), [1, 2, 4, 8]);
        assert_eq!(graph_sizes(Some(4), &[], 256).unwrap(), [1, 2, 4]);
    }

    /// Every bucket size's layout: the sections in order without overlap, the cell 8-byte
    /// aligned (the allocation is), and `words` puts each part where the layout says.
    #[test]
    fn the_lean_layout_keeps_its_sections_apart() {
        for bs in [1usize, 2, 3, 4, 7, 8, 64, 255, 256] {
            let l = Layout { bs };
            assert!(l.cell_at() >= 5 * bs && l.cell_at() % 2 == 0, "bs {bs}");
            assert_eq!(l.tiles_at(), l.cell_at() + 2);
            assert_eq!(l.total_words(), l.tiles_at() + 4 * bs);
            let meta: Vec<i32> = (0..5 * bs as i32).collect();
            let tiles: Vec<i32> = (0..4 * bs as i32).map(|t| 1000 + t).collect();
            let host = 0x0000_7f12_3456_78a8u64;
            let w = l.words(meta.clone(), host, &tiles);
            assert_eq!(w.len(), l.total_words());
            assert_eq!(&w[..5 * bs], &meta[..]);
            assert!(w[5 * bs..l.cell_at()].iter().all(|&x| x == 0));
            let cell = (w[l.cell_at()] as u32 as u64) | ((w[l.cell_at() + 1] as u32 as u64) << 32);
            assert_eq!(cell, host);
            assert_eq!(&w[l.tiles_at()..], &tiles[..]);
            // The blank allocation: no cell, no tiles.
            let blank = l.words(blank_meta(bs), 0, &[]);
            assert!(blank[l.cell_at()..].iter().all(|&x| x == 0));
        }
    }

    /// The ids are left in place only for one row continuing the previous launch's one row,
    /// after a lean replay of the same graph.
    #[test]
    fn ids_stay_in_place_only_after_a_lean_replay_of_the_same_graph() {
        assert!(ids_in_place(Some(0), 0, 1, &[(0, 0)]));
        assert!(!ids_in_place(None, 0, 1, &[(0, 0)]));
        assert!(!ids_in_place(Some(1), 0, 1, &[(0, 0)]));
        assert!(!ids_in_place(Some(0), 0, 1, &[]));
        assert!(!ids_in_place(Some(0), 0, 1, &[(0, 1)]));
        assert!(!ids_in_place(Some(0), 0, 2, &[(0, 0), (1, 1)]));
    }

    #[test]
    fn an_explicit_list_is_sorted_deduplicated_and_capped() {
        assert_eq!(
            graph_sizes(None, &[8, 1, 4, 4, 32], 256).unwrap(),
            [1, 4, 8, 32]
        );
        assert_eq!(
            graph_sizes(Some(8), &[1, 2, 16, 8], 256).unwrap(),
            [1, 2, 8]
        );
        assert!(graph_sizes(None, &[0, 4], 256).is_err());
    }
}
