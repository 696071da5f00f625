//! The scheduler driven round by round (no thread, no HTTP) on a made tiny model: the admission
//! order under each `--schedule-policy`, the `--max-prefill-tokens` limit on one round's
//! admissions, the per-request seeds of `--random-seed`, and the `--max-queued-requests` refusal.

use super::policy::SchedulePolicy;
use super::request::{Event, FinishReason, Msg, Request};
use super::{Scheduler, SchedulerConfig, QUEUE_FULL};
use crate::kv::DeviceKvPool;
use crate::model::{Model, Tokenizer};
use crate::sampling::SamplingParams;
use crate::seeded::SplitMix64;
use crate::stats::Stats;
use std::sync::Arc;
use strata_kernels::CpuBackend;
use strata_make_model::{make_model, MakeModel};
use tokio::sync::mpsc::UnboundedReceiver;

pub(super) struct Rig {
    pub(super) s: Scheduler<Model<CpuBackend>>,
    _dir: tempfile::TempDir,
    pub(super) rx: Vec<UnboundedReceiver<Event>>,
}

impl Rig {
    /// The made model's directory (its tokenizer for the other test files).
    pub(super) fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}

/// The rigs' configuration (for the other test files).
pub(super) fn test_cfg() -> SchedulerConfig {
    cfg()
}

fn cfg() -> SchedulerConfig {
    SchedulerConfig::default()
}

pub(super) fn rig(cfg: SchedulerConfig) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    make_model(&MakeModel::default(), dir.path()).unwrap();
    let model = Model::load(dir.path(), CpuBackend, 512).unwrap();
    let tok = Arc::new(Tokenizer::load(dir.path()).unwrap());
    let pool = DeviceKvPool::new(&model, 256, cfg.page_size).unwrap();
    let s = Scheduler::new(cfg, model, pool, tok, Arc::new(Stats::default()));
    Rig {
        s,
        _dir: dir,
        rx: Vec::new(),
    }
}

/// A request that runs its whole budget (`ignore_eos`: the rounds are predictable), and its
/// event stream.
pub(super) fn request(
    rid: &str,
    ids: Vec<u32>,
    max_new: usize,
    temperature: f32,
) -> (Request, UnboundedReceiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut params = SamplingParams {
        max_new_tokens: max_new,
        ..SamplingParams::default()
    };
    params.sample.temperature = temperature;
    params.ignore_eos = true;
    let req = Request {
        rid: rid.into(),
        input_ids: ids,
        params,
        logprobs: None,
        events: tx,
        arrival: std::time::Instant::now(),
        bootstrap: None,
        embed: false,
    };
    (req, rx)
}

impl Rig {
    pub(super) fn submit(&mut self, rid: &str, ids: Vec<u32>, max_new: usize, temperature: f32) {
        let (req, rx) = request(rid, ids, max_new, temperature);
        self.rx.push(rx);
        self.s.handle(Msg::Submit(Box::new(req)));
    }

    pub(super) fn running(&self) -> Vec<&str> {
        self.s.running.iter().map(|q| q.req.rid.as_str()).collect()
    }

    /// Runs rounds until nothing is left.
    pub(super) fn drain(&mut self) {
        for _ in 0..1000 {
            if self.s.running.is_empty() && self.s.waiting.is_empty() {
                return;
            }
            self.s.step();
        }
        panic!("the scheduler did not finish");
    }
}

/// The tokens a request's event stream has delivered so far.
fn tokens(rx: &mut UnboundedReceiver<Event>) -> Vec<u32> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::Token { id, .. } = ev {
            out.push(id);
        }
    }
    out
}

fn ids(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

/// A rig whose prefix cache holds `ids(1, 40)` (a finished request computed it).
fn rig_with_cached_prefix(policy: SchedulePolicy, random_seed: Option<u64>) -> Rig {
    let mut r = rig(SchedulerConfig {
        schedule_policy: policy,
        random_seed,
        ..cfg()
    });
    r.submit("x", ids(1, 40), 1, 0.0);
    r.drain();
    r
}

/// Queues four requests: two extend the cached prefix, two do not; the output budgets differ.
fn submit_four(r: &mut Rig) {
    let ext = |tail: u32| ids(1, 40).into_iter().chain(ids(tail, 8)).collect();
    r.submit("b", ids(200, 48), 4, 0.0);
    r.submit("c1", ext(300), 2, 0.0);
    r.submit("d", ids(400, 48), 16, 0.0);
    r.submit("c2", ext(350), 8, 0.0);
}

#[test]
fn each_policy_admits_in_its_order() {
    for (policy, want) in [
        (SchedulePolicy::Fcfs, ["b", "c1", "d", "c2"]),
        (SchedulePolicy::Lpm, ["c1", "c2", "b", "d"]),
        (SchedulePolicy::DfsWeight, ["c1", "c2", "b", "d"]),
        (SchedulePolicy::Lof, ["d", "c2", "b", "c1"]),
    ] {
        let mut r = rig_with_cached_prefix(policy, None);
        submit_four(&mut r);
        r.s.step();
        assert_eq!(r.running(), want, "{policy:?}");
        r.drain();
    }
}

/// `--prefill-max-requests 2`: a round prefills at most two requests; decodes beside them are
/// not counted (without the cap the first round takes all four).
#[test]
fn prefill_max_requests_caps_each_rounds_prefill() {
    let mut r = rig(cfg());
    submit_four(&mut r);
    r.s.step();
    assert_eq!(r.running().len(), 4, "no cap: one round takes all");
    r.drain();
    let mut r = rig(SchedulerConfig {
        prefill_max_requests: Some(2),
        ..cfg()
    });
    submit_four(&mut r);
    r.s.step();
    assert_eq!(r.running(), ["b", "c1"], "two admitted");
    r.s.step();
    let now = r.running();
    assert!(
        now.ends_with(&["d", "c2"]) && now[0] == "b",
        "two more beside the decodes: {now:?}"
    );
    r.drain();
}

#[test]
fn cache_aware_policies_fall_back_to_fcfs_without_the_radix_cache() {
    let mut r = rig(SchedulerConfig {
        schedule_policy: SchedulePolicy::Lpm,
        radix_cache: false,
        ..cfg()
    });
    assert_eq!(r.s.policy, SchedulePolicy::Fcfs);
    submit_four(&mut r);
    r.s.step();
    assert_eq!(r.running(), ["b", "c1", "d", "c2"]);
}

#[test]
fn random_policy_is_reproducible_under_a_seed() {
    let order = |seed| {
        let mut r = rig_with_cached_prefix(SchedulePolicy::Random, Some(seed));
        submit_four(&mut r);
        r.s.step();
        r.running()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let orders: Vec<_> = (0..6).map(order).collect();
    for o in &orders {
        let mut sorted = o.clone();
        sorted.sort();
        assert_eq!(sorted, ["b", "c1", "c2", "d"]);
    }
    assert_eq!(orders[3], order(3), "same seed, same order");
    assert!(
        orders.iter().any(|o| o != &["b", "c1", "d", "c2"]),
        "six seeds all kept arrival order: {orders:?}"
    );
}

#[test]
fn max_prefill_tokens_limits_one_rounds_admissions() {
    // Unchunked, limit 70: 30 + 30 fit (the second is below the 40 left); the third (30 >= 10
    // left) waits for the next round.
    let mut r = rig(SchedulerConfig {
        max_prefill_tokens: 70,
        ..cfg()
    });
    for (i, rid) in ["a", "b", "c"].into_iter().enumerate() {
        r.submit(rid, ids(100 * i as u32 + 1, 30), 4, 0.0);
    }
    r.s.step();
    assert_eq!(r.running(), ["a", "b"]);
    r.s.step();
    assert_eq!(r.running(), ["a", "b", "c"]);
    r.drain();

    // A prompt above the limit still runs, whole, alone.
    let mut r = rig(SchedulerConfig {
        max_prefill_tokens: 16,
        ..cfg()
    });
    r.submit("long", ids(1, 100), 4, 0.0);
    r.submit("short", ids(200, 4), 4, 0.0);
    r.s.step();
    assert_eq!(r.running(), ["long"]);
    assert_eq!(r.s.running[0].computed, 100);
    r.drain();

    // Chunked (32): the limit (40) stops admission once spent; the chunk cuts each round.
    let mut r = rig(SchedulerConfig {
        max_prefill_tokens: 40,
        chunked_prefill_size: Some(32),
        ..cfg()
    });
    for (i, rid) in ["a", "b", "c"].into_iter().enumerate() {
        r.submit(rid, ids(100 * i as u32 + 1, 20), 4, 0.0);
    }
    r.s.step();
    // a: 20; b: 12 (the chunk's rest); c waits (the chunk is spent).
    assert_eq!(r.running(), ["a", "b"]);
    assert_eq!(r.s.running[1].computed, 12);
    r.drain();

    // The default (16384) admits all three in one round, as before the flag.
    let mut r = rig(cfg());
    for (i, rid) in ["a", "b", "c"].into_iter().enumerate() {
        r.submit(rid, ids(100 * i as u32 + 1, 30), 4, 0.0);
    }
    r.s.step();
    assert_eq!(r.running(), ["a", "b", "c"]);
}

#[test]
fn random_seed_draws_sampled_requests_seeds_in_arrival_order() {
    let seeds = |random_seed| {
        let mut r = rig(SchedulerConfig {
            random_seed,
            ..cfg()
        });
        r.submit("s1", ids(1, 8), 4, 0.7);
        r.submit("greedy", ids(1, 8), 4, 0.0);
        r.submit("s2", ids(1, 8), 4, 1.0);
        r.s.waiting.iter().map(|q| q.seed).collect::<Vec<_>>()
    };
    let a = seeds(Some(42));
    let mut g = SplitMix64(42);
    assert_eq!(a[0], g.next_u64());
    assert_eq!(a[2], g.next_u64(), "the greedy request drew nothing");
    let again = seeds(Some(42));
    assert_eq!(
        (again[0], again[2]),
        (a[0], a[2]),
        "same server seed, same seeds"
    );
    let b = seeds(Some(43));
    assert_ne!((b[0], b[2]), (a[0], a[2]));
    // Without the flag: seeds from the clock, as before.
    let c = seeds(None);
    assert_ne!((c[0], c[2]), (a[0], a[2]));
}

#[test]
fn max_queued_requests_refuses_arrivals_while_the_queue_is_full() {
    let mut r = rig(SchedulerConfig {
        max_queued_requests: Some(2),
        max_running_requests: 1,
        ..cfg()
    });
    r.submit("a", ids(1, 8), 4, 0.0);
    r.submit("b", ids(20, 8), 4, 0.0);
    // Two wait: the third is refused at once, never queued.
    r.submit("c", ids(40, 8), 4, 0.0);
    assert_eq!(r.s.waiting.len(), 2);
    match r.rx[2].try_recv() {
        Ok(Event::Done(f)) => {
            assert_eq!(f.reason, FinishReason::Refused(QUEUE_FULL.into()));
            assert_eq!((f.prompt_tokens, f.completion_tokens), (8, 0));
        }
        other => panic!("c was not refused: {other:?}"),
    }
    // One round admits "a" (one may run): a place is free again, and the next arrival queues.
    r.s.step();
    assert_eq!(r.running(), ["a"]);
    r.submit("d", ids(60, 8), 4, 0.0);
    assert_eq!(r.s.waiting.len(), 2);
    assert!(r.rx[3].try_recv().is_err(), "d was queued, not answered");
    r.submit("e", ids(80, 8), 4, 0.0);
    assert!(matches!(
        r.rx[4].try_recv(),
        Ok(Event::Done(f)) if matches!(f.reason, FinishReason::Refused(_))
    ));
    r.drain();
    // Every queued request ran to its budget.
    for i in [0, 1, 3] {
        let mut n = 0;
        while let Ok(ev) = r.rx[i].try_recv() {
            if let Event::Done(f) = ev {
                assert_eq!(f.reason, FinishReason::Length(4), "request {i}");
            } else {
                n += 1;
            }
        }
        assert_eq!(n, 4, "request {i}");
    }
}

/// A constrained request that reasons first (a chat under `--reasoning-parser`): its output up to
/// the reasoning end marker is free, the same greedy tokens as without a constraint; what follows
/// matches the grammar. Without a marker the whole output matches.
#[test]
fn a_reasoning_reply_is_constrained_after_its_end_marker() {
    use crate::grammar::{Compiler, Constraint};
    use crate::model::ModelRunner;
    use crate::sampling::GrammarRef;
    let mut r = rig(cfg());
    let tok = Tokenizer::load(r._dir.path()).unwrap();
    let compiler = Compiler::new(tok.token_bytes(r.s.model.cfg().vocab_size));
    let g = compiler
        .compile(&Constraint::Regex("[0-9]{2,6}".into()))
        .unwrap();
    let run = |r: &mut Rig, rid: &str, grammar: bool, think_end: Option<Vec<u32>>| {
        let (mut req, mut rx) = request(rid, ids(1, 12), 24, 0.0);
        if grammar {
            req.params.ignore_eos = false;
            req.params.grammar = Some(GrammarRef(g.clone()));
        }
        req.params.think_end = think_end.map(Into::into);
        r.s.handle(Msg::Submit(Box::new(req)));
        r.drain();
        tokens(&mut rx)
    };
    let free = run(&mut r, "free", false, None);
    // The marker: an output token that did not occur before it, past the first.
    let k = (1..free.len())
        .find(|&k| !free[..k].contains(&free[k]))
        .expect("a new token in the free output");
    let digits = |ids: &[u32]| {
        let t = tok.decode(ids, true);
        assert!(
            (2..=6).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()),
            "{t:?} does not match [0-9]{{2,6}}"
        );
    };
    let whole = run(&mut r, "whole", true, None);
    digits(&whole);
    let reasoned = run(&mut r, "reasoned", true, Some(vec![free[k]]));
    assert_eq!(
        reasoned[..=k],
        free[..=k],
        "the reasoning is not constrained"
    );
    digits(&reasoned[k + 1..]);
}

#[test]
fn priority_orders_admission_and_preempts_past_the_threshold() {
    use super::policy::Priority;
    let prio = Priority {
        enabled: true,
        ..Priority::default()
    };
    let mut r = rig(SchedulerConfig {
        max_running_requests: 2,
        priority: prio,
        ..cfg()
    });
    let mut rxs = Vec::new();
    let mut submit = |r: &mut Rig, rid: &str, start: u32, p: Option<i64>| {
        let (mut req, rx) = request(rid, ids(start, 10), 6, 0.0);
        req.params.priority = p;
        rxs.push((rid.to_string(), rx));
        r.s.handle(Msg::Submit(Box::new(req)));
    };
    submit(&mut r, "low", 1, None);
    submit(&mut r, "five", 100, Some(5));
    r.s.step();
    // Higher values first.
    assert_eq!(r.running(), ["five", "low"]);
    // 12 outranks the default 0 by more than 10: "low" is retracted for it.
    submit(&mut r, "twelve", 200, Some(12));
    r.s.step();
    assert_eq!(r.running(), ["five", "twelve"]);
    // 3 outranks neither running request by more than 10, and comes before "low" in the queue.
    submit(&mut r, "three", 300, Some(3));
    r.s.step();
    // (decoding, highest-ranked first)
    assert_eq!(r.running(), ["twelve", "five"]);
    let order: Vec<_> = r.s.waiting.iter().map(|s| s.req.rid.clone()).collect();
    r.s.order_waiting();
    let ordered: Vec<_> = r.s.waiting.iter().map(|s| s.req.rid.clone()).collect();
    assert_eq!(ordered, ["three", "low"], "queue was {order:?}");
    r.drain();
    // Every request finished with its whole budget; the retracted one's greedy output equals
    // an undisturbed run of the same prompt.
    let outputs: Vec<(String, Vec<u32>)> = rxs
        .iter_mut()
        .map(|(rid, rx)| (rid.clone(), tokens(rx)))
        .collect();
    for (rid, out) in &outputs {
        assert_eq!(out.len(), 6, "{rid}: {out:?}");
    }
    let mut plain = rig(cfg());
    let (req, mut rx) = request("low", ids(1, 10), 6, 0.0);
    plain.s.handle(Msg::Submit(Box::new(req)));
    plain.drain();
    assert_eq!(outputs[0].1, tokens(&mut rx));
    assert!(
        r.s.stats
            .retractions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // Without priority scheduling, --abort-on-priority-when-disabled refuses a priority.
    let mut r = rig(SchedulerConfig {
        priority: Priority {
            abort_when_disabled: true,
            ..Priority::default()
        },
        ..cfg()
    });
    let (mut req, mut rx) = request("p", ids(1, 4), 2, 0.0);
    req.params.priority = Some(1);
    r.s.handle(Msg::Submit(Box::new(req)));
    match rx.try_recv() {
        Ok(Event::Done(f)) => assert_eq!(
            f.reason,
            FinishReason::Abort(super::PRIORITY_DISABLED.into())
        ),
        other => panic!("{other:?}"),
    }
    assert!(r.s.waiting.is_empty());
}

#[test]
fn kv_pressure_retracts_the_lowest_priority_under_priority_scheduling() {
    use super::policy::Priority;
    // 256 pages of 4 tokens; three requests of 10 + 400 tokens cannot all stay.
    let run = |enabled: bool| {
        let mut r = rig(SchedulerConfig {
            priority: Priority {
                enabled,
                preempt_threshold: None,
                ..Priority::default()
            },
            ..cfg()
        });
        let mut rxs = Vec::new();
        for (i, (rid, p)) in [("a", None), ("b", Some(10)), ("c", Some(10))]
            .into_iter()
            .enumerate()
        {
            let (mut req, rx) = request(rid, ids(1 + 100 * i as u32, 10), 400, 0.0);
            req.params.priority = p;
            rxs.push(rx);
            r.s.handle(Msg::Submit(Box::new(req)));
            r.s.step();
        }
        let mut all = r.running();
        all.sort();
        assert_eq!(all, ["a", "b", "c"]);
        let mut first = None;
        for _ in 0..1000 {
            r.s.step();
            if let Some(s) = r.s.waiting.front() {
                first = Some(s.req.rid.clone());
                break;
            }
        }
        r.drain();
        for rx in &mut rxs {
            assert_eq!(tokens(rx).len(), 400);
        }
        first.expect("a retraction")
    };
    // The newest without priorities; the lowest-ranked with them.
    assert_eq!(run(false), "c");
    assert_eq!(run(true), "a");
}

#[test]
fn a_request_without_kv_room_preempts_a_lower_ranked_one() {
    use super::policy::Priority;
    // 1,024 tokens of pool: "a1" and "a2" (400 + 100 each) take 800 and more; "b" (400) has
    // no room beside them.
    // Prompts of 400 ids inside the tiny vocabulary, none sharing a prefix with another.
    let prompt = |off: u32| {
        (0..400)
            .map(|i| (i * 7 + off) % 500 + 1)
            .collect::<Vec<u32>>()
    };
    let run = |enabled: bool| {
        let mut r = rig(SchedulerConfig {
            priority: Priority {
                enabled,
                ..Priority::default()
            },
            ..cfg()
        });
        let mut rxs = Vec::new();
        for (i, rid) in ["a1", "a2"].into_iter().enumerate() {
            let (req, rx) = request(rid, prompt(i as u32), 100, 0.0);
            rxs.push(rx);
            r.s.handle(Msg::Submit(Box::new(req)));
        }
        for _ in 0..3 {
            r.s.step();
        }
        let (mut req, rx) = request("b", prompt(2), 100, 0.0);
        req.params.priority = Some(20);
        rxs.push(rx);
        r.s.handle(Msg::Submit(Box::new(req)));
        for _ in 0..3 {
            r.s.step();
        }
        let mut running: Vec<String> = r.running().iter().map(|s| s.to_string()).collect();
        running.sort();
        r.drain();
        for rx in &mut rxs {
            assert_eq!(tokens(rx).len(), 100);
        }
        running
    };
    assert_eq!(run(false), ["a1", "a2"]);
    // The newest of the two lower-ranked ones made room.
    assert_eq!(run(true), ["a1", "b"]);
}

/// `--max-loras-per-batch`: the running batch never holds more distinct adapters (the base model
/// counted as one) than the limit; admission stops at the first request that would exceed it and
/// resumes when an adapter leaves; every request still runs to the end.
#[test]
fn max_loras_per_batch_bounds_the_adapters_of_the_running_batch() {
    use crate::model::lora::LoraAdapter;
    use crate::sampling::LoraRef;
    let run = |limit: usize| -> (Vec<String>, usize) {
        let mut r = rig(SchedulerConfig {
            max_loras_per_batch: limit,
            ..cfg()
        });
        let dir = tempfile::tempdir().unwrap();
        let model_dir = r._dir.path().to_path_buf();
        let adapter = |name: &str, seed: u64| {
            let out = dir.path().join(name);
            strata_make_model::make_lora(&model_dir, &out, 4, 8.0, seed).unwrap();
            let a = LoraAdapter::load(name, &out, &r.s.model.cfg, None, None).unwrap();
            Some(LoraRef(Arc::new(a)))
        };
        let (a, b) = (adapter("a", 1), adapter("b", 2));
        let plan = [
            ("r1", a.clone(), 3),
            ("r2", None, 8),
            ("r3", b, 4),
            ("r4", a, 4),
        ];
        let mut rxs = Vec::new();
        for (i, (rid, lora, n)) in plan.iter().enumerate() {
            let (mut req, rx) = request(rid, ids(10 * i as u32 + 1, 6), *n, 0.0);
            req.params.lora = lora.clone();
            rxs.push(rx);
            r.s.handle(Msg::Submit(Box::new(req)));
        }
        r.s.step();
        let first: Vec<String> = r.running().iter().map(|s| s.to_string()).collect();
        let mut most = 0;
        for _ in 0..1000 {
            if r.s.running.is_empty() && r.s.waiting.is_empty() {
                break;
            }
            let mut keys: Vec<Option<u64>> =
                r.s.running
                    .iter()
                    .map(|s| s.req.params.lora.as_ref().map(|l| l.0.id))
                    .collect();
            keys.sort_unstable();
            keys.dedup();
            most = most.max(keys.len());
            r.s.step();
        }
        for (rx, (_, _, n)) in rxs.iter_mut().zip(plan) {
            assert_eq!(tokens(rx).len(), n);
        }
        (first, most)
    };
    assert_eq!(
        run(8),
        (vec!["r1".into(), "r2".into(), "r3".into(), "r4".into()], 3)
    );
    // Two: a and the base model; b waits (and r4 behind it) until r1 leaves.
    assert_eq!(run(2), (vec!["r1".into(), "r2".into()], 2));
    let (first, most) = run(1);
    assert_eq!((first, most), (vec!["r1".to_string()], 1));
}

/// Penalties read the output counted so far (kept per sequence, `Seq::update_counts`): a huge
/// presence penalty keeps every greedy token distinct, with chunked prompts and a neighbour in
/// the batch, where the same request without it repeats tokens.
#[test]
fn a_presence_penalty_sees_every_token_generated_so_far() {
    let run = |presence: f32| {
        let mut r = rig(SchedulerConfig {
            chunked_prefill_size: Some(8),
            ..test_cfg()
        });
        let (mut req, mut rx) = request("p", ids(5, 20), 60, 0.0);
        req.params.presence_penalty = presence;
        r.s.handle(Msg::Submit(Box::new(req)));
        r.submit("other", ids(40, 9), 30, 0.0);
        r.drain();
        tokens(&mut rx)
    };
    let free = run(0.0);
    let mut d = free.clone();
    d.sort_unstable();
    d.dedup();
    assert!(
        d.len() < free.len(),
        "the model repeats tokens unpenalised: {free:?}"
    );
    let out = run(1e6);
    assert_eq!(out.len(), 60);
    let mut d = out.clone();
    d.sort_unstable();
    d.dedup();
    assert_eq!(
        d.len(),
        out.len(),
        "a repeated token under the penalty: {out:?}"
    );
}
