//! Random: a uniformly random candidate, from a seeded generator.

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Candidate, Policy, RouteKey};

#[derive(Debug)]
pub struct RandomPolicy {
    rng: Mutex<SmallRng>,
}

impl RandomPolicy {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }
}

impl Policy for RandomPolicy {
    fn name(&self) -> &'static str {
        "random"
    }

    fn select(&self, c: &[Candidate<'_>], _key: &RouteKey<'_>) -> Option<usize> {
        if c.is_empty() {
            return None;
        }
        Some(self.rng.lock().random_range(0..c.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::cands;
    use super::*;

    #[test]
    fn covers_all_roughly_evenly() {
        let seed = 42;
        println!("seed {seed}");
        let p = RandomPolicy::new(seed);
        let c = cands(&[0, 0, 0, 0]);
        let mut hits = [0usize; 4];
        for _ in 0..4000 {
            hits[p.select(&c, &RouteKey::default()).unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
        assert_eq!(p.select(&[], &RouteKey::default()), None);
    }
}
