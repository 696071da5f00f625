//! strata-server: the inference server (model, scheduler, KV pools, radix + hierarchical cache, PD
//! disaggregation, HTTP API). The router is its own crate (`strata-router`), and so is the test
//! checkpoint generator (`strata-make-model`).

pub mod api;
pub mod cache;
pub mod grammar;
pub mod hicache;
pub mod kv;
pub mod launch;
pub mod logprobs;
pub mod model;
pub mod parsers;
pub mod pd;
pub mod sampling;
pub mod sampling_cases;
pub mod scheduler;
pub mod seeded;
pub mod stats;
