//! `/pause_generation` and `/continue_generation` in the scheduler: on the real thread (a request
//! submitted while paused finishes only after continue; a running one stops and resumes), and
//! round by round for the abort and retract modes.

use super::request::{Event, FinishReason, Msg, PauseMode};
use super::tests::{request, rig, test_cfg};
use super::SchedulerHandle;
use crate::kv::KvPool;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Events until `Done` (with a timeout): the number of tokens and the finish reason.
pub(super) async fn finish(rx: &mut UnboundedReceiver<Event>) -> (usize, FinishReason) {
    let mut n = 0;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the request did not finish in time")
            .expect("the scheduler dropped the request");
        match ev {
            Event::Token { .. } => n += 1,
            Event::Done(f) => return (n, f.reason),
            Event::Input(_) | Event::Embedding(_) | Event::Hidden(_) => {}
        }
    }
}

/// Tokens waiting in `rx` now; panics on `Done`.
fn tokens_now(rx: &mut UnboundedReceiver<Event>) -> usize {
    let mut n = 0;
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Event::Token { .. } => n += 1,
            Event::Done(f) => panic!("finished while paused: {f:?}"),
            Event::Input(_) | Event::Embedding(_) | Event::Hidden(_) => {}
        }
    }
    n
}

/// Runs `f` against the scheduler on its own thread (the test rig's model).
pub(super) fn on_thread(f: impl AsyncFnOnce(&SchedulerHandle)) {
    let r = rig(test_cfg());
    let (tx, rx) = std::sync::mpsc::channel();
    let s = r.s;
    let load = s.load.clone();
    let thread = std::thread::spawn(move || s.run(rx));
    let h = SchedulerHandle::one(tx, load);
    tokio::runtime::Runtime::new().unwrap().block_on(f(&h));
    drop(h);
    thread.join().unwrap();
}

#[test]
fn in_place_pause_holds_running_and_new_requests_until_continue() {
    on_thread(async |h| {
        let (a, mut arx) = request("a", (1..20).collect(), 200, 0.0);
        assert!(h.submit(a));
        // Paused once a has a token: it is running.
        let first = tokio::time::timeout(Duration::from_secs(30), arx.recv())
            .await
            .unwrap();
        assert!(matches!(first, Some(Event::Token { .. })));
        assert!(!h.is_paused());
        assert!(h.pause(PauseMode::InPlace).await);
        assert!(h.is_paused());
        let before = 1 + tokens_now(&mut arx);
        let (b, mut brx) = request("b", (30..40).collect(), 5, 0.0);
        assert!(h.submit(b));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(tokens_now(&mut arx), 0, "a ran while paused");
        assert_eq!(tokens_now(&mut brx), 0, "b ran while paused");
        assert!(before < 200);
        assert!(h.resume().await);
        assert!(!h.is_paused());
        let (na, ra) = finish(&mut arx).await;
        assert_eq!((before + na, ra), (200, FinishReason::Length(200)));
        assert_eq!(finish(&mut brx).await, (5, FinishReason::Length(5)));
        // Continue when not paused changes nothing.
        assert!(h.resume().await);
    });
}

#[test]
fn abort_pause_ends_every_request_and_queues_new_ones() {
    let mut r = rig(test_cfg());
    r.submit("run", (1..20).collect(), 50, 0.0);
    r.submit("wait", (30..50).collect(), 50, 0.0);
    r.s.step();
    let (tx, _rx) = tokio::sync::oneshot::channel();
    r.s.handle(Msg::Pause(PauseMode::Abort, tx));
    assert!(r.s.running.is_empty() && r.s.waiting.is_empty());
    for rx in &mut r.rx {
        let mut reason = None;
        while let Ok(ev) = rx.try_recv() {
            if let Event::Done(f) = ev {
                reason = Some(f.reason);
            }
        }
        assert!(matches!(reason, Some(FinishReason::Abort(_))), "{reason:?}");
    }
    r.submit("later", (60..70).collect(), 3, 0.0);
    assert_eq!(r.s.waiting.len(), 1);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    r.s.handle(Msg::Continue(tx));
    assert!(!r.s.paused);
    r.drain();
}

/// Token ids and finish reason of each request of a drained rig, in submission order.
fn outputs(rxs: &mut [UnboundedReceiver<Event>]) -> Vec<(Vec<u32>, Option<FinishReason>)> {
    rxs.iter_mut()
        .map(|rx| {
            let mut ids = Vec::new();
            let mut reason = None;
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    Event::Token { id, .. } => ids.push(id),
                    Event::Done(f) => reason = Some(f.reason),
                    Event::Input(_) | Event::Embedding(_) | Event::Hidden(_) => {}
                }
            }
            (ids, reason)
        })
        .collect()
}

#[test]
fn retract_pause_requeues_running_requests_in_order() {
    let submit = |r: &mut super::tests::Rig| {
        r.submit("a", (1..20).collect(), 30, 0.0);
        r.submit("b", (30..50).collect(), 30, 0.0);
    };
    let mut plain = rig(test_cfg());
    submit(&mut plain);
    plain.drain();
    let want = outputs(&mut plain.rx);

    let mut r = rig(test_cfg());
    submit(&mut r);
    r.s.step();
    r.s.step();
    assert_eq!(r.running(), ["a", "b"]);
    let free = r.s.pool.free_pages();
    let (tx, _rx) = tokio::sync::oneshot::channel();
    r.s.handle(Msg::Pause(PauseMode::Retract, tx));
    assert!(r.s.paused && r.s.running.is_empty());
    let waiting: Vec<&str> = r.s.waiting.iter().map(|q| q.req.rid.as_str()).collect();
    assert_eq!(waiting, ["a", "b"]);
    assert!(
        r.s.pool.free_pages() > free,
        "the retracted requests kept their pages"
    );
    let (tx, _rx) = tokio::sync::oneshot::channel();
    r.s.handle(Msg::Continue(tx));
    r.drain();
    let got = outputs(&mut r.rx);
    for (ids, reason) in &got {
        assert_eq!((ids.len(), reason), (30, &Some(FinishReason::Length(30))));
    }
    // Recomputed after the pause, the greedy answers are those of a run never paused.
    assert_eq!(got, want);
}
