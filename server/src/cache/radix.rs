//! Radix tree over token ids at page granularity, owning the KV pages of cached prefixes in two
//! tiers: the device pool (L1) and, with the hierarchical cache, the host pool (L2).
//!
//! Each cache namespace ([`CacheNs`]: a LoRA adapter, an `extra_key`) has its own root, made
//! with its first node and dropped with its last; the default namespace's root is permanent.
//! Nothing is shared across namespaces; locks, eviction and the tiers work across all of them.
//!
//! A pure data structure (no I/O, no threads): the scheduler owns it. Each node's key is a run of
//! whole pages of tokens; children are indexed by the tokens of their first page. A node holds one
//! device [`Page`] per page of its key, one host `Page` per page, or both. A request that reuses a
//! prefix locks the deepest matched node (lock counts run from that node to the root), and locked
//! nodes are evicted from neither tier.
//!
//! Tier rules (SGLang's HiRadixCache):
//! - Device eviction takes unlocked nodes with no device-resident child, least recently used
//!   first. A node backed up on the host keeps living there (host-only); one that is not is removed
//!   with its (host-only) subtree, unless the caller's `backup` copies it to the host first
//!   (write-back).
//! - Host eviction drops the host copy of an unlocked node that is also on the device, and removes
//!   unlocked host-only leaves.
//! - L3 is not tracked here: it is asked live.
//!
//! Invariants (checked by [`RadixCache::check`] in the randomised tests): key length is
//! `pages × page_size`; a node holds 0 or all of its pages in each tier and at least one tier;
//! device residency is prefix-closed (a device node's parent is a device node or the root); a child
//! is indexed by its key's first page; a parent's lock count is at least each child's;
//! `cached_pages`, `host_pages` and `locked_pages` equal the sums over the nodes.
//! Complexity: match and insert are O(tokens); eviction O(nodes + evicted · log nodes).

use super::ns::CacheNs;
use crate::kv::{Page, PageId};
use std::collections::{BinaryHeap, HashMap};

/// Index of a node in the tree.
pub type NodeId = usize;

const ROOT: NodeId = 0;

/// A memory tier of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Device,
    Host,
}

#[derive(Debug, Default)]
struct Node {
    parent: NodeId,
    key: Vec<u32>,
    /// Device (L1) pages: empty when the node lives only on the host.
    device: Vec<Page>,
    /// Host (L2) pages: empty when the node is not backed up.
    host: Vec<Page>,
    children: HashMap<Vec<u32>, NodeId>,
    lock: usize,
    last_access: u64,
    /// Matches that passed through this node (write_through_selective's counter).
    hits: u32,
    /// A namespace root's namespace (None on every other node).
    ns: Option<CacheNs>,
}

impl Node {
    fn tier(&self, t: Tier) -> &Vec<Page> {
        match t {
            Tier::Device => &self.device,
            Tier::Host => &self.host,
        }
    }
    fn tier_mut(&mut self, t: Tier) -> &mut Vec<Page> {
        match t {
            Tier::Device => &mut self.device,
            Tier::Host => &mut self.host,
        }
    }
}

/// Result of [`RadixCache::match_prefix`].
#[derive(Debug, Clone)]
pub struct PrefixMatch {
    /// Device pages of the matched prefix, in order.
    pub pages: Vec<PageId>,
    /// Tokens matched on the device (`pages.len() × page_size`).
    pub tokens: usize,
    /// The deepest matched device node (lock it to keep the pages).
    pub node: NodeId,
    /// Further tokens matched on host-only nodes below `node` (0 without a host tier).
    pub host_tokens: usize,
    /// The deepest matched node in either tier (`node` when `host_tokens` is 0).
    pub host_node: NodeId,
}

/// A node that gained pages in one tier but has none in the other, reported by
/// [`RadixCache::insert`]: the hierarchical cache backs these up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fresh {
    pub node: NodeId,
    /// Index of the node's first page in the inserted sequence.
    pub first_page: usize,
    pub pages: usize,
}

/// The prefix cache.
#[derive(Debug)]
pub struct RadixCache {
    page_size: usize,
    nodes: Vec<Option<Node>>,
    free_slots: Vec<NodeId>,
    tick: u64,
    cached_pages: usize,
    host_pages: usize,
    locked_pages: usize,
    lfu: bool,
    /// The roots of the non-default namespaces that hold nodes.
    roots: HashMap<CacheNs, NodeId>,
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
            host_pages: 0,
            locked_pages: 0,
            lfu: false,
            roots: HashMap::new(),
        }
    }

    /// Evicts least frequently used nodes first (ties by recency) instead of least recently used.
    pub fn with_lfu(mut self, lfu: bool) -> Self {
        self.lfu = lfu;
        self
    }

    /// Eviction order key: smallest first.
    fn prio(&self, id: NodeId) -> std::cmp::Reverse<(u64, u64)> {
        let n = self.node(id);
        std::cmp::Reverse(if self.lfu {
            (n.hits as u64, n.last_access)
        } else {
            (n.last_access, 0)
        })
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes[id].as_ref().expect("live node")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id].as_mut().expect("live node")
    }

    fn new_slot(&mut self) -> NodeId {
        self.free_slots.pop().unwrap_or_else(|| {
            self.nodes.push(None);
            self.nodes.len() - 1
        })
    }

    /// Whole pages of `rest` equal to `id`'s key from its start.
    fn matched_pages(&self, id: NodeId, rest: &[u32]) -> usize {
        let ps = self.page_size;
        self.node(id)
            .key
            .chunks(ps)
            .zip(rest.chunks_exact(ps))
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Follows `rest` into `child` (whose first page it matches): the node the match ends on
    /// (`child`, or its upper part split off where the match ends inside it) and the pages
    /// matched.
    fn descend(&mut self, child: NodeId, rest: &[u32]) -> (NodeId, usize) {
        let m = self.matched_pages(child, rest);
        if m * self.page_size == self.node(child).key.len() {
            (child, m)
        } else {
            (self.split(child, m), m)
        }
    }

    /// The root of namespace `ns` (the default root for None); None while `ns` holds nothing.
    fn root(&self, ns: Option<CacheNs>) -> Option<NodeId> {
        match ns {
            None => Some(ROOT),
            Some(ns) => self.roots.get(&ns).copied(),
        }
    }

    fn new_root(&mut self, ns: CacheNs) -> NodeId {
        let id = self.new_slot();
        self.nodes[id] = Some(Node {
            ns: Some(ns),
            last_access: self.tick,
            ..Node::default()
        });
        self.roots.insert(ns, id);
        id
    }

    /// Whether `id` is a root (the default one or a namespace's): the only nodes without a key.
    fn is_root(&self, id: NodeId) -> bool {
        self.node(id).key.is_empty()
    }

    /// The namespace node `id` belongs to.
    pub fn ns_of(&self, mut id: NodeId) -> Option<CacheNs> {
        while !self.is_root(id) {
            id = self.node(id).parent;
        }
        self.node(id).ns
    }

    /// Non-default namespaces that hold nodes.
    pub fn namespaces(&self) -> usize {
        self.roots.len()
    }

    /// Device pages held by the tree.
    pub fn cached_pages(&self) -> usize {
        self.cached_pages
    }

    /// Host pages held by the tree.
    pub fn host_pages(&self) -> usize {
        self.host_pages
    }

    /// Device pages that eviction could free now (an upper bound: an unbacked interior node
    /// becomes evictable only after its subtree).
    pub fn evictable_pages(&self) -> usize {
        self.cached_pages - self.locked_pages
    }

    /// Longest cached prefix of `tokens` in whole pages of namespace `ns`, in both tiers. Splits
    /// a node so that the match ends on a node boundary, and refreshes access times and hit
    /// counts along the path. A match of nothing names the (default) root, whatever `ns` is.
    pub fn match_prefix(&mut self, ns: Option<CacheNs>, tokens: &[u32]) -> PrefixMatch {
        self.tick += 1;
        let ps = self.page_size;
        let mut pages = Vec::new();
        let mut pos = 0;
        let mut dev = PrefixMatch {
            pages: Vec::new(),
            tokens: 0,
            node: ROOT,
            host_tokens: 0,
            host_node: ROOT,
        };
        let Some(mut cur) = self.root(ns) else {
            return dev;
        };
        let tick = self.tick;
        self.node_mut(cur).last_access = tick;
        while pos + ps <= tokens.len() {
            let Some(&child) = self.node(cur).children.get(&tokens[pos..pos + ps]) else {
                break;
            };
            let (child, m) = self.descend(child, &tokens[pos..]);
            let tick = self.tick;
            let c = self.node_mut(child);
            c.last_access = tick;
            c.hits = c.hits.saturating_add(1);
            if !c.device.is_empty() {
                pages.extend(c.device.iter().map(Page::id));
                dev.node = child;
            }
            pos += m * ps;
            cur = child;
        }
        dev.tokens = pages.len() * ps;
        dev.pages = pages;
        dev.host_tokens = pos - dev.tokens;
        dev.host_node = if pos > 0 { cur } else { ROOT };
        dev
    }

    /// Read-only [`match_prefix`](Self::match_prefix) for ranking waiting requests: the tokens of
    /// `tokens` cached in either tier (whole pages) and the nodes the match passes through, the
    /// last one possibly matched only in part. Splits nothing and refreshes neither access times
    /// nor hit counts, so ranking a queue every round does not make its prefixes look hot.
    pub fn peek_prefix(&self, ns: Option<CacheNs>, tokens: &[u32]) -> (usize, Vec<NodeId>) {
        let ps = self.page_size;
        let Some(mut cur) = self.root(ns) else {
            return (0, Vec::new());
        };
        let (mut pos, mut path) = (0, Vec::new());
        while pos + ps <= tokens.len() {
            let Some(&child) = self.node(cur).children.get(&tokens[pos..pos + ps]) else {
                break;
            };
            let m = self.matched_pages(child, &tokens[pos..]);
            path.push(child);
            pos += m * ps;
            if m * ps < self.node(child).key.len() {
                break;
            }
            cur = child;
        }
        (pos, path)
    }

    /// Splits `id` after `at` pages (0 < at < pages); returns the new upper node.
    fn split(&mut self, id: NodeId, at: usize) -> NodeId {
        let ps = self.page_size;
        let new_id = self.new_slot();
        let child = self.node_mut(id);
        let parent = child.parent;
        let upper_key: Vec<u32> = child.key.drain(..at * ps).collect();
        let take = |v: &mut Vec<Page>| -> Vec<Page> {
            if v.is_empty() {
                Vec::new()
            } else {
                v.drain(..at).collect()
            }
        };
        let upper_device = take(&mut child.device);
        let upper_host = take(&mut child.host);
        let (lock, last_access, hits) = (child.lock, child.last_access, child.hits);
        child.parent = new_id;
        let child_first = child.key[..ps].to_vec();
        let upper_first = upper_key[..ps].to_vec();
        let mut children = HashMap::new();
        children.insert(child_first, id);
        self.nodes[new_id] = Some(Node {
            parent,
            key: upper_key,
            device: upper_device,
            host: upper_host,
            children,
            lock,
            last_access,
            hits,
            ns: None,
        });
        self.node_mut(parent).children.insert(upper_first, new_id);
        new_id
    }

    /// Caches `tokens` (whole pages) on the device. The first `skip` pages are the caller's locked
    /// match (already in the tree); `own` are the caller's pages for the rest. Where a page's
    /// content is already on the device the caller's page is dropped (freed); where it is cached on
    /// the host only, the caller's page joins that node; the rest becomes a new node. Returns the
    /// tokens that were already cached on the device, and the nodes that now have device pages but
    /// no host copy.
    pub fn insert(
        &mut self,
        ns: Option<CacheNs>,
        tokens: &[u32],
        skip: usize,
        own: Vec<Page>,
    ) -> (usize, Vec<Fresh>) {
        self.insert_tier(Tier::Device, ns, tokens, skip, own)
    }

    /// Caches `tokens` (whole pages) on the host: `own` are host pages holding pages
    /// `skip..` (fetched from L3). Pages already on the host are dropped; device-only nodes gain the
    /// host copy; the rest becomes host-only nodes. The first `skip` pages must be in the tree
    /// (the caller keeps them locked). Returns the pages kept.
    pub fn insert_host(
        &mut self,
        ns: Option<CacheNs>,
        tokens: &[u32],
        skip: usize,
        own: Vec<Page>,
    ) -> usize {
        let n = own.len();
        let before = self.host_pages;
        self.insert_tier(Tier::Host, ns, tokens, skip, own);
        debug_assert!(self.host_pages - before <= n);
        self.host_pages - before
    }

    fn insert_tier(
        &mut self,
        tier: Tier,
        ns: Option<CacheNs>,
        tokens: &[u32],
        skip: usize,
        own: Vec<Page>,
    ) -> (usize, Vec<Fresh>) {
        let ps = self.page_size;
        debug_assert_eq!(tokens.len(), (skip + own.len()) * ps);
        self.tick += 1;
        let mut fresh = Vec::new();
        let mut cur = match (self.root(ns), ns) {
            (Some(r), _) => r,
            // Nothing of the namespace is cached: its root comes with its first node.
            (None, Some(ns)) if skip == 0 && !own.is_empty() => self.new_root(ns),
            (None, _) => {
                debug_assert!(skip == 0, "insert: locked prefix missing from the tree");
                return (0, fresh);
            }
        };
        let mut own = own.into_iter();
        let mut page = 0; // index of the next page of `tokens`
        let mut already = 0; // tokens found in `tier`
        let total = skip + own.len();
        while page < total {
            let pos = page * ps;
            let Some(&child) = self.node(cur).children.get(&tokens[pos..pos + ps]) else {
                break;
            };
            // tokens holds exactly `total` pages, so the match stops at the last one.
            let (child, m) = self.descend(child, &tokens[pos..]);
            let mine: Vec<Page> = (page..page + m)
                .filter(|&p| p >= skip)
                .filter_map(|_| own.next())
                .collect();
            let tick = self.tick;
            let locked = self.node(child).lock > 0;
            let node = self.node_mut(child);
            node.last_access = tick;
            let has = !node.tier(tier).is_empty();
            // A node gains this tier only when the caller supplies every page of it (it can miss
            // some only inside its locked prefix, which is already on the device).
            if !has && mine.len() == m {
                *node.tier_mut(tier) = mine;
                let other_empty = match tier {
                    Tier::Device => node.host.is_empty(),
                    Tier::Host => node.device.is_empty(),
                };
                if other_empty {
                    fresh.push(Fresh {
                        node: child,
                        first_page: page,
                        pages: m,
                    });
                }
                match tier {
                    Tier::Device => {
                        self.cached_pages += m;
                        if locked {
                            self.locked_pages += m;
                        }
                    }
                    Tier::Host => self.host_pages += m,
                }
            } else {
                if has {
                    already = (page + m) * ps;
                }
                drop(mine); // duplicates of cached pages
            }
            page += m;
            cur = child;
        }
        if page < skip {
            // The caller's locked prefix is not in the tree: a caller bug. Keep the tree sound.
            debug_assert!(false, "insert: locked prefix missing from the tree");
            return (already, fresh);
        }
        let rest: Vec<Page> = own.collect();
        if !rest.is_empty() {
            let key = tokens[page * ps..].to_vec();
            let first = key[..ps].to_vec();
            let id = self.new_slot();
            let n = rest.len();
            let mut node = Node {
                parent: cur,
                key,
                children: HashMap::new(),
                last_access: self.tick,
                ..Node::default()
            };
            *node.tier_mut(tier) = rest;
            match tier {
                Tier::Device => self.cached_pages += n,
                Tier::Host => self.host_pages += n,
            }
            self.nodes[id] = Some(node);
            self.node_mut(cur).children.insert(first, id);
            fresh.push(Fresh {
                node: id,
                first_page: page,
                pages: n,
            });
        }
        (already, fresh)
    }

    /// Locks the path from `id` to the root.
    pub fn lock(&mut self, mut id: NodeId) {
        while !self.is_root(id) {
            let n = self.node_mut(id);
            n.lock += 1;
            if n.lock == 1 {
                let p = n.device.len();
                self.locked_pages += p;
            }
            id = self.node(id).parent;
        }
    }

    /// Undoes one [`lock`](Self::lock) of `id`.
    pub fn unlock(&mut self, mut id: NodeId) {
        while !self.is_root(id) {
            let n = self.node_mut(id);
            assert!(n.lock > 0, "unlock of an unlocked node");
            n.lock -= 1;
            if n.lock == 0 {
                let p = n.device.len();
                self.locked_pages -= p;
            }
            id = self.node(id).parent;
        }
    }

    /// Whether `id` still names a live node (a finished backup may outlive nothing: locked nodes
    /// stay, but callers check before touching).
    pub fn is_live(&self, id: NodeId) -> bool {
        self.nodes.get(id).is_some_and(Option::is_some)
    }

    /// The host-only nodes on the path from `id` up to its deepest device ancestor, top-down.
    pub fn host_only_path(&self, mut id: NodeId) -> Vec<NodeId> {
        let mut path = Vec::new();
        while !self.is_root(id) && self.node(id).device.is_empty() {
            path.push(id);
            id = self.node(id).parent;
        }
        path.reverse();
        path
    }

    /// The tokens from the root down to the end of node `id`.
    pub fn path_tokens(&self, mut id: NodeId) -> Vec<u32> {
        let mut parts = Vec::new();
        while !self.is_root(id) {
            parts.push(id);
            id = self.node(id).parent;
        }
        parts
            .iter()
            .rev()
            .flat_map(|&n| self.node(n).key.iter().copied())
            .collect()
    }

    /// Nodes on the path from the root to `id` that are on the device but not backed up and were
    /// hit at least `min_hits` times (write_through_selective's candidates), top-down.
    pub fn unbacked_path(&self, mut id: NodeId, min_hits: u32) -> Vec<NodeId> {
        let mut out = Vec::new();
        while !self.is_root(id) {
            let n = self.node(id);
            if !n.device.is_empty() && n.host.is_empty() && n.hits >= min_hits {
                out.push(id);
            }
            id = n.parent;
        }
        out.reverse();
        out
    }

    /// Pages of `id` in `tier` (empty when it has none there).
    pub fn pages_of(&self, id: NodeId, tier: Tier) -> Vec<PageId> {
        self.node(id).tier(tier).iter().map(Page::id).collect()
    }

    /// Number of pages of node `id`.
    pub fn node_pages(&self, id: NodeId) -> usize {
        self.node(id).key.len() / self.page_size
    }

    /// Matches that passed through node `id`.
    pub fn hits(&self, id: NodeId) -> u32 {
        self.node(id).hits
    }

    /// Gives node `id` its pages in `tier` (a load-back to the device, or a backup to the host).
    /// The node must have none there, and device residency must stay prefix-closed.
    pub fn set_pages(&mut self, id: NodeId, tier: Tier, pages: Vec<Page>) {
        let n_pages = self.node_pages(id);
        assert_eq!(pages.len(), n_pages, "set_pages: page count");
        let parent = self.node(id).parent;
        if tier == Tier::Device {
            assert!(
                self.is_root(parent) || !self.node(parent).device.is_empty(),
                "set_pages: device parent missing"
            );
        }
        let locked = self.node(id).lock > 0;
        let n = self.node_mut(id);
        assert!(n.tier(tier).is_empty(), "set_pages: tier already held");
        *n.tier_mut(tier) = pages;
        match tier {
            Tier::Device => {
                self.cached_pages += n_pages;
                if locked {
                    self.locked_pages += n_pages;
                }
            }
            Tier::Host => self.host_pages += n_pages,
        }
    }

    fn has_device_child(&self, id: NodeId) -> bool {
        self.node(id)
            .children
            .values()
            .any(|&c| !self.node(c).device.is_empty())
    }

    fn device_candidate(&self, id: NodeId) -> bool {
        let n = self.node(id);
        !n.key.is_empty() && !n.device.is_empty() && n.lock == 0 && !self.has_device_child(id)
    }

    /// Evicts device pages until at least `pages` were freed or nothing is evictable; returns
    /// pages freed. See [`evict_with`](Self::evict_with).
    pub fn evict(&mut self, pages: usize) -> usize {
        self.evict_with(pages, &mut |_| None).0
    }

    /// Device eviction, least recently used first. A node with a host copy becomes host-only; a
    /// node without one is first offered to `backup` (which may copy its device pages to new host
    /// pages and return them: write-back), else removed with its host-only subtree. Returns device
    /// pages freed and the nodes `backup` copied.
    pub fn evict_with(
        &mut self,
        pages: usize,
        backup: &mut dyn FnMut(&[PageId]) -> Option<Vec<Page>>,
    ) -> (usize, Vec<NodeId>) {
        let mut backed = Vec::new();
        let freed = self.evict_loop(pages, Self::device_candidate, &mut |t, id| {
            if t.node(id).host.is_empty() {
                let dev: Vec<PageId> = t.node(id).device.iter().map(Page::id).collect();
                if let Some(host) = backup(&dev) {
                    t.set_pages(id, Tier::Host, host);
                    backed.push(id);
                }
            }
            if t.node(id).host.is_empty() {
                t.remove_subtree(id);
            } else {
                let dev = std::mem::take(&mut t.node_mut(id).device);
                t.cached_pages -= dev.len();
            }
        });
        (freed, backed)
    }

    /// The loop both tiers' eviction share: takes candidates in eviction order, lets `act` free
    /// each one's pages in its tier, until `pages` pages were freed; a parent that becomes a
    /// candidate joins the queue. Returns pages freed.
    fn evict_loop(
        &mut self,
        pages: usize,
        candidate: fn(&Self, NodeId) -> bool,
        act: &mut dyn FnMut(&mut Self, NodeId),
    ) -> usize {
        let mut heap: BinaryHeap<(std::cmp::Reverse<(u64, u64)>, NodeId)> = BinaryHeap::new();
        for id in 0..self.nodes.len() {
            if self.is_live(id) && candidate(self, id) {
                heap.push((self.prio(id), id));
            }
        }
        let mut freed = 0;
        while freed < pages {
            let Some((_, id)) = heap.pop() else { break };
            if !self.is_live(id) || !candidate(self, id) {
                continue;
            }
            let parent = self.node(id).parent;
            freed += self.node_pages(id);
            act(self, id);
            // (A namespace root emptied by `act` is gone.)
            if self.is_live(parent) && candidate(self, parent) {
                heap.push((self.prio(parent), parent));
            }
        }
        freed
    }

    /// Removes `id` and its subtree (all unlocked), returning their pages to their pools.
    fn remove_subtree(&mut self, id: NodeId) {
        let ps = self.page_size;
        let parent = self.node(id).parent;
        let first = self.node(id).key[..ps].to_vec();
        self.node_mut(parent).children.remove(&first);
        let p = self.node(parent);
        if let Some(ns) = p.ns.filter(|_| p.children.is_empty()) {
            self.roots.remove(&ns);
            self.nodes[parent] = None;
            self.free_slots.push(parent);
        }
        let mut stack = vec![id];
        while let Some(x) = stack.pop() {
            let n = self.nodes[x].take().expect("live node");
            debug_assert_eq!(n.lock, 0, "removing a locked node");
            self.cached_pages -= n.device.len();
            self.host_pages -= n.host.len();
            stack.extend(n.children.values().copied());
            self.free_slots.push(x);
        }
    }

    fn host_candidate(&self, id: NodeId) -> bool {
        let n = self.node(id);
        !n.key.is_empty()
            && !n.host.is_empty()
            && n.lock == 0
            && (!n.device.is_empty() || n.children.is_empty())
    }

    /// Host eviction, least recently used first: drops host copies of nodes also on the device and
    /// removes host-only leaves, until at least `pages` host pages were freed or nothing is
    /// evictable. Returns host pages freed.
    pub fn evict_host(&mut self, pages: usize) -> usize {
        self.evict_loop(pages, Self::host_candidate, &mut |t, id| {
            if t.node(id).device.is_empty() {
                t.remove_subtree(id);
            } else {
                let host = std::mem::take(&mut t.node_mut(id).host);
                t.host_pages -= host.len();
            }
        })
    }

    /// Drops every cached page in both tiers; refuses (returns false) while any node is locked.
    pub fn reset(&mut self) -> bool {
        if self.locked_pages > 0 || self.nodes.iter().flatten().any(|n| n.lock > 0) {
            return false;
        }
        *self = RadixCache::new(self.page_size).with_lfu(self.lfu);
        true
    }

    /// Checks the structural invariants; panics with a description on violation.
    pub fn check(&self) {
        let ps = self.page_size;
        let (mut cached, mut host, mut locked) = (0, 0, 0);
        for (id, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            if n.key.is_empty() {
                assert!(n.device.is_empty() && n.host.is_empty(), "root {id}: pages");
                assert_eq!(n.lock, 0, "root {id}: locked");
                if id != ROOT {
                    let ns = n.ns.expect("a namespace root has its namespace");
                    assert_eq!(self.roots.get(&ns), Some(&id), "root {id}: index");
                    assert!(!n.children.is_empty(), "root {id}: empty namespace kept");
                }
                continue;
            }
            assert!(n.ns.is_none(), "node {id}: namespace off a root");
            let pages = n.key.len() / ps;
            assert!(pages > 0, "node {id}: empty non-root node");
            assert_eq!(n.key.len(), pages * ps, "node {id}: key length");
            assert!(
                n.device.is_empty() || n.device.len() == pages,
                "node {id}: device pages"
            );
            assert!(
                n.host.is_empty() || n.host.len() == pages,
                "node {id}: host pages"
            );
            assert!(
                !n.device.is_empty() || !n.host.is_empty(),
                "node {id}: in no tier"
            );
            let p = self.node(n.parent);
            assert_eq!(
                p.children.get(&n.key[..ps]),
                Some(&id),
                "node {id}: parent index"
            );
            if !self.is_root(n.parent) {
                assert!(p.lock >= n.lock, "node {id}: lock above parent's");
                if !n.device.is_empty() {
                    assert!(!p.device.is_empty(), "node {id}: device parent missing");
                }
            }
            cached += n.device.len();
            host += n.host.len();
            if n.lock > 0 {
                locked += n.device.len();
            }
        }
        assert_eq!(cached, self.cached_pages, "cached_pages");
        assert_eq!(host, self.host_pages, "host_pages");
        assert_eq!(locked, self.locked_pages, "locked_pages");
        for (ns, &id) in &self.roots {
            assert!(self.is_live(id), "namespace root {id}: gone");
            assert_eq!(
                self.node(id).ns,
                Some(*ns),
                "namespace root {id}: namespace"
            );
        }
    }
}
