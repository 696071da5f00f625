//! strata-server: the inference server (model, scheduler, KV pools, radix + hierarchical cache, PD
//! disaggregation, HTTP API) and the router (`router` module, `strata router`).
pub mod router;
