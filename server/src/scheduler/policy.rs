//! The order in which waiting requests are admitted (`--schedule-policy`), SGLang's policies:
//!
//! - `fcfs` (default): arrival order (retracted requests go back to the front).
//! - `lpm`: longest cached prefix first (device and host tiers), as SGLang's `lpm`: among
//!   requests whose cached prefix is at most [`IN_BATCH_CHECK`] tokens, one that shares at least
//!   [`IN_BATCH_DEPRIORITIZE`] leading tokens with an earlier such request waits until the end
//!   of the queue, so the shared prefix is computed once and then hits the cache. With more than
//!   [`CACHE_AWARE_MAX_QUEUE`] waiting requests the ranking is skipped (fcfs), as SGLang does.
//! - `dfs-weight`: depth first over the prefix tree, heavier subtrees (more waiting requests
//!   below) first, a node's own requests after its subtrees' (SGLang's `dfs-weight`), so
//!   requests sharing a prefix run back to back.
//! - `random`: a fresh shuffle every round, from a generator seeded by `--random-seed` when given.
//! - `lof`: longest output first, by `max_new_tokens`.
//!
//! With `--enable-priority-scheduling` (SGLang's [`Priority`]), `fcfs` and `lof` rank by the
//! requests' `priority` first (higher values first, or lower with
//! `--schedule-low-priority-values-first`; a request without one has `--default-priority-value`),
//! then as above; the cache-aware policies and `random` keep their own order, as in SGLang. When
//! every running slot is taken (or the KV pool had no room for the queue's head), a waiting
//! request that outranks the lowest-ranked running one by more than
//! `--priority-scheduling-preemption-threshold` has that one retracted to make room
//! (`order.rs`; not with `--disable-priority-preemption`); under KV pressure the lowest-ranked
//! sequence is retracted instead of the newest (`batch.rs`).
//!
//! Pure functions over [`Candidate`]s; the scheduler (`order.rs`) builds them and applies the
//! permutation. Every sort is stable: equal keys keep arrival order.

use crate::cache::NodeId;
use crate::seeded::SplitMix64;
use std::collections::HashMap;

/// SGLang's `IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD`: requests with at most this many cached
/// tokens are checked against each other.
pub const IN_BATCH_CHECK: usize = 32;
/// SGLang's `IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD`: a checked request sharing this many
/// leading tokens with an earlier checked one waits.
pub const IN_BATCH_DEPRIORITIZE: usize = 32;
/// Above this many waiting requests `lpm` ranks nothing (the matching would cost more than it
/// saves), as SGLang does.
pub const CACHE_AWARE_MAX_QUEUE: usize = 128;

/// A `--schedule-policy` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulePolicy {
    #[default]
    Fcfs,
    Lpm,
    DfsWeight,
    Random,
    Lof,
}

impl std::str::FromStr for SchedulePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "fcfs" => SchedulePolicy::Fcfs,
            "lpm" => SchedulePolicy::Lpm,
            "dfs-weight" => SchedulePolicy::DfsWeight,
            "random" => SchedulePolicy::Random,
            "lof" => SchedulePolicy::Lof,
            other => {
                return Err(format!(
                    "--schedule-policy {other}: expected one of lpm, random, fcfs, dfs-weight, lof"
                ))
            }
        })
    }
}

/// SGLang's priority scheduling flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    /// `--enable-priority-scheduling`.
    pub enabled: bool,
    /// `--schedule-low-priority-values-first` (else higher values go first).
    pub low_first: bool,
    /// `--default-priority-value`: the priority of a request that sets none.
    pub default: i64,
    /// `--priority-scheduling-preemption-threshold` (SGLang's default 10); `None` with
    /// `--disable-priority-preemption`.
    pub preempt_threshold: Option<i64>,
    /// `--abort-on-priority-when-disabled`: without priority scheduling, a request that sets a
    /// priority is refused instead of served in order.
    pub abort_when_disabled: bool,
}

impl Default for Priority {
    fn default() -> Self {
        Self {
            enabled: false,
            low_first: false,
            default: 0,
            preempt_threshold: Some(10),
            abort_when_disabled: false,
        }
    }
}

impl Priority {
    /// A request's rank: smaller goes first.
    pub fn rank(&self, p: Option<i64>) -> i64 {
        let v = p.unwrap_or(self.default);
        if self.low_first {
            v
        } else {
            v.saturating_neg()
        }
    }
}

impl SchedulePolicy {
    /// Whether the policy ranks by the prefix cache (without one SGLang falls back to fcfs).
    pub fn cache_aware(self) -> bool {
        matches!(self, SchedulePolicy::Lpm | SchedulePolicy::DfsWeight)
    }
}

/// What a policy knows of one waiting request.
#[derive(Debug, Clone, Default)]
pub struct Candidate<'a> {
    /// Prompt and output so far.
    pub tokens: &'a [u32],
    /// Leading tokens cached in the prefix tree (either tier); cache-aware policies only.
    pub cached: usize,
    /// Prefix-tree nodes the cached prefix runs through, root excluded; `dfs-weight` only.
    pub path: Vec<NodeId>,
    pub max_new_tokens: usize,
    /// The priority rank ([`Priority::rank`]); `None` without priority scheduling.
    pub rank: Option<i64>,
}

/// The admission order under `policy`: indices into `c`, each once.
pub fn order(policy: SchedulePolicy, c: &[Candidate<'_>], rng: &mut SplitMix64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..c.len()).collect();
    match policy {
        SchedulePolicy::Fcfs => idx.sort_by_key(|&i| c[i].rank),
        SchedulePolicy::Lpm if c.len() > CACHE_AWARE_MAX_QUEUE => {}
        SchedulePolicy::Lpm => {
            let late = in_batch_deprioritized(c);
            idx.sort_by_key(|&i| (late[i], std::cmp::Reverse(c[i].cached)));
        }
        SchedulePolicy::DfsWeight => idx = dfs_weight(c),
        SchedulePolicy::Random => {
            for i in (1..idx.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                idx.swap(i, j);
            }
        }
        SchedulePolicy::Lof => {
            idx.sort_by_key(|&i| (c[i].rank, std::cmp::Reverse(c[i].max_new_tokens)))
        }
    }
    idx
}

/// `lpm`'s in-batch prefix check: which requests wait because an earlier one with little in the
/// cache shares their start (it will be cached once that one ran).
fn in_batch_deprioritized(c: &[Candidate<'_>]) -> Vec<bool> {
    let mut checked: Vec<&[u32]> = Vec::new();
    c.iter()
        .map(|r| {
            if r.cached > IN_BATCH_CHECK {
                return false;
            }
            let shared = checked
                .iter()
                .map(|t| t.iter().zip(r.tokens).take_while(|(a, b)| a == b).count())
                .max()
                .unwrap_or(0);
            if shared >= IN_BATCH_DEPRIORITIZE {
                true
            } else {
                checked.push(r.tokens);
                false
            }
        })
        .collect()
}

/// `dfs-weight`: a node's weight is the number of requests whose match ends in its subtree; from
/// the root, children are visited heaviest first (ties in the order the queue first reaches
/// them), each subtree before the node's own requests, which keep queue order.
fn dfs_weight(c: &[Candidate<'_>]) -> Vec<usize> {
    #[derive(Default)]
    struct Entry {
        weight: usize,
        children: Vec<Option<NodeId>>,
        own: Vec<usize>,
    }
    // `None` is the root.
    let mut tree: HashMap<Option<NodeId>, Entry> = HashMap::new();
    for (i, r) in c.iter().enumerate() {
        let mut parent = None;
        tree.entry(None).or_default().weight += 1;
        for &n in &r.path {
            let key = Some(n);
            if !tree.contains_key(&key) {
                tree.get_mut(&parent).expect("parent").children.push(key);
            }
            tree.entry(key).or_default().weight += 1;
            parent = key;
        }
        tree.get_mut(&parent).expect("last node").own.push(i);
    }
    let mut out = Vec::with_capacity(c.len());
    // Explicit stack (paths can be deep): (node, children already pushed).
    let mut stack = vec![(None, false)];
    while let Some((node, expanded)) = stack.pop() {
        let e = &tree[&node];
        if expanded {
            out.extend_from_slice(&e.own);
            continue;
        }
        stack.push((node, true));
        let mut kids = e.children.clone();
        kids.sort_by_key(|k| std::cmp::Reverse(tree[k].weight));
        stack.extend(kids.into_iter().rev().map(|k| (k, false)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(tokens: &[u32], cached: usize, max_new: usize) -> Candidate<'_> {
        Candidate {
            tokens,
            cached,
            path: Vec::new(),
            max_new_tokens: max_new,
            rank: None,
        }
    }

    fn rng() -> SplitMix64 {
        SplitMix64(7)
    }

    #[test]
    fn policy_names_parse_as_sglang_spells_them() {
        for (s, p) in [
            ("fcfs", SchedulePolicy::Fcfs),
            ("lpm", SchedulePolicy::Lpm),
            ("dfs-weight", SchedulePolicy::DfsWeight),
            ("random", SchedulePolicy::Random),
            ("lof", SchedulePolicy::Lof),
        ] {
            assert_eq!(s.parse::<SchedulePolicy>(), Ok(p));
        }
        let e = "LPM".parse::<SchedulePolicy>().unwrap_err();
        assert!(
            e.contains("--schedule-policy LPM") && e.contains("dfs-weight"),
            "{e}"
        );
        assert!("dfs_weight".parse::<SchedulePolicy>().is_err());
        assert_eq!(SchedulePolicy::default(), SchedulePolicy::Fcfs);
    }

    #[test]
    fn fcfs_keeps_arrival_order() {
        let t: Vec<Vec<u32>> = (0..5).map(|i| vec![i; 4]).collect();
        let c: Vec<_> = t
            .iter()
            .enumerate()
            .map(|(i, t)| cand(t, i * 10, i))
            .collect();
        assert_eq!(order(SchedulePolicy::Fcfs, &c, &mut rng()), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn lof_puts_the_longest_output_first_and_keeps_ties_in_arrival_order() {
        let t = [1u32, 2, 3];
        let c: Vec<_> = [16, 256, 16, 1024, 256]
            .iter()
            .map(|&m| cand(&t, 0, m))
            .collect();
        assert_eq!(order(SchedulePolicy::Lof, &c, &mut rng()), [3, 1, 4, 0, 2]);
    }

    #[test]
    fn lpm_puts_the_longest_cached_prefix_first() {
        // Distinct prompts (no in-batch sharing): by cached tokens, ties in arrival order.
        let t: Vec<Vec<u32>> = (0..5).map(|i| vec![100 + i; 64]).collect();
        let cached = [0, 48, 16, 48, 64];
        let c: Vec<_> = (0..5).map(|i| cand(&t[i], cached[i], 1)).collect();
        assert_eq!(order(SchedulePolicy::Lpm, &c, &mut rng()), [4, 1, 3, 2, 0]);
    }

    #[test]
    fn lpm_holds_back_requests_that_share_an_uncached_prefix() {
        // 0 and 2 share 40 uncached leading tokens: 2 waits for 0's prefix to be cached; 1 shares
        // only 8 with 0 and is not held; 3 has a long cached prefix and is never checked.
        let shared: Vec<u32> = (0..40).collect();
        let t0: Vec<u32> = shared.iter().copied().chain([1000; 8]).collect();
        let t1: Vec<u32> = shared[..8].iter().copied().chain([2000; 40]).collect();
        let t2: Vec<u32> = shared.iter().copied().chain([3000; 8]).collect();
        let t3: Vec<u32> = shared.iter().copied().chain([4000; 8]).collect();
        let c = vec![
            cand(&t0, 0, 1),
            cand(&t1, 0, 1),
            cand(&t2, 8, 1),
            cand(&t3, 40, 1),
        ];
        assert_eq!(order(SchedulePolicy::Lpm, &c, &mut rng()), [3, 0, 1, 2]);
    }

    #[test]
    fn lpm_is_fcfs_for_a_long_queue() {
        let t: Vec<Vec<u32>> = (0..=CACHE_AWARE_MAX_QUEUE as u32)
            .map(|i| vec![i; 4])
            .collect();
        let c: Vec<_> = t.iter().enumerate().map(|(i, t)| cand(t, i, 1)).collect();
        let o = order(SchedulePolicy::Lpm, &c, &mut rng());
        assert_eq!(o, (0..c.len()).collect::<Vec<_>>());
    }

    #[test]
    fn random_is_a_seeded_permutation() {
        let seed = crate::seeded::test_seed("random policy test");
        let t = [1u32];
        let c: Vec<_> = (0..32).map(|_| cand(&t, 0, 1)).collect();
        let a = order(SchedulePolicy::Random, &c, &mut SplitMix64(seed));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..32).collect::<Vec<_>>(), "a permutation");
        assert_eq!(a, order(SchedulePolicy::Random, &c, &mut SplitMix64(seed)));
        // 32! orders: two seeds (or two rounds of one generator) agreeing means no shuffle.
        let mut g = SplitMix64(seed);
        let (r1, r2) = (
            order(SchedulePolicy::Random, &c, &mut g),
            order(SchedulePolicy::Random, &c, &mut g),
        );
        assert_ne!(r1, r2, "seed {seed}");
        assert_ne!(a, (0..32).collect::<Vec<_>>(), "seed {seed}");
    }

    #[test]
    fn dfs_weight_runs_the_heaviest_subtree_first_children_before_their_node() {
        // Tree (node ids): root -> 1 -> {2, 3}; root -> 4. Requests ending at:
        // r0: 4, r1: 1, r2: 2, r3: 3, r4: 3, r5: root (nothing cached), r6: 2, r7: 3.
        // Weights: 1 = 6 (r1 r2 r3 r4 r6 r7), 3 = 3, 2 = 2, 4 = 1.
        let paths: [&[NodeId]; 8] = [&[4], &[1], &[1, 2], &[1, 3], &[1, 3], &[], &[1, 2], &[1, 3]];
        let t = [0u32];
        let c: Vec<_> = paths
            .iter()
            .map(|p| Candidate {
                tokens: &t,
                cached: 0,
                path: p.to_vec(),
                max_new_tokens: 1,
                rank: None,
            })
            .collect();
        assert_eq!(
            order(SchedulePolicy::DfsWeight, &c, &mut rng()),
            [3, 4, 7, 2, 6, 1, 0, 5]
        );
    }

    #[test]
    fn priorities_rank_fcfs_and_lof_first() {
        let pr = Priority {
            enabled: true,
            ..Priority::default()
        };
        let t = [0u32];
        // Priorities (None: the default 0) and max_new_tokens per request, in arrival order.
        let reqs = [
            (Some(1), 4),
            (None, 9),
            (Some(5), 2),
            (Some(1), 8),
            (Some(-3), 1),
        ];
        let ranked = |pr: &Priority| -> Vec<_> {
            reqs.iter()
                .map(|&(p, m)| Candidate {
                    rank: Some(pr.rank(p)),
                    ..cand(&t, 0, m)
                })
                .collect()
        };
        let c = ranked(&pr);
        // Higher values first, arrival order among equals.
        assert_eq!(order(SchedulePolicy::Fcfs, &c, &mut rng()), [2, 0, 3, 1, 4]);
        // lof within a priority.
        assert_eq!(order(SchedulePolicy::Lof, &c, &mut rng()), [2, 3, 0, 1, 4]);
        // Low values first.
        let low = Priority {
            low_first: true,
            ..pr
        };
        let c = ranked(&low);
        assert_eq!(order(SchedulePolicy::Fcfs, &c, &mut rng()), [4, 1, 0, 3, 2]);
        // Extreme values do not overflow.
        assert!(pr.rank(Some(i64::MIN)) > pr.rank(Some(0)));
    }
}
