//! LoRA adapters on the bf16 CUDA runner. An adapter's matrices go to the GPU on its first use,
//! stacked per fused projection of the runner: qkv takes [A_q; A_k; A_v] and a block-diagonal
//! B (its rows the q, k and v outputs), gate_up [A_gate; A_up] likewise, o and down their own;
//! ranks padded to a multiple of 8 with zero rows (the GEMMs' aligned paths). A forward with
//! adapter rows runs each projection's base GEMM unfused (no RoPE / SiLU / norm epilogues), then
//! per adapter gathers its rows of the input, x A^T, (x A^T) B^T, and adds that to its output
//! rows (`add_rows`). Such forwards run eagerly (not in a CUDA graph).
//! Cost per adapter and projection: two GEMMs of its rows by the rank, a gather and an add.

use crate::model::lora::{LoraAdapter, Target};
use crate::model::{ForwardBatch, ModelConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use strata_kernels::cuda::{CudaError, CudaOps, DTensor, Gemm, GpuContext};

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

/// A stacked pair on the GPU: a [R, in], b [out, R] (R the padded sum of the ranks).
struct Pair {
    a: DTensor,
    b: DTensor,
}

/// One adapter on the GPU: `layers[l][proj]`.
struct GpuAdapter {
    held: Weak<LoraAdapter>,
    layers: Vec<[Option<Pair>; 4]>,
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
    Ok(Some(Pair {
        a: ctx.upload_bf16(&[r, din], &ha)?,
        b: ctx.upload_bf16(&[dout, r], &hb)?,
    }))
}

/// The adapters on the GPU, by load id (an entry goes once its adapter is dropped everywhere).
#[derive(Default)]
pub(super) struct Cache {
    map: Mutex<HashMap<u64, Arc<GpuAdapter>>>,
}

/// One adapter's rows in a forward: their indices (distinct, on the GPU), how many, and
/// scratch for the gathered input, x A^T and the change (sized for the widest projection).
struct Group {
    adapter: Arc<GpuAdapter>,
    ids: DTensor,
    n: usize,
    xg: DTensor,
    mid: DTensor,
    d: DTensor,
}

/// One forward's adapters.
pub(super) struct Plan {
    groups: Vec<Group>,
}

impl Cache {
    /// The plan of `batch` (None: no row has an adapter), uploading adapters on first use.
    pub(super) fn plan(
        &self,
        ctx: &GpuContext,
        cfg: &ModelConfig,
        batch: &ForwardBatch,
    ) -> Result<Option<Plan>, CudaError> {
        let rows = crate::model::lora::rows_by_adapter(batch);
        if rows.is_empty() {
            return Ok(None);
        }
        let mut map = self.map.lock().expect("lora cache");
        map.retain(|_, g| g.held.strong_count() > 0);
        let mut groups = Vec::new();
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
            let r: Vec<i32> = r.into_iter().map(|r| r as i32).collect();
            let n = r.len();
            let rank = g
                .layers
                .iter()
                .flatten()
                .flatten()
                .map(|p| p.a.shape()[0])
                .max()
                .unwrap_or(8);
            let qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim;
            let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
            let widest_in = h.max(cfg.num_heads * cfg.head_dim).max(i);
            let widest_out = qkv.max(2 * i).max(h);
            let bf16 = strata_kernels::cuda::DType::Bf16;
            groups.push(Group {
                ids: ctx.upload_i32(&[n], &r)?,
                xg: ctx.alloc(bf16, &[n * widest_in])?,
                mid: ctx.alloc(bf16, &[n * rank])?,
                d: ctx.alloc(bf16, &[n * widest_out])?,
                adapter: g,
                n,
            });
        }
        Ok(Some(Plan { groups }))
    }
}

impl Plan {
    /// y [T, out] += each adapter's B A x on its rows, for projection `p` of layer `l` (x [T, in]).
    pub(super) fn apply(
        &self,
        ops: &CudaOps,
        gemm: &Gemm,
        l: usize,
        p: Proj,
        x: &DTensor,
        y: &DTensor,
    ) -> Result<(), CudaError> {
        for g in &self.groups {
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
