//! The scheduler against a simulated device: how overlap scheduling changes a closed-loop
//! serving run, without a GPU. The runner is a time model only (`Sim`): a decode-only round of
//! plain greedy rows is queued (it ends `DECODE_US` after the device is free, and `collect`
//! sleeps until then, as the CUDA runner's graph replays), any other round runs inside its
//! launch for `DECODE_US + PREFILL_US_PER_TOKEN` x its prompt tokens (an eager prefill round).
//! Every sampled token is 1 (the model's numbers do not matter here). 64 client threads send
//! 128 requests of 1024 prompt tokens and 256 output tokens (`ignore_eos`), the shape of
//! docs/perf.md's "Overlap scheduling" runs, to a scheduler with the H200's default chunked
//! prefill (16384), `--max-running-requests 64`, page size 16, with and without overlap.
//!
//! Usage: `cargo run --release -p strata-server --example overlap_sim [ROUNDS]`. Prints per
//! run the output tokens/s, mean / median TTFT (also per wave: the first 64 requests, sent at
//! once, and the 64 sent as those finish), ITL mean / p99, and how many of the second wave were
//! sent within 5 ms of its first (bursts of new requests).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_kernels::CpuBackend;
use strata_make_model::{make_model, DType, MakeModel, Size};
use strata_server::kv::DeviceKvPool;
use strata_server::model::{
    Arch, ForwardBatch, KvBuffers, Launch, Model, ModelConfig, ModelError, ModelRunner, Queued,
    SampleReq, Sampled, Tokenizer,
};
use strata_server::sampling::SamplingParams;
use strata_server::scheduler::request::{Event, Request};
use strata_server::scheduler::{spawn_with_hook, SchedulerConfig, Seams};
use strata_server::stats::Stats;

/// One round of decodes (the 1B shape's c=64 graph step on an H200, docs/perf.md).
const DECODE_US: u64 = 1700;
/// Prompt tokens of an eager round, each.
const PREFILL_US_PER_TOKEN: u64 = 3;
const CLIENTS: usize = 64;
const REQUESTS: usize = 128;

/// The simulated device: when it is free, and the queued forwards' ends.
struct Sim {
    inner: Model<CpuBackend>,
    free_at: Instant,
    queued: HashMap<usize, (Instant, usize)>,
    next: usize,
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

impl Sim {
    /// Queues `b` after the work already queued; returns when it ends.
    fn occupy(&mut self, b: &ForwardBatch) -> Instant {
        let prompt: usize = b.seqs.iter().filter(|s| s.q_len > 1).map(|s| s.q_len).sum();
        let cost = Duration::from_micros(DECODE_US + PREFILL_US_PER_TOKEN * prompt as u64);
        self.free_at = self.free_at.max(Instant::now()) + cost;
        self.free_at
    }
}

fn ones(n: usize) -> Vec<Sampled> {
    (0..n).map(|_| Sampled::token(1, None)).collect()
}

impl ModelRunner for Sim {
    type Kv = KvBuffers<CpuBackend>;
    fn cfg(&self) -> &ModelConfig {
        self.inner.cfg()
    }
    fn name(&self) -> &'static str {
        "sim"
    }
    fn kv_bytes_per_token(&self) -> usize {
        self.inner.kv_bytes_per_token()
    }
    fn new_kv(&self, pages: usize, page_size: usize) -> Result<Self::Kv, ModelError> {
        self.inner.new_kv(pages, page_size)
    }
    fn run_batch(
        &mut self,
        b: &ForwardBatch,
        s: &[SampleReq<'_>],
        _kv: &mut Self::Kv,
    ) -> Result<Vec<Sampled>, ModelError> {
        sleep_until(self.occupy(b));
        Ok(ones(s.len()))
    }
    fn queues(&self) -> bool {
        true
    }
    fn launch(
        &mut self,
        b: &ForwardBatch,
        s: &[SampleReq<'_>],
        kv: &mut Self::Kv,
    ) -> Result<Launch, ModelError> {
        let queueable =
            b.seqs.iter().all(|x| x.q_len == 1) && s.iter().all(|r| r.from_logits_alone());
        if !queueable {
            return self.run_batch(b, s, kv).map(Launch::Done);
        }
        let end = self.occupy(b);
        self.next += 1;
        self.queued.insert(self.next, (end, s.len()));
        Ok(Launch::Queued(Queued {
            slot: self.next,
            rows: s.len(),
        }))
    }
    fn collect(&mut self, q: Queued, _kv: &mut Self::Kv) -> Result<Vec<Sampled>, ModelError> {
        let (end, n) = self.queued.remove(&q.slot).expect("queued");
        sleep_until(end);
        Ok(ones(n))
    }
}

/// Per request: (index, sent at ms, TTFT ms); and every inter-token gap in ms.
type Timings = (Vec<(usize, f64, f64)>, Vec<f64>);

fn run(model_dir: &std::path::Path, overlap: bool) -> (f64, Timings) {
    let model = Sim {
        inner: Model::load(model_dir, CpuBackend, 4096).expect("model"),
        free_at: Instant::now(),
        queued: HashMap::new(),
        next: 0,
    };
    let tok = Arc::new(Tokenizer::load(model_dir).expect("tokenizer"));
    let pool = DeviceKvPool::new(&model, 8192, 16).expect("pool");
    let cfg = SchedulerConfig {
        page_size: 16,
        max_running_requests: CLIENTS,
        chunked_prefill_size: Some(16384),
        context_length: 4096,
        overlap_schedule: overlap,
        ..SchedulerConfig::default()
    };
    let stats = Arc::new(Stats::default());
    let h =
        Arc::new(spawn_with_hook(cfg, model, pool, tok, stats, Seams::default()).expect("spawn"));
    let t0 = Instant::now();
    let ttft = Arc::new(Mutex::new(Vec::new()));
    let gaps = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (h, ttft, gaps, next) = (h.clone(), ttft.clone(), gaps.clone(), next.clone());
            std::thread::spawn(move || loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= REQUESTS {
                    return;
                }
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let mut params = SamplingParams {
                    max_new_tokens: 256,
                    ..SamplingParams::default()
                };
                params.ignore_eos = true;
                params.sample.temperature = 0.0;
                let sent = Instant::now();
                assert!(h.submit(Request {
                    bootstrap: None,
                    embed: false,
                    rid: format!("r{k}"),
                    input_ids: (0..1024)
                        .map(|i| ((i * 7 + k * 131) % 250 + 3) as u32)
                        .collect(),
                    params,
                    logprobs: None,
                    events: tx,
                    arrival: sent,
                }));
                let (mut first, mut last) = (None, sent);
                while let Some(ev) = rx.blocking_recv() {
                    match ev {
                        Event::Token { .. } => {
                            let now = Instant::now();
                            match first {
                                None => first = Some(now.duration_since(sent)),
                                Some(_) => gaps
                                    .lock()
                                    .unwrap()
                                    .push(now.duration_since(last).as_secs_f64() * 1e3),
                            }
                            last = now;
                        }
                        Event::Done(_) => break,
                        _ => {}
                    }
                }
                let at = sent.duration_since(t0).as_secs_f64() * 1e3;
                let first = first.expect("a token").as_secs_f64() * 1e3;
                ttft.lock().unwrap().push((k, at, first));
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let tok_s = (REQUESTS * 256) as f64 / t0.elapsed().as_secs_f64();
    let t = ttft.lock().unwrap().clone();
    let g = gaps.lock().unwrap().clone();
    (tok_s, (t, g))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(2, |a| a.parse().expect("ROUNDS"));
    let dir = tempfile::tempdir().expect("tempdir");
    let made = MakeModel {
        arch: Arch::Llama,
        size: Size::Tiny,
        seed: 0,
        dtype: DType::F32,
    };
    make_model(&made, dir.path()).expect("make model");
    println!(
        "| round | overlap | out tok/s | TTFT mean / median | wave 1 / wave 2 TTFT | ITL mean / p99 | wave 2 sent within 5 ms of its first |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in 1..=rounds {
        for overlap in [true, false] {
            let (tok_s, (t, gaps)) = run(dir.path(), overlap);
            let all = sorted(t.iter().map(|x| x.2).collect());
            let wave = |second: bool| -> Vec<f64> {
                t.iter()
                    .filter(|x| (x.0 >= CLIENTS) == second)
                    .map(|x| x.2)
                    .collect()
            };
            let sent2 = sorted(t.iter().filter(|x| x.0 >= CLIENTS).map(|x| x.1).collect());
            let burst = sent2.iter().filter(|&&s| s - sent2[0] < 5.0).count();
            let g = sorted(gaps);
            println!(
                "| {r} | {overlap} | {tok_s:.0} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.2} / {:.1} ms | {burst} |",
                mean(&all),
                all[all.len() / 2],
                mean(&wave(false)),
                mean(&wave(true)),
                mean(&g),
                g[g.len() * 99 / 100],
            );
        }
    }
}
