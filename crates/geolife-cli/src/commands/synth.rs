//! `geolife synth`: writes a seeded synthetic dataset in the official GLC24 layout (see
//! `geolife_data::synth` for the generative process) and prints a short summary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use geolife_data::synth::{SynthConfig, write_dataset};

#[derive(clap::Args)]
pub struct Args {
    /// Folder to create (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Number of PA train surveys.
    #[arg(long, default_value_t = SynthConfig::default().train_surveys)]
    surveys: usize,
    /// Number of PA test surveys [default: 10% of --surveys, at least 1].
    #[arg(long)]
    test_surveys: Option<usize>,
    /// Number of species.
    #[arg(long, default_value_t = SynthConfig::default().species)]
    species: usize,
    /// Seed of every random draw (same seed -> byte-identical files).
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    seed: u64,
    /// JPEG quality of the patches (1-100).
    #[arg(long, default_value_t = SynthConfig::default().jpeg_quality)]
    jpeg_quality: u8,
    /// Expected species per survey.
    #[arg(long, default_value_t = SynthConfig::default().mean_species_per_survey)]
    mean_species: f64,
    /// Standard deviation of the planted logit signal (higher = easier to learn).
    #[arg(long, default_value_t = SynthConfig::default().signal_strength)]
    signal: f64,
    /// Presence-only records (`GLC24_P0_metadata_train.csv`); 0 writes none
    /// [default: 10 per train survey].
    #[arg(long)]
    po_records: Option<usize>,
    /// TOML file with any `SynthConfig` fields; flags given explicitly still apply on top.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read synth config {}", path.display()))?;
            toml::from_str::<SynthConfig>(&text)
                .with_context(|| format!("invalid synth config {}", path.display()))?
        }
        None => SynthConfig::default(),
    };
    let defaults = SynthConfig::default();
    if args.config.is_none() || args.surveys != defaults.train_surveys {
        cfg.train_surveys = args.surveys;
    }
    cfg.test_surveys = match args.test_surveys {
        Some(n) => n,
        None if args.config.is_some() && args.surveys == defaults.train_surveys => cfg.test_surveys,
        None => (cfg.train_surveys.div_ceil(10)).max(1),
    };
    if args.config.is_none() || args.species != defaults.species {
        cfg.species = args.species;
    }
    if args.config.is_none() || args.seed != defaults.seed {
        cfg.seed = args.seed;
    }
    if args.config.is_none() || args.jpeg_quality != defaults.jpeg_quality {
        cfg.jpeg_quality = args.jpeg_quality;
    }
    if args.config.is_none() || args.mean_species != defaults.mean_species_per_survey {
        cfg.mean_species_per_survey = args.mean_species;
    }
    if args.config.is_none() || args.signal != defaults.signal_strength {
        cfg.signal_strength = args.signal;
    }
    if args.po_records.is_some() {
        cfg.po_records = args.po_records;
    }
    cfg.progress = !args.json;
    let summary = write_dataset(&args.out, &cfg).with_context(|| {
        format!(
            "cannot write the synthetic dataset at {}",
            args.out.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "wrote {} ({} train + {} test surveys, {} species, {:.1} species/train survey, {} presence-only records, {} files, {:.1} MB) in {:.1} s",
            summary.root.display(),
            summary.train_surveys,
            summary.test_surveys,
            summary.species,
            summary.mean_species_per_train_survey,
            summary.po_records,
            summary.files,
            summary.bytes as f64 / 1e6,
            summary.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
