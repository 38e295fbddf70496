//! The paper's whole system as one resumable job: prepare (or reuse) the cache, train every
//! member on one shared validation split, predict test, blend the members with weights fitted
//! on validation (or fixed ones), fit the species-selection policy on the blend's validation
//! scores, and write the submission and a report. With a `[prior]` table the location prior
//! (`geolife_prior`: PA-neighbour label frequencies and presence-only density) is one more blend
//! member, named `prior`, scored on the members' validation surveys from the other train surveys
//! only (no validation label reaches its validation scores) and on test from every train survey.
//!
//! Resumable at every level: a member with `member.json` is done and skipped; a member with a
//! `last.ckpt` resumes from it (mid-epoch when `train.checkpoint_every_steps` is set); the
//! ensemble, policy, submission and report are recomputed from the members' files on every run
//! (seconds), so a run killed at any moment and started again writes the same bytes as an
//! uninterrupted one. The prior's score files are written once (atomically, then `prior.json`)
//! and reused. Wall times, which differ between runs, go to `timings.json` only.

mod blend;
mod compare;
mod config;
mod local;
mod maps;
mod members;
mod prior;
mod report;
mod slurm;

use std::path::PathBuf;
use std::time::Instant;

use geolife_metrics::{FitInfo, PolicyFile, Solution, write_submission};

pub use blend::Blend;
pub use config::{
    EnsembleSpec, MemberSpec, PipelineConfig, PolicySpec, PredictSpec, PriorSpec, ReportSpec,
    ResolvedMember, ResolvedPipeline, parse_override,
};
pub use local::{DeviceSlot, LocalJobs};
pub use maps::{MAP_FILES, MAPS, map_paths};
pub use members::{FoldRecord, MemberRecord};
pub use prior::PriorRecord;
pub use report::Comparison;
pub use report::{FoldRow, Report, ReportRow, report_markdown};
pub use slurm::{
    RunStatus, SLURM_DIR, SlurmJobs, SlurmState, Submission, pipeline_status, submit_slurm,
};

use members::val_labels;
use prior::resolve_prior_source;

use crate::error::TrainError;
use crate::trainer::run_dir::write_json;
use crate::trainer::{Progress, write_atomic};

/// File names inside a pipeline folder.
pub mod outputs {
    /// The resolved pipeline (every member's full training config).
    pub const RESOLVED: &str = "pipeline.toml";
    pub const MEMBERS: &str = "members";
    /// Written in a member's run folder once its test scores exist: the member is done.
    pub const MEMBER_DONE: &str = "member.json";
    pub const MEMBER_TEST_SCORES: &str = "test_scores.safetensors";
    /// A member's output when it runs as a child process (`--jobs`, Slurm).
    pub const MEMBER_LOG: &str = "member.log";
    pub const ENSEMBLE: &str = "ensemble.toml";
    pub const VAL_SCORES: &str = "val_scores.safetensors";
    pub const TEST_SCORES: &str = "test_scores.safetensors";
    pub const POLICY: &str = "policy.toml";
    pub const SUBMISSION: &str = "submission.csv";
    pub const REPORT_MD: &str = "report.md";
    pub const REPORT_JSON: &str = "report.json";
    pub const REPORT_PNG: &str = "report.png";
    pub const TIMINGS: &str = "timings.json";
    /// The location prior's folder (`[prior]`): its `val_scores.safetensors`,
    /// `test_scores.safetensors` and, once both exist, `prior.json`.
    pub const PRIOR: &str = "prior";
    pub const PRIOR_DONE: &str = "prior.json";
    /// The prior's name as a blend member (report row, ensemble files).
    pub const PRIOR_MEMBER: &str = "prior";
}

/// What `run_pipeline` needs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub pipeline: ResolvedPipeline,
    /// A packed cache (see [`crate::data::resolve_cache`]).
    pub cache: PathBuf,
    /// The dataset root the cache was packed from, when `--data` named one: the prior reads
    /// its presence-only file unless `[prior] po_file` names another.
    pub data_root: Option<PathBuf>,
    pub out: PathBuf,
    /// Test labels (a solution CSV), when known: the report then has test F1 too.
    pub test_solution: Option<Solution>,
    pub progress: Progress,
    /// How the members run.
    pub executor: Executor,
}

/// How the members run: one after another in this process, or as child processes
/// ([`LocalJobs`], `--jobs N`).
#[derive(Debug, Clone, Default)]
pub enum Executor {
    #[default]
    InProcess,
    Local(LocalJobs),
}

/// Trains (or resumes) one member of the pipeline in `opts.out`, by name, and predicts its test
/// split: what a child of `--jobs` or a Slurm task runs. With `fold`, only that fold of a
/// k-fold member (its record); without, every fold and then the member's out-of-fold scores.
/// The folder's `pipeline.toml` must be this pipeline (it is written when absent).
pub fn run_member(
    opts: &PipelineOptions,
    name: &str,
    fold: Option<usize>,
) -> Result<MemberRecord, TrainError> {
    start_folder(opts)?;
    let p = &opts.pipeline;
    let (i, m) = (p.members.iter().enumerate())
        .find(|(_, m)| m.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = p.members.iter().map(|m| m.name.as_str()).collect();
            TrainError::Invalid(format!(
                "no member `{name}` in this pipeline; its members: {}",
                names.join(", ")
            ))
        })?;
    match fold {
        None => members::train_member(opts, i),
        Some(f) if f < members::folds_of(m) && members::folds_of(m) > 1 => members::train_unit(
            opts,
            members::Unit {
                member: i,
                fold: Some(f),
            },
        ),
        Some(f) => Err(TrainError::Invalid(format!(
            "member `{name}` has no fold {f}: it has {} (validation.folds; folds count from 0)",
            members::folds_of(m)
        ))),
    }
}

/// Runs (or continues) the pipeline in `opts.out`; returns the report.
pub fn run_pipeline(opts: &PipelineOptions) -> Result<Report, TrainError> {
    let started = Instant::now();
    let out = &opts.out;
    let p = &opts.pipeline;
    let prior_source = start_folder(opts)?;
    let records = match &opts.executor {
        Executor::InProcess => members::train_members(opts)?,
        Executor::Local(jobs) => local::train_members_local(opts, jobs)?,
    };
    let t_ensemble = Instant::now();
    let mut scores = members::read_member_scores(p, out)?;
    let labels = val_labels(&opts.cache, &scores.val_ids)?;
    let prior_record = prior::add_prior_member(opts, prior_source.as_ref(), &mut scores)?;
    let blend = blend::blend_members(p, out, &scores, &labels)?;
    let rows = report::evaluate_rows(opts, &scores, &labels, &records, &blend)?;
    let comparisons = if p.report.comparisons {
        let eval = report::RowEvaluator::new(opts, &labels);
        compare::comparison_rows(opts, &scores, &labels, prior_source.as_ref(), &eval)?
    } else {
        Vec::new()
    };
    let ens_f1 = rows.ensemble.val_f1_best_k;
    blend::write_ensemble_file(p, out, &scores.val, &labels, &blend, ens_f1)?;
    write_policy_and_submission(opts, &blend, &rows, labels.len())?;
    let report = Report {
        members: rows.members,
        prior: rows.prior,
        ensemble: rows.ensemble,
        folds: (p.members.iter().zip(&records))
            .flat_map(|(m, r)| {
                r.folds.iter().map(|f| FoldRow {
                    member: m.name.clone(),
                    fold: f.clone(),
                })
            })
            .collect(),
        comparisons,
        weights: blend.weights_kind().into(),
        n_val_surveys: labels.len(),
        n_test_surveys: blend.test.len(),
    };
    report::write_report(out, &report)?;
    maps::write_maps(opts);
    let timings = serde_json::json!({
        "members": p.members.iter().zip(&records).map(|(m, r)| serde_json::json!({
            "name": m.name,
            "train_seconds": r.train_seconds,
            "predict_seconds": r.predict_seconds,
        })).collect::<Vec<_>>(),
        "prior_seconds": prior_record.as_ref().map(|r| r.seconds),
        "ensemble_policy_report_seconds": t_ensemble.elapsed().as_secs_f64(),
        "this_invocation_seconds": started.elapsed().as_secs_f64(),
    });
    write_json(&out.join(outputs::TIMINGS), &timings)?;
    Ok(report)
}

/// Checks the prior and finds its presence-only file before anything is written (a missing
/// file fails now, not after the members have trained), then writes `pipeline.toml`, or
/// refuses a folder whose `pipeline.toml` is another pipeline. Returns the prior's source, its
/// PO file resolved.
fn start_folder(opts: &PipelineOptions) -> Result<Option<geolife_prior::PriorSource>, TrainError> {
    let out = &opts.out;
    let p = &opts.pipeline;
    let resolved_path = out.join(outputs::RESOLVED);
    let prior_source = match &p.prior {
        Some(spec) => {
            spec.validate(&resolved_path)?;
            Some(resolve_prior_source(spec, opts.data_root.as_deref())?)
        }
        None => None,
    };
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.clone(),
        source,
    })?;
    let text = toml::to_string_pretty(p)
        .map_err(|e| config::config_err(&resolved_path, "", e.to_string()))?;
    if resolved_path.is_file() {
        let old = std::fs::read_to_string(&resolved_path).map_err(|source| TrainError::Io {
            path: resolved_path.clone(),
            source,
        })?;
        let same = toml::from_str::<ResolvedPipeline>(&old).is_ok_and(|o| &o == p);
        if !same {
            return Err(TrainError::Invalid(format!(
                "{} holds a pipeline with another configuration ({}): continue it with the same \
                 config and --set values, or use another --out",
                out.display(),
                resolved_path.display()
            )));
        }
    } else {
        write_atomic(&resolved_path, text.as_bytes())?;
    }
    Ok(prior_source)
}

/// `policy.toml` (the policy chosen on the blend's validation scores, and what it was
/// fitted on) and `submission.csv` (that policy applied to the blend's test scores).
fn write_policy_and_submission(
    opts: &PipelineOptions,
    blend: &Blend,
    rows: &report::Rows,
    n_val: usize,
) -> Result<(), TrainError> {
    let p = &opts.pipeline;
    let out = &opts.out;
    let policy = &rows.policy.0;
    PolicyFile {
        policy: policy.clone(),
        fitted_on: Some(FitInfo {
            scores: outputs::VAL_SCORES.into(),
            solution: format!("validation labels of {}", opts.cache.display()),
            model: blend.val.model.clone(),
            split: "val".into(),
            n_surveys: n_val,
            cv_f1: rows.ensemble.val_f1_policy_cv,
            cv_f1_top25: rows.ensemble.val_f1_top25_cv,
            folds: p.policy.folds,
            seed: p.policy.seed,
        }),
    }
    .save(&out.join(outputs::POLICY))
    .map_err(TrainError::from)?;
    let picks = policy.try_select(&blend.test).map_err(TrainError::from)?;
    write_submission(
        &out.join(outputs::SUBMISSION),
        &blend.test.survey_ids,
        &picks,
    )
    .map_err(TrainError::from)
}
