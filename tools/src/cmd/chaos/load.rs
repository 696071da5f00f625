//! The load of a chaos run and the answer checks.
//!
//! Generate: prompts of random token ids built on a few shared prefixes (so HiCache pages are
//! reused across requests and servers), greedy, sent plain or streamed through the routers. The
//! fault-free reference answer of every prompt is computed before any fault; a completed answer
//! must equal it, and every streamed event's cumulative `output_ids` must be a prefix of it. A
//! request that fails (an error status, a dropped connection, an aborted finish) is counted, not a
//! violation; one that takes longer than the timeout is a hung request.
//!
//! Store: direct puts and gets through the cluster client. A key's value is a pure function of the
//! seed and the key's number, so any hit must return exactly those bytes; a miss is allowed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use strata_server::seeded::SplitMix64;

use super::report::Report;

pub struct Prompt {
    pub ids: Vec<u32>,
    pub max_new: usize,
    pub reference: Vec<u64>,
}

/// Seeded prompts: `prefixes` shared prefixes of 48..208 tokens, `per` prompts on each.
pub fn prompts(seed: u64, prefixes: usize, per: usize) -> Vec<Prompt> {
    let mut r = SplitMix64(seed ^ 0x9E0_0001);
    let tok = |r: &mut SplitMix64| 3 + (r.next_u64() % 497) as u32;
    let mut out = Vec::new();
    for _ in 0..prefixes {
        let plen = 48 + (r.next_u64() % 161) as usize;
        let prefix: Vec<u32> = (0..plen).map(|_| tok(&mut r)).collect();
        for _ in 0..per {
            let mut ids = prefix.clone();
            let extra = 4 + (r.next_u64() % 40) as usize;
            ids.extend((0..extra).map(|_| tok(&mut r)));
            out.push(Prompt {
                ids,
                max_new: 4 + (r.next_u64() % 13) as usize,
                reference: Vec::new(),
            });
        }
    }
    out
}

/// Second turns: for every `per`-th prompt, a prompt that continues it with its reference answer
/// and a few new tokens (a conversation's next turn, whose prefix includes the first answer: with
/// `--pd`, decode offload has written those pages to the L3).
pub fn next_turns(seed: u64, first: &[Prompt], per: usize) -> Vec<Prompt> {
    let mut r = SplitMix64(seed ^ 0x9E0_0002);
    first
        .iter()
        .step_by(per.max(1))
        .map(|p| {
            let mut ids = p.ids.clone();
            ids.extend(p.reference.iter().map(|&t| t as u32));
            ids.extend((0..4 + r.next_u64() % 20).map(|_| 3 + (r.next_u64() % 497) as u32));
            Prompt {
                ids,
                max_new: p.max_new,
                reference: Vec::new(),
            }
        })
        .collect()
}

fn body(p: &Prompt, stream: bool) -> Value {
    json!({
        "input_ids": p.ids,
        "sampling_params": {"temperature": 0, "max_new_tokens": p.max_new, "ignore_eos": true},
        "stream": stream,
    })
}

fn ids(v: &Value) -> Option<Vec<u64>> {
    v["output_ids"]
        .as_array()?
        .iter()
        .map(Value::as_u64)
        .collect()
}

fn aborted(v: &Value) -> bool {
    v["meta_info"]["finish_reason"]["type"] == "abort" || v.get("error").is_some()
}

/// One request's outcome.
pub enum Outcome {
    Ok(Vec<u64>),
    /// Failed under faults (status, transport error or abort), with why.
    Failed(String),
    /// Output that is not the reference (for a stream: an event that is not a prefix of it).
    Wrong(Vec<u64>),
    Hung,
}

/// Sends `p` to `base` (a router or a server) and checks it against `reference` when given.
pub async fn generate(
    http: &reqwest::Client,
    base: &str,
    p: &Prompt,
    stream: bool,
    reference: Option<&[u64]>,
    timeout: Duration,
) -> Outcome {
    let url = format!("{base}/generate");
    let fut = async {
        let r = match http.post(&url).json(&body(p, stream)).send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("send: {e}")),
        };
        let status = r.status().as_u16();
        if status != 200 {
            let t = r.text().await.unwrap_or_default();
            return Outcome::Failed(format!("status {status}: {}", t.trim()));
        }
        if !stream {
            let v: Value = match r.json().await {
                Ok(v) => v,
                Err(e) => return Outcome::Failed(format!("body: {e}")),
            };
            if aborted(&v) {
                return Outcome::Failed(format!("aborted: {}", v["meta_info"]["finish_reason"]));
            }
            return match (ids(&v), reference) {
                (Some(out), Some(want)) if out != want => Outcome::Wrong(out),
                (Some(out), _) => Outcome::Ok(out),
                (None, _) => Outcome::Failed(format!("no output_ids in {v}")),
            };
        }
        let mut s = r.bytes_stream();
        let mut buf = String::new();
        let mut last: Option<Value> = None;
        let mut done = false;
        while let Some(chunk) = s.next().await {
            match chunk {
                Ok(c) => buf.push_str(&String::from_utf8_lossy(&c)),
                Err(e) => return Outcome::Failed(format!("stream: {e}")),
            }
            while let Some(i) = buf.find("\n\n") {
                let ev: String = buf.drain(..i + 2).collect();
                let Some(data) = ev.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    return Outcome::Failed(format!("bad event {data}"));
                };
                if let (Some(out), Some(want)) = (ids(&v), reference) {
                    if !want.starts_with(&out) {
                        return Outcome::Wrong(out);
                    }
                }
                last = Some(v);
            }
        }
        match last {
            Some(v) if done && !aborted(&v) => match (ids(&v), reference) {
                (Some(out), Some(want)) if out != want => Outcome::Wrong(out),
                (Some(out), _) => Outcome::Ok(out),
                (None, _) => Outcome::Failed(format!("no output_ids in {v}")),
            },
            Some(v) if aborted(&v) => Outcome::Failed(format!("aborted: {v}")),
            _ => Outcome::Failed("stream ended without [DONE]".into()),
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Outcome::Hung)
}

/// Computes every prompt's reference answer on `server` (plain requests, before any fault).
pub async fn references(
    http: &reqwest::Client,
    server: &str,
    ps: &mut [Prompt],
) -> anyhow::Result<()> {
    for p in ps.iter_mut() {
        match generate(http, server, p, false, None, Duration::from_secs(120)).await {
            Outcome::Ok(out) => p.reference = out,
            Outcome::Failed(w) => anyhow::bail!("reference request failed: {w}"),
            _ => anyhow::bail!("reference request hung"),
        }
    }
    Ok(())
}

/// Counts `o` (a `stream`ed or plain request) and reports it; returns false when it is a
/// violation.
pub fn record(rep: &Report, o: &Outcome, stream: bool, what: &str, p: &Prompt) -> bool {
    rep.ops.add("generate", 1);
    rep.ops.add(
        if stream {
            "generate_stream"
        } else {
            "generate_plain"
        },
        1,
    );
    match o {
        Outcome::Ok(_) => rep.ops.add("generate_ok", 1),
        Outcome::Failed(w) => {
            rep.ops.add("generate_failed", 1);
            rep.event_sampled(format!(
                "{what} failed: {}",
                w.chars().take(200).collect::<String>()
            ));
        }
        Outcome::Wrong(out) => {
            rep.violation(
                "wrong_answers",
                format!(
                    "{what}: got {out:?}, reference {:?} (prompt {:?})",
                    p.reference, p.ids
                ),
            );
            return false;
        }
        Outcome::Hung => {
            rep.violation(
                "hung_requests",
                format!("{what} got no answer within its timeout"),
            );
            return false;
        }
    }
    true
}

/// A generate worker: until `until` or a violation, seeded random prompts, plain or streamed,
/// through a seeded random router.
pub async fn generate_worker(
    w: u64,
    ps: &[Prompt],
    routers: &[String],
    rep: &Report,
    until: Instant,
    timeout: Duration,
) {
    let http = reqwest::Client::new();
    let mut r = SplitMix64(rep.seed ^ (0x1000 + w));
    while Instant::now() < until && !rep.stopped() {
        let i = (r.next_u64() % ps.len() as u64) as usize;
        let stream = r.next_u64() % 2 == 0;
        let router = &routers[(r.next_u64() % routers.len() as u64) as usize];
        let o = generate(
            &http,
            router,
            &ps[i],
            stream,
            Some(&ps[i].reference),
            timeout,
        )
        .await;
        let what = format!(
            "worker {w} prompt {i} {} via {router}",
            if stream { "stream" } else { "plain" }
        );
        record(rep, &o, stream, &what, &ps[i]);
    }
}

/// The value of store key number `k`: 1..64 KiB of bytes that only the seed and `k` decide.
pub fn value(seed: u64, k: u64) -> Vec<u8> {
    let mut r = SplitMix64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let len = 1024 + (r.next_u64() % (63 * 1024)) as usize;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn key(seed: u64, k: u64) -> String {
    format!("chaos-{seed}-{k}")
}

/// Gets keys `ks` and checks every hit byte for byte.
pub fn check_gets(c: &strata_cluster::Client, rep: &Report, ks: &[u64], timeout: Duration) {
    let keys: Vec<String> = ks.iter().map(|&k| key(rep.seed, k)).collect();
    let want: Vec<Vec<u8>> = ks.iter().map(|&k| value(rep.seed, k)).collect();
    let mut bufs: Vec<Vec<u8>> = want.iter().map(|v| vec![0u8; v.len() + 4096]).collect();
    let mut views: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let t = Instant::now();
    let codes = c.batch_get_into(&keys, &mut views);
    if t.elapsed() > timeout {
        rep.violation(
            "hung_requests",
            format!("a store get of {} keys took {:?}", keys.len(), t.elapsed()),
        );
    }
    rep.ops.add("store_get", keys.len() as u64);
    for (i, &code) in codes.iter().enumerate() {
        if code < 0 {
            rep.ops.add("store_get_miss", 1);
        } else if code as usize == want[i].len() && bufs[i][..want[i].len()] == want[i][..] {
            rep.ops.add("store_get_hit", 1);
        } else {
            let n = (code as usize).min(bufs[i].len());
            let first = bufs[i][..n].iter().zip(&want[i]).position(|(a, b)| a != b);
            rep.violation(
                "wrong_bytes",
                format!(
                    "get {} returned {code} bytes, {} expected; first differing byte {first:?}",
                    keys[i],
                    want[i].len()
                ),
            );
        }
    }
}

/// Puts keys `first..first + n`; returns how many were stored.
pub fn puts(
    c: &strata_cluster::Client,
    rep: &Report,
    first: u64,
    n: u64,
    timeout: Duration,
) -> u64 {
    let keys: Vec<String> = (first..first + n).map(|k| key(rep.seed, k)).collect();
    let vals: Vec<Vec<u8>> = (first..first + n).map(|k| value(rep.seed, k)).collect();
    let refs: Vec<&[u8]> = vals.iter().map(Vec::as_slice).collect();
    let t = Instant::now();
    let codes = c.batch_put_from(&keys, &refs);
    if t.elapsed() > timeout {
        rep.violation(
            "hung_requests",
            format!("a store put took {:?}", t.elapsed()),
        );
    }
    rep.ops.add("store_put", n);
    let ok = codes.iter().filter(|&&x| x == 0).count() as u64;
    rep.ops.add("store_put_ok", ok);
    rep.ops.add("store_put_failed", n - ok);
    ok
}

/// The store worker (a thread: the cluster client is blocking): batches of puts of new keys and
/// gets of random earlier ones; returns how many keys it tried to put.
pub fn store_worker(
    c: &strata_cluster::Client,
    rep: &Report,
    until: Instant,
    timeout: Duration,
) -> u64 {
    let mut r = SplitMix64(rep.seed ^ 0x5707_E000);
    let mut next = 0u64;
    while Instant::now() < until && !rep.stopped() {
        if next == 0 || r.next_u64() % 2 == 0 {
            puts(c, rep, next, 4, timeout);
            next += 4;
        } else {
            // Half of the gets among the last 512 keys (likely still stored: the keys put over a
            // long run exceed the stores' capacity), half among all.
            let ks: Vec<u64> = (0..8)
                .map(|i| match i % 2 {
                    0 => next - 1 - r.next_u64() % next.min(512),
                    _ => r.next_u64() % next,
                })
                .collect();
            check_gets(c, rep, &ks, timeout);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    next
}

#[cfg(test)]
mod tests {
    //! The answer checks against a mock worker (axum on a loopback port) that answers every
    //! `/generate` with a scripted status, output and delay, plain or as SSE.
    use super::*;
    use axum::extract::State;
    use axum::response::{IntoResponse, Response};
    use std::sync::Arc;

    #[derive(Clone)]
    struct Script {
        status: u16,
        /// Cumulative outputs, one per streamed event (a plain answer is the last).
        events: Vec<Vec<u64>>,
        done: bool,
        finish: &'static str,
        delay: Duration,
    }

    async fn answer(State(s): State<Arc<Script>>, body: axum::Json<Value>) -> Response {
        tokio::time::sleep(s.delay).await;
        let code = axum::http::StatusCode::from_u16(s.status).unwrap();
        let ev = |out: &Vec<u64>| json!({"output_ids": out, "meta_info": {"finish_reason": {"type": s.finish}}});
        if body["stream"] == true {
            let mut t: String = s
                .events
                .iter()
                .map(|o| format!("data: {}\n\n", ev(o)))
                .collect();
            if s.done {
                t.push_str("data: [DONE]\n\n");
            }
            (code, [("content-type", "text/event-stream")], t).into_response()
        } else {
            (code, axum::Json(ev(s.events.last().unwrap()))).into_response()
        }
    }

    async fn outcome(s: Script, stream: bool, timeout: Duration) -> Outcome {
        let app = axum::Router::new()
            .route("/generate", axum::routing::post(answer))
            .with_state(Arc::new(s));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        let p = Prompt {
            ids: vec![5, 6, 7],
            max_new: 3,
            reference: vec![1, 2, 3],
        };
        let http = reqwest::Client::new();
        generate(&http, &base, &p, stream, Some(&p.reference), timeout).await
    }

    fn script(events: &[&[u64]]) -> Script {
        Script {
            status: 200,
            events: events.iter().map(|e| e.to_vec()).collect(),
            done: true,
            finish: "length",
            delay: Duration::ZERO,
        }
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn plain_answers_must_equal_the_reference() {
        assert!(matches!(
            outcome(script(&[&[1, 2, 3]]), false, T).await,
            Outcome::Ok(_)
        ));
        assert!(matches!(
            outcome(script(&[&[1, 2, 4]]), false, T).await,
            Outcome::Wrong(o) if o == [1, 2, 4]
        ));
        // Failing is allowed: an error status, an aborted finish.
        let s = Script {
            status: 503,
            ..script(&[&[1, 2, 3]])
        };
        assert!(matches!(outcome(s, false, T).await, Outcome::Failed(_)));
        let s = Script {
            finish: "abort",
            ..script(&[&[1]])
        };
        assert!(matches!(outcome(s, false, T).await, Outcome::Failed(_)));
    }

    #[tokio::test]
    async fn streamed_events_must_be_prefixes_and_end_with_the_reference() {
        let ok = script(&[&[1], &[1, 2], &[1, 2, 3]]);
        assert!(matches!(outcome(ok.clone(), true, T).await, Outcome::Ok(o) if o == [1, 2, 3]));
        // A wrong event is a wrong answer even if the stream then breaks off.
        let s = Script {
            done: false,
            ..script(&[&[1], &[9, 2]])
        };
        assert!(matches!(outcome(s, true, T).await, Outcome::Wrong(o) if o == [9, 2]));
        // A complete stream that ends short of the reference is wrong.
        assert!(matches!(
            outcome(script(&[&[1], &[1, 2]]), true, T).await,
            Outcome::Wrong(_)
        ));
        // A stream cut before [DONE] failed (allowed).
        let s = Script {
            done: false,
            ..script(&[&[1], &[1, 2]])
        };
        assert!(matches!(outcome(s, true, T).await, Outcome::Failed(_)));
    }

    #[tokio::test]
    async fn an_answer_later_than_the_timeout_is_a_hang() {
        let s = Script {
            delay: Duration::from_secs(3),
            ..script(&[&[1, 2, 3]])
        };
        assert!(matches!(
            outcome(s.clone(), false, Duration::from_millis(300)).await,
            Outcome::Hung
        ));
        assert!(matches!(
            outcome(s, true, Duration::from_millis(300)).await,
            Outcome::Hung
        ));
    }

    #[test]
    fn stored_values_depend_only_on_seed_and_key() {
        assert_eq!(value(7, 3), value(7, 3));
        assert_ne!(value(7, 3), value(7, 4));
        assert_ne!(value(7, 3), value(8, 3));
        for k in 0..50 {
            assert!((1024..64 * 1024).contains(&value(1, k).len()));
        }
        assert_eq!(prompts(3, 2, 2).len(), 4);
        let (a, b) = (prompts(3, 2, 2), prompts(3, 2, 2));
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.ids == y.ids && x.max_new == y.max_new));
        // Prompts on one prefix share it.
        assert_eq!(a[0].ids[..48], a[1].ids[..48]);
    }
}
