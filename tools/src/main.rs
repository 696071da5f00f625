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
    /// The cluster master: membership, heartbeats, HTTP metadata server, metrics.
    Master(cmd::master::Args),
    /// A store node: serves a page store to the cluster.
    Store(cmd::store::Args),
    /// The inference server (flags of `python -m sglang.launch_server`).
    Serve(Box<cmd::serve::Args>),
    /// Write a deterministic random-weight model (Hugging Face layout).
    MakeModel(cmd::make_model::Args),
    /// Benchmarks (engine, store, serve, router).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// The whole stack on this machine from a built-in default (tiny model, master, store, server,
    /// router) and one request through it.
    Up(cmd::up::Args),
    /// Request router in front of SGLang-compatible workers (regular or PD mode).
    Router(Box<cmd::router::Args>),
    /// CUDA backend: device info, op checks against the CPU reference, GPU benchmarks.
    Gpu(cmd::gpu::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(cmd::master::normalize_args(std::env::args_os()));
    match cli.command {
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Master(args) => cmd::master::run(args),
        Command::Store(args) => cmd::store::run(args),
        Command::Serve(a) => cmd::serve::run(*a),
        Command::MakeModel(a) => cmd::make_model::run(a),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Router(a) => cmd::router::run(*a),
        Command::Up(a) => cmd::up::run(a),
        Command::Gpu(a) => cmd::gpu::run(a),
    }
}
