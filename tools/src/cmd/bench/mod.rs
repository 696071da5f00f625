//! `strata bench ...`: one file per benchmark.

use clap::Subcommand;

pub mod engine;
pub mod serve;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The L3 page store engine on a local file or device.
    Engine(engine::Args),
    /// Online serving load against a server with the SGLang API (throughput, TTFT, ITL).
    Serve(Box<serve::Args>),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(a) => engine::run(a),
        BenchCommand::Serve(a) => serve::run(*a),
    }
}
