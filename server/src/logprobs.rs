//! Log-probabilities (SGLang's `return_logprob` family): what a request asks for, and the values
//! at one position computed from its logits row. One log-softmax (its sum in f64) serves the
//! chosen token, the `top_n` most likely tokens and any requested token ids; ties in the top list
//! go to the smaller token id, so the output is deterministic. Every runner reports through
//! [`at_position`], so the numbers mean the same on CPU and GPU.

/// Which log-probabilities a request wants (SGLang's `return_logprob` family).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogprobSpec {
    /// First prompt position reported as an input position (the prompt length reports none).
    /// Position `start` itself has no log-probability (SGLang reports `null` there); position
    /// `k > start` gets the log-probability of prompt token `k` given the tokens before it.
    pub start: usize,
    /// How many of the most likely tokens to report per position (0: none).
    pub top_n: usize,
    /// Tokens whose log-probabilities are reported at every position (`None`: not asked).
    pub token_ids: Option<Vec<u32>>,
}

/// Log-probabilities at one position of a sequence, all from one log-softmax of its logits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PosLogprobs {
    /// Of the token at this position (`None` for the first reported prompt position).
    pub logprob: Option<f32>,
    /// The `top_n` most likely tokens, most likely first (empty for the first prompt position).
    pub top: Vec<(u32, f32)>,
    /// The requested `token_ids`, in request order.
    pub ids: Vec<(u32, f32)>,
}

/// `ln(sum(exp(logits)))`, computed around the maximum.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The log-probabilities `spec` asks for at a position whose logits are `logits`; `token` is the
/// token that follows the position (the sampled one, or the next prompt token).
pub fn at_position(logits: &[f32], token: u32, spec: &LogprobSpec) -> PosLogprobs {
    let lse = log_sum_exp(logits);
    let lp = |t: u32| {
        logits
            .get(t as usize)
            .map_or(f32::NEG_INFINITY, |&v| v - lse)
    };
    let top = if spec.top_n == 0 {
        Vec::new()
    } else {
        let n = spec.top_n.min(logits.len());
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let cmp = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if n < idx.len() {
            idx.select_nth_unstable_by(n - 1, cmp);
            idx.truncate(n);
        }
        idx.sort_unstable_by(cmp);
        idx.into_iter().map(|t| (t, lp(t))).collect()
    };
    let ids = spec
        .token_ids
        .iter()
        .flatten()
        .map(|&t| (t, lp(t)))
        .collect();
    PosLogprobs {
        logprob: Some(lp(token)),
        top,
        ids,
    }
}

/// [`at_position`]'s values from what the GPU sampler returns for a row (its log-sum-exp, the
/// logit of the row's token, the logits of `token_ids` in order and the top logits already ordered):
/// every log-probability is `logit - lse`, computed in f32 as on the host.
pub fn from_gpu(
    token_ids: Option<&[u32]>,
    row: &strata_kernels::sample_rows::RowLogprobs,
) -> PosLogprobs {
    let lse = row.lse;
    PosLogprobs {
        logprob: Some(row.chosen - lse),
        top: row.top.iter().map(|&(t, l)| (t, l - lse)).collect(),
        ids: token_ids
            .into_iter()
            .flatten()
            .zip(&row.ids)
            .map(|(&t, &l)| (t, l - lse))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_log_softmax_and_orders_top() {
        let logits = [1.0f32, 3.0, 3.0, -2.0, 0.5];
        let spec = LogprobSpec {
            start: 0,
            top_n: 3,
            token_ids: Some(vec![3, 0, 99]),
        };
        let p = at_position(&logits, 4, &spec);
        let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        let want = |t: usize| (logits[t] as f64 - z.ln()) as f32;
        assert!((p.logprob.unwrap() - want(4)).abs() < 1e-6);
        let top: Vec<u32> = p.top.iter().map(|x| x.0).collect();
        assert_eq!(top, vec![1, 2, 0], "ties broken by the smaller id");
        assert!((p.top[0].1 - want(1)).abs() < 1e-6);
        assert_eq!(p.ids[0].0, 3);
        assert!((p.ids[1].1 - want(0)).abs() < 1e-6);
        assert_eq!(p.ids[2], (99, f32::NEG_INFINITY), "out of vocabulary");
        let total: f64 = logits
            .iter()
            .enumerate()
            .map(|(t, _)| (at_position(&logits, t as u32, &spec).logprob.unwrap() as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn gpu_parts_give_the_host_values() {
        let logits = [1.0f32, 3.0, 3.0, -2.0, 0.5];
        let spec = LogprobSpec {
            start: 0,
            top_n: 2,
            token_ids: Some(vec![4, 99]),
        };
        let want = at_position(&logits, 0, &spec);
        let row = strata_kernels::sample_rows::RowLogprobs {
            lse: log_sum_exp(&logits),
            chosen: logits[0],
            ids: vec![logits[4], f32::NEG_INFINITY],
            top: vec![(1, 3.0), (2, 3.0)],
        };
        assert_eq!(from_gpu(spec.token_ids.as_deref(), &row), want);
    }

    #[test]
    fn top_n_larger_than_vocab_lists_everything() {
        let spec = LogprobSpec {
            start: 0,
            top_n: 10,
            token_ids: None,
        };
        let p = at_position(&[0.0, 1.0], 0, &spec);
        assert_eq!(p.top.len(), 2);
        assert_eq!(p.top[0].0, 1);
        assert!(p.ids.is_empty());
    }
}
