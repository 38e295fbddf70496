//! The paper's whole system as one resumable job: prepare (or reuse) the cache, train every
//! member on one shared validation split, predict test, blend the members with weights fitted
//! on validation (or fixed ones), fit the species-selection policy on the blend's validation
//! scores, and write the submission and a report.
//!
//! Resumable at every level: a member with `member.json` is done and skipped; a member with a
//! `last.ckpt` resumes from it (mid-epoch when `train.checkpoint_every_steps` is set); the
//! ensemble, policy, submission and report are recomputed from the members' files on every run
//! (seconds), so a run killed at any moment and started again writes the same bytes as an
//! uninterrupted one. Wall times, which differ between runs, go to `timings.json` only.

use std::path::{Path, PathBuf};
use std::time::Instant;

use geolife_data::Split;
use geolife_data::cache::PackedSplit;
use geolife_metrics::{
    BlendMethod, FitInfo, FitOptions, FitTarget, FittedWeights, PolicyChoice, PolicyFile,
    PolicyKind, RankTable, ScoreFile, Solution, best_k, blend, calibrate_all, fit_weights,
    samples_f1, write_submission,
};
use serde::{Deserialize, Serialize};

use crate::config::{TrainConfig, ValidationSection, merge_toml};
use crate::error::TrainError;
use crate::predict::{PredictOptions, predict};
use crate::trainer::run_dir::{read_json, write_json};
use crate::trainer::{Progress, RunInfo, TrainOptions, files, train, write_atomic};

/// File names inside a pipeline folder.
pub mod outputs {
    /// The resolved pipeline (every member's full training config).
    pub const RESOLVED: &str = "pipeline.toml";
    pub const MEMBERS: &str = "members";
    /// Written in a member's run folder once its test scores exist: the member is done.
    pub const MEMBER_DONE: &str = "member.json";
    pub const MEMBER_TEST_SCORES: &str = "test_scores.safetensors";
    pub const ENSEMBLE: &str = "ensemble.toml";
    pub const VAL_SCORES: &str = "val_scores.safetensors";
    pub const TEST_SCORES: &str = "test_scores.safetensors";
    pub const POLICY: &str = "policy.toml";
    pub const SUBMISSION: &str = "submission.csv";
    pub const REPORT_MD: &str = "report.md";
    pub const REPORT_JSON: &str = "report.json";
    pub const REPORT_PNG: &str = "report.png";
    pub const TIMINGS: &str = "timings.json";
}

/// A pipeline file (`configs/pipeline-*.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The members, in order: each a training config with overrides.
    #[serde(rename = "member")]
    pub members: Vec<MemberSpec>,
    /// The validation split of every member (replaces each member's `[validation]`); default:
    /// the first member's.
    #[serde(default)]
    pub validation: Option<ValidationSection>,
    #[serde(default)]
    pub ensemble: EnsembleSpec,
    #[serde(default)]
    pub policy: PolicySpec,
    #[serde(default)]
    pub predict: PredictSpec,
}

/// One member: a training config file and keys that override it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// Run folder name under `members/` (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Training config, relative to the pipeline file.
    pub config: PathBuf,
    /// Overrides merged into the config key by key (e.g. `{ model = { backbone = "..." } }`).
    #[serde(default)]
    pub set: toml::Table,
}

/// How members are blended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnsembleSpec {
    pub method: BlendMethod,
    /// Fixed weights, one per member in order (e.g. the paper's `[0.15, 0.1, 0.4, 0.35]`);
    /// absent: fitted on validation (coordinate search maximising the best top-K F1).
    pub weights: Option<Vec<f64>>,
}

impl Default for EnsembleSpec {
    fn default() -> Self {
        Self {
            method: BlendMethod::Mean,
            weights: None,
        }
    }
}

/// Which selection policy the submission uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySpec {
    /// `auto` (best cross-validated), `top25`, `fixed_k`, `threshold` or `per_survey_k`.
    pub kind: PolicyChoice,
    pub folds: usize,
    pub seed: u64,
    pub min_k: usize,
    pub max_k: usize,
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            kind: PolicyChoice::Auto,
            folds: 5,
            seed: 42,
            min_k: 1,
            max_k: 50,
        }
    }
}

/// Batched prediction of the members.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PredictSpec {
    pub batch_size: usize,
    pub workers: usize,
}

impl Default for PredictSpec {
    fn default() -> Self {
        Self {
            batch_size: 64,
            workers: 2,
        }
    }
}

/// A pipeline with every member's training config resolved; saved as `pipeline.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResolvedPipeline {
    pub ensemble: EnsembleSpec,
    pub policy: PolicySpec,
    pub predict: PredictSpec,
    #[serde(rename = "member")]
    pub members: Vec<ResolvedMember>,
}

/// A member's name and full training config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResolvedMember {
    pub name: String,
    pub config: TrainConfig,
}

fn config_err(path: &Path, key: &str, message: String) -> TrainError {
    TrainError::Config {
        path: path.to_path_buf(),
        key: key.into(),
        message,
    }
}

/// Parses `KEY=VALUE` (`train.epochs=1`) into a nested TOML table; the value is TOML
/// (`1`, `true`, `"text"`), or a bare string when it does not parse as TOML.
pub fn parse_override(text: &str) -> Result<toml::Table, TrainError> {
    let bad = |m: &str| config_err(Path::new("--set"), "", format!("`{text}`: {m}"));
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. train.epochs=1"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key part"));
    }
    let mut table = toml::Table::new();
    table.insert(parts[parts.len() - 1].to_string(), value);
    for p in parts[..parts.len() - 1].iter().rev() {
        let mut outer = toml::Table::new();
        outer.insert(p.to_string(), toml::Value::Table(table));
        table = outer;
    }
    Ok(table)
}

impl PipelineConfig {
    /// Reads a pipeline file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| config_err(path, "", e.to_string()))?;
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), TrainError> {
        if self.members.is_empty() {
            return Err(config_err(path, "member", "no [[member]] given".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.members {
            let ok = !m.name.is_empty()
                && m.name != "."
                && m.name != ".."
                && m.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(config_err(
                    path,
                    "member.name",
                    format!(
                        "`{}`: use letters, digits, `-`, `_` and `.` (it names a folder)",
                        m.name
                    ),
                ));
            }
            if !seen.insert(&m.name) {
                return Err(config_err(
                    path,
                    "member.name",
                    format!("`{}` is given twice", m.name),
                ));
            }
        }
        if let Some(w) = &self.ensemble.weights {
            if w.len() != self.members.len() {
                return Err(config_err(
                    path,
                    "ensemble.weights",
                    format!(
                        "{} weights for {} members (one per member, in order)",
                        w.len(),
                        self.members.len()
                    ),
                ));
            }
            if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
                return Err(config_err(
                    path,
                    "ensemble.weights",
                    format!("must be >= 0 with a positive sum, got {w:?}"),
                ));
            }
        }
        let p = &self.policy;
        if p.folds < 2 {
            return Err(config_err(
                path,
                "policy.folds",
                "must be at least 2".into(),
            ));
        }
        if !(1 <= p.min_k && p.min_k <= p.max_k) {
            return Err(config_err(
                path,
                "policy.min_k",
                format!("need 1 <= min_k <= max_k, got {} and {}", p.min_k, p.max_k),
            ));
        }
        if self.predict.batch_size == 0 || self.predict.workers == 0 {
            return Err(config_err(
                path,
                "predict.batch_size",
                "batch_size and workers must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Every member's training config: its file, its `set`, then `overrides` (e.g. from
    /// `--set`), with the shared validation section; each validated by key.
    pub fn resolve(
        &self,
        path: &Path,
        overrides: &[toml::Table],
    ) -> Result<ResolvedPipeline, TrainError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut members = Vec::with_capacity(self.members.len());
        let mut validation = self.validation.clone();
        for m in &self.members {
            let file = dir.join(&m.config);
            let text = std::fs::read_to_string(&file).map_err(|source| TrainError::Io {
                path: file.clone(),
                source,
            })?;
            let mut value: toml::Value =
                toml::from_str(&text).map_err(|e| config_err(&file, "", e.to_string()))?;
            merge_toml(&mut value, toml::Value::Table(m.set.clone()));
            for o in overrides {
                merge_toml(&mut value, toml::Value::Table(o.clone()));
            }
            let origin = PathBuf::from(format!("{} (member `{}`)", file.display(), m.name));
            let text =
                toml::to_string(&value).map_err(|e| config_err(&origin, "", e.to_string()))?;
            let mut config = TrainConfig::from_toml_str(&text, &origin)?;
            // Every member validates on the same surveys, so their validation scores blend.
            match &validation {
                Some(v) => config.validation = v.clone(),
                None => validation = Some(config.validation.clone()),
            }
            config.validate(&origin)?;
            members.push(ResolvedMember {
                name: m.name.clone(),
                config,
            });
        }
        Ok(ResolvedPipeline {
            ensemble: self.ensemble.clone(),
            policy: self.policy.clone(),
            predict: self.predict.clone(),
            members,
        })
    }
}

/// What `run_pipeline` needs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub pipeline: ResolvedPipeline,
    /// A packed cache (see [`crate::data::resolve_cache`]).
    pub cache: PathBuf,
    pub out: PathBuf,
    /// Test labels (a solution CSV), when known: the report then has test F1 too.
    pub test_solution: Option<Solution>,
    pub progress: Progress,
}

/// A member's record once its run and test scores exist (`member.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    pub best_epoch: Option<usize>,
    pub best_val_f1: f64,
    pub train_seconds: f64,
    pub predict_seconds: f64,
}

/// One row of the report (a member or the ensemble).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportRow {
    pub name: String,
    /// Sentinel backbone (members) or `ensemble`.
    pub model: String,
    /// Weight in the blend (members).
    pub weight: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Validation samples-F1 of the best fixed K (and that K).
    pub val_f1_best_k: f64,
    pub best_k: usize,
    /// The policy kind chosen on this row's validation scores, what it chose, and its
    /// cross-validated F1 (and top-25's, for comparison).
    pub policy: String,
    pub policy_fitted: String,
    pub val_f1_policy_cv: f64,
    pub val_f1_top25_cv: f64,
    /// Test samples-F1 with that policy, when test labels were given.
    pub test_f1: Option<f64>,
}

/// The report (`report.json`; `report.md` is the same as a table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub members: Vec<ReportRow>,
    pub ensemble: ReportRow,
    /// `fitted` or `fixed`.
    pub weights: String,
    pub n_val_surveys: usize,
    pub n_test_surveys: usize,
}

/// Runs (or continues) the pipeline in `opts.out`; returns the report.
pub fn run_pipeline(opts: &PipelineOptions) -> Result<Report, TrainError> {
    let started = Instant::now();
    let out = &opts.out;
    let p = &opts.pipeline;
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.clone(),
        source,
    })?;
    let resolved_path = out.join(outputs::RESOLVED);
    let text =
        toml::to_string_pretty(p).map_err(|e| config_err(&resolved_path, "", e.to_string()))?;
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

    // Members: train (or resume, or skip), then predict test.
    let mut records = Vec::with_capacity(p.members.len());
    for (i, m) in p.members.iter().enumerate() {
        let dir = out.join(outputs::MEMBERS).join(&m.name);
        let done = dir.join(outputs::MEMBER_DONE);
        let tag = format!("member {}/{} `{}`", i + 1, p.members.len(), m.name);
        if done.is_file() {
            let record: MemberRecord = read_json(&done)?;
            println!("{tag}: done (best validation F1 {:.4})", record.best_val_f1);
            records.push(record);
            continue;
        }
        let resume = dir.join(files::LAST).is_file();
        println!(
            "{tag}: {} ({} backbone, {} epochs)",
            if resume { "resuming" } else { "training" },
            m.config.model.backbone.name(),
            m.config.train.epochs
        );
        let t = Instant::now();
        let summary = train(&TrainOptions {
            config: m.config.clone(),
            cache: opts.cache.clone(),
            run_dir: dir.clone(),
            resume,
            progress: opts.progress,
            stop_after_batches: None,
        })?;
        let train_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let test = predict(&PredictOptions {
            run_dir: Some(dir.clone()),
            weights: None,
            config: None,
            cache: opts.cache.clone(),
            split: Split::Test,
            batch_size: p.predict.batch_size,
            workers: p.predict.workers,
        })?;
        test.write(&dir.join(outputs::MEMBER_TEST_SCORES))
            .map_err(|e| TrainError::Metrics(e.to_string()))?;
        let record = MemberRecord {
            best_epoch: summary.best_epoch,
            best_val_f1: summary.best_f1,
            train_seconds,
            predict_seconds: t.elapsed().as_secs_f64(),
        };
        write_json(&done, &record)?;
        println!(
            "{tag}: best validation F1 {:.4} at epoch {} ({:.1}s)",
            record.best_val_f1,
            record.best_epoch.unwrap_or(0),
            record.train_seconds + record.predict_seconds
        );
        records.push(record);
    }

    // Validation scores of every member, on one split, and their labels.
    let t_ensemble = Instant::now();
    let member_dir = |m: &ResolvedMember| out.join(outputs::MEMBERS).join(&m.name);
    let read_scores = |path: PathBuf| {
        ScoreFile::read(&path).map_err(|e| TrainError::Metrics(format!("{}: {e}", path.display())))
    };
    let val: Vec<ScoreFile> = p
        .members
        .iter()
        .map(|m| read_scores(member_dir(m).join(files::VAL_SCORES)))
        .collect::<Result<_, _>>()?;
    let test: Vec<ScoreFile> = p
        .members
        .iter()
        .map(|m| read_scores(member_dir(m).join(outputs::MEMBER_TEST_SCORES)))
        .collect::<Result<_, _>>()?;
    let val_ids = RunInfo::load(&member_dir(&p.members[0]))?.val_survey_ids;
    for (m, v) in p.members.iter().zip(&val) {
        let mut a = v.survey_ids.clone();
        let mut b = val_ids.clone();
        a.sort_unstable();
        b.sort_unstable();
        if a != b {
            return Err(TrainError::Invalid(format!(
                "member `{}` validated on other surveys than `{}`: the members' validation \
                 sections differ (they must share one split to be blended)",
                m.name, p.members[0].name
            )));
        }
    }
    let labels = val_labels(&opts.cache, &val_ids)?;

    // Ensemble weights: fixed, or fitted on validation.
    let method = p.ensemble.method;
    let metrics = |e: geolife_metrics::MetricsError| TrainError::Metrics(e.to_string());
    let (weights, weights_kind) = match &p.ensemble.weights {
        Some(w) => {
            let s: f64 = w.iter().sum();
            (w.iter().map(|x| x / s).collect::<Vec<_>>(), "fixed")
        }
        None => {
            let fitted = fit_weights(
                &val,
                &labels,
                method,
                &FitTarget::BestTopK {
                    max_k: p.policy.max_k,
                },
            )
            .map_err(metrics)?;
            (fitted.weights, "fitted")
        }
    };
    let (val_blend, _) = blend(&val, &weights, method).map_err(metrics)?;
    let (test_blend, _) = blend(&test, &weights, method).map_err(metrics)?;
    let val_blend = ScoreFile {
        model: "geolife-pipeline-ensemble".into(),
        ..val_blend
    };
    let test_blend = ScoreFile {
        model: "geolife-pipeline-ensemble".into(),
        ..test_blend
    };
    val_blend
        .write(&out.join(outputs::VAL_SCORES))
        .map_err(metrics)?;
    test_blend
        .write(&out.join(outputs::TEST_SCORES))
        .map_err(metrics)?;

    // Policies: one per member (for the report) and the ensemble's (for the submission).
    let fit_opts = FitOptions {
        min_k: p.policy.min_k,
        max_k: p.policy.max_k,
        ..FitOptions::default()
    };
    let mut rows = Vec::with_capacity(p.members.len());
    for (((m, v), t), r) in p.members.iter().zip(&val).zip(&test).zip(&records) {
        let (row, _) = evaluate_row(
            &m.name,
            m.config.model.backbone.name(),
            v,
            t,
            &labels,
            opts.test_solution.as_ref(),
            &p.policy,
            &fit_opts,
        )?;
        rows.push(ReportRow {
            best_epoch: r.best_epoch,
            ..row
        });
    }
    for (row, w) in rows.iter_mut().zip(&weights) {
        row.weight = Some(*w);
    }
    let (ens_row, ens_policy) = evaluate_row(
        "ensemble",
        "ensemble",
        &val_blend,
        &test_blend,
        &labels,
        opts.test_solution.as_ref(),
        &p.policy,
        &fit_opts,
    )?;

    let ensemble_file = FittedWeights {
        weights: weights.clone(),
        method,
        f1: Some(ens_row.val_f1_best_k),
        f1_equal: Some(if p.members.len() == 1 {
            ens_row.val_f1_best_k
        } else {
            let equal = vec![1.0 / p.members.len() as f64; p.members.len()];
            let (eq, _) = blend(&val, &equal, method).map_err(metrics)?;
            best_k_f1(&eq, &labels, p.policy.max_k).1
        }),
        paper_f1: None,
        target: format!(
            "best top-K (K <= {}), {weights_kind} weights",
            p.policy.max_k
        ),
        files: p
            .members
            .iter()
            .map(|m| format!("{}/{}/{}", outputs::MEMBERS, m.name, files::VAL_SCORES))
            .collect(),
    };
    ensemble_file
        .save(&out.join(outputs::ENSEMBLE))
        .map_err(metrics)?;
    let n_val = labels.len();
    PolicyFile {
        policy: ens_policy.0.clone(),
        fitted_on: Some(FitInfo {
            scores: outputs::VAL_SCORES.into(),
            solution: format!("validation labels of {}", opts.cache.display()),
            model: val_blend.model.clone(),
            split: "val".into(),
            n_surveys: n_val,
            cv_f1: ens_row.val_f1_policy_cv,
            cv_f1_top25: ens_row.val_f1_top25_cv,
            folds: p.policy.folds,
            seed: p.policy.seed,
        }),
    }
    .save(&out.join(outputs::POLICY))
    .map_err(metrics)?;
    let picks = ens_policy.0.try_select(&test_blend).map_err(metrics)?;
    write_submission(
        &out.join(outputs::SUBMISSION),
        &test_blend.survey_ids,
        &picks,
    )
    .map_err(metrics)?;

    let report = Report {
        members: rows,
        ensemble: ens_row,
        weights: weights_kind.into(),
        n_val_surveys: n_val,
        n_test_surveys: test_blend.len(),
    };
    write_json(&out.join(outputs::REPORT_JSON), &report)?;
    write_atomic(
        &out.join(outputs::REPORT_MD),
        report_markdown(&report).as_bytes(),
    )?;
    if let Err(e) = plot_report(&out.join(outputs::REPORT_PNG), &report) {
        tracing::warn!("no report plot: {e}");
    }
    let timings = serde_json::json!({
        "members": p.members.iter().zip(&records).map(|(m, r)| serde_json::json!({
            "name": m.name,
            "train_seconds": r.train_seconds,
            "predict_seconds": r.predict_seconds,
        })).collect::<Vec<_>>(),
        "ensemble_policy_report_seconds": t_ensemble.elapsed().as_secs_f64(),
        "this_invocation_seconds": started.elapsed().as_secs_f64(),
    });
    write_json(&out.join(outputs::TIMINGS), &timings)?;
    Ok(report)
}

/// Labels of the validation surveys `ids`, from the train split of the cache.
pub fn val_labels(cache: &Path, ids: &[u64]) -> Result<Solution, TrainError> {
    let train = PackedSplit::open(cache, Split::Train)?;
    let labels = train.labels_of(ids).map_err(|id| {
        TrainError::Invalid(format!(
            "validation survey {id} is not in the train split of {}",
            cache.display()
        ))
    })?;
    Solution::new(ids.to_vec(), labels).map_err(|e| TrainError::Metrics(e.to_string()))
}

/// The rank table of a score file's labelled rows.
fn table_of(scores: &ScoreFile, labels: &Solution, depth: usize) -> RankTable {
    let al = labels.align(&scores.survey_ids);
    RankTable::new(scores, &al.truth, depth)
}

/// (best K, its F1) on validation.
fn best_k_f1(scores: &ScoreFile, labels: &Solution, max_k: usize) -> (usize, f64) {
    best_k(&table_of(scores, labels, max_k).f1_at_k_curve(max_k))
}

/// A report row for one score file pair (validation, test), and the policy chosen for it on
/// validation (with its kind); `test_f1` when the test labels are given.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_row(
    name: &str,
    model: &str,
    val: &ScoreFile,
    test: &ScoreFile,
    labels: &Solution,
    test_solution: Option<&Solution>,
    spec: &PolicySpec,
    opts: &FitOptions,
) -> Result<(ReportRow, (geolife_metrics::Policy, PolicyKind)), TrainError> {
    let metrics = |e: geolife_metrics::MetricsError| TrainError::Metrics(e.to_string());
    // One rank table for the F1@K curve and every policy fit.
    let table = table_of(val, labels, spec.max_k.max(25));
    let (best_k, val_f1_best_k) = best_k(&table.f1_at_k_curve(spec.max_k));
    let (fitted, _skipped) = calibrate_all(&table, opts, spec.folds, spec.seed).map_err(metrics)?;
    let chosen = spec.kind.pick(&fitted).ok_or_else(|| {
        TrainError::Invalid(format!(
            "{name}: policy `{}` could not be fitted on the validation scores",
            <&str>::from(spec.kind)
        ))
    })?;
    let top25 = fitted
        .iter()
        .find(|c| c.kind == PolicyKind::Top25)
        .map_or(0.0, |c| c.cv_f1);
    let test_f1 = match test_solution {
        Some(sol) => {
            let picks = chosen.policy.try_select(test).map_err(metrics)?;
            Some(samples_f1(&picks, &sol.align(&test.survey_ids).truth))
        }
        None => None,
    };
    Ok((
        ReportRow {
            name: name.into(),
            model: model.into(),
            weight: None,
            best_epoch: None,
            val_f1_best_k,
            best_k,
            policy: chosen.kind.name().into(),
            policy_fitted: chosen.policy.describe(),
            val_f1_policy_cv: chosen.cv_f1,
            val_f1_top25_cv: top25,
            test_f1,
        },
        (chosen.policy.clone(), chosen.kind),
    ))
}

/// The report as a Markdown table.
pub fn report_markdown(r: &Report) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    let mut s = String::from("# geolife pipeline report\n\n");
    s.push_str(&format!(
        "{} validation surveys (one split shared by every member), {} test surveys; ensemble \
         weights {}.\n\n",
        r.n_val_surveys, r.n_test_surveys, r.weights
    ));
    s.push_str(
        "| row | model | weight | best epoch | val F1 @ best K | policy | chosen | val F1 (policy, CV) | val F1 (top-25, CV) | test F1 |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in r.members.iter().chain(std::iter::once(&r.ensemble)) {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} (K={}) | {} | {} | {:.4} | {:.4} | {} |\n",
            row.name,
            row.model,
            opt(row.weight, 3),
            row.best_epoch.map_or("-".into(), |e| e.to_string()),
            row.val_f1_best_k,
            row.best_k,
            row.policy,
            row.policy_fitted,
            row.val_f1_policy_cv,
            row.val_f1_top25_cv,
            opt(row.test_f1, 4),
        ));
    }
    s.push_str(
        "\nWall times are in timings.json (they differ between runs; everything here does not).\n",
    );
    s
}

fn plot_report(path: &Path, r: &Report) -> Result<(), String> {
    use plotters::style::{BLUE, GREEN, RGBColor};
    let rows: Vec<&ReportRow> = r
        .members
        .iter()
        .chain(std::iter::once(&r.ensemble))
        .collect();
    let labels: Vec<String> = rows.iter().map(|row| row.name.clone()).collect();
    let mut series: Vec<(&str, RGBColor, Vec<Option<f64>>)> = vec![(
        "validation F1 (policy, CV)",
        BLUE,
        rows.iter().map(|row| Some(row.val_f1_policy_cv)).collect(),
    )];
    if rows.iter().any(|row| row.test_f1.is_some()) {
        series.push((
            "test F1",
            GREEN,
            rows.iter().map(|row| row.test_f1).collect(),
        ));
    }
    crate::plot::plot_bars(
        path,
        "members and their ensemble: samples-F1",
        &labels,
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_into_nested_tables() {
        let t = parse_override("train.epochs=2").unwrap();
        assert_eq!(t["train"]["epochs"].as_integer(), Some(2));
        let t = parse_override("model.backbone=smoke_resnet").unwrap();
        assert_eq!(t["model"]["backbone"].as_str(), Some("smoke_resnet"));
        let t = parse_override("train.device=\"flex\"").unwrap();
        assert_eq!(t["train"]["device"].as_str(), Some("flex"));
        assert!(parse_override("train.epochs").is_err());
        assert!(parse_override("train..epochs=1").is_err());
    }

    #[test]
    fn shipped_pipelines_resolve_to_valid_member_configs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let tiny = dir.join("pipeline-tiny.toml");
        let r = PipelineConfig::load(&tiny)
            .unwrap()
            .resolve(&tiny, &[])
            .unwrap();
        assert_eq!(r.members.len(), 2);
        assert_ne!(
            r.members[0].config.model.backbone,
            r.members[1].config.model.backbone
        );
        let paper = dir.join("pipeline-paper.toml");
        let r = PipelineConfig::load(&paper)
            .unwrap()
            .resolve(&paper, &[])
            .unwrap();
        // The four paper members are the four paper configs, all on one validation split.
        for (m, file) in r.members.iter().zip([
            "paper-convnext-base.toml",
            "paper-convnext-large.toml",
            "paper-maxvit-t.toml",
            "paper-swinv2-base.toml",
        ]) {
            let c = TrainConfig::load(&dir.join(file)).unwrap();
            assert_eq!(m.config, c, "{}", m.name);
        }
        let text = toml::to_string_pretty(&r).unwrap();
        assert_eq!(toml::from_str::<ResolvedPipeline>(&text).unwrap(), r);
    }

    #[test]
    fn bad_pipelines_are_refused_by_key() {
        let bad = |text: &str| {
            let cfg: PipelineConfig = toml::from_str(text).unwrap();
            match cfg.check(Path::new("p.toml")).unwrap_err() {
                TrainError::Config { key, message, .. } => format!("{key}: {message}"),
                e => panic!("{e}"),
            }
        };
        let two = "[[member]]\nname = \"a\"\nconfig = \"tiny.toml\"\n[[member]]\nname = \"b\"\nconfig = \"tiny.toml\"\n";
        let e = bad(&format!("{two}[ensemble]\nweights = [1.0]\n"));
        assert!(e.starts_with("ensemble.weights:"), "{e}");
        // A policy name the parser does not know is refused with the valid ones.
        let e = toml::from_str::<PipelineConfig>(&format!("{two}[policy]\nkind = \"top_25\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("top25") && e.contains("per_survey_k"), "{e}");
        let e = bad("[[member]]\nname = \"../x\"\nconfig = \"tiny.toml\"\n");
        assert!(e.starts_with("member.name:"), "{e}");
        let e = bad(
            "[[member]]\nname = \"a\"\nconfig = \"t.toml\"\n[[member]]\nname = \"a\"\nconfig = \"t.toml\"\n",
        );
        assert!(e.contains("twice"), "{e}");
    }
}
