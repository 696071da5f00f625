//! `strata bench ...`: one file per benchmark.

use clap::Subcommand;

mod copy;
mod detok;
pub mod engine;
mod grammar;
mod multiturn;
mod pd_transfer;
pub mod serve;
pub mod store;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The L3 page store engine on a local file or device.
    Engine(engine::Args),
    /// The distributed L3 (the workload of mooncake_store_bench.py, same columns).
    Store(store::Args),
    /// Online serving load against a server with the SGLang API (throughput, TTFT, ITL).
    Serve(Box<serve::Args>),
    /// PD KV transfer throughput with N transfers in flight vs the raw copy of the transport.
    PdTransfer(pd_transfer::Args),
    /// Constrained decoding's host cost: compile, per-state masks, banned lists.
    Grammar(grammar::Args),
    /// Streamed detokenization's cost per output token at several output lengths.
    Detok(detok::Args),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(a) => engine::run(a),
        BenchCommand::Store(a) => store::run(a),
        BenchCommand::Serve(a) => serve::run(*a),
        BenchCommand::PdTransfer(a) => pd_transfer::run(a),
        BenchCommand::Grammar(a) => grammar::run(a),
        BenchCommand::Detok(a) => detok::run(a),
    }
}
