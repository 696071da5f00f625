//! Approximate radix tree of what each worker has probably cached, for the cache-aware policy.
//!
//! One compressed trie over keys of `T` (text bytes, or token ids) shared by all workers
//! ("tenants"). Each node records which tenants passed through it and when (a logical clock, so
//! the structure is deterministic and testable). Invariants, checked by [`RadixTree::check`]:
//! - every node but the root has at least one tenant, and its tenants are a subset of its
//!   parent's (a tenant that inserted a key owns the whole path to it);
//! - a child is stored under the first element of its edge, and edges are never empty;
//! - `sizes[t]` is the sum of edge lengths of the nodes `t` owns.
//!
//! Insert and match are O(key length) hash lookups; eviction of a tenant is O(n log n) in its
//! nodes, and runs on a timer, not per request.

use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

/// A worker's id inside the tree.
pub type Tenant = u32;

const ROOT: u32 = 0;
const FREED: u32 = u32::MAX;

#[derive(Debug)]
struct Node<T> {
    edge: Vec<T>,
    parent: u32,
    children: HashMap<T, u32>,
    /// (tenant, last access tick); a handful of entries, so a vector beats a map.
    tenants: Vec<(Tenant, u64)>,
}

impl<T> Node<T> {
    fn has(&self, t: Tenant) -> bool {
        self.tenants.iter().any(|&(x, _)| x == t)
    }
}

/// The result of [`RadixTree::longest_match`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// How many leading elements of the key some tenant has.
    pub len: usize,
    /// The tenants that have all `len` of them.
    pub tenants: Vec<Tenant>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RadixTree<T> {
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    tick: u64,
    sizes: HashMap<Tenant, usize>,
}

impl<T: Copy + Eq + Hash> Default for RadixTree<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn common_prefix<T: Eq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<T: Copy + Eq + Hash> RadixTree<T> {
    pub fn new() -> Self {
        let root = Node {
            edge: Vec::new(),
            parent: ROOT,
            children: HashMap::new(),
            tenants: vec![],
        };
        Self {
            nodes: vec![root],
            free: Vec::new(),
            tick: 0,
            sizes: HashMap::new(),
        }
    }

    /// Elements owned by `tenant` (0 if unknown).
    pub fn size(&self, tenant: Tenant) -> usize {
        self.sizes.get(&tenant).copied().unwrap_or(0)
    }

    /// Tenants that own at least one element.
    pub fn tenants(&self) -> impl Iterator<Item = Tenant> + '_ {
        self.sizes.iter().filter(|(_, &s)| s > 0).map(|(&t, _)| t)
    }

    fn alloc(&mut self, node: Node<T>) -> u32 {
        if let Some(id) = self.free.pop() {
            self.nodes[id as usize] = node;
            id
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    fn touch(&mut self, id: u32, tenant: Tenant) {
        if id == ROOT {
            return;
        }
        let tick = self.tick;
        let node = &mut self.nodes[id as usize];
        if let Some(e) = node.tenants.iter_mut().find(|(t, _)| *t == tenant) {
            e.1 = tick;
        } else {
            node.tenants.push((tenant, tick));
            *self.sizes.entry(tenant).or_insert(0) += node.edge.len();
        }
    }

    /// Cuts `id`'s edge after `k` elements; `id` keeps the head, a new child gets the tail.
    fn split(&mut self, id: u32, k: usize) {
        let node = &mut self.nodes[id as usize];
        let tail = node.edge.split_off(k);
        let children = std::mem::take(&mut node.children);
        let tenants = node.tenants.clone();
        let first = tail[0];
        let new = self.alloc(Node {
            edge: tail,
            parent: id,
            children,
            tenants,
        });
        let grandchildren: Vec<u32> = self.nodes[new as usize]
            .children
            .values()
            .copied()
            .collect();
        for c in grandchildren {
            self.nodes[c as usize].parent = new;
        }
        self.nodes[id as usize].children.insert(first, new);
    }

    /// Records that `tenant` now holds `key` (and so every prefix of it).
    pub fn insert(&mut self, key: &[T], tenant: Tenant) {
        self.tick += 1;
        let (mut node, mut i) = (ROOT, 0);
        loop {
            self.touch(node, tenant);
            if i == key.len() {
                return;
            }
            let Some(&child) = self.nodes[node as usize].children.get(&key[i]) else {
                let leaf = Node {
                    edge: key[i..].to_vec(),
                    parent: node,
                    children: HashMap::new(),
                    tenants: Vec::new(),
                };
                let leaf = self.alloc(leaf);
                self.nodes[node as usize].children.insert(key[i], leaf);
                self.touch(leaf, tenant);
                return;
            };
            let common = common_prefix(&self.nodes[child as usize].edge, &key[i..]);
            if common < self.nodes[child as usize].edge.len() {
                self.split(child, common);
            }
            i += common;
            node = child;
        }
    }

    /// The longest prefix of `key` that any tenant holds, and which tenants hold it.
    pub fn longest_match(&self, key: &[T]) -> Match {
        let (mut node, mut i) = (ROOT, 0);
        while i < key.len() {
            let Some(&child) = self.nodes[node as usize].children.get(&key[i]) else {
                break;
            };
            let edge = &self.nodes[child as usize].edge;
            let common = common_prefix(edge, &key[i..]);
            i += common;
            node = child;
            if common < edge.len() {
                break;
            }
        }
        let tenants = self.nodes[node as usize]
            .tenants
            .iter()
            .map(|&(t, _)| t)
            .collect();
        Match {
            len: if node == ROOT { 0 } else { i },
            tenants,
        }
    }

    /// Drops `id` (which has no tenants and hence no children) from its parent and frees it.
    fn unlink(&mut self, id: u32) {
        let parent = self.nodes[id as usize].parent;
        let first = self.nodes[id as usize].edge[0];
        if parent != FREED && self.nodes[parent as usize].children.get(&first) == Some(&id) {
            self.nodes[parent as usize].children.remove(&first);
        }
        let node = &mut self.nodes[id as usize];
        node.parent = FREED;
        node.children.clear();
        node.edge.clear();
        self.free.push(id);
    }

    fn is_tenant_leaf(&self, id: u32, tenant: Tenant) -> bool {
        let node = &self.nodes[id as usize];
        node.has(tenant)
            && !node
                .children
                .values()
                .any(|&c| self.nodes[c as usize].has(tenant))
    }

    /// Evicts `tenant`'s least recently used leaves until it holds at most `max` elements.
    pub fn evict(&mut self, tenant: Tenant, max: usize) {
        if self.size(tenant) <= max {
            return;
        }
        let mut heap: BinaryHeap<std::cmp::Reverse<(u64, u32)>> = BinaryHeap::new();
        for id in 1..self.nodes.len() as u32 {
            if self.nodes[id as usize].parent != FREED && self.is_tenant_leaf(id, tenant) {
                let tick = self.nodes[id as usize]
                    .tenants
                    .iter()
                    .find(|e| e.0 == tenant)
                    .unwrap()
                    .1;
                heap.push(std::cmp::Reverse((tick, id)));
            }
        }
        while self.size(tenant) > max {
            let Some(std::cmp::Reverse((_, id))) = heap.pop() else {
                break;
            };
            let node = &mut self.nodes[id as usize];
            node.tenants.retain(|e| e.0 != tenant);
            let (len, parent, empty) = (node.edge.len(), node.parent, node.tenants.is_empty());
            *self.sizes.get_mut(&tenant).unwrap() -= len;
            if empty {
                self.unlink(id);
            }
            if parent != ROOT && self.is_tenant_leaf(parent, tenant) {
                let tick = self.nodes[parent as usize]
                    .tenants
                    .iter()
                    .find(|e| e.0 == tenant);
                heap.push(std::cmp::Reverse((tick.unwrap().1, parent)));
            }
        }
    }

    /// Forgets `tenant` entirely (a worker was removed).
    pub fn remove_tenant(&mut self, tenant: Tenant) {
        let mut dead = Vec::new();
        for id in 1..self.nodes.len() as u32 {
            let node = &mut self.nodes[id as usize];
            if node.parent == FREED {
                continue;
            }
            node.tenants.retain(|e| e.0 != tenant);
            if node.tenants.is_empty() {
                dead.push(id);
            }
        }
        // Children before parents is not needed: unlink only touches the parent's map.
        for id in dead {
            self.unlink(id);
        }
        self.sizes.remove(&tenant);
    }

    /// Verifies the invariants in the module documentation; panics with a message if one fails.
    pub fn check(&self) {
        let mut sizes: HashMap<Tenant, usize> = HashMap::new();
        for (id, node) in self.nodes.iter().enumerate().skip(1) {
            if node.parent == FREED {
                continue;
            }
            assert!(!node.edge.is_empty(), "node {id}: empty edge");
            assert!(!node.tenants.is_empty(), "node {id}: no tenants");
            let parent = &self.nodes[node.parent as usize];
            assert_eq!(
                parent.children.get(&node.edge[0]),
                Some(&(id as u32)),
                "node {id}: link"
            );
            for &(t, _) in &node.tenants {
                assert!(
                    node.parent == ROOT || parent.has(t),
                    "node {id}: tenant {t} not in parent"
                );
                *sizes.entry(t).or_insert(0) += node.edge.len();
            }
        }
        for (t, s) in &self.sizes {
            assert_eq!(sizes.get(t).copied().unwrap_or(0), *s, "size of tenant {t}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn match_and_split() {
        let mut t = RadixTree::new();
        t.insert(b"hello world", 1);
        t.insert(b"hello there", 2);
        t.check();
        assert_eq!(
            t.longest_match(b"hello wor"),
            Match {
                len: 9,
                tenants: vec![1]
            }
        );
        let m = t.longest_match(b"hello xyz");
        assert_eq!(m.len, 6);
        assert_eq!(m.tenants.len(), 2);
        assert_eq!(t.longest_match(b"zzz"), Match::default());
        assert_eq!(t.size(1), 11);
        assert_eq!(t.size(2), 11);
    }

    #[test]
    fn eviction_drops_least_recent_first() {
        let mut t = RadixTree::new();
        t.insert(b"aaaa", 1);
        t.insert(b"bbbb", 1);
        t.insert(b"aaaa", 1); // "aaaa" is now the most recent
        t.evict(1, 4);
        t.check();
        assert_eq!(t.size(1), 4);
        assert_eq!(t.longest_match(b"aaaa").len, 4);
        assert_eq!(t.longest_match(b"bbbb").len, 0);
    }

    #[test]
    fn remove_tenant_keeps_others() {
        let mut t = RadixTree::new();
        t.insert(&[1u32, 2, 3], 1);
        t.insert(&[1u32, 2, 4], 2);
        t.remove_tenant(1);
        t.check();
        assert_eq!(
            t.longest_match(&[1, 2, 3]),
            Match {
                len: 2,
                tenants: vec![2]
            }
        );
        assert_eq!(t.size(1), 0);
    }

    /// Random inserts, evictions and removals against a brute-force model of each tenant's keys.
    #[test]
    fn randomized_against_model() {
        let seed: u64 = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut t = RadixTree::new();
        let mut model: HashMap<Tenant, Vec<Vec<u8>>> = HashMap::new();
        for step in 0..4000 {
            let tenant = rng.random_range(0..4u32);
            let len = rng.random_range(1..12);
            let key: Vec<u8> = (0..len).map(|_| rng.random_range(b'a'..b'd')).collect();
            match rng.random_range(0..100) {
                0..=89 => {
                    t.insert(&key, tenant);
                    model.entry(tenant).or_default().push(key.clone());
                    let m = t.longest_match(&key);
                    assert_eq!(m.len, key.len(), "step {step}");
                    assert!(m.tenants.contains(&tenant), "step {step}");
                }
                90..=97 => {
                    t.evict(tenant, 20);
                    assert!(t.size(tenant) <= 20, "step {step}");
                    // Eviction only removes keys, so the model stays an upper bound.
                }
                _ => {
                    t.remove_tenant(tenant);
                    model.remove(&tenant);
                    assert_eq!(t.size(tenant), 0);
                }
            }
            if step % 97 == 0 {
                t.check();
                // A match is never longer than what some tenant actually inserted.
                let probe: Vec<u8> = (0..8).map(|_| rng.random_range(b'a'..b'd')).collect();
                let m = t.longest_match(&probe);
                for &tn in &m.tenants {
                    if let Some(keys) = model.get(&tn) {
                        let best = keys.iter().map(|k| common_prefix(k, &probe)).max().unwrap();
                        assert!(m.len <= best, "step {step}: match {} > model {best}", m.len);
                    }
                }
            }
        }
        t.check();
    }
}
