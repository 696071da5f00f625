//! The scheduler's side of PD disaggregation: a server's role (`PdSide`), the pool pages a PD
//! decode's fetch writes into, and a PD prefill leg's KV handed to the registry (parts while the
//! prompt's later chunks compute, the whole prompt when it finishes: in the pool where the
//! transfer threads reach it, else copied into a staging pool).

use super::seq::Seq;
use super::Scheduler;
use crate::kv::KvPool;
use crate::model::ModelRunner;
use std::sync::Arc;

/// The scheduler's part of PD disaggregation.
pub enum PdSide {
    /// Finished prefills hand their KV to the bootstrap server's registry.
    Prefill(Arc<crate::pd::prefill::Registry>),
    /// Requests are held while their KV is fetched from the prefill (boxed: the fetcher is
    /// large, the registry a pointer).
    Decode(Box<crate::pd::decode::Fetcher>),
}

impl<R: ModelRunner> Scheduler<R> {
    /// Gives the server a PD role.
    pub fn with_pd(mut self, pd: Option<PdSide>) -> Self {
        if pd.is_some() && std::env::var("STRATA_PD_POOL").map_or(true, |v| v != "0") {
            self.pd_spans = self.model.host_spans(&self.pool.buffers).map(Arc::new);
            if let Some(PdSide::Decode(f)) = &pd {
                self.pd_device = f.device();
            }
        }
        self.pd = pd;
        self
    }

    /// PD decode: pool pages for a prompt of `prompt_len` tokens for its fetch to write into
    /// (no staging copy), when the pool memory is reachable and an eighth of the pool stays free
    /// for the running requests afterwards; else the fetch stages the pages.
    pub(super) fn pd_dest(&self, prompt_len: usize) -> Option<crate::pd::decode::Dest> {
        let spans = self.pd_spans.clone();
        if spans.is_none() && self.pd_device.is_none() {
            return None;
        }
        let n = prompt_len.div_ceil(self.cfg.page_size);
        if self.pool.free_pages() < n + self.pool.total_pages() / 8 {
            return None;
        }
        // A device-to-device copy into the pages starts after the forwards queued so far.
        let fence = match (&spans, &self.pd_device) {
            (None, Some(d)) => match d.fence() {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("PD: {e}; the KV is staged");
                    return None;
                }
            },
            _ => None,
        };
        let pages = self.pool.alloc(n)?;
        Some(crate::pd::decode::Dest {
            pages,
            spans,
            fence,
        })
    }

    /// PD prefill: hands the pages a chunk just finished (whole pages; not the prompt's last
    /// chunk, whose pages go with the final handoff) of running prefill legs `idx` to the
    /// registry as parts, sent to the decode while the next chunk computes. Only pages the
    /// transfer threads reach where they are (the CPU runner's pool; the GPU pool, when the
    /// waiting decode has it open). The runner's forward has returned, so the KV is written.
    pub(super) fn pd_push_parts(&mut self, idx: &[usize]) {
        let Some(PdSide::Prefill(reg)) = &self.pd else {
            return;
        };
        let reg = reg.clone();
        let ps = self.cfg.page_size;
        let pool_spans = self.pd_spans.clone();
        for &i in idx {
            let s = &mut self.running[i];
            let Some(room) = s
                .req
                .bootstrap
                .as_ref()
                .filter(|b| b.is_real())
                .map(|b| b.room)
            else {
                continue;
            };
            let full = s.computed / ps;
            if s.computed >= s.prompt_len || full <= s.pd_sent {
                continue;
            }
            let ids = s.page_table()[s.pd_sent..full].to_vec();
            let pages = if let Some(spans) = pool_spans.clone() {
                crate::pd::prefill::Pages::Pool { spans, pages: ids }
            } else if let Some(info) = reg.device_for(room, ids) {
                crate::pd::prefill::Pages::Device(info)
            } else {
                continue;
            };
            reg.part(
                room,
                crate::pd::prefill::Part {
                    n_tokens: s.prompt_len as u32,
                    page_size: ps,
                    pages,
                    n_pages: full - s.pd_sent,
                },
            );
            s.pd_sent = full;
            if !reg.test_stall().is_zero() {
                std::thread::sleep(reg.test_stall());
            }
        }
    }

    /// The prompt's pages of a finished PD prefill leg: left in the pool when the transfer
    /// threads can reach them there (the CPU runner's memory; the GPU pool, when the waiting
    /// decode has it open), else copied into a staging pool.
    pub(super) fn handoff_pages(
        &self,
        reg: &crate::pd::prefill::Registry,
        room: u64,
        s: &Seq,
    ) -> Result<(crate::pd::prefill::Pages, usize), String> {
        use crate::pd::prefill::Pages;
        let n_pages = s.prompt_len.div_ceil(self.cfg.page_size);
        let table = s.page_table();
        if table.len() < n_pages || s.computed < s.prompt_len {
            return Err("the prompt's KV is incomplete".into());
        }
        let ids = table[..n_pages].to_vec();
        if let Some(spans) = self.pd_spans.clone() {
            return Ok((Pages::Pool { spans, pages: ids }, n_pages));
        }
        if let Some(info) = reg.device_for(room, ids) {
            return Ok((Pages::Device(info), n_pages));
        }
        let (staging, n) = self.stage_prompt_kv(s)?;
        Ok((Pages::Staged(staging), n))
    }

    /// Copies the prompt's KV pages of `s` into a new staging host pool (PD prefill side).
    fn stage_prompt_kv(&self, s: &Seq) -> Result<(crate::kv::HostKvPool, usize), String> {
        let ps = self.cfg.page_size;
        let n_pages = s.prompt_len.div_ceil(ps);
        let table = s.page_table();
        if table.len() < n_pages || s.computed < s.prompt_len {
            return Err("the prompt's KV is incomplete".into());
        }
        let cfg = self.model.cfg();
        let (layers, kv_dim, elem) = (cfg.num_layers, cfg.kv_dim(), self.model.kv_elem_bytes());
        let make = |pages| {
            crate::kv::HostKvPool::new(
                pages,
                ps,
                layers,
                kv_dim,
                elem,
                crate::hicache::MemLayout::PageFirst,
            )
        };
        let staging = match &self.pd {
            Some(PdSide::Prefill(reg)) => {
                reg.staging()
                    .take(n_pages, ps * layers * kv_dim * elem, make)?
            }
            _ => make(n_pages)?,
        };
        let host: Vec<u32> = (0..n_pages as u32).collect();
        self.model
            .save_pages(&self.pool.buffers, &table[..n_pages], &staging, &host)
            .map_err(|e| format!("cannot copy the KV cache out: {e}"))?;
        Ok((staging, n_pages))
    }
}
