//! `/update_weights_from_disk` in the scheduler (SGLang's semantics): the requests already in
//! the scheduler finish on the old weights (or are aborted first, `abort_all_requests`), the
//! requests that arrive meanwhile wait, the runner swaps in the new checkpoint, the prefix
//! cache is dropped (`flush_cache`, its pages hold the old weights' KV) and the L3 keys move to
//! a namespace of the new weights, then the waiting requests run. Under `/pause_generation` the
//! swap happens at once: paused requests keep their pages and go on with the new weights
//! (SGLang's in-place partial rollouts), and the cache is flushed only when no request holds
//! pages of it.

use super::request::Msg;
use super::Scheduler;
use crate::model::ModelRunner;

/// One pending update.
#[derive(Debug)]
pub struct WeightUpdate {
    pub dir: std::path::PathBuf,
    pub abort_all: bool,
    pub flush: bool,
    /// Names the new weights in the L3 keys (the weight version, else the path).
    pub tag: String,
    pub reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

impl<R: ModelRunner> Scheduler<R> {
    /// Takes an update request: aborts everything first when asked, then waits.
    pub(super) fn start_update(&mut self, u: WeightUpdate) {
        if self.update.is_some() {
            let _ = u
                .reply
                .send(Err("Another weight update is in progress.".into()));
            return;
        }
        tracing::info!(dir = %u.dir.display(), abort_all = u.abort_all, "weight update requested");
        if u.abort_all {
            self.handle(Msg::Abort(String::new()));
            self.reap_aborted();
        }
        self.update = Some(u);
        self.apply_update_when_ready();
    }

    /// Swaps the weights once nothing that came before the update is left (at once when
    /// paused), answers, and lets the held requests in.
    pub(super) fn apply_update_when_ready(&mut self) {
        let drained = self.running.is_empty() && self.waiting.is_empty();
        if self.update.is_none() || !(drained || self.paused) {
            return;
        }
        let u = self.update.take().expect("an update");
        let t = std::time::Instant::now();
        let r = self.model.reload_weights(&u.dir, &mut self.pool.buffers);
        let reply = match r {
            Ok(()) => {
                let mut msg = "Succeeded to update model weights.".to_string();
                if u.flush && !self.tree.reset() {
                    msg += " The prefix cache was not flushed: paused requests hold its pages.";
                }
                if let Some(h) = &mut self.hicache {
                    h.set_weights_tag(&u.tag);
                }
                tracing::info!(
                    dir = %u.dir.display(),
                    secs = t.elapsed().as_secs_f64(),
                    "weights updated"
                );
                Ok(msg)
            }
            Err(e) => {
                tracing::warn!(dir = %u.dir.display(), "weight update failed: {e}");
                Err(format!(
                    "Failed to update weights: {e}. The served weights are unchanged."
                ))
            }
        };
        let _ = u.reply.send(reply);
        self.publish();
        for req in std::mem::take(&mut self.held) {
            self.handle(Msg::Submit(req));
        }
    }
}
