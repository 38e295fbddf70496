//! `geolife calibrate`: fits species-selection policies on validation scores and labels (a
//! solution file, a run folder or a cache), prints the cross-validated F1 of each policy type
//! next to top-25, saves the chosen policy (with a record of what it was fitted on) as TOML.

use std::path::PathBuf;
use std::process::ExitCode;

use geolife_metrics::policy::path_text;
use geolife_metrics::{FitInfo, FitOptions, PolicyChoice, PolicyFile, RankTable, calibrate_all};
use strum::VariantNames;

use super::evaluate::{HalfArgs, load};
use super::labels::LabelArgs;

#[derive(clap::Args)]
#[command(group = super::labels::group().required(true))]
pub struct Args {
    /// Validation scores (geolife score file or malpolon `;` CSV with probabilities).
    #[arg(long)]
    pub scores: PathBuf,
    /// Labels of the same surveys: --solution CSV or --labels-from RUN|CACHE (one is required).
    #[command(flatten)]
    pub labels: LabelArgs,
    /// Where to write the fitted policy (TOML).
    #[arg(long)]
    pub out: PathBuf,
    /// Policy type to save: `auto` (best cross-validated) or one kind.
    #[arg(long, default_value = "auto",
          value_parser = crate::commands::named::<PolicyChoice>(PolicyChoice::VARIANTS))]
    pub policy: PolicyChoice,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seed of the fold assignment.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Smallest K any policy keeps.
    #[arg(long, default_value_t = 1)]
    pub min_k: usize,
    /// Largest K any policy keeps.
    #[arg(long, default_value_t = 50)]
    pub max_k: usize,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub half: HalfArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.min_k >= 1 && args.min_k <= args.max_k,
        "need 1 <= --min-k <= --max-k"
    );
    anyhow::ensure!(args.folds >= 2, "--folds must be at least 2");
    let (sf, sol) = load(&args.scores, &args.labels)?;
    let (sol, sf) = args.half.apply(sol, sf)?;
    anyhow::ensure!(
        sf.has_scores(),
        "{}: calibration needs scores (probabilities), but the file only ranks species",
        args.scores.display()
    );
    let al = sol.align(&sf.survey_ids);
    let known: Vec<usize> = (0..sf.len()).filter(|&i| al.known[i]).collect();
    anyhow::ensure!(
        known.len() >= 2 * args.folds,
        "{}: only {} surveys are labelled in {}: too few to calibrate with {} folds",
        args.scores.display(),
        known.len(),
        args.labels.path()?.display(),
        args.folds
    );
    if !al.unknown_ids.is_empty() {
        eprintln!(
            "warning: {} scored surveys have no label and are not used",
            al.unknown_ids.len()
        );
    }
    if !al.missing_ids.is_empty() {
        eprintln!(
            "warning: {} labelled surveys have no scores and are not used",
            al.missing_ids.len()
        );
    }
    let sub = sf.subset(&known);
    let truth: Vec<Vec<u32>> = known.iter().map(|&i| al.truth[i].clone()).collect();
    let opts = FitOptions {
        min_k: args.min_k,
        max_k: args.max_k,
        ..FitOptions::default()
    };
    let table = RankTable::new(&sub, &truth, args.max_k.max(25));
    // A policy that cannot be fitted here (e.g. too few surveys) is skipped, not fatal.
    let (results, skipped) = calibrate_all(&table, &opts, args.folds, args.seed)?;
    for (kind, e) in &skipped {
        eprintln!("warning: policy {} skipped: {e}", kind.name());
    }
    let cv_top25 = results[0].cv_f1;
    let Some(chosen) = args.policy.pick(&results) else {
        anyhow::bail!(
            "policy {} could not be fitted on these scores",
            <&str>::from(args.policy)
        );
    };
    let (cv, policy) = (chosen.cv_f1, chosen.policy.clone());
    let chosen = chosen.kind;
    let file = PolicyFile {
        policy,
        fitted_on: Some(FitInfo {
            scores: path_text(&args.scores),
            solution: path_text(args.labels.path()?),
            model: sf.model.clone(),
            split: sf.split.clone(),
            n_surveys: known.len(),
            cv_f1: cv,
            cv_f1_top25: cv_top25,
            folds: args.folds,
            seed: args.seed,
        }),
    };
    file.save(&args.out)?;
    if args.json {
        let rows: Vec<_> = results
            .iter()
            .map(|c| {
                serde_json::json!({"policy": c.kind.name(), "cv_f1": c.cv_f1, "train_f1": c.train_f1, "fitted": c.policy.describe()})
            })
            .collect();
        let out = serde_json::json!({
            "n_surveys": known.len(),
            "folds": args.folds,
            "results": rows,
            "chosen": chosen.name(),
            "out": args.out.display().to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} labelled surveys, {}-fold cross-validation (seed {})",
            known.len(),
            args.folds,
            args.seed
        );
        println!(
            "{:<14} {:>8} {:>9} {:>9}  fitted on all",
            "policy", "CV F1", "vs top25", "train F1"
        );
        for c in &results {
            println!(
                "{:<14} {:>8.4} {:>+9.4} {:>9.4}  {}",
                c.kind.name(),
                c.cv_f1,
                c.cv_f1 - cv_top25,
                c.train_f1,
                c.policy.describe()
            );
        }
        println!("saved {} policy to {}", chosen.name(), args.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
