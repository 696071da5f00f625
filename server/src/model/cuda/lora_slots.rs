//! The slot table of per-row LoRA forwards (lora.rs `Seg`, kernels/cuda/lora.cu): [`SLOTS`]
//! adapters at a time, each entry per layer and projection the device addresses of the
//! adapter's stacked A and B^T and its rank (`strata_kernels::cuda::lora_ref`). A forward's
//! rows name slots; an adapter keeps its slot while later batches use it, and one not yet slotted
//! takes a free slot or the least recently used one the batch does not need. The table is
//! rewritten (one stream-ordered copy) only when an assignment changes, so graphs captured once
//! read whatever adapters the current batch has.

use super::lora::{GpuAdapter, Rows};
use std::sync::Arc;
use strata_kernels::cuda::{lora_ref, CudaError, DTensor, GpuContext, LORA_REF_I32S};

/// Adapters the table holds at once (a batch with more takes the per-adapter form).
pub(super) const SLOTS: usize = 32;
/// Widest stacked rank of the per-row form (the x A^T buffer's width); an adapter above it
/// takes the per-adapter form.
pub(super) const MID_CAP: usize = 512;

/// Projections per layer in the table (lora.rs `Proj`, in its order).
const PROJS: usize = 4;

struct Held {
    id: u64,
    /// Keeps the addresses in the table valid while slotted.
    adapter: Arc<GpuAdapter>,
    used: u64,
}

pub(super) struct Slots {
    table: DTensor,
    host: Vec<i32>,
    held: Vec<Option<Held>>,
    tick: u64,
}

impl Slots {
    /// An empty table (every rank 0) for a model of `layers` layers.
    pub(super) fn new(ctx: &GpuContext, layers: usize) -> Result<Self, CudaError> {
        let host = vec![0; layers * PROJS * SLOTS * LORA_REF_I32S];
        Ok(Slots {
            table: ctx.upload_i32(&[host.len()], &host)?,
            host,
            held: (0..SLOTS).map(|_| None).collect(),
            tick: 0,
        })
    }

    pub(super) fn table(&self) -> &DTensor {
        &self.table
    }

    /// The entries of layer `l`'s projection `p` in `table`.
    pub(super) fn refs(table: &DTensor, l: usize, p: usize) -> Result<DTensor, CudaError> {
        let n = SLOTS * LORA_REF_I32S;
        table.view((l * PROJS + p) * n, &[n])
    }

    /// Slots `adapters` (see [`super::lora::Cache::slot_rows`]): each of `n` rows' slot, -1
    /// for rows without an adapter.
    pub(super) fn assign(
        &mut self,
        ctx: &GpuContext,
        adapters: &Rows,
        n: usize,
    ) -> Result<Option<Vec<i32>>, CudaError> {
        if adapters.len() > SLOTS || adapters.iter().any(|(_, a, _)| a.rank() > MID_CAP) {
            return Ok(None);
        }
        self.tick += 1;
        let mut rows = vec![-1i32; n];
        let mut taken = [false; SLOTS];
        let mut missing = Vec::new();
        for (k, (id, _, _)) in adapters.iter().enumerate() {
            match self
                .held
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| h.id == *id))
            {
                Some(s) => taken[s] = true,
                None => missing.push(k),
            }
        }
        for &k in &missing {
            let (id, a, _) = &adapters[k];
            // A free slot (or one whose adapter was unloaded) first, else the least recently
            // used one this batch leaves alone.
            let s = (0..SLOTS)
                .filter(|&s| !taken[s])
                .min_by_key(|&s| match &self.held[s] {
                    Some(h) if h.adapter.held.strong_count() > 0 => h.used,
                    _ => 0,
                })
                .expect("at most SLOTS adapters");
            self.write(s, a);
            self.held[s] = Some(Held {
                id: *id,
                adapter: a.clone(),
                used: 0,
            });
            taken[s] = true;
        }
        for (id, _, r) in adapters {
            let s = self
                .held
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| h.id == *id))
                .expect("slotted above");
            if let Some(h) = &mut self.held[s] {
                h.used = self.tick;
            }
            for &row in r {
                rows[row] = s as i32;
            }
        }
        if !missing.is_empty() {
            ctx.write_i32(&self.table, &self.host)?;
        }
        Ok(Some(rows))
    }

    /// Slot `s`'s entries of every layer and projection for adapter `a` (host copy).
    fn write(&mut self, s: usize, a: &GpuAdapter) {
        for (l, projs) in a.layers.iter().enumerate() {
            for (p, pair) in projs.iter().enumerate() {
                let e = match pair {
                    Some(pair) => lora_ref(pair.a.ptr(), pair.bt.ptr(), pair.a.shape()[0]),
                    None => lora_ref(0, 0, 0),
                };
                let at = ((l * PROJS + p) * SLOTS + s) * LORA_REF_I32S;
                self.host[at..at + LORA_REF_I32S].copy_from_slice(&e);
            }
        }
    }
}
