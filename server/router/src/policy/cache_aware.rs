//! Cache-aware routing: send a request where its prefix most likely sits in the KV cache, unless
//! the pool is out of balance.
//!
//! Per request, under one lock:
//! 1. If `max_load - min_load > balance_abs_threshold` and `max_load > min_load *
//!    balance_rel_threshold`, pick the least-loaded candidate (shortest queue).
//! 2. Else find the longest prefix of the key any worker holds (approximate radix tree over token
//!    ids when the request has them, else over the text's bytes). If it covers more than
//!    `cache_threshold` of the key, pick the least-loaded worker holding it.
//! 3. Else pick the worker whose tree is smallest (most free cache), least-loaded on ties.
//!
//! The chosen worker is then recorded as holding the key. Loads are the router's in-flight counts,
//! which the caller bumps at dispatch, so a burst of identical prompts spreads out as soon as the
//! imbalance thresholds are crossed.

use parking_lot::Mutex;

use super::{least_loaded, Candidate, Policy, RouteKey};
use crate::config::CacheAwareConfig;
use crate::tree::{RadixTree, Tenant};

#[derive(Debug, Default)]
struct Trees {
    text: RadixTree<u8>,
    ids: RadixTree<u32>,
}

#[derive(Debug)]
pub struct CacheAware {
    cfg: CacheAwareConfig,
    trees: Mutex<Trees>,
}

impl CacheAware {
    pub fn new(cfg: CacheAwareConfig) -> Self {
        Self {
            cfg,
            trees: Mutex::new(Trees::default()),
        }
    }

    fn imbalanced(&self, c: &[Candidate<'_>]) -> bool {
        let max = c.iter().map(|x| x.load).max().unwrap_or(0);
        let min = c.iter().map(|x| x.load).min().unwrap_or(0);
        max - min > self.cfg.balance_abs_threshold
            && max as f32 > min as f32 * self.cfg.balance_rel_threshold
    }
}

fn choose(
    cfg: &CacheAwareConfig,
    c: &[Candidate<'_>],
    m: crate::tree::Match,
    key_len: usize,
    size: impl Fn(Tenant) -> usize,
) -> usize {
    let ratio = if key_len == 0 {
        0.0
    } else {
        m.len as f32 / key_len as f32
    };
    if ratio > cfg.cache_threshold {
        let best = (0..c.len())
            .filter(|&i| m.tenants.contains(&c[i].id))
            .min_by_key(|&i| c[i].load);
        if let Some(i) = best {
            return i;
        }
    }
    (0..c.len())
        .min_by_key(|&i| (size(c[i].id), c[i].load))
        .unwrap_or(0)
}

impl Policy for CacheAware {
    fn name(&self) -> &'static str {
        "cache_aware"
    }

    fn needs_key(&self) -> bool {
        true
    }

    fn select(&self, c: &[Candidate<'_>], key: &RouteKey<'_>) -> Option<usize> {
        if c.is_empty() {
            return None;
        }
        let balance = self.imbalanced(c);
        let mut trees = self.trees.lock();
        let trees = &mut *trees;
        let i = match (key.ids, key.text) {
            (Some(ids), _) => {
                let i = if balance {
                    least_loaded(c)?
                } else {
                    choose(&self.cfg, c, trees.ids.longest_match(ids), ids.len(), |t| {
                        trees.ids.size(t)
                    })
                };
                trees.ids.insert(ids, c[i].id);
                i
            }
            (None, Some(text)) => {
                let k = text.as_bytes();
                let i = if balance {
                    least_loaded(c)?
                } else {
                    choose(&self.cfg, c, trees.text.longest_match(k), k.len(), |t| {
                        trees.text.size(t)
                    })
                };
                trees.text.insert(k, c[i].id);
                i
            }
            (None, None) => least_loaded(c)?,
        };
        Some(i)
    }

    fn remove_worker(&self, id: u32) {
        let mut t = self.trees.lock();
        t.text.remove_tenant(id);
        t.ids.remove_tenant(id);
    }

    fn maintain(&self) {
        // Tenants are few; collect them from the sizes the trees track.
        let mut t = self.trees.lock();
        let max = self.cfg.max_tree_size;
        let tenants: Vec<Tenant> = t.text.tenants().chain(t.ids.tenants()).collect();
        for id in tenants {
            t.text.evict(id, max);
            t.ids.evict(id, max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cands;
    use super::*;

    fn text(s: &str) -> RouteKey<'_> {
        RouteKey {
            text: Some(s),
            ids: None,
        }
    }

    #[test]
    fn same_prefix_sticks_to_one_worker() {
        let p = CacheAware::new(CacheAwareConfig::default());
        let c = cands(&[0, 0, 0]);
        let first = p
            .select(&c, &text("You are a helpful assistant. Question 1"))
            .unwrap();
        for q in 2..20 {
            let again = p.select(
                &c,
                &text(&format!("You are a helpful assistant. Question {q}")),
            );
            assert_eq!(again, Some(first));
        }
    }

    #[test]
    fn new_prefixes_spread_to_emptiest_tree() {
        let p = CacheAware::new(CacheAwareConfig::default());
        let c = cands(&[0, 0, 0]);
        let picks: Vec<_> = ["alpha alpha", "bravo bravo", "charlie charlie"]
            .iter()
            .map(|t| p.select(&c, &text(t)).unwrap())
            .collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2], "{picks:?}");
    }

    #[test]
    fn imbalance_overrides_affinity() {
        let p = CacheAware::new(CacheAwareConfig::default());
        let k = text("shared system prompt and more");
        assert_eq!(p.select(&cands(&[0, 0]), &k), Some(0));
        // A small imbalance keeps affinity to the worker that has the prefix.
        assert_eq!(p.select(&cands(&[30, 10]), &k), Some(0));
        // 100 in flight against 10 crosses both thresholds: balance wins.
        assert_eq!(p.select(&cands(&[100, 10]), &k), Some(1));
    }

    #[test]
    fn token_ids_are_a_separate_key_space() {
        let p = CacheAware::new(CacheAwareConfig::default());
        let c = cands(&[0, 0]);
        let ids = [1u32, 2, 3, 4, 5, 6];
        let a = p
            .select(
                &c,
                &RouteKey {
                    text: None,
                    ids: Some(&ids),
                },
            )
            .unwrap();
        let b = p
            .select(
                &c,
                &RouteKey {
                    text: None,
                    ids: Some(&[1, 2, 3, 4, 9]),
                },
            )
            .unwrap();
        assert_eq!(a, b, "4 of 5 ids match: above the 0.3 threshold");
    }

    #[test]
    fn removed_worker_and_eviction() {
        let cfg = CacheAwareConfig {
            max_tree_size: 4,
            ..Default::default()
        };
        let p = CacheAware::new(cfg);
        let c = cands(&[0, 0]);
        let a = p.select(&c, &text("abcdefgh")).unwrap();
        p.maintain();
        assert!(p.trees.lock().text.size(c[a].id) <= 4);
        p.remove_worker(c[a].id);
        assert_eq!(p.trees.lock().text.size(c[a].id), 0);
    }
}
