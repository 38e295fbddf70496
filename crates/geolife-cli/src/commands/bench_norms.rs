//! `geolife bench norms`: one normalisation layer's forward and backward pass with geolife's
//! kernels against burn's own layers on the same device, at the paper backbones' largest norm
//! inputs (milliseconds per pass, and kernel launches per pass on a GPU).

use std::process::ExitCode;

use geolife_train::config::DeviceKind;
use geolife_train::trainer::device_description;
use geolife_train::trainer::norm_bench::bench_norms;
use strum::VariantNames;

#[derive(clap::Args)]
pub struct Args {
    /// Batch of every timed input (the paper trains at 256).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Timed passes per case and implementation (one more runs first as warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// `flex` (CPU) or `wgpu`.
    #[arg(long, default_value = "flex",
          value_parser = crate::commands::named::<DeviceKind>(DeviceKind::VARIANTS))]
    pub device: DeviceKind,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
    anyhow::ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    let timings = bench_norms(args.device, args.batch_size, args.steps)?;
    println!(
        "norm layers, forward + backward, batch {}, device {} ({}), mean of {} passes after a warm-up",
        args.batch_size,
        <&str>::from(args.device),
        device_description(args.device),
        args.steps
    );
    let launches = |l: Option<usize>| l.map_or(String::new(), |l| format!(", {l} launches"));
    for t in &timings {
        println!(
            "{} {:?}: kernels {:.2} ms{}, burn's layer {:.2} ms{}: {:.2}x",
            t.case.name,
            t.case.shape,
            t.kernels_ms,
            launches(t.kernels_launches),
            t.burn_ms,
            launches(t.burn_launches),
            t.burn_ms / t.kernels_ms.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}
