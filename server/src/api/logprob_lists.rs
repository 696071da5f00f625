//! SGLang's log-probability lists of a `/generate` result's `meta_info` (`[logprob, token_id,
//! text]` entries; top and token-id lists hold a list of such entries per position): built as
//! JSON values for a result answered whole; for a streamed one each entry is serialized once and
//! kept for the result's life.
//!
//! A streamed line repeats every list from its first entry (SGLang's format), so a stream's
//! bytes grow with the square of its length whatever the server does; what the server can choose
//! is what each line costs. Built as JSON values and serialized again per line, 256 output
//! tokens with five top log-probabilities each took ~40 ms of server CPU per request; with each
//! entry's text kept, a line copies it. Under `--incremental-streaming-output` the output-side
//! lists carry only the entries of the line's new tokens (as `sglang==0.5.23` slices
//! `output_token_logprobs`, `output_top_logprobs` and `output_token_ids_logprobs`); the
//! prompt-side lists stay whole.

use super::driver::Driver;
use super::generate::finite;
use crate::logprobs::PosLogprobs;
use crate::model::Tokenizer;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::{to_raw_value, RawValue};
use serde_json::{json, Value};

/// One of the lists in `meta_info`.
#[derive(Clone, Copy)]
enum Kind {
    InputToken,
    OutputToken,
    InputTop,
    OutputTop,
    InputIds,
    OutputIds,
}

impl Kind {
    /// Whether the list follows the output tokens (sliced per line under incremental
    /// streaming).
    fn output(self) -> bool {
        matches!(self, Kind::OutputToken | Kind::OutputTop | Kind::OutputIds)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::InputToken => "input_token_logprobs",
            Kind::OutputToken => "output_token_logprobs",
            Kind::InputTop => "input_top_logprobs",
            Kind::OutputTop => "output_top_logprobs",
            Kind::InputIds => "input_token_ids_logprobs",
            Kind::OutputIds => "output_token_ids_logprobs",
        }
    }

    /// How many entries the result has so far.
    fn len(self, d: &Driver) -> usize {
        let (inp, out) = (&d.out.input_logprobs, &d.out.logprobs);
        match self {
            Kind::InputToken => d.lp_prompt_ids.len().min(inp.len()),
            Kind::OutputToken => d.out.ids.len().min(out.len()),
            Kind::InputTop | Kind::InputIds => inp.len(),
            Kind::OutputTop | Kind::OutputIds => out.len(),
        }
    }

    /// Entry `k`; the first reported prompt position is null in the top and token-id lists.
    fn entry(self, d: &Driver, k: usize, text: Option<&Tokenizer>) -> Value {
        let (inp, out) = (&d.out.input_logprobs, &d.out.logprobs);
        let pairs = |p: &PosLogprobs, top: bool| -> Value {
            let xs = if top { &p.top } else { &p.ids };
            xs.iter()
                .map(|&(id, lp)| triple(Some(lp), id, text))
                .collect()
        };
        match self {
            Kind::InputToken => triple(inp[k].logprob, d.lp_prompt_ids[k], text),
            Kind::OutputToken => triple(out[k].logprob, d.out.ids[k], text),
            Kind::InputTop | Kind::InputIds if k == 0 => Value::Null,
            Kind::InputTop => pairs(&inp[k], true),
            Kind::InputIds => pairs(&inp[k], false),
            Kind::OutputTop => pairs(&out[k], true),
            Kind::OutputIds => pairs(&out[k], false),
        }
    }
}

/// The lists `d`'s request asked for, in SGLang's order (none: no log-probabilities).
fn kinds(d: &Driver) -> Option<Vec<Kind>> {
    let spec = d.logprobs.as_ref()?;
    let mut kinds = vec![Kind::InputToken, Kind::OutputToken];
    if spec.top_n > 0 {
        kinds.extend([Kind::InputTop, Kind::OutputTop]);
    }
    if spec.token_ids.is_some() {
        kinds.extend([Kind::InputIds, Kind::OutputIds]);
    }
    Some(kinds)
}

/// SGLang's count of the output-side entries so far, beside `output_token_logprobs` (the whole
/// count, also where an incremental line carries only the new entries).
const OUTPUT_LEN: &str = "output_token_logprobs_length";

/// `[logprob, token_id, text]`, the text null unless `return_text_in_logprobs`.
fn triple(lp: Option<f32>, id: u32, text: Option<&Tokenizer>) -> Value {
    let text = text.map_or(Value::Null, |t| json!(t.decode(&[id], false)));
    json!([lp.map(finite), id, text])
}

/// The lists one result's request asked for, as serialized so far.
pub(super) struct LogprobLists {
    lists: Vec<(Kind, Vec<Box<RawValue>>)>,
}

impl LogprobLists {
    /// The lists `d`'s request asked for (none: it asked for no log-probabilities).
    pub fn new(d: &Driver) -> Option<Self> {
        Some(LogprobLists {
            lists: kinds(d)?.into_iter().map(|k| (k, Vec::new())).collect(),
        })
    }

    /// Adds `d`'s lists to `meta` as JSON values (a result answered whole: built once, so
    /// nothing is kept, and the numbers are not read back from their text).
    pub fn insert_all(d: &Driver, text: Option<&Tokenizer>, meta: &mut Value) {
        for kind in kinds(d).unwrap_or_default() {
            meta[kind.name()] = (0..kind.len(d)).map(|k| kind.entry(d, k, text)).collect();
            if let Kind::OutputToken = kind {
                meta[OUTPUT_LEN] = kind.len(d).into();
            }
        }
    }

    /// Serializes the entries `d` gained since the last call (`text`: the tokenizer when each
    /// entry carries its token's text). Entries already serialized never change.
    pub fn update(&mut self, d: &Driver, text: Option<&Tokenizer>) {
        for (kind, done) in &mut self.lists {
            let len = kind.len(d);
            done.truncate(len);
            for k in done.len()..len {
                let v = kind.entry(d, k, text);
                done.push(to_raw_value(&v).expect("a JSON value serializes"));
            }
        }
    }

    /// `line` as JSON text with the lists added to its `meta_info` (a streamed line); the
    /// output-side lists from entry `out_from` (the output tokens an earlier line carried,
    /// under incremental streaming; 0 otherwise).
    pub fn line_text(&self, line: &Value, out_from: usize) -> String {
        serde_json::to_string(&WithLists {
            v: line,
            lists: self,
            meta: false,
            out_from,
        })
        .expect("a JSON value serializes")
    }
}

/// A line whose `meta_info` object (or, with `meta`, the object itself) gains the lists after
/// its own fields, the output-side ones from entry `out_from`.
struct WithLists<'a> {
    v: &'a Value,
    lists: &'a LogprobLists,
    meta: bool,
    out_from: usize,
}

impl Serialize for WithLists<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(obj) = self.v.as_object() else {
            return self.v.serialize(s);
        };
        // The lists, and the output count after `output_token_logprobs` (always listed).
        let extra = if self.meta {
            self.lists.lists.len() + 1
        } else {
            0
        };
        let mut m = s.serialize_map(Some(obj.len() + extra))?;
        for (k, v) in obj {
            if !self.meta && k == "meta_info" {
                let inner = WithLists {
                    v,
                    lists: self.lists,
                    meta: true,
                    out_from: self.out_from,
                };
                m.serialize_entry(k, &inner)?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        if self.meta {
            for (kind, done) in &self.lists.lists {
                let from = if kind.output() { self.out_from } else { 0 };
                m.serialize_entry(kind.name(), &done[from.min(done.len())..])?;
                if let Kind::OutputToken = kind {
                    m.serialize_entry(OUTPUT_LEN, &done.len())?;
                }
            }
        }
        m.end()
    }
}
