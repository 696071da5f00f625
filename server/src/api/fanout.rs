//! Parallel sampling (`n > 1`), SGLang's shapes: each prompt is submitted `n` times, prompt-major
//! (prompt `i`'s copies answer at `i * n .. i * n + n`, as SGLang's tokenizer manager sends them),
//! each copy a request of its own with a fresh id. A seeded request gives copy `c` the seed
//! [`copy_seed`]`(seed, c)`: copy 0 answers what `n = 1` answers, the others differ and stay
//! reproducible. With the radix cache on, each prompt is first run once with `max_new_tokens: 0`
//! (SGLang's prefix warm-up), so that the copies find the prompt's full pages cached.
//!
//! On a PD leg each copy is a PD request of its own: copy `c` takes the room
//! [`Bootstrap::for_sample`] derives from the request's room, the same on both legs (the
//! router sends both the one body), so the prefill leg sends each copy's KV and the decode leg
//! fetches each into a sequence of its own. No warm-up there (the decode leg computes no
//! prompt; the prefill leg's copies arrive together and share the prompt's unfinished pages).
//!
//! Usage counts the prompt (and its cached tokens) once per prompt, the first choice's, and the
//! completion tokens of every choice, as SGLang's usage processor does.

use super::driver::Driver;
use super::error::ApiError;
use super::AppState;
use crate::pd::Bootstrap;
use crate::sampling::{copy_seed, SamplingParams};
use crate::scheduler::request::LogprobSpec;

/// One prompt as the endpoint resolved it, before it is copied.
pub struct Submission {
    pub ids: Vec<u32>,
    pub params: SamplingParams,
    pub logprobs: Option<LogprobSpec>,
    pub rid: Option<String>,
    pub bootstrap: Option<Bootstrap>,
}

/// `(prompt, copy)` of every answer position, prompt-major.
pub fn expand(prompts: usize, n: usize) -> Vec<(usize, usize)> {
    (0..prompts)
        .flat_map(|p| (0..n).map(move |c| (p, c)))
        .collect()
}

/// The parameters of copy `c`: a seeded request's copies get their own seeds.
pub fn copy_params(p: &SamplingParams, c: usize) -> SamplingParams {
    let mut q = p.clone();
    q.seed = p.seed.map(|s| copy_seed(s, c));
    q
}

/// The `n` every parameter set asks for: one value for the whole request, as SGLang requires.
pub fn common_n(params: &[SamplingParams]) -> Result<usize, ApiError> {
    let n = params.first().map_or(1, |p| p.n);
    if params.iter().any(|p| p.n != n) {
        return Err(ApiError::bad_request(
            "The parallel_sample_num should be the same for all samples in sample params.",
        ));
    }
    Ok(n)
}

/// Submits every prompt `n` times (prompt-major); `n = 1` submits each prompt as it is. Copies
/// of `n > 1` take fresh ids (SGLang regenerates them) and, on a PD leg, rooms of their own.
pub async fn submit(
    st: &AppState,
    mut subs: Vec<Submission>,
    n: usize,
) -> Result<Vec<Driver>, ApiError> {
    if n == 1 {
        return subs
            .into_iter()
            .map(|s| Driver::submit_pd(st, s.ids, s.params, s.logprobs, s.rid, s.bootstrap))
            .collect();
    }
    let pd = subs.iter().any(|s| s.bootstrap.is_some());
    if st.scheduler.replicas() > 1 {
        // A prompt's warm-up and its copies run on one replica (they share its cache).
        for s in &mut subs {
            s.params.dp_rank = s.params.dp_rank.or_else(|| Some(st.scheduler.pick(None)));
        }
    }
    if st.radix_cache && !pd {
        warm_prefixes(st, &subs).await?;
    }
    let mut drivers = Vec::with_capacity(subs.len() * n);
    for (p, c) in expand(subs.len(), n) {
        let s = &subs[p];
        let params = copy_params(&s.params, c);
        drivers.push(Driver::submit_pd(
            st,
            s.ids.clone(),
            params,
            s.logprobs.clone(),
            None,
            s.bootstrap.as_ref().map(|b| b.for_sample(c)),
        )?);
    }
    Ok(drivers)
}

/// SGLang's `routed_dp_rank` (else the older `data_parallel_rank`): the data-parallel replica a
/// request must run on; a rank the server does not have is a 400.
pub fn dp_rank(
    st: &AppState,
    routed: Option<i64>,
    legacy: Option<i64>,
) -> Result<Option<usize>, ApiError> {
    let Some(r) = routed.or(legacy) else {
        return Ok(None);
    };
    let n = st.scheduler.replicas();
    usize::try_from(r)
        .ok()
        .filter(|&r| r < n)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "routed_dp_rank {r} is out of range: the server has {n} data-parallel replica(s) (--dp-size)."
            ))
        })
}

/// The replica of a session's requests (several replicas): one per session id, so that each
/// request finds the session's earlier turns in that replica's prefix cache.
pub fn session_rank(st: &AppState, session: &str) -> Option<usize> {
    let n = st.scheduler.replicas();
    // FNV-1a: stable across processes and versions.
    let h = session.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (n > 1).then(|| (h % n as u64) as usize)
}

/// Runs each prompt once without generating, so that its full pages are in the radix cache when
/// the copies arrive (they would otherwise all prefill it side by side).
async fn warm_prefixes(st: &AppState, subs: &[Submission]) -> Result<(), ApiError> {
    let mut warm = Vec::with_capacity(subs.len());
    for s in subs {
        // Greedy: under --random-seed it draws no seed, so it shifts no sampled request's.
        let mut params = SamplingParams {
            max_new_tokens: 0,
            min_new_tokens: 0,
            ..s.params.clone()
        };
        params.sample.temperature = 0.0;
        warm.push(Driver::submit(st, s.ids.clone(), params, None, None)?);
    }
    for mut d in warm {
        d.run_to_end().await;
        if let Some(e) = d.refused() {
            return Err(e);
        }
    }
    Ok(())
}

/// Token counts of one choice: prompt, completion, cached.
pub type Counts = (usize, usize, usize);

/// Usage over choices in answer order, `n` per prompt: prompt and cached tokens of each prompt's
/// first choice, completion tokens of all.
pub fn usage_totals(choices: &[Counts], n: usize) -> Counts {
    let n = n.max(1);
    choices
        .iter()
        .enumerate()
        .fold((0, 0, 0), |(p, c, k), (i, &(pi, ci, ki))| {
            let first = i % n == 0;
            (
                p + if first { pi } else { 0 },
                c + ci,
                k + if first { ki } else { 0 },
            )
        })
}

/// One choice's counts.
pub fn counts(d: &Driver) -> Counts {
    let cached = d.out.finish.as_ref().map_or(0, |f| f.cached_tokens);
    (d.prompt_tokens, d.out.ids.len(), cached)
}

/// OpenAI's `usage` object for totals.
pub fn usage_json((p, c, cached): Counts) -> serde_json::Value {
    serde_json::json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": cached}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_prompt_major() {
        assert_eq!(expand(2, 2), [(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(expand(3, 1), [(0, 0), (1, 0), (2, 0)]);
        assert_eq!(expand(1, 3), [(0, 0), (0, 1), (0, 2)]);
        // Choice index i answers prompt i / n.
        for (i, (p, _)) in expand(3, 4).into_iter().enumerate() {
            assert_eq!(p, i / 4);
        }
    }

    #[test]
    fn seeded_copies_get_derived_seeds_and_unseeded_stay_unseeded() {
        let p = SamplingParams {
            seed: Some(42),
            n: 3,
            ..SamplingParams::default()
        };
        let seeds: Vec<_> = (0..3).map(|c| copy_params(&p, c).seed.unwrap()).collect();
        assert_eq!(seeds[0], 42);
        assert!(seeds[1] != 42 && seeds[2] != 42 && seeds[1] != seeds[2]);
        assert_eq!(copy_params(&p, 2), copy_params(&p, 2));
        assert_eq!(copy_params(&SamplingParams::default(), 5).seed, None);
    }

    #[test]
    fn one_n_per_request() {
        let with = |n| SamplingParams {
            n,
            ..SamplingParams::default()
        };
        assert_eq!(common_n(&[with(2), with(2)]).unwrap(), 2);
        assert_eq!(common_n(&[]).unwrap(), 1);
        assert!(common_n(&[with(2), with(1)]).is_err());
    }

    #[test]
    fn usage_counts_each_prompt_once_and_every_completion() {
        // Two prompts (5 and 7 tokens, 4 and 0 cached) x n = 2.
        let c = [(5, 3, 4), (5, 2, 4), (7, 1, 0), (7, 6, 0)];
        assert_eq!(usage_totals(&c, 2), (12, 12, 4));
        assert_eq!(usage_totals(&c, 1), (24, 12, 8));
        let u = usage_json((12, 12, 4));
        assert_eq!(u["total_tokens"], 24);
        assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 4);
    }
}
