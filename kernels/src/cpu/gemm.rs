//! Matrix products for the CPU backend: `out = x · wᵀ (+ bias)` with `w` stored row-major `n × k`
//! (the safetensors layout of a `Linear`).
//!
//! Every output element is one dot product with a fixed 8-lane accumulation order (computed in
//! 4×4 register tiles when rows allow, with exactly the same per-element arithmetic), so results do not
//! depend on the batch size or the thread count (batch invariance, see the crate docs). Work is split
//! over blocks of output columns, so each weight row is read once per call: decode (few rows) is
//! memory-bound on the weights as it should be. The AVX path is the same arithmetic on wider registers
//! (no FMA), hence bitwise-identical to the portable path.

use rayon::prelude::*;

const LANES: usize = 8;
const COL_BLOCK: usize = 16;
const TILE: usize = 4;

/// The one reduction of every dot product: lanes pairwise in a fixed tree, then the tail.
#[inline(always)]
fn reduce(acc: [f32; LANES], tail: f32) -> f32 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

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
    reduce(acc, tail)
}

/// A TILE×TILE block of dot products; each output uses exactly the arithmetic of
/// [`dot_lanes`], so tiled and untiled results are bitwise equal (batch invariance).
#[inline(always)]
fn tile_lanes(x: [&[f32]; TILE], w: [&[f32]; TILE]) -> [[f32; TILE]; TILE] {
    let k = x[0].len();
    let full = k / LANES * LANES;
    let mut acc = [[[0f32; LANES]; TILE]; TILE];
    let mut o = 0;
    while o < full {
        let xs: [[f32; LANES]; TILE] =
            std::array::from_fn(|i| x[i][o..o + LANES].try_into().expect("lanes"));
        let ws: [[f32; LANES]; TILE] =
            std::array::from_fn(|j| w[j][o..o + LANES].try_into().expect("lanes"));
        for i in 0..TILE {
            for j in 0..TILE {
                for l in 0..LANES {
                    acc[i][j][l] += xs[i][l] * ws[j][l];
                }
            }
        }
        o += LANES;
    }
    let mut out = [[0f32; TILE]; TILE];
    for i in 0..TILE {
        for j in 0..TILE {
            let mut tail = 0f32;
            for p in full..k {
                tail += x[i][p] * w[j][p];
            }
            out[i][j] = reduce(acc[i][j], tail);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile_avx(x: [&[f32]; TILE], w: [&[f32]; TILE]) -> [[f32; TILE]; TILE] {
    tile_lanes(x, w)
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

#[inline]
fn tile(x: [&[f32]; TILE], w: [&[f32]; TILE]) -> [[f32; TILE]; TILE] {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx() {
            // SAFETY: the CPU supports AVX (checked at run time just above).
            return unsafe { tile_avx(x, w) };
        }
    }
    tile_lanes(x, w)
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
    let xr = |r: usize| &x[r * k..(r + 1) * k];
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(COL_BLOCK))
        .into_par_iter()
        .map(|b| {
            let c0 = b * COL_BLOCK;
            let c1 = (c0 + COL_BLOCK).min(n);
            let width = c1 - c0;
            let wr = |c: usize| &w[c * k..(c + 1) * k];
            let mut local = vec![0f32; rows * width];
            let (rt, ct) = (rows / TILE * TILE, c0 + width / TILE * TILE);
            for r in (0..rt).step_by(TILE) {
                for c in (c0..ct).step_by(TILE) {
                    let t = tile(
                        std::array::from_fn(|i| xr(r + i)),
                        std::array::from_fn(|j| wr(c + j)),
                    );
                    for (i, row) in t.iter().enumerate() {
                        for (j, v) in row.iter().enumerate() {
                            local[(r + i) * width + (c + j - c0)] = *v;
                        }
                    }
                }
                for c in ct..c1 {
                    for i in 0..TILE {
                        local[(r + i) * width + (c - c0)] = dot(xr(r + i), wr(c));
                    }
                }
            }
            for r in rt..rows {
                for c in c0..c1 {
                    local[r * width + (c - c0)] = dot(xr(r), wr(c));
                }
            }
            if let Some(bias) = bias {
                for r in 0..rows {
                    for c in c0..c1 {
                        local[r * width + (c - c0)] += bias[c];
                    }
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
        let (rows, k, n) = (9, 70, 37);
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
    #[ignore = "timing, run by hand"]
    fn gflops() {
        let (rows, k, n) = (
            std::env::var("R")
                .map(|v| v.parse().unwrap())
                .unwrap_or(128),
            384,
            1024,
        );
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut out = vec![0f32; rows * n];
        for _ in 0..3 {
            linear(&x, rows, k, &w, n, None, &mut out);
        }
        // CPU time of this process (the machine may be shared): utime + stime in clock ticks.
        let cpu = || -> f64 {
            let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let f: Vec<&str> = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
        };
        let (t, c) = (std::time::Instant::now(), cpu());
        let iters = 40;
        for _ in 0..iters {
            linear(&x, rows, k, &w, n, None, &mut out);
        }
        let (s, cs) = (t.elapsed().as_secs_f64(), cpu() - c);
        let flops = 2.0 * (rows * k * n * iters) as f64;
        eprintln!(
            "GFLOPS wall {:.1}, per CPU-second {:.1}",
            flops / s / 1e9,
            flops / cs / 1e9
        );
    }

    #[test]
    fn avx_and_portable_dots_agree_bitwise() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        assert_eq!(dot(&a, &b).to_bits(), dot_lanes(&a, &b).to_bits());
    }
}
