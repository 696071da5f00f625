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
        let live = |h: &Held| h.adapter.held.strong_count() > 0;
        let (slots, placed) = place(&mut self.held, adapters, self.tick, live);
        for &s in &placed {
            let a = self.held[s].as_ref().expect("placed").adapter.clone();
            self.write(s, &a);
        }
        let mut rows = vec![-1i32; n];
        for (&s, (_, _, r)) in slots.iter().zip(adapters) {
            for &row in r {
                rows[row] = s as i32;
            }
        }
        if !placed.is_empty() {
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

/// Each adapter's slot, and the slots newly given: an adapter keeps the slot it holds; one
/// without takes a free slot (or one whose adapter is no longer `live`) first, else the least
/// recently used one this batch leaves alone. Every adapter's slot is marked used at `tick`.
/// At most [`SLOTS`] adapters.
fn place(
    held: &mut [Option<Held>],
    adapters: &Rows,
    tick: u64,
    live: impl Fn(&Held) -> bool,
) -> (Vec<usize>, Vec<usize>) {
    let mut slots: Vec<Option<usize>> = adapters
        .iter()
        .map(|(id, _, _)| {
            held.iter()
                .position(|h| h.as_ref().is_some_and(|h| h.id == *id))
        })
        .collect();
    let mut taken = [false; SLOTS];
    for s in slots.iter().flatten() {
        taken[*s] = true;
    }
    let mut placed = Vec::new();
    for (slot, (id, a, _)) in slots.iter_mut().zip(adapters) {
        if slot.is_some() {
            continue;
        }
        let s = (0..SLOTS)
            .filter(|&s| !taken[s])
            .min_by_key(|&s| held[s].as_ref().filter(|h| live(h)).map_or(0, |h| h.used))
            .expect("at most SLOTS adapters");
        held[s] = Some(Held {
            id: *id,
            adapter: a.clone(),
            used: 0,
        });
        taken[s] = true;
        *slot = Some(s);
        placed.push(s);
    }
    let slots: Vec<usize> = slots.into_iter().flatten().collect();
    for &s in &slots {
        if let Some(h) = &mut held[s] {
            h.used = tick;
        }
    }
    (slots, placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Weak;

    fn batch(ids: &[u64]) -> Rows {
        ids.iter()
            .enumerate()
            .map(|(k, &id)| {
                let a = Arc::new(GpuAdapter {
                    held: Weak::new(),
                    layers: Vec::new(),
                });
                (id, a, vec![k])
            })
            .collect()
    }

    /// Adapters keep their slots across batches; new ones take free slots, then the least
    /// recently used slot the batch does not need, and an unloaded adapter's slot before any.
    #[test]
    fn adapters_keep_slots_and_new_ones_take_free_then_least_recent() {
        let mut held: Vec<Option<Held>> = (0..SLOTS).map(|_| None).collect();
        let all = |_: &Held| true;
        let (first, placed) = place(&mut held, &batch(&[7, 8]), 1, all);
        assert_eq!(placed, first);
        let (again, placed) = place(&mut held, &batch(&[8, 7]), 2, all);
        assert_eq!(again, [first[1], first[0]]);
        assert!(placed.is_empty(), "no adapter moves");
        // Fill every slot; adapter 7 (tick 2) stays in use, 8 is least recent.
        let ids: Vec<u64> = (100..100 + SLOTS as u64 - 2).collect();
        place(&mut held, &batch(&ids), 3, all);
        place(&mut held, &batch(&[7]), 4, all);
        let (s, placed) = place(&mut held, &batch(&[9, 7]), 5, all);
        assert_eq!(s[0], first[1], "9 takes 8's slot, the least recently used");
        assert_eq!(s[1], first[0], "7 keeps its slot");
        assert_eq!(placed, [first[1]]);
        // An adapter no longer loaded gives its slot up first, even if used recently.
        let gone = s[1];
        let live = |h: &Held| h.id != 7;
        let (s, _) = place(&mut held, &batch(&[10]), 6, live);
        assert_eq!(s, [gone]);
        // Every slot distinct within a batch.
        let ids: Vec<u64> = (200..200 + SLOTS as u64).collect();
        let (s, _) = place(&mut held, &batch(&ids), 7, all);
        let mut d = s.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), SLOTS);
    }
}
