//! Token sampling from one row of logits (host side; the GPU backend downloads one row per request).
//!
//! Order of operations matches SGLang's sampler: temperature, then top-k, top-p and min-p filters
//! on the probabilities, renormalise, then draw with a caller-supplied uniform number in `[0, 1)`
//! (the caller owns the RNG so that a seed reproduces a request's output). O(V log V) worst case
//! (the sort for top-p), O(V) for greedy.

/// Filters applied before drawing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: f32,
    pub min_p: f32,
}

/// Index of the largest logit (the first one on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Natural-log softmax of `logits` at index `i` (for `return_logprob`).
pub fn logprob_of(logits: &[f32], i: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (logits[i] - max) - sum.ln() as f32
}

/// Samples a token. `temperature <= 0` (or top_k == 1) is greedy; `u` is uniform in `[0, 1)`.
pub fn sample(logits: &[f32], p: &SampleParams, u: f64) -> usize {
    if p.temperature <= 0.0 || p.top_k == Some(1) {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (((v - max) / p.temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|x| x.1).sum();
    probs.iter_mut().for_each(|x| x.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = p.top_k {
        probs.truncate(k.max(1));
    }
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (n, x) in probs.iter().enumerate() {
            if cum >= p.top_p as f64 {
                keep = n;
                break;
            }
            cum += x.1;
        }
        probs.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let cut = probs[0].1 * p.min_p as f64;
        probs.retain(|x| x.1 >= cut);
    }
    let total: f64 = probs.iter().map(|x| x.1).sum();
    let mut target = u * total;
    for &(i, w) in &probs {
        if target < w {
            return i;
        }
        target -= w;
    }
    probs.last().map(|x| x.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SampleParams {
        SampleParams {
            temperature: t,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
        }
    }

    #[test]
    fn greedy_picks_first_max() {
        assert_eq!(sample(&[1.0, 3.0, 3.0, 0.0], &params(0.0), 0.9), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [0.0, 1.0, 2.0, 3.0];
        let mut p = params(1.0);
        p.top_k = Some(2);
        for i in 0..100 {
            let t = sample(&logits, &p, i as f64 / 100.0);
            assert!(t == 3 || t == 2);
        }
        let mut p = params(1.0);
        p.top_p = 0.1;
        for i in 0..100 {
            assert_eq!(sample(&logits, &p, i as f64 / 100.0), 3);
        }
        let mut p = params(1.0);
        p.min_p = 0.5;
        for i in 0..100 {
            let t = sample(&logits, &p, i as f64 / 100.0);
            assert!(t == 3 || t == 2, "min_p kept {t}");
        }
    }

    #[test]
    fn logprob_is_normalised() {
        let l = [0.5f32, -1.0, 2.0];
        let s: f32 = (0..3).map(|i| logprob_of(&l, i).exp()).sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
}
