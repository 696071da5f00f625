//! strata-engine: the L3 page store.
