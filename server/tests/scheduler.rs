//! The scheduler in-process (no HTTP): a request held by the prefetch hook does not block the ones
//! behind it and runs once released; pages are all back when the work is done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_kernels::CpuBackend;
use strata_make_model::{make_model, DType, MakeModel, Size};
use strata_server::kv::DeviceKvPool;
use strata_server::model::{Arch, Model, Tokenizer};
use strata_server::sampling::SamplingParams;
use strata_server::scheduler::hooks::PrefetchHook;
use strata_server::scheduler::request::{Event, FinishReason, Request};
use strata_server::scheduler::{spawn_with_hook, SchedulerConfig, Seams};
use strata_server::stats::Stats;
use tokio::sync::mpsc;

struct HoldUntil(Arc<AtomicBool>);

impl PrefetchHook for HoldUntil {
    fn on_enqueue(&mut self, rid: &str, _: &[u32], _: usize) -> bool {
        rid == "held"
    }
    fn ready(&mut self, _: &str) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn request(rid: &str, ids: Vec<u32>) -> (Request, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let params = SamplingParams {
        max_new_tokens: 5,
        sample: strata_kernels::sampling::SampleParams {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
        },
        ..SamplingParams::default()
    };
    (
        Request {
            bootstrap: None,
            embed: false,
            rid: rid.into(),
            input_ids: ids,
            params,
            logprobs: None,
            events: tx,
            arrival: Instant::now(),
        },
        rx,
    )
}

fn wait_done(rx: &mut mpsc::UnboundedReceiver<Event>, limit: Duration) -> Option<FinishReason> {
    let t = Instant::now();
    while t.elapsed() < limit {
        match rx.try_recv() {
            Ok(Event::Done(f)) => return Some(f.reason),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    None
}

#[test]
fn held_request_does_not_block_others_and_pages_return() {
    let dir = tempfile::tempdir().unwrap();
    make_model(
        &MakeModel {
            arch: Arch::Llama,
            size: Size::Tiny,
            seed: 0,
            dtype: DType::F32,
        },
        dir.path(),
    )
    .unwrap();
    let model = Model::load(dir.path(), CpuBackend, 512).unwrap();
    let tok = Arc::new(Tokenizer::load(dir.path()).unwrap());
    let pool = DeviceKvPool::new(&model, 64, 4).unwrap();
    let stats = Arc::new(Stats::default());
    let cfg = SchedulerConfig {
        chunked_prefill_size: Some(16),
        ..SchedulerConfig::default()
    };
    let release = Arc::new(AtomicBool::new(false));
    let h = spawn_with_hook(
        cfg,
        model,
        pool,
        tok,
        stats.clone(),
        Seams {
            hook: Box::new(HoldUntil(release.clone())),
            ..Seams::default()
        },
    )
    .unwrap();
    let (held, mut held_rx) = request("held", (1..30).collect());
    let (free, mut free_rx) = request("free", (40..60).collect());
    assert!(h.submit(held));
    assert!(h.submit(free));
    assert!(matches!(
        wait_done(&mut free_rx, Duration::from_secs(10)),
        Some(FinishReason::Length(5))
    ));
    assert!(
        wait_done(&mut held_rx, Duration::from_millis(100)).is_none(),
        "held request ran early"
    );
    release.store(true, Ordering::SeqCst);
    assert!(matches!(
        wait_done(&mut held_rx, Duration::from_secs(10)),
        Some(FinishReason::Length(5))
    ));
    // All pages are free or in the prefix cache.
    let t = Instant::now();
    loop {
        let (free, cached, total) = (
            Stats::get(&stats.free_pages),
            Stats::get(&stats.cached_pages),
            Stats::get(&stats.total_pages),
        );
        if free + cached == total && Stats::get(&stats.running) == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "pages not returned: free {free} cached {cached} total {total}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Records the (q_len, kv_len, decode) of every sequence slice the scheduler hands the model.
struct Recorder {
    inner: Model<CpuBackend>,
    log: Arc<std::sync::Mutex<Vec<(usize, usize, bool)>>>,
}

impl strata_server::model::ModelRunner for Recorder {
    type Kv = strata_server::model::KvBuffers<CpuBackend>;
    fn cfg(&self) -> &strata_server::model::ModelConfig {
        self.inner.cfg()
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn kv_bytes_per_token(&self) -> usize {
        self.inner.kv_bytes_per_token()
    }
    fn new_kv(
        &self,
        num_pages: usize,
        page_size: usize,
    ) -> Result<Self::Kv, strata_server::model::ModelError> {
        self.inner.new_kv(num_pages, page_size)
    }
    fn run_batch(
        &mut self,
        batch: &strata_server::model::ForwardBatch,
        sampling: &[strata_server::model::SampleReq<'_>],
        kv: &mut Self::Kv,
    ) -> Result<Vec<strata_server::model::Sampled>, strata_server::model::ModelError> {
        let mut log = self.log.lock().unwrap();
        log.extend(batch.seqs.iter().map(|s| (s.q_len, s.kv_len, s.decode)));
        drop(log);
        strata_server::model::ModelRunner::run_batch(&mut self.inner, batch, sampling, kv)
    }
}

/// Batch-invariant runners compute generated tokens with the decode kernels and every prompt row
/// with the prefill kernels: the scheduler marks a slice `decode` only when it feeds back a
/// sampled token, never for a one-token prompt tail left by chunked prefill.
#[test]
fn only_generated_tokens_are_marked_decode() {
    let dir = tempfile::tempdir().unwrap();
    make_model(
        &MakeModel {
            arch: Arch::Llama,
            size: Size::Tiny,
            seed: 0,
            dtype: DType::F32,
        },
        dir.path(),
    )
    .unwrap();
    let inner = Model::load(dir.path(), CpuBackend, 512).unwrap();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let model = Recorder {
        inner,
        log: log.clone(),
    };
    let tok = Arc::new(Tokenizer::load(dir.path()).unwrap());
    let pool = DeviceKvPool::new(&model, 64, 4).unwrap();
    let cfg = SchedulerConfig {
        chunked_prefill_size: Some(16),
        ..SchedulerConfig::default()
    };
    let h = spawn_with_hook(
        cfg,
        model,
        pool,
        tok,
        Arc::new(Stats::default()),
        Seams::default(),
    )
    .unwrap();
    // 17 prompt tokens in chunks of 16: a one-token prompt tail, then 4 decode steps (5 tokens,
    // the first sampled at the end of the prompt).
    let (r, mut rx) = request("tail", (1..18).collect());
    assert!(h.submit(r));
    assert!(matches!(
        wait_done(&mut rx, Duration::from_secs(10)),
        Some(FinishReason::Length(5))
    ));
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            (16, 16, false),
            (1, 17, false),
            (1, 18, true),
            (1, 19, true),
            (1, 20, true),
            (1, 21, true)
        ]
    );
}
