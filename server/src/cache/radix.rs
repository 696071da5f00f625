//! Radix tree over token ids at page granularity, owning the KV pages of cached prefixes.
//!
//! A pure data structure (no I/O, no threads): the scheduler owns it. Each node's key is a run of
//! whole pages of tokens and holds one [`Page`] per page; children are indexed by the tokens of their
//! first page. A request that reuses a prefix locks the deepest matched node (lock counts run from
//! that node to the root), and locked nodes are never evicted. Eviction removes unlocked leaves in
//! least-recently-used order, dropping their pages back to the pool.
//!
//! Invariants (checked by [`RadixCache::check`] in the randomised tests): key length is
//! `pages × page_size`; a child is indexed by its key's first page; a parent's lock count is at least
//! each child's; `cached_pages` and `locked_pages` equal the sums over the nodes.
//! Complexity: match and insert are O(tokens); eviction O(evicted · log leaves).

use crate::kv::{Page, PageId};
use std::collections::{BinaryHeap, HashMap};

/// Index of a node in the tree.
pub type NodeId = usize;

const ROOT: NodeId = 0;

#[derive(Debug, Default)]
struct Node {
    parent: NodeId,
    key: Vec<u32>,
    pages: Vec<Page>,
    children: HashMap<Vec<u32>, NodeId>,
    lock: usize,
    last_access: u64,
}

/// Result of [`RadixCache::match_prefix`].
#[derive(Debug, Clone)]
pub struct PrefixMatch {
    /// Pages of the matched prefix, in order.
    pub pages: Vec<PageId>,
    /// Tokens matched (`pages.len() × page_size`).
    pub tokens: usize,
    /// The deepest matched node (lock it to keep the pages).
    pub node: NodeId,
}

/// The prefix cache.
#[derive(Debug)]
pub struct RadixCache {
    page_size: usize,
    nodes: Vec<Option<Node>>,
    free_slots: Vec<NodeId>,
    tick: u64,
    cached_pages: usize,
    locked_pages: usize,
}

impl RadixCache {
    pub fn new(page_size: usize) -> Self {
        assert!(page_size > 0);
        RadixCache {
            page_size,
            nodes: vec![Some(Node::default())],
            free_slots: Vec::new(),
            tick: 0,
            cached_pages: 0,
            locked_pages: 0,
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes[id].as_ref().expect("live node")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id].as_mut().expect("live node")
    }

    /// Pages held by the tree.
    pub fn cached_pages(&self) -> usize {
        self.cached_pages
    }

    /// Pages that eviction could free now.
    pub fn evictable_pages(&self) -> usize {
        self.cached_pages - self.locked_pages
    }

    /// Longest cached prefix of `tokens` in whole pages. Splits a node so that the match ends on a
    /// node boundary, and refreshes access times along the path.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> PrefixMatch {
        self.tick += 1;
        let ps = self.page_size;
        let mut cur = ROOT;
        let mut pages = Vec::new();
        let mut pos = 0;
        self.node_mut(ROOT).last_access = self.tick;
        while pos + ps <= tokens.len() {
            let Some(&child) = self.node(cur).children.get(&tokens[pos..pos + ps]) else {
                break;
            };
            let n = self.node(child);
            let mut m = 0;
            while m < n.pages.len()
                && pos + (m + 1) * ps <= tokens.len()
                && n.key[m * ps..(m + 1) * ps] == tokens[pos + m * ps..pos + (m + 1) * ps]
            {
                m += 1;
            }
            let child = if m < n.pages.len() {
                self.split(child, m)
            } else {
                child
            };
            let tick = self.tick;
            let c = self.node_mut(child);
            c.last_access = tick;
            pages.extend(c.pages.iter().map(Page::id));
            pos += m * ps;
            cur = child;
        }
        PrefixMatch {
            tokens: pages.len() * ps,
            pages,
            node: cur,
        }
    }

    /// Splits `id` after `at` pages (0 < at < pages); returns the new upper node.
    fn split(&mut self, id: NodeId, at: usize) -> NodeId {
        let ps = self.page_size;
        let new_id = self.free_slots.pop().unwrap_or_else(|| {
            self.nodes.push(None);
            self.nodes.len() - 1
        });
        let child = self.node_mut(id);
        let parent = child.parent;
        let upper_key: Vec<u32> = child.key.drain(..at * ps).collect();
        let upper_pages: Vec<Page> = child.pages.drain(..at).collect();
        let (lock, last_access) = (child.lock, child.last_access);
        child.parent = new_id;
        let child_first = child.key[..ps].to_vec();
        let upper_first = upper_key[..ps].to_vec();
        let mut children = HashMap::new();
        children.insert(child_first, id);
        self.nodes[new_id] = Some(Node {
            parent,
            key: upper_key,
            pages: upper_pages,
            children,
            lock,
            last_access,
        });
        self.node_mut(parent).children.insert(upper_first, new_id);
        new_id
    }

    /// Caches `tokens` (whole pages). The first `skip` pages are the caller's locked match (already
    /// in the tree); `own` are the caller's pages for the rest. Pages whose content is already
    /// cached are dropped (freed); the others move into the tree. Returns the tokens that were
    /// already cached.
    pub fn insert(&mut self, tokens: &[u32], skip: usize, own: Vec<Page>) -> usize {
        let ps = self.page_size;
        debug_assert_eq!(tokens.len(), (skip + own.len()) * ps);
        self.tick += 1;
        let mut own = own.into_iter();
        let mut cur = ROOT;
        let mut page = 0; // index of the next page of `tokens`
        let total = skip + own.len();
        while page < total {
            let pos = page * ps;
            let Some(&child) = self.node(cur).children.get(&tokens[pos..pos + ps]) else {
                break;
            };
            let n = self.node(child);
            let mut m = 0;
            while m < n.pages.len()
                && page + m < total
                && n.key[m * ps..(m + 1) * ps] == tokens[pos + m * ps..pos + (m + 1) * ps]
            {
                m += 1;
            }
            let child = if m < n.pages.len() {
                self.split(child, m)
            } else {
                child
            };
            for p in page..page + m {
                if p >= skip {
                    drop(own.next()); // duplicate of a cached page
                }
            }
            self.node_mut(child).last_access = self.tick;
            page += m;
            cur = child;
        }
        let already = page * ps;
        if page < skip {
            // The caller's locked prefix is not in the tree: a caller bug. Keep the tree sound.
            debug_assert!(false, "insert: locked prefix missing from the tree");
            return already;
        }
        let rest: Vec<Page> = own.collect();
        if !rest.is_empty() {
            let key = tokens[page * ps..].to_vec();
            let first = key[..ps].to_vec();
            let id = self.free_slots.pop().unwrap_or_else(|| {
                self.nodes.push(None);
                self.nodes.len() - 1
            });
            self.cached_pages += rest.len();
            self.nodes[id] = Some(Node {
                parent: cur,
                key,
                pages: rest,
                children: HashMap::new(),
                lock: 0,
                last_access: self.tick,
            });
            self.node_mut(cur).children.insert(first, id);
        }
        already
    }

    /// Locks the path from `id` to the root.
    pub fn lock(&mut self, mut id: NodeId) {
        while id != ROOT {
            let n = self.node_mut(id);
            n.lock += 1;
            if n.lock == 1 {
                let p = n.pages.len();
                self.locked_pages += p;
            }
            id = self.node(id).parent;
        }
    }

    /// Undoes one [`lock`](Self::lock) of `id`.
    pub fn unlock(&mut self, mut id: NodeId) {
        while id != ROOT {
            let n = self.node_mut(id);
            assert!(n.lock > 0, "unlock of an unlocked node");
            n.lock -= 1;
            if n.lock == 0 {
                let p = n.pages.len();
                self.locked_pages -= p;
            }
            id = self.node(id).parent;
        }
    }

    /// Evicts unlocked leaves, least recently used first, until at least `pages` pages were freed or
    /// nothing is evictable. Returns pages freed.
    pub fn evict(&mut self, pages: usize) -> usize {
        let mut heap: BinaryHeap<(std::cmp::Reverse<u64>, NodeId)> = BinaryHeap::new();
        for (id, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                if id != ROOT && n.children.is_empty() && n.lock == 0 {
                    heap.push((std::cmp::Reverse(n.last_access), id));
                }
            }
        }
        let mut freed = 0;
        while freed < pages {
            let Some((_, id)) = heap.pop() else { break };
            let n = self.nodes[id].take().expect("live leaf");
            self.free_slots.push(id);
            freed += n.pages.len();
            self.cached_pages -= n.pages.len();
            let ps = self.page_size;
            let parent = self.node_mut(n.parent);
            parent.children.remove(&n.key[..ps]);
            if n.parent != ROOT && parent.children.is_empty() && parent.lock == 0 {
                heap.push((std::cmp::Reverse(parent.last_access), n.parent));
            }
        }
        freed
    }

    /// Drops every cached page; refuses (returns false) while any node is locked.
    pub fn reset(&mut self) -> bool {
        if self.locked_pages > 0 || self.nodes.iter().flatten().any(|n| n.lock > 0) {
            return false;
        }
        *self = RadixCache::new(self.page_size);
        true
    }

    /// Checks the structural invariants; panics with a description on violation.
    pub fn check(&self) {
        let ps = self.page_size;
        let (mut cached, mut locked) = (0, 0);
        for (id, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            if id == ROOT {
                assert!(n.pages.is_empty());
                continue;
            }
            assert_eq!(
                n.key.len(),
                n.pages.len() * ps,
                "node {id}: key/page length"
            );
            assert!(!n.pages.is_empty(), "node {id}: empty non-root node");
            let p = self.node(n.parent);
            assert_eq!(
                p.children.get(&n.key[..ps]),
                Some(&id),
                "node {id}: parent index"
            );
            if n.parent != ROOT {
                assert!(p.lock >= n.lock, "node {id}: lock above parent's");
            }
            let child_locks: usize = n.children.values().map(|&c| self.node(c).lock).sum();
            assert!(n.lock >= child_locks.min(1).min(n.lock), "node {id}");
            cached += n.pages.len();
            if n.lock > 0 {
                locked += n.pages.len();
            }
        }
        assert_eq!(cached, self.cached_pages, "cached_pages");
        assert_eq!(locked, self.locked_pages, "locked_pages");
    }
}
