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

use super::lora::{Run, Seg, SEG_MAX_ROWS};
use super::lora_slots::MID_CAP;
use super::{Acts, CudaKv, CudaRunner, Meta};
use crate::model::runner::{SampleReq, Sampled};
use crate::model::ForwardBatch;
use cudarc::driver::CudaGraph;
use strata_kernels::cuda::{AttnPlan, CudaError, DTensor, DType, DecodeRow};

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
/// continuing the queued forward copied on the device from `prev`.
fn copy_meta(
    r: &CudaRunner,
    g: &DecodeGraph,
    batch: &ForwardBatch,
    lora_rows: Option<&[i32]>,
    prev: Option<&DTensor>,
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
    r.ops.update_decode_plan(&g.plan, &rows)?;
    r.ctx.write_i32(&g.meta.buf, &host)?;
    if let Some(prev) = prev {
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
    /// eager pass must write no KV), the slot table of `r`'s adapters.
    fn lora_exec(&mut self, r: &CudaRunner, kv: &CudaKv) -> Result<(), CudaError> {
        if self.lora.is_none() {
            let bs = self.bs;
            r.ctx.write_i32(&self.meta.buf, &blank_meta(bs))?;
            r.ops.update_decode_plan(&self.plan, &[])?;
            let mut meta = Meta::views(self.meta.buf.view(0, &[5 * bs])?, bs, bs, vec![-1; bs])?;
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
}

impl Graphs {
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
        for bs in sizes {
            let acts = r.acts(bs, bs)?;
            let buf = r.ctx.upload_i32(&[5 * bs], &blank_meta(bs))?;
            let meta = Meta::views(buf, bs, bs, vec![-1; bs])?;
            let mut plan = r
                .ops
                .decode_plan_fixed_with(shape, bs, max_pages, r.plan_opts())?;
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
            });
        }
        r.ctx.synchronize()?;
        Ok(Graphs {
            graphs,
            max_pages,
            pool_ptr: kv.pool.ptr(),
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
        let Some((gi, launched)) = self.try_launch(r, batch, kv, None)? else {
            return Ok(None);
        };
        let (logits, tokens, _) = self.head(gi);
        r.sample(logits, tokens, sampling)
            .map(|out| Some((out, launched)))
    }

    /// Queues the replay of the smallest fitting bucket for a decode-only batch (nothing
    /// waits for it); returns the graph's index and when it was launched, None when the batch
    /// does not qualify. Input tokens named by `batch.from_prev` are copied on the device from
    /// `prev` (the previous forward's sampled tokens) after the metadata is written.
    pub(super) fn try_launch(
        &mut self,
        r: &CudaRunner,
        batch: &ForwardBatch,
        kv: &CudaKv,
        prev: Option<&DTensor>,
    ) -> Result<Option<(usize, std::time::Instant)>, CudaError> {
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
                // takes its ids from the host instead (the caller's fallback).
                return Ok(None);
            }
            g.lora_exec(r, kv)?;
        }
        let exec = match (&lora_rows, &g.lora) {
            (Some(_), Some((_, exec))) => exec,
            _ => &g.exec,
        };
        copy_meta(r, g, batch, lora_rows.as_deref(), prev)?;
        let launched = std::time::Instant::now();
        exec.0.launch()?;
        Ok(Some((gi, launched)))
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
