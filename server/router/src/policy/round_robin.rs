//! Round robin: candidates in turn, whatever their load.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, Policy, RouteKey};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn select(&self, c: &[Candidate<'_>], _key: &RouteKey<'_>) -> Option<usize> {
        if c.is_empty() {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % c.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::cands;
    use super::*;

    #[test]
    fn cycles() {
        let p = RoundRobin::default();
        let c = cands(&[5, 0, 9]);
        let picks: Vec<_> = (0..6)
            .map(|_| p.select(&c, &RouteKey::default()).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(p.select(&[], &RouteKey::default()), None);
    }
}
