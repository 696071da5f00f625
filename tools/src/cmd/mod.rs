//! One module per `strata` subcommand.

pub mod bench;
pub mod inspect;
pub mod logging;
pub mod master;
pub mod router;
pub mod size;
pub mod store;
