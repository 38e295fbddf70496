//! The pipeline file (`configs/pipeline-*.toml`): its members, ensemble, policy, predict and
//! `[prior]` tables, checked by key, `--set` overrides, and the resolved pipeline saved as
//! `pipeline.toml` (kept apart from running so a config error fails before anything trains).

use std::path::{Path, PathBuf};

use geolife_metrics::{BlendMethod, PolicyChoice};
use geolife_prior::{PriorConfig, PriorSource};
use serde::{Deserialize, Serialize};

use super::outputs;
use crate::config::{TrainConfig, ValidationSection, did_you_mean, merge_toml};
use crate::error::TrainError;

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
    #[serde(default)]
    pub report: ReportSpec,
}

/// `[report]`: what the report shows besides the members, the prior and the ensemble.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Comparison rows (not blended, no effect on the submission): the species-frequency
    /// baseline; with a two-source `[prior]`, each source alone and the first member blended
    /// with the prior (weights fitted on validation).
    #[serde(default)]
    pub comparisons: bool,
}

/// `[prior]`: the location prior as a blend member named `prior`. Its keys are those of
/// `geolife prior --config` ([`PriorConfig`]: `po_weight`, `top`, `[prior.pa]`, `[prior.po]`),
/// plus `po_file`. Years and regions are not in a packed cache, so `pa.same_year` and
/// `pa.same_region` are refused here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "toml::Table", into = "toml::Table")]
pub struct PriorSpec(
    /// The settings and `po_file`: the presence-only CSV (`GLC24_P0_metadata_train.csv`
    /// layout), relative to the pipeline file; absent: the file of that name in the dataset
    /// root given as `--data` (a packed cache does not keep presence-only records). Not read
    /// when `po.enabled = false`.
    pub PriorSource,
);

impl std::ops::Deref for PriorSpec {
    type Target = PriorSource;

    fn deref(&self) -> &PriorSource {
        &self.0
    }
}

impl std::ops::DerefMut for PriorSpec {
    fn deref_mut(&mut self) -> &mut PriorSource {
        &mut self.0
    }
}

/// Keys of `[prior]` beside those of [`PriorConfig`].
const PRIOR_PO_FILE: &str = geolife_prior::source::PO_FILE_KEY;

impl PriorSpec {
    /// The default prior (both sources; PO from the dataset root).
    pub fn new(config: PriorConfig) -> Self {
        Self(PriorSource::new(config))
    }

    /// Refuses what cannot work, by key (`prior.pa.k`, ...): the prior's own checks, and the
    /// same-year / same-region restrictions that a packed cache cannot serve.
    pub fn validate(&self, path: &Path) -> Result<(), TrainError> {
        let by_key = |e: geolife_prior::PriorError| match e {
            geolife_prior::PriorError::Key { key, message } => config_err(path, &key, message),
            other => config_err(path, "prior", other.to_string()),
        };
        self.config.validate().map_err(by_key)?;
        geolife_prior::check_cache_config(&self.config).map_err(by_key)
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
        Ok(Self(PriorSource { config, po_file }))
    }
}

impl From<PriorSpec> for toml::Table {
    fn from(spec: PriorSpec) -> toml::Table {
        let mut table = match toml::Value::try_from(&spec.config) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        if let Some(p) = spec.0.po_file {
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
    #[serde(default, skip_serializing_if = "is_default")]
    pub report: ReportSpec,
    #[serde(rename = "member")]
    pub members: Vec<ResolvedMember>,
}

/// A member's name and full training config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResolvedMember {
    pub name: String,
    pub config: TrainConfig,
}

/// For `skip_serializing_if`: an absent table reads back as its default.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

pub(super) fn config_err(path: &Path, key: &str, message: String) -> TrainError {
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
            spec.po_file = spec.po_file.take().map(|f| dir.join(f));
            spec
        });
        Ok(ResolvedPipeline {
            ensemble: self.ensemble.clone(),
            policy: self.policy.clone(),
            predict: self.predict.clone(),
            prior,
            report: self.report.clone(),
            members,
        })
    }
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
            report: Default::default(),
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
}
