//! `geolife evaluate`: samples-F1 (precision, recall, micro-F1) of predictions against labels
//! (a solution file, a run folder or a cache); with scores also F1@K, best K, best global
//! threshold and the oracle K bound.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use geolife_metrics::{Policy, RankTable, ScoreFile, Scores, Solution, THRESHOLD_MAX_K};

use super::labels::LabelArgs;

#[derive(clap::Args)]
#[command(group = super::labels::group().required(true))]
pub struct Args {
    /// Ground truth: --solution CSV or --labels-from RUN|CACHE (one is required).
    #[command(flatten)]
    pub labels: LabelArgs,
    /// Predictions: geolife score file, Kaggle submission CSV or malpolon `;` top-N CSV.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Selection policy TOML (from `geolife calibrate`) applied before scoring.
    #[arg(long, conflicts_with = "top_k")]
    pub policy: Option<PathBuf>,
    /// Keep the K best species per survey before scoring. Default: every listed species
    /// (Kaggle / sparse files) or top-25 (dense files).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Largest K of the F1@K curve and of the oracle bound.
    #[arg(long, default_value_t = 50)]
    pub k_max: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write a PNG plot of the F1@K curve.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub half: HalfArgs,
}

/// Restricts work to one seeded half of the solution's surveys (held-out benchmarks).
#[derive(clap::Args, Clone)]
pub struct HalfArgs {
    /// Use only half `a` or `b` of the solution surveys (split by --split-seed).
    #[arg(long, value_parser = ["a", "b"])]
    pub half: Option<String>,
    /// Seed of the two-way split used by --half.
    #[arg(long, default_value_t = 42)]
    pub split_seed: u64,
}

impl HalfArgs {
    /// Keeps the chosen half of the solution (and the score rows of those surveys).
    pub fn apply(
        &self,
        solution: Solution,
        scores: ScoreFile,
    ) -> anyhow::Result<(Solution, ScoreFile)> {
        let Some(half) = self.half.as_deref() else {
            return Ok((solution, scores));
        };
        let want = usize::from(half == "b");
        let assign = geolife_metrics::fold_assignment(solution.len(), 2, self.split_seed);
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for (i, (&id, l)) in solution.survey_ids.iter().zip(&solution.labels).enumerate() {
            if assign[i] == want {
                ids.push(id);
                labels.push(l.clone());
            }
        }
        let keep: HashSet<u64> = ids.iter().copied().collect();
        let rows: Vec<usize> = (0..scores.len())
            .filter(|&i| keep.contains(&scores.survey_ids[i]))
            .collect();
        Ok((Solution::new(ids, labels)?, scores.subset(&rows)))
    }
}

/// Reads a score file and the labels of its surveys, with context naming the files.
pub fn load(scores: &Path, labels: &LabelArgs) -> anyhow::Result<(ScoreFile, Solution)> {
    let sf = ScoreFile::read(scores)
        .with_context(|| format!("reading predictions {}", scores.display()))?;
    let sol = labels.load(&sf.survey_ids)?;
    Ok((sf, sol))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.k_max >= 1, "--k-max must be at least 1");
    if args.top_k == Some(0) {
        anyhow::bail!("--top-k must be at least 1");
    }
    let (sf, sol) = load(&args.predictions, &args.labels)?;
    let (sol, sf) = args.half.apply(sol, sf)?;
    let al = sol.align(&sf.survey_ids);
    if !al.unknown_ids.is_empty() {
        eprintln!(
            "warning: {} surveys of {} are not in the solution and are ignored (first: {:?})",
            al.unknown_ids.len(),
            args.predictions.display(),
            &al.unknown_ids[..al.unknown_ids.len().min(5)]
        );
    }
    if !al.missing_ids.is_empty() {
        eprintln!(
            "warning: {} solution surveys have no prediction and score 0 (first: {:?})",
            al.missing_ids.len(),
            &al.missing_ids[..al.missing_ids.len().min(5)]
        );
    }
    let policy = match (&args.policy, args.top_k) {
        (Some(p), _) => Some(Policy::load(p)?),
        (None, Some(k)) => Some(Policy::TopK { k }),
        (None, None) if matches!(sf.scores, Scores::Dense { .. }) => Some(Policy::TopK { k: 25 }),
        (None, None) => None,
    };
    let selection = policy
        .as_ref()
        .map_or("every listed species".to_string(), Policy::describe);
    let known: Vec<usize> = (0..sf.len()).filter(|&i| al.known[i]).collect();
    let layout = sf.scores.kind();
    let has_scores = sf.has_scores();
    let title = format!("F1@K: {}", sf.model);
    // The whole file is usually labelled: avoid copying a large dense matrix then.
    let sub = if known.len() == sf.len() {
        sf
    } else {
        sf.subset(&known)
    };
    let truth: Vec<Vec<u32>> = known.iter().map(|&i| al.truth[i].clone()).collect();
    let pred = match &policy {
        Some(p) => p.try_select(&sub)?,
        None => Policy::TopK { k: usize::MAX }.select(&sub),
    };
    let mut counts: Vec<_> = pred
        .iter()
        .zip(&truth)
        .map(|(p, t)| geolife_metrics::f1::counts(p, t))
        .collect();
    // Missing surveys: empty prediction against their truth.
    for id in &al.missing_ids {
        counts.push(geolife_metrics::f1::counts(
            &[],
            sol.get(*id).unwrap_or(&[]),
        ));
    }
    let m = geolife_metrics::f1::metrics_from_counts(&counts, sol.len());

    let mut out = serde_json::json!({
        "predictions": args.predictions.display().to_string(),
        "solution": args.labels.path()?.display().to_string(),
        "selection": selection,
        "samples_f1": m.samples_f1,
        "samples_precision": m.samples_precision,
        "samples_recall": m.samples_recall,
        "micro_f1": m.micro_f1,
        "n_surveys": sol.len(),
        "n_scored": known.len(),
        "n_missing": al.missing_ids.len(),
        "n_unknown": al.unknown_ids.len(),
        "layout": layout,
    });
    // Curves over the scored surveys, rescaled so missing surveys count as 0.
    let frac = known.len() as f64 / sol.len().max(1) as f64;
    let depth = args.k_max.max(if has_scores { THRESHOLD_MAX_K } else { 0 });
    let table = RankTable::new(&sub, &truth, depth);
    let curve: Vec<f64> = table
        .f1_at_k_curve(args.k_max)
        .into_iter()
        .map(|f| f * frac)
        .collect();
    let (best_k, best_k_f1) = geolife_metrics::best_k(&curve);
    let oracle = table.oracle_f1(args.k_max) * frac;
    out["f1_at_k"] = serde_json::json!(curve);
    out["best_k"] = serde_json::json!(best_k);
    out["best_k_f1"] = serde_json::json!(best_k_f1);
    out["oracle_f1"] = serde_json::json!(oracle);
    if has_scores {
        let (t, f) = table.best_threshold(1, THRESHOLD_MAX_K);
        out["best_threshold"] = serde_json::json!(t);
        out["best_threshold_f1"] = serde_json::json!(f * frac);
    }
    if let Some(path) = &args.plot {
        geolife_metrics::plot::plot_f1_at_k(path, &curve, &title)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("predictions      {}", args.predictions.display());
        println!("selection        {selection}");
        println!(
            "surveys          {} in solution, {} scored, {} missing (score 0), {} unknown (ignored)",
            sol.len(),
            known.len(),
            al.missing_ids.len(),
            al.unknown_ids.len()
        );
        println!("samples F1       {:.4}", m.samples_f1);
        println!("samples precision {:.4}", m.samples_precision);
        println!("samples recall   {:.4}", m.samples_recall);
        println!("micro F1         {:.4}", m.micro_f1);
        println!("best top-K       K={best_k}: {best_k_f1:.4}");
        for k in [5, 10, 15, 20, 25, 30, 40, 50] {
            if k <= curve.len() {
                println!("  F1@{k:<3}         {:.4}", curve[k - 1]);
            }
        }
        if let Some(t) = out.get("best_threshold") {
            println!(
                "best threshold   t={}: {:.4}",
                t,
                out["best_threshold_f1"].as_f64().unwrap_or(0.0)
            );
        }
        println!("oracle K (<= {})  {:.4}", args.k_max, oracle);
        if let Some(p) = &args.plot {
            println!("plot             {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
