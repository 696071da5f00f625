//! Seeded randomised tests of the radix cache against a reference of page contents.
//!
//! Every page handed to the tree is recorded with the tokens it holds; any match must return pages
//! whose recorded tokens equal the query, locked matches must survive eviction, and page accounting
//! (`free + cached == total`) must hold after every step. The seed is printed; set
//! `STRATA_TEST_SEED` to replay one.

use super::radix::RadixCache;
use crate::kv::FreeList;
use crate::seeded::SplitMix64;
use std::collections::HashMap;

fn run(seed: u64, page_size: usize, steps: usize) {
    let total = 160;
    let list = FreeList::new(total);
    let mut tree = RadixCache::new(page_size);
    let mut rng = SplitMix64(seed);
    let mut content: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    let mut locks: Vec<(usize, Vec<u32>, Vec<u32>)> = Vec::new(); // node, tokens, pages
    let mut r = |n: u64| (rng.next_u64() % n) as usize;
    let (mut matched, mut evicted, mut inserted) = (0usize, 0usize, 0usize);
    for step in 0..steps {
        let op = r(10);
        // A query: often an extension of an earlier sequence, over a tiny alphabet.
        let mut q: Vec<u32> = if !seqs.is_empty() && r(3) > 0 {
            let base = &seqs[r(seqs.len() as u64)];
            base[..r(base.len() as u64 + 1)].to_vec()
        } else {
            Vec::new()
        };
        for _ in 0..r(8 * page_size as u64) {
            q.push(r(3) as u32);
        }
        let m = tree.match_prefix(&q);
        assert_eq!(m.tokens, m.pages.len() * page_size);
        matched += m.tokens;
        for (i, p) in m.pages.iter().enumerate() {
            assert_eq!(
                content[p],
                q[i * page_size..(i + 1) * page_size],
                "seed {seed} step {step}: page {p} content"
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
                        content.insert(p.id(), q[at..at + page_size].to_vec());
                    }
                    inserted += need;
                    let already = tree.insert(&q[..full], m.pages.len(), own);
                    assert!(already >= m.tokens);
                    seqs.push(q.clone());
                    let again = tree.match_prefix(&q);
                    assert_eq!(
                        again.tokens, full,
                        "seed {seed} step {step}: inserted sequence not fully cached"
                    );
                }
                tree.unlock(m.node);
            }
            5 | 6 => {
                tree.lock(m.node);
                locks.push((m.node, q[..m.tokens].to_vec(), m.pages.clone()));
            }
            7 => {
                if !locks.is_empty() {
                    let (node, _, _) = locks.swap_remove(r(locks.len() as u64));
                    tree.unlock(node);
                }
            }
            _ => {
                evicted += tree.evict(r(40));
                for (_, toks, pages) in &locks {
                    let again = tree.match_prefix(toks);
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
    }
    // The run must have exercised reuse, insertion and eviction, not just empty trees.
    assert!(
        matched > 0 && inserted > 0 && evicted > 0,
        "seed {seed}: matched {matched} inserted {inserted} evicted {evicted}"
    );
    for (node, _, _) in locks.drain(..) {
        tree.unlock(node);
    }
    let cached = tree.cached_pages();
    assert_eq!(tree.evict(usize::MAX), cached);
    assert!(tree.reset());
    drop(tree);
    assert_eq!(list.free_count(), total);
}

#[test]
fn randomised_radix_invariants() {
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("radix randomised test seed {seed} (replay with STRATA_TEST_SEED={seed})");
    for (i, ps) in [1usize, 2, 4].into_iter().enumerate() {
        run(seed.wrapping_add(i as u64), ps, 4000);
    }
}
