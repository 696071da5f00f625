//! The `strata` binary: one executable, every role as a subcommand.
fn main() {}
