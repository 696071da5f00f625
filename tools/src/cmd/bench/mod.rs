//! `strata bench ...`: one file per benchmark.

use clap::Subcommand;

pub mod engine;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The L3 page store engine on a local file or device.
    Engine(engine::Args),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(a) => engine::run(a),
    }
}
