//! Sampling parameters (SGLang's `sampling_params` object), their validation, logit penalties and
//! the per-request random stream.
//!
//! Penalties follow SGLang: frequency and presence penalties subtract `f · count` and `p · [count>0]`
//! over the tokens generated so far; the repetition penalty divides positive logits and multiplies
//! negative ones for tokens already generated. The random number for step `i` is a pure function of
//! (seed, i), so a seeded request reproduces its output even after a retraction.

use crate::grammar::Constraint;
use crate::seeded::SplitMix64;
use serde::Deserialize;
use std::collections::HashMap;
use strata_kernels::sampling::SampleParams;

/// `stop` as a string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

/// SGLang's sampling parameters as accepted on the wire: every field of SGLang's `SamplingParams`
/// is accepted (null means absent); unknown fields are rejected, as SGLang's `SamplingParams(**d)`
/// does. Constrained decoding takes `regex`, `json_schema` or `ebnf` (a string each, `grammar/`;
/// EBNF unrolled to a bounded depth, `structural_tag` in SGLang's structures-and-triggers form);
/// `stop_regex` ends the output at a regex match;
/// `custom_params` does not change the output here and is ignored. `stream_interval` overrides
/// the server's `--stream-interval` for this request (0 or null: the server's, as SGLang).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParamsWire {
    pub max_new_tokens: Option<i64>,
    pub min_new_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<StringOrList>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub spaces_between_special_tokens: Option<bool>,
    pub no_stop_trim: Option<bool>,
    #[serde(alias = "sampling_seed")]
    pub seed: Option<u64>,
    /// Parallel samples of each prompt (the API fans a request out, `api/fanout.rs`).
    pub n: Option<i64>,
    /// Token id (as a string key, OpenAI's shape) -> value added to its logit.
    pub logit_bias: Option<HashMap<String, f32>>,
    pub regex: Option<serde_json::Value>,
    pub json_schema: Option<serde_json::Value>,
    pub ebnf: Option<serde_json::Value>,
    pub structural_tag: Option<serde_json::Value>,
    pub stop_regex: Option<serde_json::Value>,
    pub stream_interval: Option<i64>,
    pub custom_params: Option<serde_json::Value>,
}

/// Validated sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub sample: SampleParams,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub repetition_penalty: f32,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub skip_special_tokens: bool,
    pub no_stop_trim: bool,
    pub seed: Option<u64>,
    /// Parallel samples asked for (at least 1); the API submits that many copies.
    pub n: usize,
    /// (token id, added to its logit), sorted by id, one entry per id.
    pub logit_bias: Vec<(u32, f32)>,
    /// Streamed output tokens per chunk for this request (`None`: the server's
    /// `--stream-interval`).
    pub stream_interval: Option<usize>,
    /// `regex` / `json_schema`: what the output must match (compiled by the API layer into
    /// `grammar`, which the scheduler follows).
    pub constraint: Option<Constraint>,
    /// The compiled `constraint`.
    pub grammar: Option<GrammarRef>,
    /// `stop_regex`: the output finishes once its text contains a match of one of these
    /// (compiled by the API layer into `stop_regex_compiled`).
    pub stop_regex: Vec<String>,
    /// The compiled `stop_regex`.
    pub stop_regex_compiled: Option<StopRegexRef>,
    /// The reply reasons first (a chat under `--reasoning-parser` whose reasoning is on): the
    /// grammar starts after these tokens, the reasoning end marker (`</think>`), as SGLang's
    /// reasoner grammar backend defers it; before them the output is free.
    pub think_end: Option<std::sync::Arc<[u32]>>,
    /// The request's `priority` (a field of the request beside its sampling parameters, set by
    /// the API layer): its rank under `--enable-priority-scheduling` (`scheduler/policy.rs`).
    pub priority: Option<i64>,
    /// `return_hidden_states` (a field of the request, set by the API layer): every position's
    /// final hidden state is reported (`Event::Hidden`).
    pub return_hidden_states: bool,
    /// The request's LoRA adapter (`lora_path`, resolved by the API layer): its rows run with
    /// it, and its KV is cached in the adapter's namespace (`cache/ns.rs`).
    pub lora: Option<LoraRef>,
    /// SGLang's `extra_key` (on the OpenAI routes `cache_salt` + `extra_key`; a field of the
    /// request, set by the API layer): the request reuses only KV cached under the same key.
    pub extra_key: Option<String>,
    /// SGLang's `routed_dp_rank` (or the older `data_parallel_rank`; a field of the request,
    /// checked by the API layer): the data-parallel replica that runs it.
    pub dp_rank: Option<usize>,
}

/// A request's LoRA adapter; equal when it is the same load of an adapter.
#[derive(Clone)]
pub struct LoraRef(pub std::sync::Arc<crate::model::lora::LoraAdapter>);

impl std::fmt::Debug for LoraRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for LoraRef {
    fn eq(&self, o: &Self) -> bool {
        self.0.id == o.0.id
    }
}

/// Compiled `stop_regex` patterns shared by a request's copies; equal when the patterns are.
#[derive(Clone, Debug)]
pub struct StopRegexRef(pub std::sync::Arc<crate::grammar::stop::StopRegex>);

impl PartialEq for StopRegexRef {
    fn eq(&self, o: &Self) -> bool {
        self.0.patterns() == o.0.patterns()
    }
}

/// A compiled grammar shared by a request's copies; equal when the constraints are (the
/// compilation is a function of the constraint and the vocabulary).
#[derive(Clone)]
pub struct GrammarRef(pub std::sync::Arc<crate::grammar::Grammar>);

impl std::fmt::Debug for GrammarRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for GrammarRef {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParamsWire::default_wire()
            .validate()
            .expect("defaults are valid")
    }
}

impl SamplingParamsWire {
    /// Every field absent.
    pub fn default_wire() -> Self {
        serde_json::from_str("{}").expect("empty object")
    }

    /// Checks ranges the way SGLang's `SamplingParams.verify` does; the error is the message.
    pub fn validate(self) -> Result<SamplingParams, String> {
        let max_new_tokens = self.max_new_tokens.unwrap_or(128);
        if max_new_tokens < 0 {
            return Err(format!(
                "max_new_tokens must be at least 0, got {max_new_tokens}."
            ));
        }
        let min_new_tokens = self.min_new_tokens.unwrap_or(0);
        if min_new_tokens < 0 || min_new_tokens > max_new_tokens {
            return Err(format!(
                "min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}."
            ));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if temperature.is_nan() || temperature < 0.0 {
            return Err(format!(
                "temperature must be non-negative, got {temperature}."
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if top_p.is_nan() || top_p <= 0.0 || top_p > 1.0 {
            return Err(format!("top_p must be in (0, 1], got {top_p}."));
        }
        let top_k = self.top_k.unwrap_or(-1);
        if top_k < -1 || top_k == 0 {
            return Err(format!(
                "top_k must be -1 (disable), or at least 1, got {top_k}."
            ));
        }
        let min_p = self.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(format!("min_p must be in [0, 1], got {min_p}."));
        }
        let fp = self.frequency_penalty.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&fp) {
            return Err(format!("frequency_penalty must be in [-2, 2], got {fp}."));
        }
        let pp = self.presence_penalty.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&pp) {
            return Err(format!("presence_penalty must be in [-2, 2], got {pp}."));
        }
        let rp = self.repetition_penalty.unwrap_or(1.0);
        if rp.is_nan() || rp <= 0.0 || rp > 2.0 {
            return Err(format!("repetition_penalty must be in (0, 2], got {rp}."));
        }
        let n = self.n.unwrap_or(1);
        if n < 1 {
            return Err(format!("n must be at least 1, got {n}."));
        }
        let text = |name: &str, v: &Option<serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(t)) => Ok(Some(t.clone())),
            Some(v) => Err(format!("{name} must be a string, got {v}.")),
        };
        // SGLang takes the structural tag as JSON text; an object is taken as its text.
        let structural = match &self.structural_tag {
            Some(v @ serde_json::Value::Object(_)) => {
                Some(Constraint::StructuralTag(v.to_string()))
            }
            v => text("structural_tag", v)?.map(Constraint::StructuralTag),
        };
        let mut given = [
            text("regex", &self.regex)?.map(Constraint::Regex),
            text("json_schema", &self.json_schema)?.map(Constraint::JsonSchema),
            text("ebnf", &self.ebnf)?.map(Constraint::Ebnf),
            structural,
        ]
        .into_iter()
        .flatten();
        let constraint = given.next();
        if given.next().is_some() {
            return Err(
                "Only one of regex, json_schema, ebnf and structural_tag can be set.".to_string(),
            );
        }
        let stop_regex = match self.stop_regex {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(r)) => vec![r],
            Some(serde_json::Value::Array(rs)) => rs
                .into_iter()
                .map(|r| match r {
                    serde_json::Value::String(r) => Ok(r),
                    r => Err(format!("stop_regex entries must be strings, got {r}.")),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(format!(
                    "stop_regex must be a string or a list of strings, got {v}."
                ))
            }
        };
        let mut logit_bias = Vec::new();
        for (k, b) in self.logit_bias.unwrap_or_default() {
            let t: u32 = k
                .parse()
                .map_err(|_| format!("logit_bias keys must be token ids, got {k:?}."))?;
            logit_bias.push((t, b));
        }
        // One entry per token: keys such as "3" and "03" name the same id; their biases add
        // (in a fixed order, so every runner applies the same value).
        logit_bias.sort_unstable_by(|a: &(u32, f32), b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        logit_bias.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
        let stream_interval = match self.stream_interval {
            Some(n) if n < 0 => {
                return Err(format!("stream_interval must be at least 1, got {n}."));
            }
            None | Some(0) => None,
            Some(n) => Some(n as usize),
        };
        let stop = self.stop.map(StringOrList::into_vec).unwrap_or_default();
        if stop.iter().any(String::is_empty) {
            return Err("stop strings must not be empty.".into());
        }
        Ok(SamplingParams {
            max_new_tokens: max_new_tokens as usize,
            min_new_tokens: min_new_tokens as usize,
            sample: SampleParams {
                temperature,
                top_k: if top_k < 0 {
                    None
                } else {
                    Some(top_k as usize)
                },
                top_p,
                min_p,
            },
            frequency_penalty: fp,
            presence_penalty: pp,
            repetition_penalty: rp,
            stop,
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            stop_regex,
            stop_regex_compiled: None,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            no_stop_trim: self.no_stop_trim.unwrap_or(false),
            seed: self.seed,
            n: n as usize,
            logit_bias,
            stream_interval,
            constraint,
            grammar: None,
            think_end: None,
            priority: None,
            return_hidden_states: false,
            lora: None,
            extra_key: None,
            dp_rank: None,
        })
    }
}

impl SamplingParams {
    /// The token is the argmax of the raw logits as far as these parameters go (greedy, no
    /// penalty or logit bias); bans, grammar masks and logprobs are the caller's to add.
    pub fn argmax_only(&self) -> bool {
        (self.sample.temperature <= 0.0 || self.sample.top_k == Some(1)) && !self.has_penalties()
    }

    /// Whether any penalty changes the logits.
    pub fn has_penalties(&self) -> bool {
        self.penalises_output() || !self.logit_bias.is_empty()
    }

    /// Whether a penalty reads the tokens generated so far (frequency, presence, repetition).
    pub fn penalises_output(&self) -> bool {
        self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || self.repetition_penalty != 1.0
    }

    /// Applies the logit bias and the penalties for `counts` (the tokens generated so far, each
    /// once with how often it occurs: `strata_kernels::sample_rows::count_tokens`) to `logits`
    /// in place, and masks `banned` tokens (EOS before `min_new_tokens`).
    pub fn apply_penalties(&self, logits: &mut [f32], counts: &[(u32, u32)], banned: &[u32]) {
        for &(t, b) in &self.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || self.repetition_penalty != 1.0
        {
            for &(t, c) in counts {
                let Some(l) = logits.get_mut(t as usize) else {
                    continue;
                };
                if self.repetition_penalty != 1.0 {
                    *l = if *l > 0.0 {
                        *l / self.repetition_penalty
                    } else {
                        *l * self.repetition_penalty
                    };
                }
                *l -= self.frequency_penalty * c as f32 + self.presence_penalty;
            }
        }
        for &t in banned {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// The seed of copy `copy` of a parallel-sampled request seeded with `seed`: copy 0 keeps it (so
/// its answer is the `n = 1` answer), the others draw distinct, reproducible seeds from it.
pub fn copy_seed(seed: u64, copy: usize) -> u64 {
    if copy == 0 {
        return seed;
    }
    SplitMix64(seed ^ (copy as u64).wrapping_mul(0xA076_1D64_78BD_642F)).next_u64()
}

/// The uniform number for step `step` of a request with random stream `seed`.
pub fn uniform(seed: u64, step: usize) -> f64 {
    SplitMix64(seed ^ (step as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SamplingParams, String> {
        serde_json::from_str::<SamplingParamsWire>(s)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn validation_matches_sglang_ranges() {
        assert!(parse(r#"{"max_new_tokens": -1}"#).is_err());
        assert!(parse(r#"{"top_p": 0}"#).is_err());
        assert!(parse(r#"{"top_k": 0}"#).is_err());
        assert!(parse(r#"{"temperature": -0.5}"#).is_err());
        assert!(parse(r#"{"bogus": 1}"#).is_err());
        let p = parse(r#"{"temperature": 0, "stop": "x", "sampling_seed": 3}"#).unwrap();
        assert_eq!(p.stop, vec!["x".to_string()]);
        assert_eq!(p.seed, Some(3));
        assert_eq!(p.max_new_tokens, 128);
        // Every SGLang field is accepted; null is absent; constrained decoding is refused.
        let p = parse(r#"{"regex": null, "json_schema": null, "stream_interval": 4, "custom_params": {"a": 1}, "logit_bias": {"3": 2.5}}"#).unwrap();
        assert_eq!(p.logit_bias, vec![(3, 2.5)]);
        assert_eq!(p.stream_interval, Some(4));
        assert_eq!(
            parse(r#"{"stream_interval": 0}"#).unwrap().stream_interval,
            None
        );
        assert!(parse(r#"{"stream_interval": -2}"#).is_err());
        assert!(parse(r#"{"stream_interval": "4"}"#).is_err());
        assert_eq!(
            parse(r#"{"regex": "a+"}"#).unwrap().constraint,
            Some(Constraint::Regex("a+".into()))
        );
        assert_eq!(
            parse(r#"{"json_schema": "{}", "regex": null}"#)
                .unwrap()
                .constraint,
            Some(Constraint::JsonSchema("{}".into()))
        );
        assert!(parse(r#"{"regex": "a", "json_schema": "{}"}"#).is_err());
        assert!(parse(r#"{"regex": 3}"#).is_err());
        assert_eq!(
            parse(r#"{"ebnf": "root ::= \"a\""}"#).unwrap().constraint,
            Some(Constraint::Ebnf("root ::= \"a\"".into()))
        );
        assert!(parse(r#"{"ebnf": "root ::= \"a\"", "regex": "a"}"#).is_err());
        // A structural tag as SGLang's JSON text or as an object (compiled later).
        let tag = r#"{"structures": [], "triggers": ["<f"]}"#;
        assert_eq!(
            parse(&serde_json::json!({ "structural_tag": tag }).to_string())
                .unwrap()
                .constraint,
            Some(Constraint::StructuralTag(tag.into()))
        );
        assert!(matches!(
            parse(r#"{"structural_tag": {"triggers": []}}"#)
                .unwrap()
                .constraint,
            Some(Constraint::StructuralTag(_))
        ));
        assert!(parse(r#"{"structural_tag": 3}"#).is_err());
        assert!(parse(r#"{"structural_tag": "{}", "regex": "a"}"#).is_err());
        // stop_regex: a string or a list of them (compiled later, by the API layer).
        assert_eq!(
            parse(r#"{"stop_regex": "a+b"}"#).unwrap().stop_regex,
            vec!["a+b".to_string()]
        );
        assert_eq!(
            parse(r#"{"stop_regex": ["x", "y$"]}"#).unwrap().stop_regex,
            vec!["x".to_string(), "y$".to_string()]
        );
        assert!(parse(r#"{"stop_regex": null}"#)
            .unwrap()
            .stop_regex
            .is_empty());
        assert!(parse(r#"{"stop_regex": 3}"#).is_err());
        assert!(parse(r#"{"stop_regex": ["x", 3]}"#).is_err());
        assert!(parse(r#"{"logit_bias": {"x": 1}}"#).is_err());
        let p = parse(r#"{"logit_bias": {"3": 1.0, "03": 0.5, "1": -1}}"#).unwrap();
        assert_eq!(p.logit_bias, vec![(1, -1.0), (3, 1.5)]);
        assert_eq!(parse("{}").unwrap().n, 1);
        assert_eq!(parse(r#"{"n": 4}"#).unwrap().n, 4);
        assert_eq!(
            parse(r#"{"n": 0}"#).unwrap_err(),
            "n must be at least 1, got 0."
        );
        assert!(parse(r#"{"n": -2}"#).is_err());
    }

    #[test]
    fn copy_seeds_keep_the_first_and_differ_reproducibly() {
        for seed in [0, 7, u64::MAX] {
            assert_eq!(copy_seed(seed, 0), seed);
            let s: Vec<u64> = (0..16).map(|i| copy_seed(seed, i)).collect();
            let mut d = s.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), s.len(), "seed {seed}: {s:?}");
            assert_eq!(s, (0..16).map(|i| copy_seed(seed, i)).collect::<Vec<_>>());
        }
        // Copy i of seed a is not copy j of a neighbouring seed.
        assert_ne!(copy_seed(1, 1), copy_seed(2, 1));
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        let p = parse(r#"{"frequency_penalty": 1.0, "repetition_penalty": 2.0}"#).unwrap();
        let mut l = vec![2.0, -1.0, 0.5];
        p.apply_penalties(&mut l, &[(0, 2), (1, 1)], &[2]);
        assert_eq!(l, vec![2.0 / 2.0 - 2.0, -2.0 - 1.0, f32::NEG_INFINITY]);
        let p = parse(r#"{"logit_bias": {"1": 3.0}}"#).unwrap();
        let mut l = vec![2.0, -1.0];
        p.apply_penalties(&mut l, &[], &[]);
        assert_eq!(l, vec![2.0, 2.0]);
    }
}
