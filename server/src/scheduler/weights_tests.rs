//! `/update_weights_from_disk` in the scheduler, on the real thread: the update waits for the
//! requests before it, holds the ones after it, aborts everything first when asked, answers a
//! failed load with the weights unchanged, and takes effect at once while paused. (The swap of
//! real checkpoints, and greedy output equal to the new model's, is tested end to end in
//! `tests/tests/serve_weights.rs`.)

use super::pause_tests::{finish, on_thread};
use super::request::{Event, FinishReason, PauseMode};
use super::tests::request;
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

#[test]
fn an_update_waits_for_the_requests_before_it_and_holds_the_ones_after() {
    on_thread(async |h| {
        let (a, mut arx) = request("a", (1..20).collect(), 120, 0.0);
        assert!(h.submit(a));
        let first = tokio::time::timeout(Duration::from_secs(30), arx.recv()).await;
        assert!(matches!(first, Ok(Some(Event::Token { .. }))), "a runs");
        let update = h.update_weights("/nonexistent-checkpoint".into(), false, true, "v".into());
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
        let (a, mut arx) = request("a", (1..20).collect(), 100_000, 0.0);
        assert!(h.submit(a));
        let first = tokio::time::timeout(Duration::from_secs(30), arx.recv()).await;
        assert!(matches!(first, Ok(Some(Event::Token { .. }))));
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            h.update_weights("/nonexistent-checkpoint".into(), true, true, "v".into()),
        )
        .await
        .expect("an aborting update does not wait for the request");
        assert!(r.is_err());
        assert!(matches!(finish(&mut arx).await.1, FinishReason::Abort(_)));
    });
}

#[test]
fn while_paused_the_update_happens_at_once() {
    on_thread(async |h| {
        let (a, mut arx) = request("a", (1..20).collect(), 200, 0.0);
        assert!(h.submit(a));
        let first = tokio::time::timeout(Duration::from_secs(30), arx.recv()).await;
        assert!(matches!(first, Ok(Some(Event::Token { .. }))));
        assert!(h.pause(PauseMode::InPlace).await);
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            h.update_weights("/nonexistent-checkpoint".into(), false, true, "v".into()),
        )
        .await
        .expect("a paused scheduler answers at once");
        assert!(r.is_err());
        assert_eq!(done_now(&mut arx), None, "a stays paused");
        assert!(h.resume().await);
        assert_eq!(finish(&mut arx).await.1, FinishReason::Length(200));
    });
}
