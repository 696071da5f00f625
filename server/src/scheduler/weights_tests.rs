//! `/update_weights_from_disk` in the scheduler, on the real thread: the update waits for the
//! requests before it, holds the ones after it, aborts everything first when asked, answers a
//! failed load with the weights unchanged, and takes effect at once while paused. (The swap of
//! real checkpoints, and greedy output equal to the new model's, is tested end to end in
//! `tests/tests/serve_weights.rs`.)

use super::pause_tests::{finish, on_thread};
use super::request::{Event, FinishReason, PauseMode};
use super::tests::request;
use super::SchedulerHandle;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Whether `rx` holds a `Done` now.
fn done_now(rx: &mut UnboundedReceiver<Event>) -> Option<FinishReason> {
    while let Ok(ev) = rx.try_recv() {
        if let Event::Done(f) = ev {
            return Some(f.reason);
        }
    }
    None
}

/// Submits `a` (`max_new` tokens) and waits until it runs (its first token).
async fn running_a(h: &SchedulerHandle, max_new: usize) -> UnboundedReceiver<Event> {
    let (a, mut arx) = request("a", (1..20).collect(), max_new, 0.0);
    assert!(h.submit(a));
    let first = tokio::time::timeout(Duration::from_secs(30), arx.recv()).await;
    assert!(matches!(first, Ok(Some(Event::Token { .. }))), "a runs");
    arx
}

/// An update to a checkpoint that does not exist (`abort_all` as given), answered within 30 s.
async fn update_missing(h: &SchedulerHandle, abort_all: bool) -> Result<String, String> {
    let u = h.update_weights(
        "/nonexistent-checkpoint".into(),
        abort_all,
        true,
        "v".into(),
    );
    tokio::time::timeout(Duration::from_secs(30), u)
        .await
        .expect("the update is answered")
}

#[test]
fn an_update_waits_for_the_requests_before_it_and_holds_the_ones_after() {
    on_thread(async |h| {
        let mut arx = running_a(h, 120).await;
        let update = update_missing(h, false);
        let (b, mut brx) = request("b", (30..40).collect(), 5, 0.0);
        let (r, ()) = tokio::join!(update, async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(h.submit(b));
        });
        // The answer comes once `a` is done, with its whole output (no abort).
        assert_eq!(done_now(&mut arx), Some(FinishReason::Length(120)));
        let e = r.unwrap_err();
        assert!(
            e.starts_with("Failed to update weights:") && e.contains("unchanged"),
            "{e}"
        );
        // `b`, held during the update, runs after it.
        assert_eq!(finish(&mut brx).await, (5, FinishReason::Length(5)));
    });
}

#[test]
fn abort_all_requests_ends_the_running_ones_first() {
    on_thread(async |h| {
        let mut arx = running_a(h, 100_000).await;
        // An aborting update does not wait for the request.
        assert!(update_missing(h, true).await.is_err());
        assert!(matches!(finish(&mut arx).await.1, FinishReason::Abort(_)));
    });
}

#[test]
fn while_paused_the_update_happens_at_once() {
    on_thread(async |h| {
        let mut arx = running_a(h, 200).await;
        assert!(h.pause(PauseMode::InPlace).await);
        // A paused scheduler answers at once.
        assert!(update_missing(h, false).await.is_err());
        assert_eq!(done_now(&mut arx), None, "a stays paused");
        assert!(h.resume().await);
        assert_eq!(finish(&mut arx).await.1, FinishReason::Length(200));
    });
}
