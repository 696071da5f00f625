//! Causal attention over a paged KV cache (prefill with a cached prefix, chunked prefill and decode
//! are the same code: a query row at position `p` attends to positions `0..=p`).
//!
//! Two-pass softmax per (row, head) with keys visited in position order, so the result for a row does
//! not depend on how the sequence was chunked or batched. O(rows × heads × kv_len × head_dim) time;
//! parallel over query rows; scratch of `kv_len` floats per task.

use super::gemm::dot;
use crate::backend::{AttnSeq, AttnShape};
use rayon::prelude::*;

pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    seqs: &[AttnSeq<'_>],
    s: AttnShape,
    out: &mut [f32],
) {
    let row_len = s.heads * s.head_dim;
    let kv_dim = s.kv_heads * s.head_dim;
    let group = s.heads / s.kv_heads;
    let mut work: Vec<(usize, &AttnSeq<'_>, usize)> = Vec::new();
    for seq in seqs {
        for i in 0..seq.q_len {
            work.push((seq.q_start + i, seq, seq.kv_len - seq.q_len + i));
        }
    }
    let rows: Vec<(usize, Vec<f32>)> = work
        .par_iter()
        .map(|&(row, seq, pos)| {
            let mut res = vec![0f32; row_len];
            let mut scores = vec![0f32; pos + 1];
            let slot =
                |j: usize| seq.pages[j / s.page_size] as usize * s.page_size + j % s.page_size;
            for h in 0..s.heads {
                let kvh = h / group;
                let qh = &q[row * row_len + h * s.head_dim..row * row_len + (h + 1) * s.head_dim];
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    let off = slot(j) * kv_dim + kvh * s.head_dim;
                    *sc = dot(qh, &k_cache[off..off + s.head_dim]) * s.scale;
                    max = max.max(*sc);
                }
                let mut sum = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let oh = &mut res[h * s.head_dim..(h + 1) * s.head_dim];
                for (j, &p) in scores.iter().enumerate() {
                    let off = slot(j) * kv_dim + kvh * s.head_dim;
                    let p = p / sum;
                    for (o, v) in oh.iter_mut().zip(&v_cache[off..off + s.head_dim]) {
                        *o += p * v;
                    }
                }
            }
            (row, res)
        })
        .collect();
    for (row, res) in rows {
        out[row * row_len..(row + 1) * row_len].copy_from_slice(&res);
    }
}
