//! Dataset inspection behind `geolife inspect`: per-split counts, modality coverage, NaN/inf
//! counts per tabular feature, what each environmental CSV holds beyond one row per survey
//! (missing surveys, repeated rows, unknown surveys; conflicting rows are failures) and every
//! file that fails to parse; and one survey's full
//! record as JSON (non-finite numbers encoded as the strings "NaN", "inf", "-inf").

use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::cubes::{BIOCLIM_SHAPE, LANDSAT_SHAPE, read_cube};
use crate::env::{EnvCoverage, EnvGroup, read_tabular};
use crate::layout::{CubeKind, PatchKind, env_csv};
use crate::patches::{PATCH_SIZE, channel_means, read_nir, read_rgb, stack_chw};
use crate::{DataError, Dataset, Result, Split};

/// The four per-survey file modalities, in report order.
pub const MODALITIES: [&str; 4] = ["landsat", "bioclim", "rgb", "nir"];

/// What to inspect.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// Check only this many surveys per split (evenly spaced by index); `None` = all.
    pub sample: Option<usize>,
    /// Splits to inspect (default: both; a split without metadata is reported as absent).
    pub splits: Vec<Split>,
}

/// NaN/inf counts of one tabular feature.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeatureCounts {
    pub name: String,
    pub nan: usize,
    pub pos_inf: usize,
    pub neg_inf: usize,
}

/// One environmental CSV of a split.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnvReport {
    pub group: String,
    pub path: String,
    pub present: bool,
    /// Surveys of the split without a row in this CSV (their features are NaN).
    pub missing_rows: usize,
    /// Those surveys, ascending.
    pub missing_surveys: Vec<u64>,
    /// Rows repeating an earlier row of the same survey with the same values (ignored).
    pub exact_duplicate_rows: usize,
    /// Rows of surveys the split's metadata does not hold (ignored).
    pub unknown_survey_rows: usize,
    /// The first of those as (survey id, line).
    pub unknown_survey_examples: Vec<(u64, u64)>,
    /// Surveys with rows that disagree (each also listed in `failures`).
    pub conflicting_surveys: usize,
}

/// Files of one modality among the checked surveys.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModalityCount {
    pub modality: String,
    /// Surveys whose file exists.
    pub present: usize,
    /// Surveys whose file exists but fails to parse.
    pub failed: usize,
}

/// A file that exists but does not parse (or a table that does not).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    pub survey: Option<u64>,
    pub modality: String,
    /// Stable error kind ([`DataError::kind`]).
    pub kind: String,
    pub reason: String,
}

/// Inspection of one split.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SplitReport {
    pub split: String,
    /// The split's metadata CSV exists.
    pub present: bool,
    pub surveys: usize,
    pub rows: usize,
    pub duplicate_rows: usize,
    /// Surveys whose metadata rows disagree on a survey field (each also in `failures`).
    pub conflicting_surveys: usize,
    /// Distinct species (train only).
    pub species: Option<usize>,
    /// Surveys whose files were checked (all, or `--sample`).
    pub checked: usize,
    pub modalities: Vec<ModalityCount>,
    pub env: Vec<EnvReport>,
    pub features: Vec<FeatureCounts>,
    pub failures: Vec<Failure>,
}

/// The whole inspection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub root: String,
    pub presence_only_present: bool,
    pub splits: Vec<SplitReport>,
}

impl Report {
    /// Total failures over all splits.
    pub fn n_failures(&self) -> usize {
        self.splits.iter().map(|s| s.failures.len()).sum()
    }

    /// Parts that a full training run needs but are absent (for `--strict`), as messages.
    pub fn incomplete(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.splits {
            if !s.present {
                out.push(format!("{} split: metadata CSV absent", s.split));
                continue;
            }
            for e in s.env.iter().filter(|e| !e.present) {
                out.push(format!(
                    "{} split: {} CSV absent (expected at {})",
                    s.split, e.group, e.path
                ));
            }
            for e in s.env.iter().filter(|e| e.present && e.missing_rows > 0) {
                out.push(format!(
                    "{} split: {} surveys have no row in the {} CSV {} ({})",
                    s.split,
                    e.missing_rows,
                    e.group,
                    e.path,
                    id_list(&e.missing_surveys)
                ));
            }
            for e in s.env.iter().filter(|e| e.unknown_survey_rows > 0) {
                out.push(format!(
                    "{} split: {} rows of the {} CSV {} name surveys not in the metadata ({})",
                    s.split,
                    e.unknown_survey_rows,
                    e.group,
                    e.path,
                    id_list(
                        &e.unknown_survey_examples
                            .iter()
                            .map(|x| x.0)
                            .collect::<Vec<_>>()
                    )
                ));
            }
            for m in &s.modalities {
                if m.present < s.checked {
                    out.push(format!(
                        "{} split: {} file absent for {} of {} checked surveys",
                        s.split,
                        m.modality,
                        s.checked - m.present,
                        s.checked
                    ));
                }
            }
        }
        out
    }
}

/// Up to 10 survey ids as text (`survey 1, 2, ... (+N more)`).
pub fn id_list(ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(10).map(u64::to_string).collect();
    let more = if ids.len() > 10 {
        format!(" (+{} more)", ids.len() - 10)
    } else {
        String::new()
    };
    let s = if ids.len() == 1 { "" } else { "s" };
    format!("survey{s} {}{more}", shown.join(", "))
}

/// Inspects `splits` of `ds`; `tick` is called once per checked survey (for a progress bar).
pub fn inspect(ds: &Dataset, opts: &InspectOptions, tick: &(dyn Fn() + Sync)) -> Report {
    let splits = if opts.splits.is_empty() {
        Split::ALL.to_vec()
    } else {
        opts.splits.clone()
    };
    Report {
        root: ds.root().display().to_string(),
        presence_only_present: ds.layout().po,
        splits: splits
            .into_iter()
            .map(|s| inspect_split(ds, s, opts.sample, tick))
            .collect(),
    }
}

/// Survey ids to check: all, or `n` evenly spaced.
pub fn sample_ids(ids: &[u64], n: Option<usize>) -> Vec<u64> {
    match n {
        Some(n) if n < ids.len() => (0..n).map(|k| ids[k * ids.len() / n]).collect(),
        _ => ids.to_vec(),
    }
}

fn inspect_split(
    ds: &Dataset,
    split: Split,
    sample: Option<usize>,
    tick: &(dyn Fn() + Sync),
) -> SplitReport {
    let Ok(meta) = ds.metadata(split) else {
        return SplitReport {
            split: split.to_string(),
            present: false,
            surveys: 0,
            rows: 0,
            duplicate_rows: 0,
            conflicting_surveys: 0,
            species: None,
            checked: 0,
            modalities: Vec::new(),
            env: Vec::new(),
            features: Vec::new(),
            failures: Vec::new(),
        };
    };
    let ids: Vec<u64> = meta.surveys.iter().map(|s| s.survey_id).collect();
    let mut failures = Vec::new();
    let meta_path = ds.root().join(crate::layout::metadata_csv(split));
    for c in &meta.conflicts {
        failures.push(failure(
            Some(c.survey_id),
            "metadata",
            &c.to_error(&meta_path),
        ));
    }

    // Tabular: each group on its own, so one bad or absent CSV does not hide the others.
    let mut env = Vec::new();
    let mut features = Vec::new();
    for &g in &ds.options().env_groups {
        let rel = env_csv(g, split);
        let path = ds.root().join(&rel);
        let present = path.is_file();
        let mut cov = EnvCoverage::default();
        if present {
            match read_tabular(&[g], &ids, |_| Ok(path.clone())) {
                Ok(t) => {
                    if let Some(c) = t.coverage.first() {
                        cov = c.clone();
                    }
                    for c in &cov.conflicts {
                        failures.push(failure(Some(c.survey_id), g.name(), &c.to_error(&path)));
                    }
                    let f = t.n_features();
                    for (j, name) in t.feature_names.iter().enumerate() {
                        let col = (0..ids.len()).map(|i| t.values[i * f + j]);
                        let mut c = FeatureCounts {
                            name: name.clone(),
                            nan: 0,
                            pos_inf: 0,
                            neg_inf: 0,
                        };
                        for v in col {
                            if v.is_nan() {
                                c.nan += 1;
                            } else if v == f32::INFINITY {
                                c.pos_inf += 1;
                            } else if v == f32::NEG_INFINITY {
                                c.neg_inf += 1;
                            }
                        }
                        features.push(c);
                    }
                }
                Err(e) => failures.push(failure(None, g.name(), &e)),
            }
        }
        env.push(EnvReport {
            group: g.name().into(),
            path: rel.display().to_string(),
            present,
            missing_rows: cov.missing_surveys.len(),
            missing_surveys: cov.missing_surveys,
            exact_duplicate_rows: cov.exact_duplicate_rows,
            unknown_survey_rows: cov.unknown_survey_rows,
            unknown_survey_examples: cov.unknown_survey_examples,
            conflicting_surveys: cov.conflicts.len(),
        });
    }

    // Per-survey files, in parallel.
    let checked = sample_ids(&ids, sample);
    let outcomes: Vec<[Outcome; 4]> = checked
        .par_iter()
        .map(|&id| {
            let r = check_survey(ds, split, id);
            tick();
            r
        })
        .collect();
    let mut modalities: Vec<ModalityCount> = MODALITIES
        .iter()
        .map(|m| ModalityCount {
            modality: (*m).into(),
            present: 0,
            failed: 0,
        })
        .collect();
    for (id, o) in checked.iter().zip(outcomes) {
        for (k, outcome) in o.into_iter().enumerate() {
            match outcome {
                Outcome::Absent => {}
                Outcome::Ok => modalities[k].present += 1,
                Outcome::Failed(e) => {
                    modalities[k].present += 1;
                    modalities[k].failed += 1;
                    failures.push(failure(Some(*id), MODALITIES[k], &e));
                }
            }
        }
    }
    SplitReport {
        split: split.to_string(),
        present: true,
        surveys: meta.surveys.len(),
        rows: meta.rows,
        duplicate_rows: meta.duplicate_rows,
        conflicting_surveys: meta.conflicts.len(),
        species: meta.labels.as_ref().map(|_| meta.n_species()),
        checked: checked.len(),
        modalities,
        env,
        features,
        failures,
    }
}

fn failure(survey: Option<u64>, modality: &str, e: &DataError) -> Failure {
    Failure {
        survey,
        modality: modality.into(),
        kind: e.kind().into(),
        reason: geolife_io::error_text(e),
    }
}

enum Outcome {
    Absent,
    Ok,
    Failed(DataError),
}

fn outcome<T>(r: Result<T>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::Failed(e),
    }
}

fn check_survey(ds: &Dataset, split: Split, id: u64) -> [Outcome; 4] {
    let cube = |kind: CubeKind| match ds.cube_path(kind, split, id) {
        Err(_) => Outcome::Absent,
        Ok(p) => {
            let shape: &[usize] = if kind == CubeKind::Landsat {
                &LANDSAT_SHAPE
            } else {
                &BIOCLIM_SHAPE
            };
            outcome(read_cube(&p, Some(id), shape, ds.options().cube_nan))
        }
    };
    let patch = |kind: PatchKind| {
        let p = ds.patch_path(kind, split, id);
        if !p.is_file() {
            return Outcome::Absent;
        }
        match kind {
            PatchKind::Rgb => outcome(read_rgb(&p, Some(id))),
            PatchKind::Nir => outcome(read_nir(&p, Some(id))),
        }
    };
    [
        cube(CubeKind::Landsat),
        cube(CubeKind::Bioclim),
        patch(PatchKind::Rgb),
        patch(PatchKind::Nir),
    ]
}

/// A JSON number, or "NaN" / "inf" / "-inf" for non-finite values (JSON has none).
pub fn json_number(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v == f64::INFINITY {
        json!("inf")
    } else if v == f64::NEG_INFINITY {
        json!("-inf")
    } else {
        json!(v)
    }
}

fn json_cube(shape: &[usize], values: &[f32]) -> Value {
    json!({
        "shape": shape,
        "values": values.iter().map(|&v| json_number(v as f64)).collect::<Vec<_>>(),
    })
}

/// One survey's full record. Parts that cannot be read are `null`, with the reason under
/// `"errors"`; an unknown survey id is an error.
pub fn survey_record(ds: &Dataset, split: Split, survey_id: u64) -> Result<Value> {
    let meta = ds.metadata(split)?;
    let i = meta
        .index_of(survey_id)
        .ok_or_else(|| DataError::UnknownSurvey {
            path: ds.root().join(crate::layout::metadata_csv(split)),
            survey: survey_id,
            what: format!("not in the {split} metadata"),
        })?;
    let s = &meta.surveys[i];
    let mut errors = Map::new();
    let mut rec = Map::new();
    rec.insert("survey_id".into(), json!(s.survey_id));
    rec.insert("split".into(), json!(split.to_string()));
    rec.insert("lon".into(), json_number(s.lon));
    rec.insert("lat".into(), json_number(s.lat));
    rec.insert("year".into(), json!(s.year));
    rec.insert(
        "geo_uncertainty_m".into(),
        s.geo_uncertainty_m.map_or(Value::Null, json_number),
    );
    rec.insert("area_m2".into(), s.area_m2.map_or(Value::Null, json_number));
    rec.insert("region".into(), json!(s.region));
    rec.insert("country".into(), json!(s.country));
    rec.insert(
        "species".into(),
        meta.labels.as_ref().map_or(Value::Null, |l| json!(l[i])),
    );
    if let Some(c) = meta.conflicts.iter().find(|c| c.survey_id == survey_id) {
        let p = ds.root().join(crate::layout::metadata_csv(split));
        errors.insert("metadata".into(), json!(c.to_error(&p).to_string()));
    }
    let mut env_rows_missing = Vec::new();
    let tabular = match ds.tabular_report(split) {
        Ok(t) => {
            let conflict = t.coverage.iter().find_map(|cov| {
                cov.conflicts
                    .iter()
                    .find(|c| c.survey_id == survey_id)
                    .map(|c| c.to_error(&cov.path))
            });
            for cov in &t.coverage {
                if cov.missing_surveys.binary_search(&survey_id).is_ok() {
                    env_rows_missing.push(json!(cov.group));
                }
            }
            match conflict {
                Some(e) => {
                    errors.insert("tabular".into(), json!(geolife_io::error_text(&e)));
                    Value::Null
                }
                None => {
                    let m: Map<String, Value> = t
                        .feature_names
                        .iter()
                        .zip(t.row(i))
                        .map(|(n, &v)| (n.clone(), json_number(v as f64)))
                        .collect();
                    Value::Object(m)
                }
            }
        }
        Err(e) => {
            errors.insert("tabular".into(), json!(geolife_io::error_text(&e)));
            Value::Null
        }
    };
    // Env groups whose CSV has no row for this survey (its features there are NaN).
    rec.insert("env_rows_missing".into(), Value::Array(env_rows_missing));
    rec.insert("tabular".into(), tabular);
    let landsat = ds
        .read_landsat(split, survey_id)
        .map(|v| json_cube(&LANDSAT_SHAPE, &v));
    let bioclim = ds
        .read_bioclim(split, survey_id)
        .map(|v| json_cube(&BIOCLIM_SHAPE, &v));
    for (name, r) in [("landsat", landsat), ("bioclim", bioclim)] {
        let v = r.unwrap_or_else(|e| {
            errors.insert(name.into(), json!(geolife_io::error_text(&e)));
            Value::Null
        });
        rec.insert(name.into(), v);
    }
    let rgb = read_rgb(
        &ds.patch_path(PatchKind::Rgb, split, survey_id),
        Some(survey_id),
    );
    let nir = read_nir(
        &ds.patch_path(PatchKind::Nir, split, survey_id),
        Some(survey_id),
    );
    let hw = PATCH_SIZE;
    rec.insert(
        "rgb_shape".into(),
        if rgb.is_ok() {
            json!([hw, hw, 3])
        } else {
            Value::Null
        },
    );
    rec.insert(
        "nir_shape".into(),
        if nir.is_ok() {
            json!([hw, hw])
        } else {
            Value::Null
        },
    );
    let means = match (&rgb, &nir) {
        (Ok(r), Ok(n)) => json!(channel_means(&stack_chw(r, n))),
        _ => Value::Null,
    };
    rec.insert("patch_channel_means".into(), means);
    for (name, r) in [("rgb", rgb.err()), ("nir", nir.err())] {
        if let Some(e) = r {
            errors.insert(name.into(), json!(geolife_io::error_text(&e)));
        }
    }
    rec.insert("errors".into(), Value::Object(errors));
    Ok(Value::Object(rec))
}

/// The env groups named in a comma-separated list (`bioclim,elevation,...` or `seed`).
pub fn parse_env_groups(list: &str) -> Result<Vec<EnvGroup>> {
    if list.trim().eq_ignore_ascii_case("seed") {
        return Ok(EnvGroup::SEED.to_vec());
    }
    list.split(',').map(|s| s.trim().parse()).collect()
}
