//! Power of two choices: two distinct random candidates, the less loaded one wins (the first drawn
//! on ties). Load is the router's own in-flight count, so it reacts within one request.

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Candidate, Policy, RouteKey};

#[derive(Debug)]
pub struct PowerOfTwo {
    rng: Mutex<SmallRng>,
}

impl PowerOfTwo {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }
}

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power_of_two"
    }

    fn select(&self, c: &[Candidate<'_>], _key: &RouteKey<'_>) -> Option<usize> {
        match c.len() {
            0 => None,
            1 => Some(0),
            n => {
                let mut rng = self.rng.lock();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                Some(if c[b].load < c[a].load { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cands;
    use super::*;

    #[test]
    fn never_picks_the_most_loaded_of_two_or_more() {
        let p = PowerOfTwo::new(3);
        let c = cands(&[10, 1, 5]);
        for _ in 0..500 {
            assert_ne!(p.select(&c, &RouteKey::default()), Some(0));
        }
        let two = cands(&[4, 2]);
        for _ in 0..100 {
            assert_eq!(p.select(&two, &RouteKey::default()), Some(1));
        }
        assert_eq!(p.select(&cands(&[7]), &RouteKey::default()), Some(0));
    }
}
