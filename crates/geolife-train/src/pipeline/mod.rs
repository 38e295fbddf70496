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

use std::path::{Path, PathBuf};
use std::time::Instant;

use geolife_data::cache::PackedSplit;
use geolife_data::{Split, SurveyMeta};
use geolife_metrics::{
    BlendMethod, FitInfo, FitOptions, FitTarget, FittedWeights, PolicyChoice, PolicyFile,
    PolicyKind, RankTable, ScoreFile, Solution, best_k, blend, calibrate_all, fit_weights,
    samples_f1, write_submission,
};
use geolife_prior::{CachedSurveys, PoRecords, PriorConfig, Target};
use serde::{Deserialize, Serialize};

use crate::config::{TrainConfig, ValidationSection, did_you_mean, merge_toml};
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
    /// The location prior's folder (`[prior]`): its `val_scores.safetensors`,
    /// `test_scores.safetensors` and, once both exist, `prior.json`.
    pub const PRIOR: &str = "prior";
    pub const PRIOR_DONE: &str = "prior.json";
    /// The prior's name as a blend member (report row, ensemble files).
    pub const PRIOR_MEMBER: &str = "prior";
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
    /// The location prior as one more blend member (absent: no prior).
    #[serde(default)]
    pub prior: Option<PriorSpec>,
}

/// `[prior]`: the location prior as a blend member named `prior`. Its keys are those of
/// `geolife prior --config` ([`PriorConfig`]: `po_weight`, `top`, `[prior.pa]`, `[prior.po]`),
/// plus `po_file`. Years and regions are not in a packed cache, so `pa.same_year` and
/// `pa.same_region` are refused here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "toml::Table", into = "toml::Table")]
pub struct PriorSpec {
    pub config: PriorConfig,
    /// The presence-only CSV (`GLC24_P0_metadata_train.csv` layout), relative to the pipeline
    /// file. Absent: the file of that name in the dataset root given as `--data` (a packed
    /// cache does not keep presence-only records). Not read when `po.enabled = false`.
    pub po_file: Option<PathBuf>,
}

/// Keys of `[prior]` beside those of [`PriorConfig`].
const PRIOR_PO_FILE: &str = "po_file";

impl PriorSpec {
    /// The default prior (both sources; PO from the dataset root).
    pub fn new(config: PriorConfig) -> Self {
        Self {
            config,
            po_file: None,
        }
    }

    /// Refuses what cannot work, by key (`prior.pa.k`, ...): the prior's own checks, and the
    /// same-year / same-region restrictions that a packed cache cannot serve.
    pub fn validate(&self, path: &Path) -> Result<(), TrainError> {
        let by_key = |e: geolife_prior::PriorError| {
            let text = e.to_string();
            match text.split_once(": ") {
                Some((key, message)) if key.starts_with("prior.") => {
                    config_err(path, key.split(' ').next().unwrap_or(key), message.into())
                }
                _ => config_err(path, "prior", text),
            }
        };
        self.config.validate().map_err(by_key)?;
        geolife_prior::check_cache_config(&self.config).map_err(|e| {
            let key = if self.config.pa.same_year {
                "prior.pa.same_year"
            } else {
                "prior.pa.same_region"
            };
            config_err(path, key, e.to_string())
        })
    }

    /// A short name of the sources in use (`pa+po`, `pa`, `po`).
    pub fn sources(&self) -> &'static str {
        match (self.config.pa.enabled, self.config.po.enabled) {
            (true, true) => "pa+po",
            (true, false) => "pa",
            _ => "po",
        }
    }
}

impl TryFrom<toml::Table> for PriorSpec {
    type Error = String;

    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        check_prior_table(&table).map_err(|(key, message)| format!("{key}: {message}"))?;
        let po_file = match table.remove(PRIOR_PO_FILE) {
            None => None,
            Some(toml::Value::String(p)) => Some(PathBuf::from(p)),
            Some(v) => return Err(format!("prior.po_file: expected a path, got {v}")),
        };
        let config = PriorConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("prior: {e}"))?;
        Ok(Self { config, po_file })
    }
}

impl From<PriorSpec> for toml::Table {
    fn from(spec: PriorSpec) -> toml::Table {
        let mut table = match toml::Value::try_from(&spec.config) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        if let Some(p) = spec.po_file {
            table.insert(
                PRIOR_PO_FILE.into(),
                toml::Value::String(p.to_string_lossy().into_owned()),
            );
        }
        table
    }
}

/// The keys of a `[prior]` table and of its `pa` / `po` tables (from the defaults, so they
/// follow [`PriorConfig`]).
fn prior_keys() -> [(String, Vec<String>); 3] {
    let keys = |v: &toml::Value| -> Vec<String> {
        v.as_table()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    };
    let d = toml::Value::try_from(PriorConfig::default()).unwrap_or(toml::Value::Boolean(false));
    let mut top = keys(&d);
    top.push(PRIOR_PO_FILE.into());
    [
        ("prior".into(), top),
        ("prior.pa".into(), keys(&d["pa"])),
        ("prior.po".into(), keys(&d["po"])),
    ]
}

/// Checks a raw `[prior]` table by key before it is parsed: unknown keys (with the nearest
/// known one) and kernel names (with every valid one and the nearest). Err: (key, message).
fn check_prior_table(table: &toml::Table) -> Result<(), (String, String)> {
    for (section, known) in prior_keys() {
        let t = match section.strip_prefix("prior.") {
            None => Some(table),
            Some(sub) => table.get(sub).and_then(|v| v.as_table()),
        };
        let Some(t) = t else { continue };
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        for key in t.keys() {
            if !known.contains(&key.as_str()) {
                let hint = did_you_mean(key, &known)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err((
                    format!("{section}.{key}"),
                    format!("unknown key{hint}; expected one of: {}", known.join(", ")),
                ));
            }
        }
        if section != "prior"
            && let Some(v) = t.get("kernel")
        {
            let name = v.as_str().unwrap_or_default();
            let names = geolife_prior::Kernel::NAMES;
            if !names.contains(&name) {
                let hint = did_you_mean(name, &names)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err((
                    format!("{section}.kernel"),
                    format!(
                        "unknown value {v}{hint}; expected one of: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
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
    /// Fixed weights, one per member in order (e.g. the paper's `[0.15, 0.1, 0.4, 0.35]`),
    /// then one for the prior when there is a `[prior]`; absent: fitted on validation
    /// (coordinate search maximising the best top-K F1).
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
    /// The location prior member, `po_file` relative to where the pipeline runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<PriorSpec>,
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
        Self::from_toml_str(&text, path)
    }

    /// Parses and checks a pipeline file's text (`path` names it in errors).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, TrainError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| config_err(path, "", e.to_string()))?;
        // `[prior]` by key first (serde would name neither the key nor the nearest name).
        if let Some(prior) = table.get("prior") {
            let prior = prior
                .as_table()
                .ok_or_else(|| config_err(path, "prior", "expected a table ([prior])".into()))?;
            check_prior_table(prior).map_err(|(key, message)| config_err(path, &key, message))?;
        }
        let cfg: Self = toml::from_str(text).map_err(|e| config_err(path, "", e.to_string()))?;
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
        if let Some(prior) = &self.prior {
            prior.validate(path)?;
            if self.members.iter().any(|m| m.name == outputs::PRIOR_MEMBER) {
                return Err(config_err(
                    path,
                    "member.name",
                    "`prior` names the [prior] member's report row: call this member otherwise"
                        .into(),
                ));
            }
        }
        if let Some(w) = &self.ensemble.weights {
            let n = self.members.len() + usize::from(self.prior.is_some());
            if w.len() != n {
                let what = if self.prior.is_some() {
                    format!(
                        "{} members and the prior (one per member, in order, then the prior's)",
                        self.members.len()
                    )
                } else {
                    format!("{} members (one per member, in order)", self.members.len())
                };
                return Err(config_err(
                    path,
                    "ensemble.weights",
                    format!("{} weights for {what}", w.len()),
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
        // A relative PO file is relative to the pipeline file, as member configs are.
        let prior = self.prior.clone().map(|mut spec| {
            spec.po_file = spec.po_file.map(|f| dir.join(f));
            spec
        });
        Ok(ResolvedPipeline {
            ensemble: self.ensemble.clone(),
            policy: self.policy.clone(),
            predict: self.predict.clone(),
            prior,
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
    /// The dataset root the cache was packed from, when `--data` named one: the prior reads
    /// its presence-only file unless `[prior] po_file` names another.
    pub data_root: Option<PathBuf>,
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

/// What the prior member's folder records once both score files exist (`prior.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PriorRecord {
    pub n_val_surveys: usize,
    pub n_test_surveys: usize,
    pub n_species: usize,
    /// PA train surveys of the test pool (the validation pool lacks the validation ones).
    pub n_train_surveys: usize,
    /// Presence-only records read (0 with `po.enabled = false`), and the file.
    pub po_records: usize,
    pub po_file: Option<PathBuf>,
    pub seconds: f64,
}

/// The report (`report.json`; `report.md` is the same as a table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub members: Vec<ReportRow>,
    /// The location prior member (`[prior]`), blended with the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<ReportRow>,
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
    let resolved_path = out.join(outputs::RESOLVED);
    // The prior's presence-only file, before anything is written (a missing file fails now,
    // not after the members have trained).
    let prior_po = match &p.prior {
        Some(spec) => {
            spec.validate(&resolved_path)?;
            prior_po_file(spec, opts.data_root.as_deref())?
        }
        None => None,
    };
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.clone(),
        source,
    })?;
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
            device: None,
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
    let mut val: Vec<ScoreFile> = p
        .members
        .iter()
        .map(|m| read_scores(member_dir(m).join(files::VAL_SCORES)))
        .collect::<Result<_, _>>()?;
    let mut test: Vec<ScoreFile> = p
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

    // The location prior: one more member, after the trained ones.
    let mut prior_record = None;
    if let Some(spec) = &p.prior {
        let (v, t, record) = prior_member(
            spec,
            prior_po.as_deref(),
            &opts.cache,
            &val_ids,
            &out.join(outputs::PRIOR),
        )?;
        println!(
            "prior ({}): {} validation and {} test surveys, {} PO records ({:.1}s)",
            spec.sources(),
            record.n_val_surveys,
            record.n_test_surveys,
            record.po_records,
            record.seconds
        );
        val.push(v);
        test.push(t);
        prior_record = Some(record);
    }

    // Ensemble weights: fixed, or fitted on validation.
    let method = p.ensemble.method;
    let metrics = |e: geolife_metrics::MetricsError| TrainError::Metrics(e.to_string());
    let Blend {
        weights,
        fitted,
        val: val_blend,
        test: test_blend,
    } = fit_blend(
        &val,
        &test,
        &labels,
        &p.ensemble,
        p.policy.max_k,
        "geolife-pipeline-ensemble",
    )?;
    let weights_kind = if fitted { "fitted" } else { "fixed" };
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
    let prior_row = match &p.prior {
        Some(spec) => {
            let m = p.members.len();
            let (row, _) = evaluate_row(
                outputs::PRIOR_MEMBER,
                &format!("prior ({})", spec.sources()),
                &val[m],
                &test[m],
                &labels,
                opts.test_solution.as_ref(),
                &p.policy,
                &fit_opts,
            )?;
            Some(ReportRow {
                weight: Some(weights[m]),
                ..row
            })
        }
        None => None,
    };
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
        f1_equal: Some(if val.len() == 1 {
            ens_row.val_f1_best_k
        } else {
            let equal = vec![1.0 / val.len() as f64; val.len()];
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
            .chain(
                p.prior
                    .iter()
                    .map(|_| format!("{}/{}", outputs::PRIOR, outputs::VAL_SCORES)),
            )
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
        prior: prior_row,
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
        "prior_seconds": prior_record.as_ref().map(|r| r.seconds),
        "ensemble_policy_report_seconds": t_ensemble.elapsed().as_secs_f64(),
        "this_invocation_seconds": started.elapsed().as_secs_f64(),
    });
    write_json(&out.join(outputs::TIMINGS), &timings)?;
    Ok(report)
}

/// A blend of score files and its weights (see [`fit_blend`]).
#[derive(Debug, Clone)]
pub struct Blend {
    /// Normalised weights, one per input file.
    pub weights: Vec<f64>,
    /// Whether they were fitted on validation (else fixed).
    pub fitted: bool,
    pub val: ScoreFile,
    pub test: ScoreFile,
}

/// Blends `val` and `test` (one file per member, in the same order) with `spec`'s fixed
/// weights, or with weights fitted on the validation files against `labels` (coordinate
/// search maximising the best top-K samples-F1, K <= `max_k`). `model` names the blend.
pub fn fit_blend(
    val: &[ScoreFile],
    test: &[ScoreFile],
    labels: &Solution,
    spec: &EnsembleSpec,
    max_k: usize,
    model: &str,
) -> Result<Blend, TrainError> {
    let metrics = |e: geolife_metrics::MetricsError| TrainError::Metrics(e.to_string());
    let (weights, fitted) = match &spec.weights {
        Some(w) => {
            let s: f64 = w.iter().sum();
            (w.iter().map(|x| x / s).collect::<Vec<_>>(), false)
        }
        None => {
            let target = FitTarget::BestTopK { max_k };
            let fitted = fit_weights(val, labels, spec.method, &target).map_err(metrics)?;
            (fitted.weights, true)
        }
    };
    let (val, _) = blend(val, &weights, spec.method).map_err(metrics)?;
    let (test, _) = blend(test, &weights, spec.method).map_err(metrics)?;
    Ok(Blend {
        weights,
        fitted,
        val: ScoreFile {
            model: model.into(),
            ..val
        },
        test: ScoreFile {
            model: model.into(),
            ..test
        },
    })
}

/// The presence-only file the prior reads: `None` when its PO source is off; `po_file` when
/// given, else the dataset root's. An error names the file expected when there is none.
pub fn prior_po_file(
    spec: &PriorSpec,
    data_root: Option<&Path>,
) -> Result<Option<PathBuf>, TrainError> {
    if !spec.config.po.enabled {
        return Ok(None);
    }
    let path = match (&spec.po_file, data_root) {
        (Some(f), _) => f.clone(),
        (None, Some(root)) => root.join(geolife_data::layout::PO_METADATA_TRAIN),
        (None, None) => {
            return Err(TrainError::Invalid(format!(
                "prior.po is on but --data is a packed cache, which keeps no presence-only \
                 records: pass the dataset root as --data (its {} is read), name the file \
                 with `po_file` under [prior], or set `prior.po.enabled = false`",
                geolife_data::layout::PO_METADATA_TRAIN
            )));
        }
    };
    if !path.is_file() {
        return Err(TrainError::Invalid(format!(
            "prior.po is on but the presence-only file {} does not exist: name another with \
             `po_file` under [prior], or set `prior.po.enabled = false`",
            path.display()
        )));
    }
    Ok(Some(path))
}

/// The prior member's validation and test scores. Validation: the train surveys `val_ids`
/// (exactly those), scored from the other train surveys only (`Target::Val`: no validation
/// label reaches a validation score). Test: the `test` surveys, scored from every train
/// survey. `po`: the presence-only records (visible to both; they are not PA labels).
pub fn prior_scores(
    cfg: &PriorConfig,
    train: &CachedSurveys,
    test: &[SurveyMeta],
    val_ids: &[u64],
    po: Option<&PoRecords>,
) -> Result<(ScoreFile, ScoreFile), TrainError> {
    let prior = |e: geolife_prior::PriorError| TrainError::Invalid(format!("prior: {e}"));
    let none = || {};
    let val = geolife_prior::score_split(cfg, train.as_train(), Target::Val(val_ids), po, &none)
        .map_err(prior)?;
    let test = geolife_prior::score_split(cfg, train.as_train(), Target::Test(test), po, &none)
        .map_err(prior)?;
    Ok((val, test))
}

/// The prior member's score files in `dir`: read back when `prior.json` says both are
/// written, else computed from the cache (and the PO file) and written atomically.
fn prior_member(
    spec: &PriorSpec,
    po_file: Option<&Path>,
    cache: &Path,
    val_ids: &[u64],
    dir: &Path,
) -> Result<(ScoreFile, ScoreFile, PriorRecord), TrainError> {
    let done = dir.join(outputs::PRIOR_DONE);
    let val_path = dir.join(outputs::VAL_SCORES);
    let test_path = dir.join(outputs::TEST_SCORES);
    let metrics = |path: &Path| {
        let path = path.to_path_buf();
        move |e: geolife_metrics::MetricsError| {
            TrainError::Metrics(format!("{}: {e}", path.display()))
        }
    };
    if done.is_file() {
        let record: PriorRecord = read_json(&done)?;
        let val = ScoreFile::read(&val_path).map_err(metrics(&val_path))?;
        let test = ScoreFile::read(&test_path).map_err(metrics(&test_path))?;
        return Ok((val, test, record));
    }
    let t = Instant::now();
    let po = match po_file {
        Some(f) => Some(
            PoRecords::read(f, |_| {})
                .map_err(|e| TrainError::Invalid(format!("prior: {}: {e}", f.display())))?,
        ),
        None => None,
    };
    let train = CachedSurveys::of(&PackedSplit::open(cache, Split::Train)?);
    let test_surveys = CachedSurveys::of(&PackedSplit::open(cache, Split::Test)?).surveys;
    let (val, test) = prior_scores(&spec.config, &train, &test_surveys, val_ids, po.as_ref())?;
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    val.write(&val_path).map_err(metrics(&val_path))?;
    test.write(&test_path).map_err(metrics(&test_path))?;
    let record = PriorRecord {
        n_val_surveys: val.len(),
        n_test_surveys: test.len(),
        n_species: val.species.len().max(test.species.len()),
        n_train_surveys: train.surveys.len(),
        po_records: po.as_ref().map_or(0, PoRecords::len),
        po_file: po_file.map(Path::to_path_buf),
        seconds: t.elapsed().as_secs_f64(),
    };
    write_json(&done, &record)?;
    Ok((val, test, record))
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
    for row in r.members.iter().chain(&r.prior).chain([&r.ensemble]) {
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
        .chain(&r.prior)
        .chain([&r.ensemble])
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
        // The tiny pipeline blends the prior too, its PO file from the dataset root.
        let prior = r.prior.as_ref().unwrap();
        assert_eq!((prior.sources(), prior.po_file.as_ref()), ("pa+po", None));
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

    /// A survey at (lon 0, `lat`) with these labels.
    fn site(id: u64, lat: f64) -> SurveyMeta {
        SurveyMeta {
            survey_id: id,
            lon: 0.0,
            lat,
            ..SurveyMeta::default()
        }
    }

    /// The dense row of survey `id` as (species id, score) pairs.
    fn row_of(f: &ScoreFile, id: u64) -> Vec<(u32, f32)> {
        let i = f.survey_ids.iter().position(|&s| s == id).unwrap();
        let v = f.species.len();
        match &f.scores {
            geolife_metrics::Scores::Dense { data } => f
                .species
                .iter()
                .copied()
                .zip(data[i * v..(i + 1) * v].iter().copied())
                .collect(),
            other => panic!("expected dense scores, got {}", other.kind()),
        }
    }

    fn close(got: &[(u32, f32)], want: &[(u32, f32)]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                g.0 == w.0 && (g.1 - w.1).abs() < 1e-6,
                "{got:?} vs {want:?}"
            );
        }
    }

    /// Four train surveys within about a kilometre of each other: A and B in the training
    /// part, V and W (ids 3, 4) in validation, each holding a species nobody else holds (99 and
    /// 98). With a uniform kernel and no pseudo-count a PA score is the share of pool
    /// surveys holding the species, so the golden values below are counts.
    fn four_sites() -> CachedSurveys {
        CachedSurveys {
            surveys: vec![site(1, 0.0), site(2, 0.01), site(3, 0.005), site(4, 0.006)],
            labels: vec![vec![10, 20], vec![20, 30], vec![99], vec![10, 98]],
        }
    }

    fn uniform_pa_only() -> PriorConfig {
        let mut cfg = PriorConfig::default();
        cfg.pa.kernel = geolife_prior::Kernel::Uniform;
        cfg.po.enabled = false;
        cfg.top = 0;
        cfg
    }

    #[test]
    fn prior_validation_scores_never_see_validation_labels() {
        let train = four_sites();
        let test = [site(100, 0.003)];
        let (val, test) = prior_scores(&uniform_pa_only(), &train, &test, &[4, 3], None).unwrap();
        // Exactly the validation surveys, and every train species as a column.
        let mut ids = val.survey_ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, [3, 4]);
        assert_eq!((val.split.as_str(), test.split.as_str()), ("val", "test"));
        assert_eq!(val.species, [10, 20, 30, 98, 99]);
        // V and W see only A {10, 20} and B {20, 30}: 10 in 1 of 2, 20 in 2 of 2, 30 in 1 of 2;
        // their own species (99, 98) and each other's are 0.
        for id in [3, 4] {
            close(
                &row_of(&val, id),
                &[(10, 0.5), (20, 1.0), (30, 0.5), (98, 0.0), (99, 0.0)],
            );
        }
        // A test survey sees all four: 10 in A and W, 20 in A and B, 30, 98, 99 once each.
        close(
            &row_of(&test, 100),
            &[(10, 0.5), (20, 0.5), (30, 0.25), (98, 0.25), (99, 0.25)],
        );
    }

    #[test]
    fn prior_presence_only_records_reach_validation_and_test() {
        let train = four_sites();
        // Three records of species 10 and one of 99, all within a kilometre or so.
        let po = PoRecords::from_places([
            (0.0, 0.004, 10),
            (0.0, 0.005, 10),
            (0.0, 0.006, 10),
            (0.0, 0.005, 99),
        ]);
        let mut cfg = uniform_pa_only();
        cfg.pa.enabled = false;
        cfg.po.enabled = true;
        cfg.po.kernel = geolife_prior::Kernel::Uniform;
        cfg.po.debias = false;
        cfg.po.pseudo_count = 0.0;
        let (val, test) =
            prior_scores(&cfg, &train, &[site(100, 0.003)], &[3, 4], Some(&po)).unwrap();
        // Plain shares 3/4 and 1/4, times the pool's mean species count: the validation pool
        // (A, B) holds 4 labels on 2 surveys (2), the test pool 7 on 4 (1.75).
        close(
            &row_of(&val, 3),
            &[(10, 1.5), (20, 0.0), (30, 0.0), (98, 0.0), (99, 0.5)],
        );
        close(
            &row_of(&test, 100),
            &[(10, 1.3125), (20, 0.0), (30, 0.0), (98, 0.0), (99, 0.4375)],
        );
    }

    #[test]
    fn prior_validation_surveys_must_be_train_surveys() {
        let e = prior_scores(&uniform_pa_only(), &four_sites(), &[], &[3, 7], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("validation survey 7"), "{e}");
    }

    const TWO: &str = "[[member]]\nname = \"a\"\nconfig = \"tiny.toml\"\n[[member]]\nname = \"b\"\nconfig = \"tiny.toml\"\n";

    fn load(text: &str) -> Result<PipelineConfig, String> {
        PipelineConfig::from_toml_str(text, Path::new("dir/p.toml")).map_err(|e| match e {
            TrainError::Config { key, message, .. } => format!("{key}: {message}"),
            e => panic!("{e}"),
        })
    }

    #[test]
    fn prior_table_parses_and_round_trips_through_the_resolved_pipeline() {
        let cfg = load(&format!(
            "{TWO}[prior]\npo_weight = 0.3\npo_file = \"po.csv\"\n[prior.pa]\nk = 7\nkernel = \"uniform\"\n[prior.po]\nradius_km = 5.0\n"
        ))
        .unwrap();
        let spec = cfg.prior.clone().unwrap();
        assert_eq!(spec.config.po_weight, 0.3);
        assert_eq!(spec.config.pa.k, 7);
        assert_eq!(spec.config.pa.kernel, geolife_prior::Kernel::Uniform);
        assert_eq!(spec.config.po.radius_km, 5.0);
        assert_eq!(spec.config.top, PriorConfig::default().top);
        assert_eq!(spec.sources(), "pa+po");
        // Written into pipeline.toml and read back unchanged (the resume check compares them).
        let resolved = ResolvedPipeline {
            ensemble: cfg.ensemble.clone(),
            policy: cfg.policy.clone(),
            predict: cfg.predict.clone(),
            prior: Some(spec),
            members: vec![ResolvedMember {
                name: "a".into(),
                config: TrainConfig::tiny(),
            }],
        };
        let text = toml::to_string_pretty(&resolved).unwrap();
        assert_eq!(toml::from_str::<ResolvedPipeline>(&text).unwrap(), resolved);
        // Without [prior], pipeline.toml has no prior table (folders of earlier versions match).
        let none = ResolvedPipeline {
            prior: None,
            ..resolved
        };
        let text = toml::to_string_pretty(&none).unwrap();
        assert!(!text.contains("\n[prior"), "{text}");
        assert_eq!(toml::from_str::<ResolvedPipeline>(&text).unwrap(), none);
    }

    #[test]
    fn bad_prior_tables_are_refused_by_key() {
        let e = load(&format!("{TWO}[prior.pa]\nbandwith_km = 5.0\n")).unwrap_err();
        assert!(
            e.starts_with("prior.pa.bandwith_km:") && e.contains("did you mean `bandwidth_km`"),
            "{e}"
        );
        let e = load(&format!("{TWO}[prior]\npo_fil = \"x.csv\"\n")).unwrap_err();
        assert!(
            e.starts_with("prior.po_fil:") && e.contains("did you mean `po_file`"),
            "{e}"
        );
        let e = load(&format!("{TWO}[prior.po]\nkernel = \"gausian\"\n")).unwrap_err();
        assert!(
            e.starts_with("prior.po.kernel:")
                && e.contains("did you mean `gaussian`")
                && e.contains("uniform"),
            "{e}"
        );
        let e = load(&format!("{TWO}[prior.pa]\nk = 0\n")).unwrap_err();
        assert!(e.starts_with("prior.pa.k:"), "{e}");
        let e = load(&format!("{TWO}[prior]\npo_weight = 1.5\n")).unwrap_err();
        assert!(e.starts_with("prior.po_weight:"), "{e}");
        // A cache keeps no years or regions.
        let e = load(&format!("{TWO}[prior.pa]\nsame_region = true\n")).unwrap_err();
        assert!(
            e.starts_with("prior.pa.same_region:") && e.contains("packed cache"),
            "{e}"
        );
        // With a prior, fixed weights are one per member and then the prior's.
        let e = load(&format!("{TWO}[ensemble]\nweights = [0.5, 0.5]\n[prior]\n")).unwrap_err();
        assert!(
            e.starts_with("ensemble.weights:") && e.contains("and the prior"),
            "{e}"
        );
        assert!(
            load(&format!(
                "{TWO}[ensemble]\nweights = [0.4, 0.4, 0.2]\n[prior]\n"
            ))
            .is_ok()
        );
        let e =
            load("[[member]]\nname = \"prior\"\nconfig = \"tiny.toml\"\n[prior]\n").unwrap_err();
        assert!(e.starts_with("member.name:"), "{e}");
    }

    #[test]
    fn the_prior_reads_the_po_file_named_or_the_dataset_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let pipeline = root.join("p.toml");
        let cfg = PipelineConfig::from_toml_str(
            "[[member]]\nname = \"a\"\nconfig = \"m.toml\"\n[prior]\npo_file = \"po/x.csv\"\n",
            &pipeline,
        )
        .unwrap();
        // A relative po_file is relative to the pipeline file.
        let named = cfg.prior.clone().map(|mut s| {
            s.po_file = s.po_file.map(|f| root.join(f));
            s
        });
        let named = named.unwrap();
        assert_eq!(
            named.po_file.as_deref(),
            Some(root.join("po/x.csv").as_path())
        );
        let e = prior_po_file(&named, None).unwrap_err().to_string();
        assert!(
            e.contains(&root.join("po/x.csv").display().to_string()),
            "{e}"
        );
        std::fs::create_dir_all(root.join("po")).unwrap();
        std::fs::write(root.join("po/x.csv"), "").unwrap();
        assert_eq!(
            prior_po_file(&named, Some(Path::new("/elsewhere"))).unwrap(),
            Some(root.join("po/x.csv"))
        );
        // No po_file: the dataset root's file, and an error naming it when it is absent.
        let plain = PriorSpec::new(PriorConfig::default());
        let expected = root.join(geolife_data::layout::PO_METADATA_TRAIN);
        let e = prior_po_file(&plain, Some(root)).unwrap_err().to_string();
        assert!(e.contains(&expected.display().to_string()), "{e}");
        std::fs::write(&expected, "").unwrap();
        assert_eq!(prior_po_file(&plain, Some(root)).unwrap(), Some(expected));
        // From a cache alone there is no PO file to read.
        let e = prior_po_file(&plain, None).unwrap_err().to_string();
        assert!(e.contains("po_file") && e.contains("packed cache"), "{e}");
        // With the PO source off nothing is read.
        let mut off = plain.clone();
        off.config.po.enabled = false;
        assert_eq!(prior_po_file(&off, None).unwrap(), None);
    }
}
