//! LoRA adapters on the bf16 CUDA runner. An adapter's matrices go to the GPU on its first use,
//! stacked per fused projection of the runner: qkv takes [A_q; A_k; A_v] and a block-diagonal
//! B (its rows the q, k and v outputs), gate_up [A_gate; A_up] likewise, o and down their own;
//! ranks padded to a multiple of 8 with zero rows (the GEMMs' aligned paths). A forward with
//! adapter rows runs each projection's base GEMM unfused (no RoPE / SiLU / norm epilogues) and
//! adds each row's change to its output before them, in one of two forms ([`Run`]):
//! - per row ([`Seg`], `lora_shrink` + `lora_expand`, kernels/cuda/lora.cu): every row names
//!   its adapter's slot in a table (lora_slots.rs); two launches per projection whatever the
//!   adapters, so decode steps with adapters replay CUDA graphs (graph.rs). Forwards of up to
//!   [`SEG_MAX_ROWS`] rows, and every forward in batch-invariant mode (a row's change is its
//!   own);
//! - per adapter ([`Plan`], larger forwards): gathers the adapter's rows of the input, x A^T,
//!   (x A^T) B^T as GEMMs, and adds that to its output rows (`add_rows`).

use super::lora_slots::{Slots, MID_CAP};
use crate::model::lora::{LoraAdapter, Target};
use crate::model::{ForwardBatch, ModelConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use strata_kernels::cuda::{CudaError, CudaOps, DTensor, DType, Gemm, GpuContext};

/// Largest forward whose adapter rows take the per-row kernels (outside batch-invariant mode).
pub(super) const SEG_MAX_ROWS: usize = 256;

/// The runner's fused projections an adapter may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proj {
    Qkv,
    O,
    GateUp,
    Down,
}

impl Proj {
    fn targets(self) -> &'static [Target] {
        match self {
            Proj::Qkv => &[Target::Q, Target::K, Target::V],
            Proj::O => &[Target::O],
            Proj::GateUp => &[Target::Gate, Target::Up],
            Proj::Down => &[Target::Down],
        }
    }
}

/// A stacked pair on the GPU: a [R, in], b [out, R] (the GEMM form) and its transpose bt
/// [R, out] (the per-row kernels), R the padded sum of the ranks.
pub(super) struct Pair {
    pub(super) a: DTensor,
    b: DTensor,
    pub(super) bt: DTensor,
}

/// One adapter on the GPU: `layers[l][proj]`.
pub(super) struct GpuAdapter {
    pub(super) held: Weak<LoraAdapter>,
    pub(super) layers: Vec<[Option<Pair>; 4]>,
}

impl GpuAdapter {
    /// The widest stacked rank of any projection (the x A^T width it needs).
    pub(super) fn rank(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.a.shape()[0])
            .max()
            .unwrap_or(8)
    }
}

fn stack(
    ctx: &GpuContext,
    cfg: &ModelConfig,
    a: &LoraAdapter,
    l: usize,
    p: Proj,
) -> Result<Option<Pair>, CudaError> {
    let ts = p.targets();
    if !ts.iter().any(|&t| a.targets(l, t)) {
        return Ok(None);
    }
    let din = ts[0].dims(cfg).0;
    let outs: Vec<usize> = ts.iter().map(|t| t.dims(cfg).1).collect();
    let dout: usize = outs.iter().sum();
    let ranks: Vec<usize> = ts
        .iter()
        .map(|&t| a.pair(l, t).map_or(0, |p| p.2))
        .collect();
    let r = ranks.iter().sum::<usize>().div_ceil(8) * 8;
    let (mut ha, mut hb) = (vec![0f32; r * din], vec![0f32; dout * r]);
    let (mut r0, mut o0) = (0, 0);
    for (i, &t) in ts.iter().enumerate() {
        if let Some((pa, pb, rank)) = a.pair(l, t) {
            ha[r0 * din..(r0 + rank) * din].copy_from_slice(pa);
            for o in 0..outs[i] {
                hb[(o0 + o) * r + r0..(o0 + o) * r + r0 + rank]
                    .copy_from_slice(&pb[o * rank..(o + 1) * rank]);
            }
        }
        r0 += ranks[i];
        o0 += outs[i];
    }
    let mut hbt = vec![0f32; r * dout];
    for (o, row) in hb.chunks_exact(r).enumerate() {
        for (k, &v) in row.iter().enumerate() {
            hbt[k * dout + o] = v;
        }
    }
    Ok(Some(Pair {
        a: ctx.upload_bf16(&[r, din], &ha)?,
        b: ctx.upload_bf16(&[dout, r], &hb)?,
        bt: ctx.upload_bf16(&[r, dout], &hbt)?,
    }))
}

/// The adapters on the GPU, by load id (an entry goes once its adapter is dropped everywhere),
/// and the slot table of the per-row form (made on first use).
#[derive(Default)]
pub(super) struct Cache {
    map: Mutex<HashMap<u64, Arc<GpuAdapter>>>,
    slots: Mutex<Option<Slots>>,
}

/// A forward's adapters on the GPU (by load id) with their rows.
pub(super) type Rows = Vec<(u64, Arc<GpuAdapter>, Vec<usize>)>;

/// One adapter's rows in a per-adapter forward: their indices (distinct, on the GPU), how
/// many, and scratch for the gathered input, x A^T and the change (sized for the widest
/// projection).
struct Group {
    adapter: Arc<GpuAdapter>,
    ids: DTensor,
    n: usize,
    xg: DTensor,
    mid: DTensor,
    d: DTensor,
}

/// A per-adapter forward's adapters.
pub(super) struct Plan {
    groups: Vec<Group>,
}

/// A per-row forward: each row's slot (-1: none; [T] i32), the slot table and x A^T [T,
/// MID_CAP] f32.
pub(super) struct Seg {
    pub(super) rows: DTensor,
    pub(super) table: DTensor,
    pub(super) mid: DTensor,
}

/// How a forward applies its adapters.
pub(super) enum Run {
    Seg(Seg),
    Gemm(Plan),
}

impl Cache {
    /// The adapters of `batch` with their rows (empty: no row has one), uploading each on first
    /// use.
    pub(super) fn adapters(
        &self,
        ctx: &GpuContext,
        cfg: &ModelConfig,
        batch: &ForwardBatch,
    ) -> Result<Rows, CudaError> {
        let rows = crate::model::lora::rows_by_adapter(batch);
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut map = self.map.lock().expect("lora cache");
        map.retain(|_, g| g.held.strong_count() > 0);
        let mut out = Vec::new();
        for (a, r) in rows {
            let g = match map.get(&a.id) {
                Some(g) => g.clone(),
                None => {
                    let layers = (0..cfg.num_layers)
                        .map(|l| {
                            Ok([Proj::Qkv, Proj::O, Proj::GateUp, Proj::Down]
                                .map(|p| stack(ctx, cfg, &a, l, p))
                                .into_iter()
                                .collect::<Result<Vec<_>, CudaError>>()?
                                .try_into()
                                .unwrap_or_else(|_| unreachable!("four projections")))
                        })
                        .collect::<Result<_, CudaError>>()?;
                    let g = Arc::new(GpuAdapter {
                        held: Arc::downgrade(&a),
                        layers,
                    });
                    map.insert(a.id, g.clone());
                    g
                }
            };
            out.push((a.id, g, r));
        }
        Ok(out)
    }

    /// Each of `n` rows' slot in the table (the adapters slotted, the table written on the
    /// stream where it changed), or None when they do not fit it (more adapters than slots, or
    /// a rank above `MID_CAP`).
    pub(super) fn slot_rows(
        &self,
        ctx: &GpuContext,
        cfg: &ModelConfig,
        adapters: &Rows,
        n: usize,
    ) -> Result<Option<Vec<i32>>, CudaError> {
        self.with_slots(ctx, cfg, |s| s.assign(ctx, adapters, n))
    }

    /// The slot table (for capturing a graph with adapters).
    pub(super) fn table(&self, ctx: &GpuContext, cfg: &ModelConfig) -> Result<DTensor, CudaError> {
        self.with_slots(ctx, cfg, |s| s.table().view(0, s.table().shape()))
    }

    fn with_slots<T>(
        &self,
        ctx: &GpuContext,
        cfg: &ModelConfig,
        f: impl FnOnce(&mut Slots) -> Result<T, CudaError>,
    ) -> Result<T, CudaError> {
        let mut slots = self.slots.lock().expect("lora slots");
        if slots.is_none() {
            *slots = Some(Slots::new(ctx, cfg.num_layers)?);
        }
        f(slots.as_mut().expect("made above"))
    }

    /// How an eager forward of `batch` applies its adapters (None: no row has one): per row
    /// where `per_row` allows it and the adapters fit the slot table, else per adapter.
    pub(super) fn run(
        &self,
        ctx: &GpuContext,
        cfg: &ModelConfig,
        batch: &ForwardBatch,
        per_row: bool,
    ) -> Result<Option<Run>, CudaError> {
        let adapters = self.adapters(ctx, cfg, batch)?;
        if adapters.is_empty() {
            return Ok(None);
        }
        let n = batch.tokens.len();
        if per_row {
            if let Some(rows) = self.slot_rows(ctx, cfg, &adapters, n)? {
                return Ok(Some(Run::Seg(Seg {
                    rows: ctx.upload_i32(&[n], &rows)?,
                    table: self.table(ctx, cfg)?,
                    mid: ctx.alloc(DType::F32, &[n, MID_CAP])?,
                })));
            }
        }
        let mut groups = Vec::new();
        for (_, g, r) in adapters {
            let r: Vec<i32> = r.into_iter().map(|r| r as i32).collect();
            let n = r.len();
            let rank = g.rank();
            let qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim;
            let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
            let widest_in = h.max(cfg.num_heads * cfg.head_dim).max(i);
            let widest_out = qkv.max(2 * i).max(h);
            groups.push(Group {
                ids: ctx.upload_i32(&[n], &r)?,
                xg: ctx.alloc(DType::Bf16, &[n * widest_in])?,
                mid: ctx.alloc(DType::Bf16, &[n * rank])?,
                d: ctx.alloc(DType::Bf16, &[n * widest_out])?,
                adapter: g,
                n,
            });
        }
        Ok(Some(Run::Gemm(Plan { groups })))
    }
}

impl Run {
    /// y [T, out] += each row's adapter's B A x, for projection `p` of layer `l` (x [T, in]).
    pub(super) fn apply(
        &self,
        ops: &CudaOps,
        gemm: &Gemm,
        l: usize,
        p: Proj,
        x: &DTensor,
        y: &DTensor,
    ) -> Result<(), CudaError> {
        match self {
            Run::Seg(s) => {
                let refs = Slots::refs(&s.table, l, p as usize)?;
                // SAFETY: the entries `rows` names are those Slots::assign wrote for this
                // forward's adapters: the A [rank, in] and B^T [rank, out] of this projection of
                // adapters the slots hold alive (a slot changes hands only between forwards,
                // each of which the runner finishes before the next), the rank A's row count.
                unsafe {
                    ops.lora_shrink(x, &s.rows, &refs, &s.mid)?;
                    ops.lora_expand(&s.mid, &s.rows, &refs, y)
                }
            }
            Run::Gemm(plan) => {
                for g in &plan.groups {
                    let Some(pair) = &g.adapter.layers[l][p as usize] else {
                        continue;
                    };
                    let (n, r, din, dout) = (g.n, pair.a.shape()[0], x.shape()[1], y.shape()[1]);
                    let xg = g.xg.view(0, &[n, din])?;
                    ops.embedding(&g.ids, x, &xg)?;
                    let mid = g.mid.view(0, &[n, r])?;
                    gemm.linear(&xg, &pair.a, &mid)?;
                    let d = g.d.view(0, &[n, dout])?;
                    gemm.linear(&mid, &pair.b, &d)?;
                    ops.add_rows(&g.ids, &d, y)?;
                }
                Ok(())
            }
        }
    }
}
