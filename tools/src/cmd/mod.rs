//! One module per `strata` subcommand.

pub mod bench;
pub mod chaos;
pub mod compat;
mod compat_flags;
pub mod gpu;
pub mod inspect;
pub mod logging;
pub mod make_model;
pub mod master;
pub mod router;
pub mod serve;
pub mod service;
pub mod size;
pub mod stack;
pub mod store;
pub mod up;
