//! The batched operations behind [`super::Client`]: group keys by node, split big groups into
//! chunks sent on parallel pooled paths, and fold per-node outcomes into per-key codes. Each
//! operation is written once against [`DataPath`]; which transport carries a job is the pool's
//! choice (or the in-process path for this client's own segment).
//!
//! Failure rule: an I/O failure of a node marks it down for this client and turns its keys into misses
//! (reads, exists) or into a retry on the next-ranked node (puts). Bytes land in a caller's buffer only
//! after the node's response header said they are that key's value, and a key whose transfer broke
//! midway reports a miss, never its partial bytes as a hit.

use std::collections::BTreeMap;

use super::Inner;
use crate::error::{code, ClusterError, ClusterResult};
use crate::membership::placement;
use crate::path::DataPath;
use crate::proto::{GetItem, MemberInfo, PutItem};
use strata_engine::{MAX_KEY_LEN, MAX_VALUE_LEN};

/// Most keys in one request.
const CHUNK_KEYS: usize = 1024;
/// Most bytes in one request.
const CHUNK_BYTES: usize = 256 << 20;
/// Requests smaller than this are not split further for parallelism.
const MIN_SPLIT: usize = 4 << 20;

/// One request to one node covering `idxs` (indices into the caller's keys).
struct Job {
    node: MemberInfo,
    idxs: Vec<usize>,
}

fn key_ok(k: &[u8]) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY_LEN
}

impl Inner {
    /// Splits each node's keys into jobs bounded by [`CHUNK_KEYS`]/[`CHUNK_BYTES`], and into up to
    /// `streams` parallel jobs when the group is large. This client's own segment gets one job
    /// with all its keys, first (it runs on the calling thread).
    fn jobs(
        &self,
        groups: BTreeMap<usize, Vec<usize>>,
        members: &[MemberInfo],
        size: impl Fn(usize) -> usize,
    ) -> Vec<Job> {
        let mut out = Vec::new();
        for (n, idxs) in groups {
            let node = &members[n];
            if self.local_store(node).is_some() {
                out.insert(
                    0,
                    Job {
                        node: node.clone(),
                        idxs,
                    },
                );
                continue;
            }
            let total: usize = idxs.iter().map(|&i| size(i)).sum();
            let target = (total / self.cfg.streams.max(1)).clamp(MIN_SPLIT, CHUNK_BYTES);
            let mut cur = Vec::new();
            let mut bytes = 0;
            for i in idxs {
                if !cur.is_empty() && (cur.len() == CHUNK_KEYS || bytes + size(i) > target) {
                    out.push(Job {
                        node: node.clone(),
                        idxs: std::mem::take(&mut cur),
                    });
                    bytes = 0;
                }
                bytes += size(i);
                cur.push(i);
            }
            if !cur.is_empty() {
                out.push(Job {
                    node: node.clone(),
                    idxs: cur,
                });
            }
        }
        out
    }

    /// Runs every job: each on its own data path (pooled, or in-process), several at once on
    /// scoped threads (one per job beyond the first), so the socket copies of a batch's jobs — to
    /// different nodes, or the `streams` parts of one large batch to one node — use every core
    /// instead of queueing behind one thread.
    fn fanout<R: Send>(
        &self,
        jobs: Vec<Job>,
        op: impl Fn(&mut dyn DataPath, &[usize]) -> ClusterResult<R> + Sync,
    ) -> Vec<(Job, ClusterResult<R>)> {
        let run = |job: &Job| -> ClusterResult<R> {
            let mut path = self.path(&job.node)?;
            let r = op(path.as_mut(), &job.idxs)?;
            self.give(&job.node, path);
            Ok(r)
        };
        let mut out = Vec::with_capacity(jobs.len());
        let mut todo = jobs;
        // Second round only for jobs the node refused on the same-host path: they go over TCP now.
        for _round in 0..2 {
            let batch: Vec<Job> = std::mem::take(&mut todo);
            let results: Vec<ClusterResult<R>> = if batch.len() < 2 {
                batch.iter().map(run).collect()
            } else {
                std::thread::scope(|sc| {
                    let handles: Vec<_> =
                        batch[1..].iter().map(|job| sc.spawn(|| run(job))).collect();
                    let first = run(&batch[0]);
                    std::iter::once(first)
                        .chain(handles.into_iter().map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(ClusterError::Protocol("a transfer thread panicked".into()))
                            })
                        }))
                        .collect()
                })
            };
            for (job, r) in batch.into_iter().zip(results) {
                match &r {
                    Err(e @ (ClusterError::Io(_) | ClusterError::Protocol(_))) => {
                        self.mark_down(&job.node, e)
                    }
                    Err(ClusterError::Remote {
                        code: code::LOCAL_DENIED,
                        ..
                    }) => {
                        self.pool.deny_local(&job.node.addr);
                        todo.push(job);
                        continue;
                    }
                    _ => {}
                }
                out.push((job, r));
            }
            if todo.is_empty() {
                break;
            }
        }
        for job in todo {
            let e = ClusterError::Remote {
                code: code::LOCAL_DENIED,
                message: "refused on both paths".into(),
            };
            out.push((job, Err(e)));
        }
        out
    }

    /// Groups `idxs` by their replica nodes (all `replica_num` of them, or just the first).
    fn group(
        &self,
        keys: &[&[u8]],
        idxs: &[usize],
        members: &[MemberInfo],
        all: bool,
    ) -> BTreeMap<usize, Vec<usize>> {
        let n = if all { self.cfg.replica_num } else { 1 };
        let mut g: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in idxs {
            for r in placement::replicas(keys[i], members, n) {
                g.entry(r).or_default().push(i);
            }
        }
        g
    }

    pub(super) fn batch_put<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        values: &[&[u8]],
        depths: Option<&[u32]>,
    ) -> Vec<i32> {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let mut res = vec![code::INVALID_PARAMS; keys.len()];
        if values.len() != keys.len() || depths.is_some_and(|d| d.len() != keys.len()) {
            return res;
        }
        let mut todo: Vec<usize> = (0..keys.len())
            .filter(|&i| key_ok(keys[i]) && (1..=MAX_VALUE_LEN).contains(&values[i].len()))
            .collect();
        let depth = |i: usize| depths.map(|d| d[i]);
        for attempt in 0..2 {
            if todo.is_empty() {
                break;
            }
            let members = self.usable();
            if members.is_empty() {
                todo.iter().for_each(|&i| res[i] = code::SEGMENT_NOT_FOUND);
                break;
            }
            let groups = self.group(&keys, &todo, &members, true);
            let js = self.jobs(groups, &members, |i| values[i].len());
            let results = self.fanout(js, |path, idxs| {
                let items: Vec<PutItem> = idxs
                    .iter()
                    .map(|&i| PutItem {
                        key: keys[i],
                        len: values[i].len() as u32,
                        depth: depth(i),
                    })
                    .collect();
                let vals: Vec<&[u8]> = idxs.iter().map(|&i| values[i]).collect();
                path.put(&items, &vals)
            });
            // Per key: Some(code) once any replica answered; success wins over failure.
            let mut best: Vec<Option<i32>> = vec![None; keys.len()];
            for (job, r) in results {
                // Unanswered keys stay `None` and are retried on a fresh placement.
                let Ok(codes) = r else { continue };
                for (&i, c) in job.idxs.iter().zip(codes) {
                    let c = if c == code::EXISTED { code::OK } else { c };
                    best[i] = Some(match best[i] {
                        Some(code::OK) => code::OK,
                        _ => c,
                    });
                }
            }
            let mut retry = Vec::new();
            for &i in &todo {
                match best[i] {
                    Some(c) => res[i] = c,
                    None if attempt == 0 => retry.push(i),
                    None => res[i] = code::TRANSFER_FAIL,
                }
            }
            todo = retry;
        }
        res
    }

    pub(super) fn batch_get<K: AsRef<[u8]>>(&self, keys: &[K], bufs: &mut [&mut [u8]]) -> Vec<i64> {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let mut res = vec![code::INVALID_PARAMS as i64; keys.len()];
        if bufs.len() != keys.len() {
            return res;
        }
        let caps: Vec<usize> = bufs.iter().map(|b| b.len().min(MAX_VALUE_LEN)).collect();
        // The callers' buffers by address: jobs on several threads each fill their own keys'.
        let dst: Vec<usize> = bufs.iter_mut().map(|b| b.as_mut_ptr() as usize).collect();
        let mut todo: Vec<usize> = (0..keys.len()).filter(|&i| key_ok(keys[i])).collect();
        todo.iter()
            .for_each(|&i| res[i] = code::OBJECT_NOT_FOUND as i64);
        let members = self.usable();
        // Replica r of each key is tried only when replicas 0..r missed.
        for r in 0..self.cfg.replica_num {
            if todo.is_empty() || members.is_empty() {
                break;
            }
            let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &i in &todo {
                let n = if self.cfg.replica_num == 1 {
                    placement::replicas(keys[i], &members, 1).first().copied()
                } else {
                    placement::rank(keys[i], &members).get(r).copied()
                };
                if let Some(n) = n {
                    groups.entry(n).or_default().push(i);
                }
            }
            let js = self.jobs(groups, &members, |i| caps[i]);
            let results = self.fanout(js, |path, idxs| {
                let items: Vec<GetItem> = idxs
                    .iter()
                    .map(|&i| GetItem {
                        key: keys[i],
                        max_len: caps[i] as u32,
                    })
                    .collect();
                let mut out: Vec<&mut [u8]> = idxs
                    .iter()
                    // SAFETY: `dst[i]` is the start of the caller's buffer `bufs[i]`, exclusively
                    // borrowed by this call and not otherwise touched while jobs run, and
                    // `caps[i] <= bufs[i].len()`; each index belongs to exactly one job, so the
                    // slices are disjoint even when jobs run on several threads.
                    .map(|&i| unsafe { std::slice::from_raw_parts_mut(dst[i] as *mut u8, caps[i]) })
                    .collect();
                path.get(&items, &mut out)
            });
            for (job, r) in results {
                if let Ok(lens) = r {
                    job.idxs.iter().zip(lens).for_each(|(&i, l)| res[i] = l);
                }
            }
            todo.retain(|&i| res[i] == code::OBJECT_NOT_FOUND as i64);
        }
        res
    }

    pub(super) fn batch_is_exist<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<i32> {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let yes = self.any_replica(&keys, |path, ks| path.exists(ks));
        yes.into_iter().map(i32::from).collect()
    }

    pub(super) fn batch_remove<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<i32> {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let yes = self.any_replica(&keys, |path, ks| {
            Ok(path
                .remove(ks)?
                .into_iter()
                .map(|c| c == code::OK)
                .collect())
        });
        keys.iter()
            .zip(yes)
            .map(|(k, y)| match (key_ok(k), y) {
                (false, _) => code::INVALID_PARAMS,
                (true, true) => code::OK,
                (true, false) => code::OBJECT_NOT_FOUND,
            })
            .collect()
    }

    /// Runs a keys-only operation (EXISTS or REMOVE) on every replica of every valid key; `op`
    /// answers one flag per key of a node. Returns, per key, whether any replica answered yes.
    fn any_replica(
        &self,
        keys: &[&[u8]],
        op: impl Fn(&mut dyn DataPath, &[&[u8]]) -> ClusterResult<Vec<bool>> + Sync,
    ) -> Vec<bool> {
        let mut yes = vec![false; keys.len()];
        let todo: Vec<usize> = (0..keys.len()).filter(|&i| key_ok(keys[i])).collect();
        let members = self.usable();
        if members.is_empty() {
            return yes;
        }
        let groups = self.group(keys, &todo, &members, true);
        let results = self.fanout(self.jobs(groups, &members, |_| 0), |path, idxs| {
            let ks: Vec<&[u8]> = idxs.iter().map(|&i| keys[i]).collect();
            op(path, &ks)
        });
        for (job, r) in results {
            if let Ok(flags) = r {
                job.idxs
                    .iter()
                    .zip(flags)
                    .filter(|(_, f)| *f)
                    .for_each(|(&i, _)| yes[i] = true);
            }
        }
        yes
    }

    pub(super) fn clear(&self) -> ClusterResult<u64> {
        let jobs = self
            .usable()
            .into_iter()
            .map(|node| Job {
                node,
                idxs: Vec::new(),
            })
            .collect();
        let mut removed = 0;
        for (_, r) in self.fanout(jobs, |path, _| path.clear()) {
            removed += r?;
        }
        Ok(removed)
    }
}
