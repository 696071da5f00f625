//! `strata bench engine`: put/get throughput and latency of the page store engine.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata bench engine: not built yet")
}
