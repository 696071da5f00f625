//! Row-wise reference ops: embedding, RMSNorm (+ residual), RoPE with llama3 scaling, SiLU*mul,
//! Linear, plus the bf16 rounding and the error metric the checks use.

/// Rounds every value to the nearest bf16 (ties to even), as the GPU stores them.
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// ||a - b|| / ||b|| (0 when both are zero); NaN anywhere gives infinity.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// out[t] = table[ids[t]] (zero row for an out-of-range id); table [vocab, hidden].
pub fn embedding(ids: &[i32], table: &[f32], hidden: usize) -> Vec<f32> {
    let vocab = table.len() / hidden;
    let mut out = vec![0.0; ids.len() * hidden];
    for (t, &id) in ids.iter().enumerate() {
        if id >= 0 && (id as usize) < vocab {
            let r = id as usize * hidden;
            out[t * hidden..(t + 1) * hidden].copy_from_slice(&table[r..r + hidden]);
        }
    }
    out
}

/// RMSNorm rows of x [T, H] by w [H]. With `residual`, the residual becomes bf16(x + residual)
/// and the norm is taken of it. Returns the normalised rows (unrounded).
pub fn rmsnorm(x: &[f32], residual: Option<&mut [f32]>, w: &[f32], eps: f32) -> Vec<f32> {
    let h = w.len();
    let src: Vec<f32> = match residual {
        Some(r) => {
            for (ri, &xi) in r.iter_mut().zip(x) {
                *ri = half::bf16::from_f32(xi + *ri).to_f32();
            }
            r.to_vec()
        }
        None => x.to_vec(),
    };
    let mut out = vec![0.0; src.len()];
    for (row, o) in src.chunks(h).zip(out.chunks_mut(h)) {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let r = 1.0 / (ss / h as f64 + eps as f64).sqrt();
        for ((oi, &v), &wi) in o.iter_mut().zip(row).zip(w) {
            *oi = (v as f64 * r * wi as f64) as f32;
        }
    }
    out
}

/// Llama 3 RoPE frequency scaling (the `rope_scaling` block of its config).
#[derive(Clone, Copy, Debug)]
pub struct Llama3Scaling {
    /// Overall factor (8 for Llama 3.1).
    pub factor: f32,
    /// Low-frequency factor.
    pub low_freq_factor: f32,
    /// High-frequency factor.
    pub high_freq_factor: f32,
    /// Context length the base model was trained on.
    pub original_max_position: f32,
}

impl Default for Llama3Scaling {
    fn default() -> Self {
        Self {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192.0,
        }
    }
}

/// Inverse frequencies [head_dim / 2]: theta^(-2i/d), then llama3 scaling when given.
pub fn rope_inv_freq(head_dim: usize, theta: f32, scaling: Option<Llama3Scaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
            let Some(s) = scaling else { return f as f32 };
            let low_wavelen = s.original_max_position as f64 / s.low_freq_factor as f64;
            let high_wavelen = s.original_max_position as f64 / s.high_freq_factor as f64;
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let scaled = if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / s.factor as f64
            } else {
                let smooth = (s.original_max_position as f64 / wavelen - s.low_freq_factor as f64)
                    / (s.high_freq_factor - s.low_freq_factor) as f64;
                (1.0 - smooth) * f / s.factor as f64 + smooth * f
            };
            scaled as f32
        })
        .collect()
}

/// Rotate-half RoPE in place on `heads` heads of `head_dim` starting at column `col` of each row
/// of x [T, width].
pub fn rope(
    x: &mut [f32],
    width: usize,
    col: usize,
    heads: usize,
    head_dim: usize,
    pos: &[i32],
    inv_freq: &[f32],
) {
    let half = head_dim / 2;
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let b = t * width + col + h * head_dim;
            for i in 0..half {
                let a = (p as f32 * inv_freq[i]) as f64;
                let (s, c) = a.sin_cos();
                let (x1, x2) = (x[b + i] as f64, x[b + i + half] as f64);
                x[b + i] = (x1 * c - x2 * s) as f32;
                x[b + i + half] = (x2 * c + x1 * s) as f32;
            }
        }
    }
}

/// out [T, I] = silu(gu[:, :I]) * gu[:, I:].
pub fn silu_mul(gu: &[f32], inter: usize) -> Vec<f32> {
    gu.chunks(2 * inter)
        .flat_map(|row| {
            (0..inter).map(move |i| {
                let g = row[i] as f64;
                (g / (1.0 + (-g).exp()) * row[inter + i] as f64) as f32
            })
        })
        .collect()
}

/// y [T, out] = x [T, in] * w[out, in]^T, accumulated in f64.
pub fn linear(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    x.chunks(k)
        .flat_map(|row| {
            w.chunks(k).map(move |wr| {
                row.iter()
                    .zip(wr)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>() as f32
            })
        })
        .collect()
}
