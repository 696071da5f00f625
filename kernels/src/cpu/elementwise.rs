//! Row-wise and elementwise ops of the CPU backend: RMSNorm, RoPE, SiLU·mul, residual add.
//!
//! RMSNorm reduces with the same fixed-order [`dot`] as the matmuls (batch invariant). All O(n).

use super::gemm::dot;
use crate::rope::RopeTable;
use rayon::prelude::*;

pub fn rms_norm(x: &[f32], weight: &[f32], rows: usize, dim: usize, eps: f32, out: &mut [f32]) {
    out[..rows * dim]
        .par_chunks_mut(dim)
        .zip(x[..rows * dim].par_chunks(dim))
        .for_each(|(o, xr)| {
            let var = dot(xr, xr) / dim as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((o, &v), &w) in o.iter_mut().zip(xr).zip(weight) {
                *o = w * (v * inv);
            }
        });
}

pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, positions: &[u32], t: &RopeTable) {
    let half = head_dim / 2;
    let row_len = heads * head_dim;
    x[..positions.len() * row_len]
        .par_chunks_mut(row_len)
        .zip(positions.par_iter())
        .for_each(|(row, &p)| {
            let cos = &t.cos[p as usize * t.half..p as usize * t.half + half];
            let sin = &t.sin[p as usize * t.half..p as usize * t.half + half];
            for h in row.chunks_mut(head_dim) {
                let (a, b) = h.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * cos[i] - x2 * sin[i];
                    b[i] = x2 * cos[i] + x1 * sin[i];
                }
            }
        });
}

pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
