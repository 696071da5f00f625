//! Caching a prompt while it is still being prefilled (SGLang's `cache_unfinished_req`): after
//! each chunk of a chunked prefill, the sequence's whole computed pages join the radix tree and
//! its lock moves down to them, so a request that arrives while the long prompt is still being
//! computed reuses the chunks already done instead of computing them again beside it. Where the
//! tree already holds a page's content (another sequence inserted it first), the sequence takes
//! the tree's page and its own goes back to the pool. PD legs keep their pages private (their
//! transfer reads them), as on the decode side the cache is off. `STRATA_CACHE_UNFINISHED=0`
//! turns it off (for side-by-side measurements).

use super::Scheduler;
use crate::kv::Page;
use crate::model::ModelRunner;

impl<R: ModelRunner> Scheduler<R> {
    /// Caches the whole computed pages of running sequence `i` if it is mid-prefill.
    pub(super) fn cache_unfinished(&mut self, i: usize) {
        let ps = self.cfg.page_size;
        let s = &mut self.running[i];
        if !self.cache_unfinished
            || !self.cfg.radix_cache
            || s.req.bootstrap.is_some()
            || s.computed >= s.prompt_len
        {
            return;
        }
        let (full, have) = (s.computed / ps, s.prefix_pages().len());
        if full <= have || full - have > s.own_pages().len() {
            return;
        }
        let own: Vec<Page> = s.take_own_front(full - have);
        // Moved out for the insert (the scheduler's other fields are borrowed), and back.
        let tokens = std::mem::take(&mut s.tokens);
        let ns = s.ns;
        self.cache_pages(ns, &tokens[..full * ps], have, own);
        let m = self.tree.match_prefix(ns, &tokens[..full * ps]);
        debug_assert_eq!(m.pages.len(), full, "the inserted pages are on the device");
        self.tree.lock(m.node);
        let s = &mut self.running[i];
        s.tokens = tokens;
        let old = s.lock_node.replace(m.node);
        s.set_prefix(m.pages);
        if let Some(old) = old {
            self.tree.unlock(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::{Event, Msg};
    use super::super::tests::{request, rig, test_cfg};
    use super::super::SchedulerConfig;
    use crate::kv::KvPool;

    /// (output tokens, cached prompt tokens) once the request is done.
    fn result(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, usize) {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Token { id, .. } => out.push(id),
                Event::Done(f) => return (out, f.cached_tokens),
                Event::Input(_) | Event::Embedding(_) | Event::Hidden(_) => {}
            }
        }
        panic!("not done: {out:?}");
    }

    fn chunked() -> SchedulerConfig {
        SchedulerConfig {
            chunked_prefill_size: Some(16),
            ..test_cfg()
        }
    }

    #[test]
    fn a_request_arriving_mid_prefill_reuses_the_chunks_already_computed() {
        let prompt: Vec<u32> = (1..=64).collect();
        let mut longer = prompt.clone();
        longer.extend(200..206);
        // The reference: `b` alone.
        let mut r = rig(chunked());
        let (b, mut brx) = request("b", longer.clone(), 6, 0.0);
        r.s.handle(Msg::Submit(Box::new(b)));
        r.drain();
        let (want, cached) = result(&mut brx);
        assert_eq!(cached, 0);

        // `a` prefills 16 tokens a round; `b` arrives after its first chunk and is admitted
        // once `a`'s prefill is done, while `a` still runs: the three chunks cached before
        // `a`'s last one are `b`'s (48 tokens), not recomputed.
        let mut r = rig(chunked());
        let (a, mut arx) = request("a", prompt.clone(), 8, 0.0);
        r.s.handle(Msg::Submit(Box::new(a)));
        r.s.step();
        assert_eq!(r.s.running[0].computed, 16);
        assert_eq!(r.s.tree.cached_pages(), 4, "the first chunk is cached");
        let (b, mut brx) = request("b", longer, 6, 0.0);
        r.s.handle(Msg::Submit(Box::new(b)));
        r.drain();
        let (got, cached) = result(&mut brx);
        assert_eq!(cached, 48, "b reused a's finished chunks");
        assert_eq!(got, want, "the same greedy output as computed alone");
        assert_eq!(result(&mut arx).0.len(), 8);
        // Every page is accounted for, and the tree is sound.
        r.s.tree.check();
        assert_eq!(
            r.s.pool.free_pages() + r.s.tree.cached_pages(),
            r.s.pool.total_pages()
        );
    }

    #[test]
    fn identical_prompts_queued_together_answer_alike_and_keep_the_pool_whole() {
        // `b` is admitted after `a`'s first chunk (the 32-token budget goes to `a` first) and
        // takes it from the cache; the pages both compute or share all come back.
        let cfg = SchedulerConfig {
            chunked_prefill_size: Some(32),
            ..test_cfg()
        };
        let prompt: Vec<u32> = (1..=48).collect();
        let mut r = rig(cfg.clone());
        let (a, mut arx) = request("a", prompt.clone(), 4, 0.0);
        r.s.handle(Msg::Submit(Box::new(a)));
        r.drain();
        let (want, _) = result(&mut arx);
        let mut r = rig(cfg);
        let mut rxs = Vec::new();
        for rid in ["a", "b"] {
            let (q, rx) = request(rid, prompt.clone(), 4, 0.0);
            r.s.handle(Msg::Submit(Box::new(q)));
            rxs.push(rx);
        }
        r.drain();
        for rx in &mut rxs {
            assert_eq!(result(rx).0, want);
        }
        r.s.tree.check();
        assert_eq!(
            r.s.pool.free_pages() + r.s.tree.cached_pages(),
            r.s.pool.total_pages()
        );
    }
}
