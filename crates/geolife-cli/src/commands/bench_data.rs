//! `geolife bench` part (work in progress: owned by its issue).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this benchmark is not implemented yet")
}
