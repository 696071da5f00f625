//! Seeded randomised tests of the radix cache against a reference of page contents.
//!
//! Every page handed to the tree is recorded with the tokens it holds; any match must return pages
//! whose recorded tokens equal the query, locked matches must survive eviction, and page accounting
//! (`free + cached == total`) must hold after every step. The seed is printed; set
//! `STRATA_TEST_SEED` to replay one. The tiered runs add a host pool: write-through backups,
//! write-back on eviction, prefetched host-only nodes, load-backs and host eviction, with page
//! contents followed across tiers. Queries run in three namespaces (the default one and two
//! others): every page is recorded with its namespace, and a match must never cross one.

use super::ns::CacheNs;
use super::radix::{RadixCache, Tier};
use crate::kv::FreeList;
use crate::seeded::SplitMix64;
use std::collections::HashMap;

fn run(seed: u64, page_size: usize, steps: usize, tiers: bool) {
    let total = 160;
    let list = FreeList::new(total);
    let host_total = if tiers { 240 } else { 0 };
    let hlist = FreeList::new(host_total);
    let mut tree = RadixCache::new(page_size);
    let mut rng = SplitMix64(seed);
    // Tokens each page holds, per tier (the "bytes" a load-back or backup copies).
    type Content = (Option<CacheNs>, Vec<u32>);
    // A held lock: node, namespace, tokens, pages.
    type Held = (usize, Option<CacheNs>, Vec<u32>, Vec<u32>);
    let mut content: HashMap<u32, Content> = HashMap::new();
    let mut hcontent: HashMap<u32, Content> = HashMap::new();
    let mut seqs: Vec<(Option<CacheNs>, Vec<u32>)> = Vec::new();
    let mut locks: Vec<Held> = Vec::new();
    let spaces = [
        None,
        CacheNs::of(None, Some("a")),
        CacheNs::of(None, Some("b")),
    ];
    let mut r = |n: u64| (rng.next_u64() % n) as usize;
    let (mut matched, mut evicted, mut inserted) = (0usize, 0usize, 0usize);
    let (mut loaded, mut backed, mut host_evicted) = (0usize, 0usize, 0usize);
    for step in 0..steps {
        let op = r(14);
        // A query: often an extension of an earlier sequence, over a tiny alphabet.
        // Mostly in the earlier sequence's namespace, sometimes another's.
        let (ns, mut q): (Option<CacheNs>, Vec<u32>) = if !seqs.is_empty() && r(3) > 0 {
            let (ns, base) = &seqs[r(seqs.len() as u64)];
            let ns = if r(4) == 0 { spaces[r(3)] } else { *ns };
            (ns, base[..r(base.len() as u64 + 1)].to_vec())
        } else {
            (spaces[r(3)], Vec::new())
        };
        for _ in 0..r(8 * page_size as u64) {
            q.push(r(3) as u32);
        }
        // The read-only peek sees what the match will (both tiers), without splitting.
        let (peeked, path) = tree.peek_prefix(ns, &q);
        let mut m = tree.match_prefix(ns, &q);
        assert_eq!(
            peeked,
            m.tokens + m.host_tokens,
            "seed {seed} step {step}: peek"
        );
        assert_eq!(
            path.is_empty(),
            peeked == 0,
            "seed {seed} step {step}: peek path"
        );
        assert_eq!(m.tokens, m.pages.len() * page_size);
        if !tiers {
            assert_eq!(m.host_tokens, 0);
        }
        // Load the host-only part back to the device (what admission does).
        if m.host_tokens > 0 && r(2) == 0 {
            tree.lock(m.host_node);
            let path = tree.host_only_path(m.host_node);
            let need: usize = path.iter().map(|&n| tree.node_pages(n)).sum();
            if list.free_count() < need {
                tree.evict(need - list.free_count());
            }
            if let Some(mut dev) = list.alloc(need) {
                for &n in &path {
                    let host = tree.pages_of(n, Tier::Host);
                    let pages: Vec<_> = dev.drain(..host.len()).collect();
                    for (h, d) in host.iter().zip(&pages) {
                        content.insert(d.id(), hcontent[h].clone());
                    }
                    loaded += pages.len();
                    tree.set_pages(n, Tier::Device, pages);
                }
            }
            tree.unlock(m.host_node);
            m = tree.match_prefix(ns, &q);
        }
        matched += m.tokens;
        for (i, p) in m.pages.iter().enumerate() {
            assert_eq!(
                content[p],
                (ns, q[i * page_size..(i + 1) * page_size].to_vec()),
                "seed {seed} step {step}: page {p} content or namespace"
            );
        }
        if m.tokens + m.host_tokens > 0 {
            assert_eq!(
                tree.ns_of(m.host_node),
                ns,
                "seed {seed} step {step}: ns_of"
            );
        }
        match op {
            0..=4 => {
                let full = q.len() / page_size * page_size;
                let need = full / page_size - m.pages.len();
                tree.lock(m.node);
                if list.free_count() < need {
                    tree.evict(need - list.free_count());
                }
                if let Some(own) = list.alloc(need) {
                    for (i, p) in own.iter().enumerate() {
                        let at = (m.pages.len() + i) * page_size;
                        content.insert(p.id(), (ns, q[at..at + page_size].to_vec()));
                    }
                    inserted += need;
                    let (already, fresh) = tree.insert(ns, &q[..full], m.pages.len(), own);
                    assert!(already >= m.tokens);
                    // Write-through: back up fresh nodes when the host has room.
                    for f in fresh {
                        if !tiers || r(3) == 0 {
                            continue;
                        }
                        if let Some(host) = hlist.alloc(f.pages) {
                            let dev = tree.pages_of(f.node, Tier::Device);
                            for (d, h) in dev.iter().zip(&host) {
                                hcontent.insert(h.id(), content[d].clone());
                            }
                            backed += host.len();
                            tree.set_pages(f.node, Tier::Host, host);
                        }
                    }
                    seqs.push((ns, q.clone()));
                    let again = tree.match_prefix(ns, &q);
                    assert_eq!(
                        again.tokens, full,
                        "seed {seed} step {step}: inserted sequence not fully cached"
                    );
                }
                tree.unlock(m.node);
            }
            5 | 6 => {
                tree.lock(m.node);
                locks.push((m.node, ns, q[..m.tokens].to_vec(), m.pages.clone()));
            }
            7 => {
                if !locks.is_empty() {
                    let (node, ..) = locks.swap_remove(r(locks.len() as u64));
                    tree.unlock(node);
                }
            }
            8 | 9 if tiers => {
                // A prefetch from L3: the query's pages past the match arrive on the host.
                let upto = q.len() / page_size;
                let have = (m.tokens + m.host_tokens) / page_size;
                let n = upto.saturating_sub(have);
                tree.lock(m.host_node);
                if hlist.free_count() < n {
                    host_evicted += tree.evict_host(n - hlist.free_count());
                }
                if let Some(host) = hlist.alloc(n) {
                    for (i, h) in host.iter().enumerate() {
                        let at = (have + i) * page_size;
                        hcontent.insert(h.id(), (ns, q[at..at + page_size].to_vec()));
                    }
                    tree.insert_host(ns, &q[..upto * page_size], have, host);
                    let again = tree.match_prefix(ns, &q);
                    assert_eq!(again.tokens + again.host_tokens, upto * page_size);
                }
                tree.unlock(m.host_node);
            }
            10 if tiers => host_evicted += tree.evict_host(r(40)),
            _ => {
                // Device eviction; write-back half of the time.
                let wb = tiers && r(2) == 0;
                let mut backup = |dev: &[u32]| -> Option<Vec<crate::kv::Page>> {
                    if !wb {
                        return None;
                    }
                    let host = hlist.alloc(dev.len())?;
                    for (d, h) in dev.iter().zip(&host) {
                        hcontent.insert(h.id(), content[d].clone());
                    }
                    Some(host)
                };
                evicted += tree.evict_with(r(40), &mut backup).0;
                for (_, ns, toks, pages) in &locks {
                    let again = tree.match_prefix(*ns, toks);
                    assert_eq!(
                        &again.pages, pages,
                        "seed {seed} step {step}: locked prefix evicted"
                    );
                }
            }
        }
        tree.check();
        assert_eq!(
            list.free_count() + tree.cached_pages(),
            total,
            "seed {seed} step {step}: page accounting"
        );
        assert_eq!(
            hlist.free_count() + tree.host_pages(),
            host_total,
            "seed {seed} step {step}: host page accounting"
        );
    }
    // The run must have exercised reuse, insertion and eviction, not just empty trees.
    assert!(
        matched > 0 && inserted > 0 && evicted > 0,
        "seed {seed}: matched {matched} inserted {inserted} evicted {evicted}"
    );
    if tiers {
        assert!(
            loaded > 0 && backed > 0 && host_evicted > 0,
            "seed {seed}: loaded {loaded} backed {backed} host-evicted {host_evicted}"
        );
    }
    for (node, ..) in locks.drain(..) {
        tree.unlock(node);
    }
    tree.evict(usize::MAX);
    tree.evict_host(usize::MAX);
    tree.evict(usize::MAX);
    assert_eq!(tree.cached_pages() + tree.host_pages(), 0);
    assert_eq!(tree.namespaces(), 0, "seed {seed}: emptied namespaces kept");
    assert!(tree.reset());
    drop(tree);
    assert_eq!(list.free_count(), total);
    assert_eq!(hlist.free_count(), host_total);
}

#[test]
fn randomised_radix_invariants() {
    let seed = crate::seeded::test_seed("radix randomised test");
    for (i, ps) in [1usize, 2, 4].into_iter().enumerate() {
        run(seed.wrapping_add(i as u64), ps, 4000, false);
        run(seed.wrapping_add(100 + i as u64), ps, 4000, true);
    }
}

#[test]
fn namespaces_share_nothing_and_go_with_their_last_node() {
    let list = FreeList::new(16);
    let mut tree = RadixCache::new(2);
    let (a, b) = (CacheNs::of(None, Some("a")), CacheNs::of(None, Some("b")));
    let toks = [1u32, 2, 3, 4];
    let (none, _) = tree.insert(a, &toks, 0, list.alloc(2).unwrap());
    assert_eq!(none, 0);
    assert_eq!(tree.namespaces(), 1);
    // The same tokens elsewhere are a miss, and their insert caches pages of their own.
    assert_eq!(tree.match_prefix(None, &toks).tokens, 0);
    assert_eq!(tree.match_prefix(b, &toks).tokens, 0);
    assert_eq!(tree.peek_prefix(b, &toks).0, 0);
    tree.insert(None, &toks, 0, list.alloc(2).unwrap());
    tree.insert(b, &toks[..2], 0, list.alloc(1).unwrap());
    assert_eq!(tree.cached_pages(), 5);
    let m = tree.match_prefix(a, &toks);
    assert_eq!(m.tokens, 4);
    assert_eq!(tree.ns_of(m.node), a);
    assert_eq!(tree.match_prefix(b, &toks).tokens, 2);
    let base = tree.match_prefix(None, &toks).node;
    assert_eq!(tree.ns_of(base), None);
    tree.check();
    // A locked namespace keeps its pages; evicting the rest drops the other namespace's root.
    tree.lock(m.node);
    tree.evict(usize::MAX);
    assert_eq!(tree.cached_pages(), 2);
    assert_eq!(tree.namespaces(), 1);
    assert_eq!(tree.match_prefix(a, &toks).tokens, 4);
    tree.check();
    tree.unlock(m.node);
    tree.evict(usize::MAX);
    assert_eq!(tree.namespaces(), 0);
    assert_eq!(tree.match_prefix(a, &toks).tokens, 0);
    tree.check();
    assert_eq!(list.free_count(), 16);
}
