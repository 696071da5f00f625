//! The in-process path: a client that contributes its own segment (`ClientConfig::local_segment`)
//! reaches the store node it runs in-process by direct engine calls — no socket, values copied once
//! by the engine.

use std::sync::Arc;

use strata_engine::Store;

use super::DataPath;
use crate::error::{ClusterError, ClusterResult};
use crate::proto::{GetItem, Op, PutItem};
use crate::store_ops;

/// The client's end: the in-process node's engine.
pub struct InProcess(pub Arc<Store>);

impl DataPath for InProcess {
    fn put(&mut self, items: &[PutItem<'_>], values: &[&[u8]]) -> ClusterResult<Vec<i32>> {
        let batch: Vec<_> = items
            .iter()
            .zip(values)
            .map(|(it, v)| (it.key, *v, it.depth))
            .collect();
        Ok(store_ops::put_batch(&self.0, &batch))
    }

    fn get(&mut self, items: &[GetItem<'_>], dst: &mut [&mut [u8]]) -> ClusterResult<Vec<i64>> {
        Ok(items
            .iter()
            .zip(dst)
            .map(|(it, d)| store_ops::len_or_code(self.0.get_into(it.key, d)))
            .collect())
    }

    fn call(&mut self, op: Op, meta: &[u8]) -> ClusterResult<Vec<u8>> {
        store_ops::answer(&self.0, op, meta)?.map_err(ClusterError::Engine)
    }
}
