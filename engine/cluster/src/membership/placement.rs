//! Placement: weighted rendezvous (highest-random-weight) hashing of a key over the alive members.
//!
//! Every client and the master compute the same ranking from the same membership, so no per-key
//! location metadata exists anywhere. A key's replicas are the first `replica_num` members of its
//! ranking. When a member leaves, only its keys move (to their next-ranked member); when it returns
//! with the same id, exactly those keys map back to it and its persisted pages are served again.
//! Weights are capacities, so a node with twice the space gets about twice the keys.
//!
//! Hash: xxh3-64 of `node_id || 0xFF || key` (specified, not `DefaultHasher`), mapped to (0, 1).

use xxhash_rust::xxh3::Xxh3;

use crate::proto::MemberInfo;

/// The score of `key` on member `id` with weight `w` (higher wins).
pub fn score(id: &str, key: &[u8], w: f64) -> f64 {
    let mut h = Xxh3::new();
    h.update(id.as_bytes());
    h.update(&[0xFF]);
    h.update(key);
    // 53 random bits into the open interval (0, 1).
    let u = ((h.digest() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    w / -u.ln()
}

fn weight(m: &MemberInfo) -> f64 {
    // GiB of capacity, at least one unit so tiny test stores still get keys.
    (m.capacity as f64 / (1u64 << 30) as f64).max(1.0)
}

/// Indices of `members` ordered best first for `key`.
pub fn rank(key: &[u8], members: &[MemberInfo]) -> Vec<usize> {
    let mut s: Vec<(f64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (score(&m.id, key, weight(m)), i))
        .collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    s.into_iter().map(|(_, i)| i).collect()
}

/// The best `n` members for `key` (fewer when fewer exist).
pub fn replicas(key: &[u8], members: &[MemberInfo], n: usize) -> Vec<usize> {
    if n == 1 {
        // The common case without a sort.
        return members
            .iter()
            .enumerate()
            .map(|(i, m)| (score(&m.id, key, weight(m)), i))
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, i)| vec![i])
            .unwrap_or_default();
    }
    let mut r = rank(key, members);
    r.truncate(n);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, cap_gib: u64) -> MemberInfo {
        MemberInfo {
            id: id.into(),
            addr: String::new(),
            capacity: cap_gib << 30,
            memory: 0,
            alive: true,
        }
    }

    #[test]
    fn only_removed_members_keys_move() {
        let all = vec![m("a", 1), m("b", 1), m("c", 1)];
        let two = vec![m("a", 1), m("c", 1)];
        let mut counts = [0usize; 3];
        for i in 0..3000u32 {
            let k = i.to_le_bytes();
            let before = &all[replicas(&k, &all, 1)[0]].id;
            counts[replicas(&k, &all, 1)[0]] += 1;
            let after = &two[replicas(&k, &two, 1)[0]].id;
            if before != "b" {
                assert_eq!(before, after);
            }
            assert_eq!(rank(&k, &all)[0], replicas(&k, &all, 1)[0]);
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn weights_skew_share() {
        let ms = vec![m("a", 1), m("b", 3)];
        let b = (0..4000u32)
            .filter(|i| replicas(&i.to_le_bytes(), &ms, 1)[0] == 1)
            .count();
        assert!((2700..3300).contains(&b), "{b}");
    }
}
