//! `geolife train`: trains the fusion network from a TOML config into a run folder (resolved
//! config, metrics.csv, train.log, checkpoints, validation scores); `--resume` continues a
//! killed run exactly.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use geolife_train::config::{DeviceKind, Precision};
use geolife_train::{Progress, TrainConfig, TrainOptions};
use strum::VariantNames;

#[derive(clap::Args)]
pub struct Args {
    /// Training config TOML (see configs/); with --resume defaults to the run's config.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A packed cache or a raw GLC24 dataset root (packed into <OUT>/../cache first);
    /// overrides `data.path` of the config.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Cache folder for a raw --data (default: <OUT>/../cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Run folder (default: runs/<config name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Override `train.device` (`flex` CPU, `wgpu` GPU with the wgpu feature).
    #[arg(long, value_parser = crate::commands::named::<DeviceKind>(DeviceKind::VARIANTS))]
    pub device: Option<DeviceKind>,
    /// Override `train.precision` (`f32`, or `f16` / `bf16` products with f32 weights).
    #[arg(long, value_parser = crate::commands::named::<Precision>(Precision::VARIANTS))]
    pub precision: Option<Precision>,
    /// Override `train.epochs`.
    #[arg(long)]
    pub epochs: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::stop_on_signals(true)?;
    let out = match (&args.out, &args.config) {
        (Some(o), _) => o.clone(),
        (None, Some(c)) => PathBuf::from("runs").join(
            c.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into()),
        ),
        (None, None) => anyhow::bail!("give --config <TOML> (or --out <RUN> --resume)"),
    };
    let config_path = match (&args.config, args.resume) {
        (Some(c), _) => c.clone(),
        (None, true) => out.join("config.toml"),
        (None, false) => anyhow::bail!("--config <TOML> is required for a new run"),
    };
    let mut config = TrainConfig::load(&config_path)?;
    if let Some(p) = args.precision {
        config.train.precision = p;
    }
    if let Some(d) = args.device {
        config.train.device = d;
    }
    if let Some(e) = args.epochs {
        config.train.epochs = e;
    }
    if let Some(d) = &args.data {
        config.data.path = Some(d.clone());
    }
    config.validate(&config_path)?;
    let data = config
        .data
        .path
        .clone()
        .context("no data: give --data <DIR or CACHE> or set data.path in the config")?;
    geolife_train::location::resolve_po_file(&mut config, &data);
    let cache_dir = args.cache.clone().unwrap_or_else(|| {
        out.parent()
            .map(|p| p.join("cache"))
            .unwrap_or_else(|| PathBuf::from("cache"))
    });
    let cache = geolife_train::data::resolve_cache(&data, &cache_dir)?;
    let summary = geolife_train::train(&TrainOptions {
        config,
        cache,
        run_dir: out,
        resume: args.resume,
        progress: Progress::Auto,
        stop_after_batches: None,
    })?;
    println!(
        "best validation samples-F1 {:.4} at epoch {}; run folder {}",
        summary.best_f1,
        summary.best_epoch.unwrap_or(0),
        summary.run_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
