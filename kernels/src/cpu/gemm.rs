//! Matrix products for the CPU backend: `out = x · wᵀ (+ bias)` with `w` stored row-major `n × k`
//! (the safetensors layout of a `Linear`).
//!
//! Every output element is one dot product with a fixed 32-lane accumulation order, so results do not
//! depend on the batch size or the thread count (batch invariance, see the crate docs). Work is split
//! over blocks of output columns, so each weight row is read once per call: decode (few rows) is
//! memory-bound on the weights as it should be. The AVX path is the same arithmetic on wider registers
//! (no FMA), hence bitwise-identical to the portable path.

use rayon::prelude::*;

const LANES: usize = 32;
const COL_BLOCK: usize = 16;

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0] + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// Dot product of two equal-length slices (the only reduction primitive of the CPU backend).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx() {
            // SAFETY: the CPU supports AVX (checked at run time just above).
            return unsafe { dot_avx(a, b) };
        }
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
fn has_avx() -> bool {
    use std::sync::OnceLock;
    static AVX: OnceLock<bool> = OnceLock::new();
    *AVX.get_or_init(|| std::arch::is_x86_feature_detected!("avx"))
}

/// `out[r*n + c] = dot(x[r], w[c]) + bias[c]` for `r < rows`, `c < n`.
pub fn linear(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(COL_BLOCK))
        .into_par_iter()
        .map(|b| {
            let c0 = b * COL_BLOCK;
            let c1 = (c0 + COL_BLOCK).min(n);
            let width = c1 - c0;
            let mut local = vec![0f32; rows * width];
            for c in c0..c1 {
                let wr = &w[c * k..(c + 1) * k];
                let bv = bias.map_or(0.0, |b| b[c]);
                for r in 0..rows {
                    local[r * width + (c - c0)] = dot(&x[r * k..(r + 1) * k], wr) + bv;
                }
            }
            local
        })
        .collect();
    for (b, local) in blocks.iter().enumerate() {
        let c0 = b * COL_BLOCK;
        let width = local.len() / rows.max(1);
        for r in 0..rows {
            out[r * n + c0..r * n + c0 + width].copy_from_slice(&local[r * width..(r + 1) * width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive_and_is_batch_invariant() {
        let (rows, k, n) = (5, 70, 37);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 37.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729 % 97) as f32 - 48.0) / 41.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let mut out = vec![0f32; rows * n];
        linear(&x, rows, k, &w, n, Some(&bias), &mut out);
        for r in 0..rows {
            for c in 0..n {
                let naive: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum::<f64>()
                    + bias[c] as f64;
                assert!((out[r * n + c] as f64 - naive).abs() < 1e-3, "{r},{c}");
            }
            let mut single = vec![0f32; n];
            linear(
                &x[r * k..(r + 1) * k],
                1,
                k,
                &w,
                n,
                Some(&bias),
                &mut single,
            );
            assert_eq!(
                &single[..],
                &out[r * n..(r + 1) * n],
                "row {r} differs alone vs batched"
            );
        }
    }

    #[test]
    fn avx_and_portable_dots_agree_bitwise() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        assert_eq!(dot(&a, &b).to_bits(), dot_lanes(&a, &b).to_bits());
    }
}
