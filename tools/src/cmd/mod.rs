//! One module per `strata` subcommand.

pub mod bench;
pub mod gpu;
pub mod inspect;
pub mod logging;
pub mod size;
