//! `geolife submit`: turns a score file into a Kaggle submission CSV (`surveyId,predictions`)
//! with a selection policy, in test-metadata order when given; never an empty or duplicate row.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use geolife_metrics::{Policy, ScoreFile, read_survey_ids, write_submission};

#[derive(clap::Args)]
pub struct Args {
    /// Test scores (geolife score file, malpolon CSV or a Kaggle CSV with --top-k).
    #[arg(long)]
    pub scores: PathBuf,
    /// Selection policy TOML from `geolife calibrate`.
    #[arg(long, conflicts_with = "top_k")]
    pub policy: Option<PathBuf>,
    /// Keep the K best species per survey (default 25 when no policy is given).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Test metadata CSV (column `surveyId`): row order, and every survey must have scores.
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Output CSV (written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sf = ScoreFile::read(&args.scores)
        .with_context(|| format!("reading scores {}", args.scores.display()))?;
    let policy = match (&args.policy, args.top_k) {
        (Some(p), _) => Policy::load(p)?,
        (None, Some(0)) => anyhow::bail!("--top-k must be at least 1"),
        (None, Some(k)) => Policy::TopK { k },
        (None, None) => Policy::TopK { k: 25 },
    };
    let pred = policy
        .try_select(&sf)
        .with_context(|| format!("selecting species from {}", args.scores.display()))?;
    let (ids, rows): (Vec<u64>, Vec<Vec<u32>>) = match &args.metadata {
        None => (sf.survey_ids.clone(), pred),
        Some(meta) => {
            let order = read_survey_ids(meta)?;
            let row_of: HashMap<u64, usize> = sf.index();
            let missing: Vec<u64> = order
                .iter()
                .copied()
                .filter(|id| !row_of.contains_key(id))
                .collect();
            anyhow::ensure!(
                missing.is_empty(),
                "{} surveys of {} have no scores in {} (first: {:?}); a submission needs every \
                 test survey",
                missing.len(),
                meta.display(),
                args.scores.display(),
                &missing[..missing.len().min(5)]
            );
            let extra = sf.len() - order.iter().filter(|id| row_of.contains_key(id)).count();
            if extra > 0 {
                eprintln!(
                    "warning: {extra} scored surveys are not in {} and are left out",
                    meta.display()
                );
            }
            let rows = order.iter().map(|id| pred[row_of[id]].clone()).collect();
            (order, rows)
        }
    };
    if let Some(i) = rows.iter().position(Vec::is_empty) {
        anyhow::bail!(
            "{}: survey {} has no scored species, so its submission row would be empty",
            args.scores.display(),
            ids[i]
        );
    }
    write_submission(&args.out, &ids, &rows)?;
    let mean_k = rows.iter().map(Vec::len).sum::<usize>() as f64 / rows.len().max(1) as f64;
    println!(
        "wrote {} ({} surveys, {} species per survey on average, policy {})",
        args.out.display(),
        rows.len(),
        (mean_k * 10.0).round() / 10.0,
        policy.describe()
    );
    Ok(ExitCode::SUCCESS)
}
