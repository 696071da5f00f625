//! The `strata` binary: one executable, every role a subcommand.
//!
//! Each subcommand lives in its own file under `cmd/`; this file only wires clap to them. Bench
//! subcommands live under `cmd/bench/`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: KV-cache serving stack (L3 page store, server, router)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline inspection of a page store that no process has open.
    Inspect(cmd::inspect::Args),
    /// Benchmarks (engine, store, serve, router).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// CUDA backend: device info, op checks against the CPU reference, GPU benchmarks.
    Gpu(cmd::gpu::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Gpu(a) => cmd::gpu::run(a),
    }
}
