//! Rotary position embedding tables, including Llama 3 frequency scaling.
//!
//! Frequencies follow the Hugging Face reference bit for bit where it matters: `inv_freq` and the
//! angle `position * inv_freq` are computed in f32 (as `transformers` does), and only cos/sin are
//! evaluated in f64 and rounded. Table size is `max_positions × head_dim / 2` for each of cos and
//! sin; building it is O(that) and happens once at model load.

/// Frequency scaling applied to the rotary base frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (`rope_type: "linear"`).
    Linear { factor: f32 },
    /// Llama 3.1 smooth low/high frequency interpolation (`rope_type: "llama3"`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

/// Precomputed cos/sin for every position below `max_positions`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub half: usize,
    pub max_positions: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// Inverse frequencies for a rotary dimension `dim` and base `theta`, after scaling.
pub fn inv_freq(dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f32> {
    let mut f: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / dim as f32))
        .collect();
    match *scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => f.iter_mut().for_each(|x| *x /= factor),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            for x in f.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *x;
                let scaled = if wavelen > low_wavelen {
                    *x / factor
                } else {
                    *x
                };
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen; // wavelen is finite
                *x = if medium {
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                } else {
                    scaled
                };
            }
        }
    }
    f
}

impl RopeTable {
    /// Builds the table for `max_positions` positions.
    pub fn new(head_dim: usize, theta: f32, scaling: &RopeScaling, max_positions: usize) -> Self {
        let inv = inv_freq(head_dim, theta, scaling);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv {
                let angle = p as f32 * f;
                cos.push((angle as f64).cos() as f32);
                sin.push((angle as f64).sin() as f32);
            }
        }
        RopeTable {
            half,
            max_positions,
            cos,
            sin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = inv_freq(64, 500000.0, &RopeScaling::None);
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let scaled = inv_freq(64, 500000.0, &s);
        assert_eq!(plain[0], scaled[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
        for (a, b) in plain.iter().zip(&scaled) {
            assert!(b <= a && *b >= a / 8.0 * 0.999);
        }
    }

    #[test]
    fn table_at_position_zero_is_identity() {
        let t = RopeTable::new(8, 10000.0, &RopeScaling::None, 4);
        assert!(t.cos[..4].iter().all(|&c| c == 1.0));
        assert!(t.sin[..4].iter().all(|&s| s == 0.0));
    }
}
