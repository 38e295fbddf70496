//! `geolife inspect` (work in progress: owned by its issue).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`geolife inspect` is not implemented yet")
}
