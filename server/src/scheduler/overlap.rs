//! Overlap scheduling (SGLang's overlap scheduler; `--disable-overlap-schedule` turns it off):
//! while the device runs one forward, the scheduler builds and launches the next, then takes
//! the first one's tokens back. The host's round (streaming, finishing, the next batch, its
//! metadata) then runs beside the device's work instead of between two forwards.
//!
//! The next round is built before the tokens it feeds are known: each sampled row leaves a
//! placeholder at the end of its sequence's tokens, and the next forward takes that input from
//! the forward in flight (`ForwardBatch::from_prev`, copied on the device). A sequence whose
//! token ends it (EOS, a stop string) has already been fed to the next forward: that forward's
//! row for it is dropped and the sequence finishes when it is taken back ("zombie"), so no token
//! past the end reaches the client. Length limits are known ahead and fed no further.
//!
//! A round runs ahead only into a round the runner can queue: every sequence decoding one token
//! drawn from its logits alone (greedy or sampled with temperature, top-k/p, min-p, logit bias,
//! bans, output logprobs, frequency / presence / repetition penalties: the token fed forward,
//! not on the host yet, is counted by the runner from the device, `SampleReq::uncounted`; no
//! hidden states) or under a grammar, nobody waiting who could be admitted, and pages for every
//! decode without a retraction (free or evictable). A grammar's mask follows the token in
//! flight, so such a round is launched in two halves (SGLang's delayed sampling): the forward
//! first (`ModelRunner::launch_later`), then, once the forward in flight is taken back and the
//! grammars have walked its tokens, the sampling requests with their masks, built as a round
//! without overlap builds them (`ModelRunner::sample_later`; `STRATA_OVERLAP_GRAMMAR=0` keeps
//! grammar rows out of queued replays and rounds run ahead, `runner::overlap_grammar_from_env`).
//! Building any other round early would only hold back the tokens in flight until that round
//! (an eager prefill, rows sampled on the host) has run: in c=64 runs with 1K prompts (on the
//! GPU, and reproduced against a simulated device) that merged the bursts of new requests
//! behind long prefill rounds and raised their time to first token. Otherwise, and for
//! priority scheduling (preemption) and every message but a new request or an abort, the
//! forward in flight is taken back first (`sync`).
//! HiCache servers run with it (the pages they copy are those of forwards already taken back;
//! `STRATA_OVERLAP_HICACHE=0` turns it off there); PD prefill servers run without it (their
//! copies read pages on other threads, ordered by the forward that wrote them having
//! returned; every prefill round is eager anyway). A PD decode
//! server runs with it: its fetches write only pages no forward reads (handed out free, after a
//! fence on the compute stream, which the forward in flight only moves later), and a request
//! whose KV has landed joins at admission like any other (its staged copy, if any, loaded into
//! its own fresh pages before the forward that reads them is launched).
//! The runner decides whether a launch returns early (`ModelRunner::queues`: the CUDA
//! runner's graph replays of decode batches sampled on the device). Only such a queued forward
//! is kept in flight; one that ran inside its launch (an eager prefill, grammar rows) is taken
//! back at once, so its tokens are not held back a round. On the CPU every forward runs inside its
//! launch, so overlap is off there unless `STRATA_OVERLAP_SCHEDULE=1` turns it on and holds
//! every forward as if queued (tests of the bookkeeping).

use super::batch::Item;
use super::forward::Row;
use super::{PdSide, Scheduler};
use crate::kv::KvPool;
use crate::model::{Launch, ModelError, ModelRunner};

/// The token value that stands for one still being sampled (never a vocabulary id).
pub(super) const PLACEHOLDER: u32 = u32::MAX;

/// A launched forward whose rows are not taken back yet; sequences are named by uid (the
/// running list is rebuilt every round).
pub(super) struct InFlight {
    pub launch: Result<Launch, ModelError>,
    pub items: Vec<(u64, Item)>,
    /// Per logits row: the sequence and what the row is for.
    pub rows: Vec<(u64, Row)>,
    /// Sequences whose first input position is still to be sent.
    pub heads: Vec<u64>,
    /// Sequences at their length limit without sampling.
    pub done: Vec<u64>,
    pub t0: std::time::Instant,
    /// A batch launched in two halves whose sampling requests are still to come (`launch`
    /// then holds the first half's result): its rows' grammar masks follow the tokens of the
    /// forward that was in flight.
    pub later: Option<crate::model::ForwardBatch>,
}

impl<R: ModelRunner> Scheduler<R> {
    /// Whether rounds run ahead of the forward in flight on this server.
    pub(super) fn overlap(&self) -> bool {
        self.overlap
            && (self.hicache.is_none() || self.hicache_overlap)
            && !matches!(self.pd, Some(PdSide::Prefill(_)))
    }

    /// Whether the next round may be built and launched before the forward in flight is taken
    /// back: only a round the runner can queue (every sequence decoding one token drawn from
    /// its logits alone, nobody to admit) gains from it; building any other round early only
    /// holds back the tokens in flight until that round (an eager prefill, rows sampled on the
    /// host) has run.
    pub(super) fn can_run_ahead(&self) -> bool {
        if !self.overlap() || self.cfg.priority.enabled {
            return false;
        }
        let (ctx, ps) = (self.cfg.context_length, self.cfg.page_size);
        let (mut need, mut going_on) = (0, 0);
        for s in &self.running {
            if s.zombie.is_some() || s.ends_on_pending(ctx) {
                continue;
            }
            if s.computed == 0
                || s.remaining() != 1
                || !s.samples_ahead(self.overlap_wide, self.overlap_grammar)
            {
                return false;
            }
            going_on += 1;
            if s.pages_held() * ps < s.tokens.len() {
                need += 1;
            }
        }
        let room = going_on < self.cfg.max_running_requests;
        if room && self.waiting.iter().any(|s| !s.held && !s.pd_fetch) {
            // A waiting request could be admitted (with the places of what ends in flight).
            // Held ones (a PD decode's KV on its way) are not counted: on a PD decode server
            // some usually are, and one whose KV has landed joins as a decode.
            return false;
        }
        need <= KvPool::free_pages(&self.pool) + self.tree.evictable_pages()
    }

    /// Takes back the forward in flight, if any (watched as a round: a hung device blocks here
    /// too).
    pub(super) fn sync(&mut self) {
        if let Some(f) = self.inflight.take() {
            let _round = super::watchdog::round(&self.watchdog);
            self.collect(f);
        }
    }
}
