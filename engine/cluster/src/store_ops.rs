//! The engine calls behind each operation, shared by a node's connections (`node::serve`) and the
//! in-process path (`path::in_process`): batched puts by runs of depth, and the keys-only requests
//! (EXISTS, REMOVE, CLEAR, STATS) answered from their encoded meta.

use std::sync::Arc;

use strata_engine::{PutOptions, Store};

use crate::error::{code, ClusterError, ClusterResult};
use crate::proto::{codec, Op};

/// A put item whose value is a shared buffer: key, value, depth.
pub type SharedPut<'a> = (&'a [u8], Arc<[u8]>, Option<u32>);

/// Puts `(key, value, depth)` items into the engine and returns one code per item. Runs of items
/// whose depths are absent or consecutive go to the engine as one batch, so their writes are in
/// flight together.
pub fn put_batch(store: &Store, items: &[(&[u8], &[u8], Option<u32>)]) -> Vec<i32> {
    put_runs(items, |run, opts| store.batch_put_with(run, opts))
}

/// [`put_batch`] of values held as shared buffers (kept without a copy by a write-back buffer).
pub fn put_batch_shared(store: &Store, items: &[SharedPut<'_>]) -> Vec<i32> {
    put_runs(items, |run, opts| store.batch_put_shared(run, opts))
}

/// Splits items into runs of consecutive depths, puts each run with `put`, maps the results to
/// Mooncake codes.
fn put_runs<'a, V: Clone>(
    items: &[(&'a [u8], V, Option<u32>)],
    put: impl Fn(&[(&'a [u8], V)], PutOptions) -> Vec<strata_engine::Result<bool>>,
) -> Vec<i32> {
    let mut codes = Vec::with_capacity(items.len());
    let mut start = 0;
    while start < items.len() {
        let mut end = start + 1;
        while end < items.len() && continues(items[end - 1].2, items[end].2) {
            end += 1;
        }
        let run: Vec<(&[u8], V)> = items[start..end]
            .iter()
            .map(|i| (i.0, i.1.clone()))
            .collect();
        let opts = PutOptions {
            depth: items[start].2,
        };
        for r in put(&run, opts) {
            codes.push(match r {
                Ok(true) => code::OK,
                Ok(false) => code::EXISTED,
                Err(e) => ClusterError::from(e).code(),
            });
        }
        start = end;
    }
    codes
}

/// Whether an item with depth `next` can join a batch whose last item had depth `prev`.
fn continues(prev: Option<u32>, next: Option<u32>) -> bool {
    match (prev, next) {
        (None, None) => true,
        (Some(p), Some(n)) => p.checked_add(1) == Some(n),
        _ => false,
    }
}

/// A get's outcome as the protocol's per-key value: the length, -704 on a miss, or the error's code.
pub fn len_or_code(r: strata_engine::Result<Option<usize>>) -> i64 {
    match r {
        Ok(Some(l)) => l as i64,
        Ok(None) => code::OBJECT_NOT_FOUND as i64,
        Err(e) => ClusterError::from(e).code() as i64,
    }
}

/// Answers a keys-only request: `Err` when its meta does not decode (or the op is not one of
/// these), `Ok(Err)` when the engine failed (CLEAR), else the response's meta.
pub fn answer(
    store: &Store,
    op: Op,
    meta: &[u8],
) -> ClusterResult<Result<Vec<u8>, strata_engine::Error>> {
    Ok(Ok(match op {
        Op::Exists => {
            let keys = codec::decode_keys(meta)?;
            let flags: Vec<bool> = keys.iter().map(|k| store.exists(k)).collect();
            codec::encode_flags(&flags)
        }
        Op::Remove => {
            let keys = codec::decode_keys(meta)?;
            let codes: Vec<i32> = keys
                .iter()
                .map(|k| match store.remove(k) {
                    Ok(true) => code::OK,
                    Ok(false) => code::OBJECT_NOT_FOUND,
                    Err(e) => ClusterError::from(e).code(),
                })
                .collect();
            codec::encode_codes(&codes)
        }
        Op::Clear => {
            codec::Reader::new(meta).finish()?;
            match store.clear() {
                Ok(n) => n.to_le_bytes().to_vec(),
                Err(e) => return Ok(Err(e)),
            }
        }
        Op::Stats => {
            let json = serde_json::to_vec(&store.stats()).unwrap_or_default();
            let mut w = codec::Writer::new();
            w.blob(&json);
            w.finish()
        }
        _ => {
            return Err(ClusterError::Protocol(format!(
                "{op:?} is not a keys-only request"
            )))
        }
    }))
}
