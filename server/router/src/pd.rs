//! Prefill/decode disaggregated forwarding.
//!
//! Per attempt: pick a prefill and a decode worker (each pool with its own policy), append
//! `bootstrap_host` / `bootstrap_port` / `bootstrap_room` to the body, and send the same bytes to
//! both at once. The decode reply is handed to the client as soon as its headers arrive; the
//! prefill leg is polled alongside, on the same task (inside the reply body once it streams).
//!
//! Invariants:
//! - the prefill leg is cancelled whenever the request ends early (decode failed, prefill failed,
//!   the client went away); it is only left to finish on its own after decode answered;
//! - a new pair is tried only before anything reached the client; after that a prefill failure
//!   cuts the decode stream;
//! - when `return_logprob` is set on a non-streaming request, prefill's input logprobs are put in
//!   front of decode's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

use crate::error::{Result, RouterError};
use crate::policy::RouteKey;
use crate::proxy::{admit, passthrough, Held};
use crate::request::{bootstrap_fields, inject, probe, Probe};
use crate::retry::{backoff, is_retryable, is_worker_failure};
use crate::worker::{LoadGuard, Worker, WorkerKind};
use crate::Router;

/// How the prefill leg ended.
#[derive(Debug)]
enum Leg {
    Reply(StatusCode, Bytes),
    Failed,
}

impl Leg {
    fn ok(&self) -> bool {
        matches!(self, Leg::Reply(s, _) if s.is_success())
    }
}

type LegFuture = Pin<Box<dyn Future<Output = Leg> + Send>>;

/// The prefill request. It is polled on the request's own task while that task waits anyway
/// (no spawn on the common path); it moves to a task of its own only when it must outlive the
/// reply ([`PrefillLeg::detach`]). Dropping it cancels it: its connection is closed.
struct PrefillLeg {
    fut: Option<LegFuture>,
}

impl PrefillLeg {
    /// Ready once with the outcome, then pending forever.
    fn poll_leg(&mut self, cx: &mut Context<'_>) -> Poll<Leg> {
        let Some(f) = self.fut.as_mut() else {
            return Poll::Pending;
        };
        match f.as_mut().poll(cx) {
            Poll::Ready(leg) => {
                self.fut = None;
                Poll::Ready(leg)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    async fn wait(&mut self) -> Leg {
        std::future::poll_fn(|cx| self.poll_leg(cx)).await
    }

    /// Lets a prefill that is still running finish on its own (decode already answered).
    fn detach(&mut self) {
        if let Some(f) = self.fut.take() {
            tokio::spawn(f);
        }
    }
}

/// The decode reply body, cut short if the prefill leg fails while it streams.
struct PdBody {
    decode: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
    prefill: PrefillLeg,
    _held: Held,
}

impl Stream for PdBody {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(leg) = self.prefill.poll_leg(cx) {
            if !leg.ok() {
                return Poll::Ready(Some(Err(std::io::Error::other("prefill failed"))));
            }
        }
        match self.decode.as_mut().poll_next(cx) {
            Poll::Ready(None) => {
                self.prefill.detach();
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(std::io::Error::other))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What one attempt with one pair came to.
enum Attempt {
    Done(Response),
    Retry(Vec<u32>),
}

/// Forwards one generate-style request in PD mode.
pub async fn forward(r: &Router, path: &str, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let permit = admit(r).await?;
    r.metrics
        .pd_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let need_key = r.prefill.policy.needs_key() || r.decode.policy.needs_key();
    let p = probe(&body, need_key)?;
    let attempts = r.cfg.retry.max_retries;
    let mut tried = Vec::new();
    let mut permit = permit;
    for attempt in 0..attempts {
        let last = attempt + 1 == attempts;
        match try_pair(r, path, &headers, &body, &p, &tried, last, &mut permit).await? {
            Attempt::Done(resp) => return Ok(resp),
            Attempt::Retry(failed) => {
                tried.extend(failed);
                r.metrics
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let delay = backoff(&r.cfg.retry, attempt, &mut *r.rng.lock());
                tokio::time::sleep(delay).await;
            }
        }
    }
    Err(RouterError::Upstream {
        attempts,
        last: "no prefill/decode pair succeeded".into(),
    })
}

fn start_prefill(
    r: &Router,
    worker: Arc<Worker>,
    url: String,
    h: HeaderMap,
    body: Bytes,
) -> PrefillLeg {
    let load = LoadGuard::new(worker.clone());
    let timeout = r.request_timeout;
    let client = r.client.clone();
    let fut = async move {
        let _load = load;
        let leg = match client.send("POST", &url, &h, &body, timeout).await {
            Ok(resp) => {
                let status = resp.status;
                match resp.bytes().await {
                    Ok(b) => Leg::Reply(status, b),
                    Err(_) => Leg::Failed,
                }
            }
            Err(_) => Leg::Failed,
        };
        let failed = match &leg {
            Leg::Reply(s, _) => is_worker_failure(s.as_u16()),
            Leg::Failed => true,
        };
        worker.circuit.record(!failed, Instant::now());
        leg
    };
    PrefillLeg {
        fut: Some(Box::pin(fut)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn try_pair(
    r: &Router,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    p: &Probe,
    tried: &[u32],
    last: bool,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Attempt> {
    let key = RouteKey {
        text: p.text.as_deref(),
        ids: p.ids.as_deref(),
    };
    let prefill = r
        .prefill
        .pick(&key, tried)
        .ok_or(RouterError::NoPoolWorkers("prefill"))?;
    let decode = r
        .decode
        .pick(&key, tried)
        .ok_or(RouterError::NoPoolWorkers("decode"))?;
    let port = match prefill.kind {
        WorkerKind::Prefill { bootstrap_port } => bootstrap_port,
        _ => None,
    };
    let fields = bootstrap_fields(&prefill.host, port, p.batch);
    let sent = Bytes::from(inject(body, &fields)?);
    let url = format!("{}{path}", prefill.url);
    let mut leg = start_prefill(r, prefill.clone(), url, headers.clone(), sent.clone());
    let decode_load = LoadGuard::new(decode.clone());
    let url = format!("{}{path}", decode.url);
    let decode_req = r
        .client
        .send("POST", &url, headers, &sent, r.request_timeout);
    tokio::pin!(decode_req);
    let mut prefill_done: Option<Leg> = None;
    let decode_res = loop {
        tokio::select! {
            d = &mut decode_req => break d,
            l = leg.wait(), if prefill_done.is_none() => {
                if !l.ok() {
                    // The decode request is dropped (cancelled) with this frame.
                    return prefill_failed(l, &prefill, last, r);
                }
                prefill_done = Some(l);
            }
        }
    };
    let resp = match decode_res {
        Ok(resp) => resp,
        Err(_) => {
            decode.circuit.record(false, Instant::now());
            if last {
                return Err(RouterError::Upstream {
                    attempts: r.cfg.retry.max_retries,
                    last: "decode unreachable".into(),
                });
            }
            return Ok(Attempt::Retry(vec![decode.id]));
        }
    };
    let status = resp.status.as_u16();
    decode
        .circuit
        .record(!is_worker_failure(status), Instant::now());
    if !resp.status.is_success() {
        if is_retryable(status) && !last {
            return Ok(Attempt::Retry(vec![decode.id]));
        }
        return Ok(Attempt::Done(passthrough(resp, Held::default()).await));
    }
    let held = Held {
        loads: vec![decode_load],
        permit: permit.take(),
    };
    if p.return_logprob && !p.stream {
        let pre = match prefill_done {
            Some(l) => l,
            None => leg.wait().await,
        };
        let Leg::Reply(ps, pre_body) = pre else {
            return prefill_failed(Leg::Failed, &prefill, last, r);
        };
        if !ps.is_success() {
            return prefill_failed(Leg::Reply(ps, pre_body), &prefill, last, r);
        }
        let dec_body = resp.bytes().await.map_err(|_| RouterError::Upstream {
            attempts: 1,
            last: "decode reply cut".into(),
        })?;
        let merged = merge_logprobs(&pre_body, &dec_body)
            .map(Bytes::from)
            .unwrap_or(dec_body);
        drop(held);
        let mut out = Response::new(Body::from(merged));
        out.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        return Ok(Attempt::Done(out));
    }
    let ct = resp.headers.get(axum::http::header::CONTENT_TYPE).cloned();
    let body = if resp.is_full() {
        // Decode has answered in full: nothing left to cut short.
        leg.detach();
        let bytes = resp.bytes().await.map_err(|_| RouterError::Upstream {
            attempts: 1,
            last: "decode reply cut".into(),
        })?;
        drop(held);
        Body::from(bytes)
    } else {
        Body::from_stream(PdBody {
            decode: Box::pin(resp.into_stream()),
            prefill: leg,
            _held: held,
        })
    };
    let mut out = Response::new(body);
    *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Some(ct) = ct {
        out.headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, ct);
    }
    Ok(Attempt::Done(out))
}

/// The prefill leg failed before anything reached the client: retry, or report its reply.
fn prefill_failed(leg: Leg, prefill: &Worker, last: bool, r: &Router) -> Result<Attempt> {
    match leg {
        Leg::Reply(s, b) if !is_retryable(s.as_u16()) || last => {
            let mut out = (s, b).into_response();
            out.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
            Ok(Attempt::Done(out))
        }
        Leg::Failed if last => Err(RouterError::Upstream {
            attempts: r.cfg.retry.max_retries,
            last: "prefill unreachable".into(),
        }),
        _ => Ok(Attempt::Retry(vec![prefill.id])),
    }
}

/// Puts prefill's `meta_info.input_token_logprobs` in front of decode's (per item for batches).
pub fn merge_logprobs(prefill: &[u8], decode: &[u8]) -> Option<Vec<u8>> {
    use serde_json::Value;
    fn one(p: &Value, d: &mut Value) {
        let Some(Value::Array(pl)) = p.pointer("/meta_info/input_token_logprobs") else {
            return;
        };
        let Some(meta) = d.get_mut("meta_info").and_then(Value::as_object_mut) else {
            return;
        };
        let mut merged = pl.clone();
        if let Some(Value::Array(dl)) = meta.get("input_token_logprobs") {
            merged.extend(dl.iter().cloned());
        }
        meta.insert("input_token_logprobs".into(), Value::Array(merged));
    }
    let p: Value = serde_json::from_slice(prefill).ok()?;
    let mut d: Value = serde_json::from_slice(decode).ok()?;
    match (&p, &mut d) {
        (Value::Array(ps), Value::Array(ds)) => {
            ps.iter().zip(ds.iter_mut()).for_each(|(p, d)| one(p, d))
        }
        (p, d) => one(p, d),
    }
    serde_json::to_vec(&d).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_merge_single_and_batch() {
        let p = br#"{"meta_info":{"input_token_logprobs":[[-1.0,1],[-2.0,2]]}}"#;
        let d = br#"{"text":"x","meta_info":{"input_token_logprobs":[[-3.0,3]]}}"#;
        let v: serde_json::Value = serde_json::from_slice(&merge_logprobs(p, d).unwrap()).unwrap();
        assert_eq!(
            v["meta_info"]["input_token_logprobs"],
            serde_json::json!([[-1.0, 1], [-2.0, 2], [-3.0, 3]])
        );
        assert_eq!(v["text"], "x");
        let p = br#"[{"meta_info":{"input_token_logprobs":[1]}},{"meta_info":{"input_token_logprobs":[2]}}]"#;
        let d = br#"[{"meta_info":{}},{"meta_info":{"input_token_logprobs":[3]}}]"#;
        let v: serde_json::Value = serde_json::from_slice(&merge_logprobs(p, d).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"meta_info":{"input_token_logprobs":[1]}},{"meta_info":{"input_token_logprobs":[2,3]}}])
        );
    }
}
