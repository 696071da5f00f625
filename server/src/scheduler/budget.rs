//! The prefill token budget of one scheduling round: `--chunked-prefill-size` and
//! `--max-prefill-tokens`, combined as SGLang's `PrefillAdder` combines them.
//!
//! - The chunk budget (when chunking is on) is hard: a sequence gets at most what is left of it,
//!   so a long prompt is cut into chunks.
//! - The input budget (`--max-prefill-tokens`) decides whether another sequence may start: with
//!   chunking on, admission stops once it is spent (the last sequence admitted may take it past
//!   the limit, up to its chunk); with chunking off, a sequence whose tokens are not below what is
//!   left waits, except the round's first, which always runs whole (a prompt longer than the
//!   limit still runs).
//!
//! Decode tokens are not counted (SGLang without `--enable-mixed-chunk`). Counted in tokens, not
//! rounded up to pages.

/// SGLang's `--max-prefill-tokens` default.
pub const DEFAULT_MAX_PREFILL_TOKENS: usize = 16384;

/// What is left of a round's prefill budgets.
#[derive(Debug, Clone)]
pub struct PrefillBudget {
    /// Chunk tokens left; `None` = chunking off.
    chunk: Option<usize>,
    /// Input tokens left (may go below zero by the last admission).
    input: i64,
    /// Sequences holding a grant this round.
    granted: usize,
}

impl PrefillBudget {
    pub fn new(chunked_prefill_size: Option<usize>, max_prefill_tokens: usize) -> Self {
        PrefillBudget {
            chunk: chunked_prefill_size,
            input: max_prefill_tokens as i64,
            granted: 0,
        }
    }

    /// Whether any sequence may still be granted prefill tokens this round.
    pub fn open(&self) -> bool {
        self.input > 0 && self.chunk.is_none_or(|c| c > 0)
    }

    /// How many of the `want` tokens a sequence may prefill now (0 = none this round); charges
    /// them.
    pub fn grant(&mut self, want: usize) -> usize {
        if !self.open() || want == 0 {
            return 0;
        }
        let n = match self.chunk {
            Some(c) => want.min(c),
            None if self.granted > 0 && want as i64 >= self.input => return 0,
            None => want,
        };
        self.charge(n);
        n
    }

    /// Gives back a grant the sequence could not use (no pages for it).
    pub fn refund(&mut self, n: usize) {
        if let Some(c) = &mut self.chunk {
            *c += n;
        }
        self.input += n as i64;
        self.granted -= 1;
    }

    fn charge(&mut self, n: usize) {
        if let Some(c) = &mut self.chunk {
            *c -= n;
        }
        self.input -= n as i64;
        self.granted += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_the_chunk_cuts_and_the_input_limit_stops_admission() {
        // Chunk 100, limit 150: 60, then 40 of 70 (chunk spent).
        let mut b = PrefillBudget::new(Some(100), 150);
        assert_eq!(b.grant(60), 60);
        assert_eq!(b.grant(70), 40);
        assert!(!b.open());
        assert_eq!(b.grant(5), 0);
        // Chunk 100, limit 50: the first takes 80 (the limit only stops the next one).
        let mut b = PrefillBudget::new(Some(100), 50);
        assert_eq!(b.grant(80), 80);
        assert!(!b.open());
        assert_eq!(b.grant(1), 0);
        // Limit 50, chunk 100: 30 + 30 overshoots to -10, then nothing.
        let mut b = PrefillBudget::new(Some(100), 50);
        assert_eq!(b.grant(30), 30);
        assert_eq!(b.grant(30), 30);
        assert_eq!(b.grant(30), 0);
    }

    #[test]
    fn unchunked_the_first_runs_whole_the_rest_must_fit_below_the_limit() {
        let mut b = PrefillBudget::new(None, 100);
        assert_eq!(
            b.grant(250),
            250,
            "a prompt above the limit still runs alone"
        );
        assert_eq!(b.grant(1), 0);
        let mut b = PrefillBudget::new(None, 100);
        assert_eq!(b.grant(40), 40);
        assert_eq!(b.grant(60), 0, "60 is not below the 60 left (SGLang's >=)");
        assert_eq!(b.grant(59), 59);
        assert!(!b.open() || b.grant(1) == 0);
    }

    #[test]
    fn refund_restores_both_budgets() {
        let mut b = PrefillBudget::new(Some(10), 20);
        assert_eq!(b.grant(10), 10);
        b.refund(10);
        assert_eq!(b.grant(10), 10);
        let mut b = PrefillBudget::new(None, 20);
        assert_eq!(b.grant(5), 5);
        b.refund(5);
        assert_eq!(b.grant(25), 25, "first again after the refund");
    }
}
