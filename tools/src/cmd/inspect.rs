//! `strata inspect`: offline inspection of a page store.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata inspect: not built yet")
}
