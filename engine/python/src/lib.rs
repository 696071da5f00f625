//! `strata._native`: the Strata cluster client as a Python extension module (PyO3, abi3).
//!
//! The module exposes one class, [`store::MooncakeDistributedStore`], with the methods and
//! return conventions of Mooncake 0.3.x's class of the same name, so that code written against
//! `from mooncake.store import MooncakeDistributedStore` runs unchanged against a Strata master
//! and its store nodes. The pure-Python side of the package (`python/strata/`) re-exports it and
//! adds `strata.sglang.StrataStore`, an SGLang HiCache storage backend built on it.
//!
//! Layout: [`setup`] turns Mooncake's `setup(...)` arguments into a [`strata_cluster::ClientConfig`];
//! [`regions`] keeps the registered buffers that zero-copy calls must fall inside; [`store`] is the
//! class itself. Every call that does I/O releases the GIL for its whole duration.

mod regions;
mod setup;
mod store;

use pyo3::prelude::*;

/// Logs of the client (a node that fails, the transport chosen) go to stderr, filtered by
/// `STRATA_LOG` (default `warn`), once per process.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    m.add_class::<store::MooncakeDistributedStore>()?;
    m.add("MAX_VALUE_LEN", strata_engine::MAX_VALUE_LEN)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
