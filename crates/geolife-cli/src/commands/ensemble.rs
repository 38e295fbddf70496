//! `geolife ensemble`: blends score files (weighted mean or rank average) with given or fitted
//! weights; `--fit` searches weights maximising validation samples-F1 after selection and writes
//! them to `<out>.weights.toml`, which `--weights` accepts to blend another set of files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use strum::VariantNames;

use anyhow::Context;
use geolife_metrics::ensemble::FitTarget;
use geolife_metrics::{
    BlendMethod, FitOptions, FittedWeights, Policy, ScoreFile, blend, fit_weights,
};

use super::labels::LabelArgs;

#[derive(clap::Args)]
#[command(group = super::labels::group().requires("fit"))]
pub struct Args {
    /// Score files to blend (geolife safetensors, malpolon CSV; Kaggle CSVs with --method rank).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output score file (geolife safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Weights: a comma-separated list (one per file, same order) or a weights TOML file
    /// written by `--fit`. Default: equal weights.
    #[arg(long, conflicts_with = "fit")]
    pub weights: Option<String>,
    /// How to combine: mean (of probabilities) or rank (weighted mean of 1/(rank+1)).
    #[arg(long, default_value = "mean",
          value_parser = crate::commands::named::<BlendMethod>(BlendMethod::VARIANTS))]
    pub method: BlendMethod,
    /// Search weights maximising samples-F1 on the labels after the selection (--fit-target).
    #[arg(long, requires = "labels")]
    pub fit: bool,
    /// Labels used by --fit: --solution CSV or --labels-from RUN|CACHE.
    #[command(flatten)]
    pub labels: LabelArgs,
    /// Selection the fit optimises: `top-k` (best fixed K), `threshold` (best global
    /// threshold) or a policy TOML file.
    #[arg(long, default_value = "top-k")]
    pub fit_target: String,
    /// Model name recorded in the output.
    #[arg(long)]
    pub name: Option<String>,
}

/// The weights file written next to the output: `<dir>/<stem>.weights.toml`.
pub fn weights_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ensemble".into());
    out.with_file_name(format!("{stem}.weights.toml"))
}

fn parse_weights(text: &str, n: usize) -> anyhow::Result<(Vec<f64>, Option<BlendMethod>)> {
    let as_path = Path::new(text);
    let weights_and_method = if as_path.is_file() {
        let fw = FittedWeights::load(as_path)?;
        (fw.weights, Some(fw.method))
    } else {
        let w = text
            .split(',')
            .map(|t| {
                t.trim()
                    .parse::<f64>()
                    .with_context(|| format!("--weights: {t:?} is not a number (nor a file)"))
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        (w, None)
    };
    anyhow::ensure!(
        weights_and_method.0.len() == n,
        "--weights gives {} weights for {} score files",
        weights_and_method.0.len(),
        n
    );
    Ok(weights_and_method)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut method = args.method;
    let files: Vec<ScoreFile> = args
        .files
        .iter()
        .map(|p| ScoreFile::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    let weights = if args.fit {
        // Every file's surveys: a cache gives the labels of their union.
        let scored: Vec<u64> = files.iter().flat_map(|f| f.survey_ids.clone()).collect();
        let sol = args.labels.load(&scored)?;
        let target = match args.fit_target.as_str() {
            "top-k" => FitTarget::BestTopK { max_k: 50 },
            "threshold" => FitTarget::BestThreshold(FitOptions::default()),
            path => FitTarget::Policy(Policy::load(Path::new(path))?),
        };
        let mut fitted = fit_weights(&files, &sol, method, &target)?;
        fitted.files = args
            .files
            .iter()
            .map(|p| geolife_metrics::policy::path_text(p))
            .collect();
        let wpath = weights_path(&args.out);
        fitted.save(&wpath)?;
        println!(
            "fitted weights {:?}: {}; saved {}",
            fitted
                .weights
                .iter()
                .map(|w| (w * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            fitted.describe(),
            wpath.display()
        );
        fitted.weights
    } else if let Some(text) = &args.weights {
        let (w, m) = parse_weights(text, files.len())?;
        if let Some(m) = m {
            method = m;
        }
        w
    } else {
        vec![1.0; files.len()]
    };
    let (mut blended, report) = blend(&files, &weights, method)?;
    if let Some(name) = &args.name {
        blended.model = name.clone();
    }
    for (k, p) in args.files.iter().enumerate() {
        if report.surveys_missing[k] > 0 || report.species_missing[k] > 0 {
            eprintln!(
                "warning: {} lacks {} of {} surveys (its weight goes to the other files there) \
                 and {} of {} species (scored 0)",
                p.display(),
                report.surveys_missing[k],
                report.n_surveys,
                report.species_missing[k],
                report.n_species
            );
        }
    }
    blended.write(&args.out)?;
    println!(
        "wrote {} ({} surveys x {} species, {} layout, weights {:?}, method {:?})",
        args.out.display(),
        report.n_surveys,
        report.n_species,
        blended.scores.kind(),
        report
            .weights
            .iter()
            .map(|w| (w * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        method
    );
    Ok(ExitCode::SUCCESS)
}
