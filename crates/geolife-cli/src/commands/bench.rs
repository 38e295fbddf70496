//! `geolife bench`: throughput benchmarks printing figures (not timed tests).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Batches/s from the packed cache vs reading raw files; `prepare` throughput.
    Data(bench_data::Args),
    /// Samples/s of full training steps.
    #[cfg(feature = "dl")]
    Train(bench_train::Args),
    /// One norm layer's forward + backward: geolife's kernels against burn's layers.
    #[cfg(feature = "dl")]
    Norms(bench_norms::Args),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Data(a) => bench_data::run(a),
        #[cfg(feature = "dl")]
        What::Train(a) => bench_train::run(a),
        #[cfg(feature = "dl")]
        What::Norms(a) => bench_norms::run(a),
    }
}

#[path = "bench_data.rs"]
mod bench_data;
#[cfg(feature = "dl")]
#[path = "bench_norms.rs"]
mod bench_norms;
#[cfg(feature = "dl")]
#[path = "bench_train.rs"]
mod bench_train;
