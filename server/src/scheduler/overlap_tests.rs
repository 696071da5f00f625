//! Overlap scheduling (`overlap.rs`) against rounds that take every forward back before the
//! next: the same tokens and finishes for every request (greedy and seeded, chunked prompts,
//! stop tokens met mid-flight, length limits, output logprobs, penalties (the token fed
//! forward counted by the runner), late arrivals, KV
//! pressure that forces retractions), aborts mid-flight, and every page back at the end. The
//! CPU runner's launches run to the end; held in flight as if queued (`hold_done`), they test
//! the bookkeeping (placeholders, zombies, the runner's results fed forward) that the CUDA
//! runner's queued launches rely on.

use super::request::{Event, FinishReason, Msg, PosLogprobs, Request};
use super::tests::{request, rig, test_cfg, Rig};
use super::SchedulerConfig;
use crate::grammar::{Compiler, Constraint};
use crate::kv::KvPool;
use crate::model::{ModelRunner, Tokenizer};
use crate::sampling::GrammarRef;
use tokio::sync::mpsc::UnboundedReceiver;

/// One request of a workload: (rid, prompt, max_new_tokens, temperature, seed, stop token,
/// penalty p (frequency p, presence p / 2, repetition 1 + p / 2), the round it arrives at, min_new_tokens, a logit bias for the stop token,
/// output logprobs (top 3 and one named token).
struct Spec {
    rid: &'static str,
    prompt: Vec<u32>,
    max_new: usize,
    temperature: f32,
    stop: Option<u32>,
    penalty: f32,
    at_round: usize,
    min_new: usize,
    stop_bias: f32,
    logprobs: bool,
    /// A regular expression the output must match (its mask follows each token: the rounds run
    /// ahead of it start the forward first and sample it once the token in flight is back).
    grammar: Option<&'static str>,
}

fn spec(rid: &'static str, start: u32, len: u32, max_new: usize, temperature: f32) -> Spec {
    Spec {
        rid,
        prompt: (start..start + len).map(|t| t % 250 + 1).collect(),
        max_new,
        temperature,
        stop: None,
        penalty: 0.0,
        at_round: 0,
        min_new: 0,
        stop_bias: 0.0,
        logprobs: false,
        grammar: None,
    }
}

fn make(s: &Spec, compiler: &Compiler) -> (Request, UnboundedReceiver<Event>) {
    let (mut req, rx) = request(s.rid, s.prompt.clone(), s.max_new, s.temperature);
    if let Some(re) = s.grammar {
        let g = compiler.compile(&Constraint::Regex(re.into())).unwrap();
        req.params.grammar = Some(GrammarRef(g));
        req.params.ignore_eos = false;
    }
    req.params.seed = Some(s.rid.len() as u64 * 7919 + s.prompt[0] as u64);
    if let Some(t) = s.stop {
        req.params.stop_token_ids = vec![t];
        req.params.ignore_eos = false;
        if s.stop_bias != 0.0 {
            req.params.logit_bias = vec![(t, s.stop_bias)];
        }
    }
    req.params.frequency_penalty = s.penalty;
    req.params.presence_penalty = s.penalty / 2.0;
    req.params.repetition_penalty = 1.0 + s.penalty / 2.0;
    req.params.min_new_tokens = s.min_new;
    if s.logprobs {
        req.logprobs = Some(crate::logprobs::LogprobSpec {
            // A seeded request's also from its second prompt token (the chunked prompt's rows).
            start: if s.temperature > 0.0 {
                1
            } else {
                s.prompt.len()
            },
            top_n: 3,
            token_ids: Some(vec![7]),
        });
    }
    (req, rx)
}

/// (tokens, finish reason, completion tokens, output logprobs, input logprobs) of a finished
/// request.
type Outcome = (
    Vec<u32>,
    FinishReason,
    usize,
    Vec<PosLogprobs>,
    Vec<PosLogprobs>,
);

/// The request's outcome; its retractions (`Finish::num_retractions`) are added to `retracted`.
fn outcome(rx: &mut UnboundedReceiver<Event>, retracted: &mut usize) -> Outcome {
    let (mut toks, mut lps, mut input) = (Vec::new(), Vec::new(), Vec::new());
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Event::Token { id, logprob } => {
                toks.push(id);
                lps.extend(logprob.map(|b| *b));
            }
            Event::Input(l) => {
                assert!(
                    toks.is_empty(),
                    "input logprobs after the first token: {l:?}"
                );
                input.extend(l);
            }
            Event::Done(f) => {
                *retracted += f.num_retractions;
                return (toks, f.reason, f.completion_tokens, lps, input);
            }
            _ => {}
        }
    }
    panic!("the request did not finish (tokens so far {toks:?})");
}

/// Runs `specs` round by round; returns each outcome, how many rounds were built while a
/// forward was in flight and how many retractions there were.
fn run(cfg: SchedulerConfig, specs: &[Spec], overlap: bool) -> (Vec<Outcome>, usize, u64) {
    let mut r: Rig = rig(cfg);
    r.s.overlap = overlap;
    r.s.hold_done = overlap;
    r.s.overlap_wide = overlap;
    r.s.overlap_grammar = overlap;
    let tok = Tokenizer::load(r.dir()).unwrap();
    let compiler = Compiler::new(tok.token_bytes(r.s.model.cfg().vocab_size));
    let mut rxs: Vec<Option<UnboundedReceiver<Event>>> = specs.iter().map(|_| None).collect();
    for round in 0..10_000 {
        for (k, s) in specs.iter().enumerate() {
            if s.at_round == round {
                let (req, rx) = make(s, &compiler);
                rxs[k] = Some(rx);
                r.s.handle(Msg::Submit(Box::new(req)));
            }
        }
        let arrivals_left = specs.iter().any(|s| s.at_round > round);
        if r.s.running.is_empty() && r.s.waiting.is_empty() && !arrivals_left {
            break;
        }
        r.s.step();
    }
    let ahead = r.s.ran_ahead as usize;
    if overlap && specs.iter().any(|s| s.grammar.is_some()) {
        assert!(
            r.s.launched_later > 0,
            "rounds ran ahead of grammar rows: their forwards started before their masks"
        );
    }
    assert!(r.s.inflight.is_none(), "a forward is left in flight");
    let total = r.s.pool.total_pages();
    assert_eq!(
        KvPool::free_pages(&r.s.pool) + r.s.tree.cached_pages(),
        total,
        "every page is free or cached"
    );
    let mut retracted = 0;
    let out = rxs
        .iter_mut()
        .map(|rx| outcome(rx.as_mut().expect("submitted"), &mut retracted))
        .collect();
    let retractions =
        r.s.stats
            .retractions
            .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        retracted as u64, retractions,
        "each retraction is reported in its request's num_retractions"
    );
    eprintln!("overlap {overlap}: {ahead} rounds ran ahead, {retractions} retractions");
    (out, ahead, retractions)
}

/// The greedy requests of the mixed workload and, with `sampled`, seeded ones beside them
/// (rounds run ahead of both; one sampled with its stop token favoured by a logit bias and
/// banned for its first tokens by `min_new_tokens`, one with output logprobs) and penalised
/// ones, sampled and greedy (their newest token counted from the batch's input ids).
fn workload(stop: u32, sampled: bool) -> Vec<Spec> {
    let mut specs = vec![
        spec("a", 1, 20, 9, 0.0),
        spec("c", 70, 5, 1, 0.0),
        spec("d", 80, 7, 0, 0.0),
        Spec {
            stop: Some(stop),
            ..spec("e", 40, 11, 16, 0.0)
        },
        spec("k", 150, 9, 30, 0.0),
        Spec {
            at_round: 3,
            ..spec("g", 100, 13, 7, 0.0)
        },
        Spec {
            at_round: 6,
            ..spec("i", 1, 20, 4, 0.0)
        },
    ];
    if sampled {
        specs.push(spec("bb", 30, 30, 6, 0.9));
        specs.push(Spec {
            logprobs: true,
            ..spec("ll", 33, 12, 10, 0.8)
        });
        specs.push(Spec {
            penalty: 0.5,
            ..spec("fff", 90, 9, 8, 0.7)
        });
        specs.push(Spec {
            penalty: 1.0,
            ..spec("pp", 20, 14, 20, 0.0)
        });
        specs.push(Spec {
            at_round: 5,
            ..spec("hhhh", 120, 6, 5, 0.8)
        });
        specs.push(Spec {
            stop: Some(stop),
            stop_bias: 4.0,
            min_new: 3,
            at_round: 2,
            ..spec("jjjjj", 60, 8, 24, 1.0)
        });
        // Under grammars: greedy; sampled with penalties; sampled with logprobs and
        // min_new_tokens (EOS banned, then let through once the text is a whole match).
        specs.push(Spec {
            grammar: Some("[0-9]{2,24}"),
            ..spec("gg", 10, 10, 30, 0.0)
        });
        specs.push(Spec {
            grammar: Some("[a-z ]{3,40}"),
            penalty: 0.5,
            at_round: 1,
            ..spec("ggp", 50, 7, 26, 0.9)
        });
        specs.push(Spec {
            grammar: Some("([0-9]+ )+[0-9]"),
            logprobs: true,
            min_new: 4,
            ..spec("ggll", 5, 9, 18, 1.1)
        });
    }
    specs.sort_by_key(|s| s.at_round);
    specs
}

#[test]
fn overlap_streams_what_synchronous_rounds_stream() {
    let cfg = SchedulerConfig {
        chunked_prefill_size: Some(12),
        max_running_requests: 4,
        ..test_cfg()
    };
    // The stop token: the sixth token `e` makes without one.
    let probe = [spec("e", 40, 11, 16, 0.0)];
    let (base, _, _) = run(cfg.clone(), &probe, false);
    let stop = base[0].0[5];
    for sampled in [false, true] {
        let specs = workload(stop, sampled);
        let (want, _, _) = run(cfg.clone(), &specs, false);
        let (got, ahead, _) = run(cfg.clone(), &specs, true);
        for (s, (w, g)) in specs.iter().zip(want.iter().zip(&got)) {
            assert_eq!(w, g, "request {} (sampled ones too: {sampled})", s.rid);
        }
        let e = &got[specs.iter().position(|s| s.rid == "e").unwrap()];
        assert!(
            matches!(e.1, FinishReason::StopToken(t) if t == stop) && e.0.len() < 16,
            "e stops at its stop token mid-stream: {e:?}"
        );
        assert_eq!(e.0.len(), e.2, "no token past the end is counted");
        assert!(
            ahead > 10,
            "rounds ran ahead of the forward in flight ({ahead}, sampled ones too: {sampled})"
        );
        if sampled {
            let j = &got[specs.iter().position(|s| s.rid == "jjjjj").unwrap()];
            assert!(
                j.0.len() >= 3,
                "min_new_tokens held the stop token back: {j:?}"
            );
            eprintln!("jjjjj: {j:?}");
            for rid in ["gg", "ggp", "ggll"] {
                let g = &got[specs.iter().position(|s| s.rid == rid).unwrap()];
                eprintln!("{rid}: {g:?}");
            }
            let l = &got[specs.iter().position(|s| s.rid == "ll").unwrap()];
            assert!(
                l.3.len() == l.0.len() && l.3.iter().all(|p| p.top.len() == 3 && p.ids.len() == 1),
                "a logprob per output token: {l:?}"
            );
            assert_eq!(
                l.4.len(),
                11,
                "an input logprob per prompt position from 1: {l:?}"
            );
        }
    }
}

/// KV pressure: decodes that need pages the pool does not have take the forward in flight back
/// first, then retract as without overlap; the outputs match.
#[test]
fn overlap_under_kv_pressure_retracts_as_synchronous_rounds_do() {
    // 256 pages of 4 tokens: four requests of 200 + 90 tokens do not fit together.
    let cfg = SchedulerConfig {
        max_running_requests: 4,
        ..test_cfg()
    };
    let specs: Vec<Spec> = [("p", 1), ("qq", 3), ("rrr", 5), ("ssss", 7)]
        .into_iter()
        .map(|(rid, start)| spec(rid, start * 11, 200, 90, 0.0))
        .collect();
    let (want, _, r0) = run(cfg.clone(), &specs, false);
    let (got, ahead, r1) = run(cfg, &specs, true);
    assert_eq!(want, got);
    assert!(got.iter().all(|o| o.0.len() == 90));
    assert!(ahead > 0);
    assert!(r0 > 0 && r1 > 0, "the pool forced retractions ({r0}, {r1})");
}

/// An abort while a forward is in flight ends the request at once (no token after the abort
/// is reached by the round that takes it) and frees its pages; the others go on.
#[test]
fn an_abort_in_flight_ends_the_request_and_frees_its_pages() {
    let mut r = rig(test_cfg());
    r.s.overlap = true;
    r.s.hold_done = true;
    let (a, mut rx_a) = request("a", (1..30).collect(), 50, 0.0);
    let (b, mut rx_b) = request("b", (40..60).collect(), 10, 0.0);
    r.s.handle(Msg::Submit(Box::new(a)));
    r.s.handle(Msg::Submit(Box::new(b)));
    for _ in 0..5 {
        r.s.step();
    }
    assert!(r.s.inflight.is_some(), "a forward is in flight");
    r.s.handle(Msg::Abort("a".into()));
    r.s.reap_aborted();
    assert!(
        r.s.inflight.is_none(),
        "the abort took the forward back first"
    );
    r.drain();
    let a = outcome(&mut rx_a, &mut 0);
    assert!(matches!(a.1, FinishReason::Abort(_)), "{a:?}");
    assert!(a.0.len() < 50 && a.0.len() == a.2);
    let b = outcome(&mut rx_b, &mut 0);
    assert_eq!(b.0.len(), 10);
    assert_eq!(
        KvPool::free_pages(&r.s.pool) + r.s.tree.cached_pages(),
        r.s.pool.total_pages()
    );
}
