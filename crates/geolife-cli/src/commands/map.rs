//! `geolife map`: one PNG map (optionally also SVG) of surveys over Europe per invocation: a
//! run's split, per-survey F1 of a score file, richness, one species' scores, or the density of
//! presence-only records. The drawing lives in `geolife-maps`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use geolife_maps::{
    F1Map, Labels, MapOptions, MapRequest, PoMap, RichnessMap, SpeciesMap, SplitMap, render,
};

use super::labels::{LabelArgs, VAL_LABELS};

#[derive(clap::Args)]
#[command(group = super::labels::group())]
#[command(group = clap::ArgGroup::new("kind")
    .args(["split_map", "f1", "richness", "scores", "po"])
    .required(true))]
pub struct Args {
    /// The PNG to write (with --svg also the same name ending in .svg).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Map the train, validation and test surveys of a run folder (and its spatial validation
    /// blocks), or the train and test surveys of a packed cache or dataset root.
    #[arg(long, value_name = "RUN|CACHE")]
    pub split_map: Option<PathBuf>,
    /// Map the per-survey samples-F1 of this score file (labels: --labels-from or --solution).
    #[arg(long, value_name = "SCORES", requires = "labels")]
    pub f1: Option<PathBuf>,
    /// Map the number of species --policy selects per survey of this score file (or, with
    /// --expected, the sum of its probabilities).
    #[arg(long, value_name = "SCORES")]
    pub richness: Option<PathBuf>,
    /// Map one species' scores (--species) in this score file, a model's or a prior's, with the
    /// train surveys holding it ringed.
    #[arg(long, value_name = "SCORES", requires = "species")]
    pub scores: Option<PathBuf>,
    /// Map the density of presence-only records of a dataset root (or of the PO CSV itself).
    #[arg(long, value_name = "DATA")]
    pub po: Option<PathBuf>,
    /// The species of --scores, or the only species counted by --po.
    #[arg(long, value_name = "ID")]
    pub species: Option<u32>,
    /// Labels of --f1: --solution CSV or --labels-from RUN|CACHE.
    #[command(flatten)]
    pub labels: LabelArgs,
    /// Selection policy TOML (from `geolife calibrate`) for --f1 and --richness. Default: top-25
    /// of dense scores, every listed species otherwise (as `geolife evaluate`).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// With --richness: the expected number of species (sum of probabilities).
    #[arg(long, requires = "richness")]
    pub expected: bool,
    /// Where the scored surveys are: a packed cache, a dataset root or a run folder. Default:
    /// --labels-from.
    #[arg(long, value_name = "CACHE|DATA|RUN")]
    pub coords: Option<PathBuf>,
    /// Also write an SVG.
    #[arg(long)]
    pub svg: bool,
    /// Replace the default title.
    #[arg(long)]
    pub title: Option<String>,
    /// Longer side of the map area in pixels.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u32).range(100..=4000))]
    pub size: u32,
    /// Print the summary (files, counts, pixel layout) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The coordinate source: --coords, else --labels-from.
fn coords(args: &Args) -> anyhow::Result<PathBuf> {
    args.coords
        .clone()
        .or_else(|| args.labels.labels_from.clone())
        .context("no coordinates for the scored surveys: give --coords <CACHE|DATA|RUN>")
}

/// The labels of --f1: a solution CSV (given, or a run's val_labels.csv); else the train labels
/// of the cache at --labels-from, taken from the coordinate source when that is the same
/// folder, or through the one label loader otherwise.
fn labels(args: &Args, scores: &Path, coords: &Path) -> anyhow::Result<Labels> {
    if let Some(csv) = &args.labels.solution {
        return Ok(Labels::Solution(csv.clone()));
    }
    let from = args.labels.path()?;
    let run_csv = from.join(VAL_LABELS);
    if run_csv.is_file() {
        return Ok(Labels::Solution(run_csv));
    }
    if from == coords {
        return Ok(Labels::Train);
    }
    let sf = geolife_metrics::ScoreFile::read(scores)
        .with_context(|| format!("reading scores {}", scores.display()))?;
    Ok(Labels::Loaded {
        origin: from.to_path_buf(),
        solution: args.labels.load(&sf.survey_ids)?,
    })
}

fn request(args: &Args) -> anyhow::Result<MapRequest> {
    if args.species.is_some() && args.scores.is_none() && args.po.is_none() {
        anyhow::bail!("--species goes with --scores (a species map) or --po (its records)");
    }
    Ok(if let Some(from) = &args.split_map {
        MapRequest::Split(SplitMap { from: from.clone() })
    } else if let Some(scores) = &args.f1 {
        let coords = coords(args)?;
        MapRequest::F1(F1Map {
            labels: labels(args, scores, &coords)?,
            scores: scores.clone(),
            policy: args.policy.clone(),
            coords,
        })
    } else if let Some(scores) = &args.richness {
        MapRequest::Richness(RichnessMap {
            scores: scores.clone(),
            policy: args.policy.clone(),
            expected: args.expected,
            coords: coords(args)?,
        })
    } else if let Some(scores) = &args.scores {
        MapRequest::Species(SpeciesMap {
            species: args.species.context("--scores needs --species ID")?,
            scores: scores.clone(),
            coords: coords(args)?,
        })
    } else if let Some(data) = &args.po {
        MapRequest::Po(PoMap {
            data: data.clone(),
            species: args.species,
        })
    } else {
        anyhow::bail!("give one of --split-map, --f1, --richness, --scores or --po")
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let req = request(&args)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let opts = MapOptions {
        svg: args.svg,
        title: args.title.clone(),
        size: args.size,
    };
    let summary = render(&req, &args.out, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    for f in &summary.files {
        println!("map      {}", f.display());
    }
    let what = if summary.kind == "po" {
        "records"
    } else {
        "surveys"
    };
    println!("{what:<8} {}", summary.points);
    for (k, v) in &summary.counts {
        println!("  {k:<10} {v}");
    }
    if let Some(m) = summary.mean {
        println!("mean     {m:.4}");
    }
    Ok(ExitCode::SUCCESS)
}
