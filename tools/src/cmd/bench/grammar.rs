//! `strata bench grammar`: the cost of constrained decoding on the host, per request and per step.
//! A constraint (a built-in JSON schema, `--json-schema FILE`, `--regex` or `--ebnf FILE`) is compiled against a
//! vocabulary — a real tokenizer (`--model-path`) or a synthetic byte-level one of `--vocab`
//! tokens whose lengths follow a BPE vocabulary's (1-12 bytes, half with a leading space; seeded)
//! — then random masked walks draw only allowed tokens, as the scheduler's sampler would. Reported:
//! the compile time and DFA size, the mask of a state seen for the first time (one walk of the
//! vocabulary) and of a cached one, and what a constrained row costs the samplers per step: the
//! GPU sampler's host packing of the mask as the bitmask it is cached as, side by side with the
//! list of banned tokens it was packed as before (one entry per banned token).

use clap::Parser;
use std::time::Instant;
use strata_kernels::sample_rows::{pack_rows, Allow, RowMode, RowSpec};
use strata_server::grammar::bytes::TokenBytes;
use strata_server::grammar::{Compiler, Constraint};
use strata_server::seeded::SplitMix64;

#[derive(Parser)]
pub struct Args {
    /// A model directory whose tokenizer.json is the vocabulary (else a synthetic one).
    #[arg(long)]
    model_path: Option<std::path::PathBuf>,
    /// Tokens of the synthetic vocabulary (Llama 3's 128,256 by default).
    #[arg(long, default_value_t = 128_256)]
    vocab: usize,
    /// A JSON schema file (else the built-in schema, an object of six fields).
    #[arg(long)]
    json_schema: Option<std::path::PathBuf>,
    /// A regular expression instead of a schema.
    #[arg(long, conflicts_with = "json_schema")]
    regex: Option<String>,
    /// An EBNF grammar file instead of a schema (recursive rules run on the pushdown automaton).
    #[arg(long, conflicts_with_all = ["json_schema", "regex"])]
    ebnf: Option<std::path::PathBuf>,
    /// Random walks (requests) to run.
    #[arg(long, default_value_t = 20)]
    walks: usize,
    /// Longest walk in tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Seed of the synthetic vocabulary and of the walks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const SCHEMA: &str = r#"{"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer"},
    "email": {"type": "string", "pattern": "[a-z]{1,12}@[a-z]{1,12}\\.(com|org)"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 4},
    "role": {"enum": ["admin", "user", "guest"]},
    "score": {"type": ["number", "null"]}},
    "required": ["name", "age", "role"]}"#;

/// A byte-level vocabulary: the 256 bytes, then seeded tokens of 2-12 printable bytes.
fn synthetic(vocab: usize, rng: &mut SplitMix64) -> TokenBytes {
    const ALPHA: &[u8] =
        b"etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,:;\"'{}[]()-_/";
    let mut t: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    while t.len() < vocab {
        let len = 2 + (rng.next_u64() % 11) as usize;
        let mut tok = Vec::with_capacity(len);
        if rng.next_u64() % 2 == 0 {
            tok.push(b' ');
        }
        while tok.len() < len {
            tok.push(ALPHA[(rng.next_u64() % ALPHA.len() as u64) as usize]);
        }
        t.push(Some(tok));
    }
    TokenBytes::from_tokens(t)
}

fn stats(xs: &[f64]) -> (f64, f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, v[v.len() / 2], v[v.len() - 1])
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut rng = SplitMix64(a.seed);
    let constraint = match (&a.regex, &a.json_schema, &a.ebnf) {
        (Some(r), _, _) => Constraint::Regex(r.clone()),
        (None, Some(f), _) => Constraint::JsonSchema(std::fs::read_to_string(f)?),
        (None, None, Some(f)) => Constraint::Ebnf(std::fs::read_to_string(f)?),
        (None, None, None) => Constraint::JsonSchema(SCHEMA.into()),
    };
    let t = Instant::now();
    let (bytes, source) = match &a.model_path {
        Some(dir) => {
            let tok = strata_server::model::Tokenizer::load(dir)?;
            (
                tok.token_bytes(0),
                format!("tokenizer of {}", dir.display()),
            )
        }
        None => (
            synthetic(a.vocab, &mut rng),
            format!("synthetic byte-level, seed {}", a.seed),
        ),
    };
    let compiler = Compiler::new(bytes);
    let vocab_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let g = compiler.compile(&constraint).map_err(anyhow::Error::msg)?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let vocab = g.vocab_len();
    let (mut cold, mut warm, mut banned) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seen, mut tokens, mut whole) = (std::collections::HashSet::new(), 0, 0);
    let mut kept = Vec::new();
    for _ in 0..a.walks {
        let mut w = g.walk_start();
        let mut out: Vec<u32> = Vec::new();
        while out.len() < a.max_tokens {
            let s = g
                .follow(&mut w, &out)
                .expect("masked tokens stay in the language");
            let t = Instant::now();
            let m = g.mask(s);
            let us = t.elapsed().as_secs_f64() * 1e6;
            if seen.insert(s) {
                cold.push(us / 1e3);
            } else {
                warm.push(us);
            }
            banned.push((vocab - m.allowed()) as f64);
            if kept.len() < 64 {
                kept.push(m.clone());
            }
            if m.accepting && (!m.can_continue || rng.next_u64() % 4 == 0) {
                whole += 1;
                break;
            }
            // Draw an allowed token.
            let allowed: Vec<u32> = (0..vocab as u32).filter(|&t| m.allows(t)).collect();
            out.push(allowed[(rng.next_u64() % allowed.len() as u64) as usize]);
        }
        tokens += out.len();
    }
    // What a step's mask costs the samplers: the CPU runner masks the row's logits and takes
    // the argmax; the GPU sampler's host side packs the row for the upload, with the mask as its
    // bitmask (now) and as the list of banned tokens (before), side by side.
    let rows = vocab.max(a.vocab);
    let mut logits: Vec<f32> = (0..rows).map(|_| rng.next_f64() as f32).collect();
    let p = strata_server::sampling::SamplingParams::default();
    let eos = [vocab as u32 - 1];
    let (mut host, mut pack, mut list) = (Vec::new(), Vec::new(), Vec::new());
    for m in &kept {
        let allow = Allow {
            bits: &m.allow,
            also: if m.accepting { &eos } else { &[] },
        };
        let t = Instant::now();
        p.apply_penalties(&mut logits, &[], &[]);
        allow.apply(&mut logits);
        let best = logits
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i);
        std::hint::black_box(best);
        host.push(t.elapsed().as_secs_f64() * 1e6);
        for x in logits.iter_mut() {
            *x = x.max(0.0);
        }
        let mut row = RowSpec::plain(RowMode::Greedy, p.sample, 0.5);
        row.allow = Some(allow);
        let t = Instant::now();
        std::hint::black_box(pack_rows(&[row.clone()], rows));
        pack.push(t.elapsed().as_secs_f64() * 1e6);
        // The same mask as the banned list it was packed as before (in token order).
        let banned_ids: Vec<u32> = (0..rows as u32).filter(|&t| !allow.allows(t)).collect();
        row.allow = None;
        row.banned = &banned_ids;
        let t = Instant::now();
        std::hint::black_box(pack_rows(&[row], rows));
        list.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (cm, cmed, cmax) = stats(&cold);
    let (wm, _, _) = stats(&warm);
    let (bm, _, bmax) = stats(&banned);
    println!("vocabulary: {vocab} tokens ({source}), read in {vocab_ms:.0} ms");
    println!("constraint: {constraint:?}");
    println!("compile: {compile_ms:.1} ms ({g:?})");
    println!(
        "walks: {} ({whole} whole matches), {tokens} tokens, {} distinct states",
        a.walks,
        seen.len()
    );
    println!(
        "mask, first time a state is seen: mean {cm:.2} ms, median {cmed:.2} ms, max {cmax:.2} ms ({} states)",
        cold.len()
    );
    println!("mask, cached state: mean {wm:.2} us ({} steps)", warm.len());
    println!("banned tokens per step: mean {bm:.0}, max {bmax:.0} of {vocab}");
    let (hm, _, _) = stats(&host);
    let (pm, _, _) = stats(&pack);
    let (lm, _, _) = stats(&list);
    println!(
        "per constrained row and step ({} steps): CPU sampler mask + argmax {hm:.0} us",
        kept.len()
    );
    println!(
        "GPU sampler's host packing per constrained row: {pm:.1} us (the mask as a bitmask, {} KB), {lm:.0} us (as banned-token entries): x{:.4}",
        rows.div_ceil(32) * 4 / 1024,
        pm / lm.max(1e-9)
    );
    Ok(())
}
