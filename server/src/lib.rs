//! strata-server: the inference server (model, scheduler, KV pools, radix + hierarchical cache, PD
//! disaggregation, HTTP API) and the router (`router` module, `strata router`).

pub mod api;
pub mod cache;
pub mod kv;
pub mod launch;
pub mod make_model;
pub mod model;
pub mod router;
pub mod sampling;
pub mod scheduler;
pub mod stats;
