//! Reference sampling with the GPU kernel's exact semantics (see kernels/cuda/sampling.cu):
//! kept set {p >= tau}, tau = max(k-th largest p, top-p cut-off, min_p * p_max); the token is the
//! first index whose running kept mass exceeds uniform * kept mass. Probabilities in f64.

/// Softmax(logits / temperature) in f64.
fn probs(logits: &[f32], temperature: f32) -> Vec<f64> {
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - mx) / temperature as f64).exp())
        .collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Indices kept by top-k / top-p / min-p at `temperature` (all of them with no filter).
pub fn kept_set(
    logits: &[f32],
    temperature: f32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
) -> Vec<usize> {
    let p = probs(logits, temperature);
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    let pmax = sorted[0];
    let mut tau = if min_p > 0.0 {
        min_p as f64 * pmax
    } else {
        0.0
    };
    if top_k > 0 && (top_k as usize) < p.len() {
        tau = tau.max(sorted[top_k as usize - 1]);
    }
    if top_p < 1.0 {
        let mut cum = 0.0;
        for &v in &sorted {
            cum += v;
            if cum >= top_p as f64 {
                tau = tau.max(v);
                break;
            }
        }
    }
    (0..p.len()).filter(|&i| p[i] >= tau).collect()
}

/// One token from logits with the given parameters; temperature <= 0 is greedy (lowest index
/// among equal maxima).
pub fn sample(
    logits: &[f32],
    temperature: f32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
    u: f32,
) -> usize {
    if temperature <= 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return best;
    }
    let p = probs(logits, temperature);
    let kept = kept_set(logits, temperature, top_k, top_p, min_p);
    let mass: f64 = kept.iter().map(|&i| p[i]).sum();
    let target = u as f64 * mass;
    let mut cum = 0.0;
    for &i in &kept {
        cum += p[i];
        if cum > target {
            return i;
        }
    }
    *kept.last().unwrap_or(&0)
}
