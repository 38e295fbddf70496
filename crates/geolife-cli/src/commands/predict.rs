//! `geolife predict`: batched inference of a trained run (or imported weights) on a split,
//! written as a score file; optionally a submission with a policy or a top-K.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use geolife_data::Split;
use geolife_metrics::{Policy, write_submission};
use geolife_train::config::{DeviceKind, Precision};
use geolife_train::predict::{PredictOptions, predict};
use strum::VariantNames;

#[derive(clap::Args)]
pub struct Args {
    /// Run folder from `geolife train` (uses best.safetensors, run.json, config.toml).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// A packed cache or a raw dataset root (packed into --cache first).
    #[arg(long)]
    pub data: PathBuf,
    /// Cache folder for a raw --data (default: <RUN>/../cache or ./cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Split to score.
    #[arg(long, default_value = "test", value_parser = crate::commands::named::<Split>(&["test", "train"]))]
    pub split: Split,
    /// Output score file (geolife safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a Kaggle submission CSV.
    #[arg(long)]
    pub submission: Option<PathBuf>,
    /// Selection policy TOML (from `geolife calibrate`) for --submission.
    #[arg(long, conflicts_with = "top_k")]
    pub policy: Option<PathBuf>,
    /// Keep the K best species per survey for --submission (default 25).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// A geolife checkpoint (e.g. imported seed weights) instead of the run's best.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Config TOML for --weights without --run (default: the paper preset). The transforms, the
    /// tabular feature names and a prior-input model's [location] come from the checkpoint
    /// when it records them.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Override the device of the run's (or --config's) `train.device` (`flex` CPU, `wgpu` GPU
    /// with the wgpu feature).
    #[arg(long, value_parser = crate::commands::named::<DeviceKind>(DeviceKind::VARIANTS))]
    pub device: Option<DeviceKind>,
    /// Override the run's `train.precision`: `f32`, or `f16` / `bf16` products (weights stay
    /// f32; a half-precision checkpoint predicts in f32 as well).
    #[arg(long, value_parser = crate::commands::named::<Precision>(Precision::VARIANTS))]
    pub precision: Option<Precision>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    anyhow::ensure!(args.top_k != Some(0), "--top-k must be at least 1");
    let split = args.split;
    let cache_dir = args.cache.clone().unwrap_or_else(|| match &args.run {
        Some(r) => r
            .parent()
            .map(|p| p.join("cache"))
            .unwrap_or_else(|| PathBuf::from("cache")),
        None => PathBuf::from("cache"),
    });
    let cache = geolife_train::data::resolve_cache(&args.data, &cache_dir)?;
    let scores = predict(&PredictOptions {
        run_dir: args.run.clone(),
        weights: args.weights.clone(),
        config: args.config.clone(),
        cache,
        split,
        batch_size: args.batch_size,
        workers: args.workers,
        device: args.device,
        precision: args.precision,
    })?;
    scores
        .write(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{} surveys x {} species -> {}",
        scores.len(),
        scores.species.len(),
        args.out.display()
    );
    if let Some(sub) = &args.submission {
        let policy = match (&args.policy, args.top_k) {
            (Some(p), _) => Policy::load(p)?,
            (None, Some(k)) => Policy::TopK { k },
            (None, None) => Policy::TopK { k: 25 },
        };
        let rows = policy.try_select(&scores)?;
        write_submission(sub, &scores.survey_ids, &rows)?;
        println!("submission ({}) -> {}", policy.describe(), sub.display());
    }
    Ok(ExitCode::SUCCESS)
}
