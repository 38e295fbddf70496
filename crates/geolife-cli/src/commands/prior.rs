//! `geolife prior`: per-species scores of every survey of a split from its location alone
//! (PA neighbours and presence-only density; see `geolife_prior` for the formulas and the rule
//! of who sees whose labels), written as a geolife score file. Needs no deep learning.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use geolife_data::metadata::read_pa_metadata;
use geolife_data::{Split, layout};
use geolife_prior::source::PO_FILE_KEY;
use geolife_prior::sphere::Search;
use geolife_prior::{Kernel, PaTrain, PriorConfig, PriorSource, Target, score_split};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::named;

#[derive(clap::Args)]
pub struct Args {
    /// Dataset root in the official layout (PA metadata, optional PO file).
    #[arg(long)]
    data: PathBuf,
    /// Surveys to score: `test` (seeing every PA train survey), `val` (a run's or the spatial
    /// split's validation surveys, seeing only the training part) or `train` (every train
    /// survey, never seeing its own labels).
    #[arg(long, value_parser = ["train", "val", "test"])]
    split: String,
    /// Score file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// TOML file with a `[prior]` table (`[prior.pa]`, `[prior.po]`); flags apply on top.
    #[arg(long)]
    config: Option<PathBuf>,
    /// With `--split val`: take the validation surveys of this run (`run.json`).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Spatial split without `--run`: fraction of train surveys in validation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Spatial split without `--run`: block side in arc-minutes.
    #[arg(long, default_value_t = 10.0)]
    block_arcmin: f64,
    /// Spatial split without `--run`: seed of the block order.
    #[arg(long, default_value_t = 666)]
    split_seed: u64,
    /// Turn the PA-neighbour source off.
    #[arg(long)]
    no_pa: bool,
    /// Turn the presence-only source off.
    #[arg(long)]
    no_po: bool,
    /// PA neighbours per survey [default: 50].
    #[arg(long)]
    k: Option<usize>,
    /// PA kernel [default: gaussian].
    #[arg(long, value_parser = named::<Kernel>(&Kernel::NAMES))]
    pa_kernel: Option<Kernel>,
    /// PA kernel bandwidth in km [default: 10].
    #[arg(long)]
    pa_bandwidth_km: Option<f64>,
    /// PA pseudo-count of the global label frequency [default: 0].
    #[arg(long)]
    pa_pseudo_count: Option<f64>,
    /// Only PA neighbours of the same year.
    #[arg(long)]
    same_year: bool,
    /// Only PA neighbours of the same region.
    #[arg(long)]
    same_region: bool,
    /// PO records within this radius in km count [default: 25].
    #[arg(long)]
    po_radius_km: Option<f64>,
    /// PO kernel [default: gaussian].
    #[arg(long, value_parser = named::<Kernel>(&Kernel::NAMES))]
    po_kernel: Option<Kernel>,
    /// PO kernel bandwidth in km [default: 10].
    #[arg(long)]
    po_bandwidth_km: Option<f64>,
    /// PO pseudo-count towards the global PO share [default: 2].
    #[arg(long)]
    po_pseudo_count: Option<f64>,
    /// Divide the PO reporting bias out: PA frequency x shrunk ratio of local records to
    /// those expected from the global PO share [default: true].
    #[arg(long)]
    po_debias: Option<bool>,
    /// Weight of the PO source in the blend, 0..=1 [default: 0.5].
    #[arg(long)]
    po_weight: Option<f64>,
    /// Species kept per survey (sparse file); 0 writes every species (dense) [default: 200].
    #[arg(long)]
    top: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Benchmarking: search neighbours by scanning every point instead of the k-d tree
    /// (same scores, O(surveys x points)).
    #[arg(long)]
    brute_force: bool,
    /// Benchmarking: score only the first N surveys (by id) of `test` or `val`.
    #[arg(long)]
    max_surveys: Option<usize>,
}

impl Args {
    /// The config file (or the defaults) with the flags given applied on top.
    fn config(&self) -> anyhow::Result<PriorConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read prior config {}", path.display()))?;
                PriorConfig::from_toml(&text)
                    .with_context(|| format!("invalid prior config {}", path.display()))?
            }
            None => PriorConfig::default(),
        };
        let set = |dst: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        cfg.pa.enabled &= !self.no_pa;
        cfg.po.enabled &= !self.no_po;
        cfg.pa.k = self.k.unwrap_or(cfg.pa.k);
        cfg.pa.kernel = self.pa_kernel.unwrap_or(cfg.pa.kernel);
        set(&mut cfg.pa.bandwidth_km, self.pa_bandwidth_km);
        set(&mut cfg.pa.pseudo_count, self.pa_pseudo_count);
        cfg.pa.same_year |= self.same_year;
        cfg.pa.same_region |= self.same_region;
        set(&mut cfg.po.radius_km, self.po_radius_km);
        cfg.po.kernel = self.po_kernel.unwrap_or(cfg.po.kernel);
        set(&mut cfg.po.bandwidth_km, self.po_bandwidth_km);
        set(&mut cfg.po.pseudo_count, self.po_pseudo_count);
        cfg.po.debias = self.po_debias.unwrap_or(cfg.po.debias);
        set(&mut cfg.po_weight, self.po_weight);
        cfg.top = self.top.unwrap_or(cfg.top);
        if self.brute_force {
            cfg.search = Search::BruteForce;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The validation surveys a run names in its `run.json` (`val_survey_ids`).
fn run_val_ids(run: &Path) -> anyhow::Result<Vec<u64>> {
    let path = run.join(super::labels::RUN_JSON);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (is --run a run folder?)", path.display()))?;
    let info: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    serde_json::from_value(info["val_survey_ids"].clone())
        .with_context(|| format!("{}: no readable val_survey_ids", path.display()))
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let cfg = args.config()?;
    if args.run.is_some() && args.split != "val" {
        bail!("--run names validation surveys: use it with --split val");
    }
    if args.max_surveys.is_some() && args.split == "train" {
        bail!("--max-surveys applies to --split test or val");
    }
    let limit = args.max_surveys.unwrap_or(usize::MAX);
    let train_path = args.data.join(layout::PA_METADATA_TRAIN);
    let train = read_pa_metadata(&train_path, Split::Train)
        .with_context(|| format!("cannot read {}", train_path.display()))?;
    let labels = train
        .labels
        .as_deref()
        .with_context(|| format!("{} has no speciesId column", train_path.display()))?;
    let test;
    let mut val_ids;
    let target = match args.split.as_str() {
        "train" => Target::Train,
        "val" => {
            val_ids = match &args.run {
                Some(run) => run_val_ids(run)?,
                None => geolife_prior::spatial_val_ids(
                    &train.surveys,
                    args.val_fraction,
                    args.block_arcmin,
                    args.split_seed,
                ),
            };
            val_ids.sort_unstable();
            val_ids.truncate(limit);
            Target::Val(&val_ids)
        }
        _ => {
            let path = args.data.join(layout::PA_METADATA_TEST);
            test = read_pa_metadata(&path, Split::Test)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Target::Test(&test.surveys[..limit.min(test.surveys.len())])
        }
    };

    // The dataset root's presence-only file; without it the PO source is off (a note says so).
    let po_path = PriorSource::default_po_file(&args.data);
    let po = match PriorSource::new(cfg.clone()).resolve(Some(&args.data)) {
        Ok(source) if source.po_file.is_some() => {
            let spinner = bar(0, "reading presence-only records: {pos} rows [{elapsed}]");
            let records = source
                .read_po(|n| spinner.set_position(n))
                .with_context(|| format!("cannot read {}", po_path.display()))?;
            spinner.finish_and_clear();
            records
        }
        Ok(_) => None,
        Err(e) if e.key() == Some(PO_FILE_KEY) => {
            eprintln!(
                "note: {} not found: the PO source is off",
                po_path.display()
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    let (po_rows, po_skipped) = po.as_ref().map_or((0, 0), |r| (r.len(), r.skipped));

    let n_queries = match target {
        Target::Train => train.surveys.len(),
        Target::Val(ids) => ids.len(),
        Target::Test(t) => t.len(),
    };
    let read_seconds = start.elapsed().as_secs_f64();
    let progress = bar(
        n_queries as u64,
        "prior {bar:40} {pos}/{len} surveys ({per_sec}, eta {eta})",
    );
    let scores = score_split(
        &cfg,
        PaTrain {
            surveys: &train.surveys,
            labels,
        },
        target,
        po.as_ref(),
        &|| progress.inc(1),
    )?;
    progress.finish_and_clear();
    // Index construction and scoring.
    let score_seconds = start.elapsed().as_secs_f64() - read_seconds;
    scores
        .write(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;

    let summary = serde_json::json!({
        "out": args.out,
        "split": scores.split,
        "surveys": scores.len(),
        "species": scores.species.len(),
        "layout": scores.scores.kind(),
        "pa_train_surveys": train.surveys.len(),
        "po_records": po_rows,
        "po_rows_without_coordinates": po_skipped,
        "seconds": start.elapsed().as_secs_f64(),
        "seconds_reading": read_seconds,
        "seconds_scoring": score_seconds,
        "config": cfg,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "wrote {} ({} {} surveys x {} species, {}; {} PA train surveys, {} PO records) in {:.1} s",
            args.out.display(),
            scores.len(),
            scores.split,
            scores.species.len(),
            scores.scores.kind(),
            train.surveys.len(),
            po_rows,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
