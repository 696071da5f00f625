//! The sampling parameter combinations that the GPU sampler is held to the host sampler on:
//! greedy with penalties and a banned token, temperature, top-k, top-p, min-p, all of them with
//! repetition / frequency / presence penalties and logit bias, logprobs (top-N and chosen ids) and
//! a scored prompt row. One list for the CI's emulated-kernel test
//! (server/tests/gpu_sampling_emulated.rs) and `strata gpu check` on real hardware.

use crate::logprobs::LogprobSpec;
use crate::sampling::{SamplingParams, SamplingParamsWire};

fn params(json: &str) -> SamplingParams {
    serde_json::from_str::<SamplingParamsWire>(json)
        .expect("sampling presets parse")
        .validate()
        .expect("sampling presets are valid")
}

/// One combination: parameters, whether the row bans a token, logprobs asked, a scored row.
pub struct Case {
    pub name: &'static str,
    pub params: SamplingParams,
    pub ban: bool,
    pub logprobs: Option<LogprobSpec>,
    pub score: bool,
}

pub fn cases() -> Vec<Case> {
    let lp = |top_n: usize, ids: Option<Vec<u32>>| {
        Some(LogprobSpec {
            start: 0,
            top_n,
            token_ids: ids,
        })
    };
    let c = |name, json: &str, ban, logprobs, score| Case {
        name,
        params: params(json),
        ban,
        logprobs,
        score,
    };
    vec![
        c("greedy", r#"{"temperature": 0}"#, false, None, false),
        c(
            "greedy+pen+ban",
            r#"{"temperature": 0, "frequency_penalty": 0.5, "repetition_penalty": 1.3}"#,
            true,
            None,
            false,
        ),
        c("temp0.7", r#"{"temperature": 0.7}"#, false, None, false),
        c("topk50", r#"{"top_k": 50}"#, false, None, false),
        c("topp0.9", r#"{"top_p": 0.9}"#, false, None, false),
        c("minp0.05", r#"{"min_p": 0.05}"#, false, None, false),
        c(
            "all+pen+bias+ban",
            r#"{"temperature": 0.7, "top_p": 0.9, "top_k": 50, "min_p": 0.05, "frequency_penalty": 0.3, "presence_penalty": 0.2, "repetition_penalty": 1.1, "logit_bias": {"17": 2.5, "5": -1.0}}"#,
            true,
            None,
            false,
        ),
        c(
            "temp1.3+lp",
            r#"{"temperature": 1.3, "presence_penalty": -0.5}"#,
            true,
            lp(5, Some(vec![0, 17, 4_000_000])),
            false,
        ),
        c(
            "topk1+lp",
            r#"{"temperature": 0.5, "top_k": 1}"#,
            false,
            lp(3, None),
            false,
        ),
        c(
            "greedy+lp20",
            r#"{"temperature": 0}"#,
            false,
            lp(20, Some(vec![1])),
            false,
        ),
        c(
            "temp0.9+lp32",
            r#"{"temperature": 0.9}"#,
            false,
            lp(32, None),
            false,
        ),
        // The emulated test puts 16 of this row's top 32 in one thread's share of the row (the
        // kernel then cannot trust its per-thread candidates and selects by radix).
        c(
            "greedy+lp32-crowded",
            r#"{"temperature": 0}"#,
            false,
            lp(32, None),
            false,
        ),
        c(
            "score+lp",
            r#"{"temperature": 0.7}"#,
            false,
            lp(8, None),
            true,
        ),
        c(
            "topp0.3+topk200",
            r#"{"top_p": 0.3, "top_k": 200, "temperature": 1.5}"#,
            false,
            None,
            false,
        ),
    ]
}
