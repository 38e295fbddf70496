//! Environmental CSVs merged on `surveyId` by column name into the tabular feature vector:
//! the seed's 46 features (Bio1..19, Elevation, 16 HumanFootprint, 9 SoilGrids, LandCover) by
//! default, the 912 monthly climate columns as an option. Values are kept raw (NaN/inf kept).
//! What a CSV holds beyond one row per survey (missing surveys, repeated or conflicting rows,
//! rows of unknown surveys) is counted in [`EnvCoverage`], never dropped silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::csvutil::{CsvFile, Row, csv_err, survey_of};
use crate::error::RowConflict;
use crate::{DataError, Result};

/// The 19 bioclimatic averages.
pub const BIOCLIM_COLUMNS: [&str; 19] = [
    "Bio1", "Bio2", "Bio3", "Bio4", "Bio5", "Bio6", "Bio7", "Bio8", "Bio9", "Bio10", "Bio11",
    "Bio12", "Bio13", "Bio14", "Bio15", "Bio16", "Bio17", "Bio18", "Bio19",
];
/// The elevation column.
pub const ELEVATION_COLUMNS: [&str; 1] = ["Elevation"];
/// The 16 human-footprint columns, in the official CSV's header order as public GLC24 code
/// lists it (not alphabetical: `croplands` after `Built`, the `HFP` totals last). geolife reads
/// the order from each file's own header ([`group_columns`]); this list is the set it requires,
/// the order `synth` writes and the order [`official_feature_names`] records.
pub const HUMAN_FOOTPRINT_COLUMNS: [&str; 16] = [
    "HumanFootprint-Built1994",
    "HumanFootprint-Built2009",
    "HumanFootprint-croplands1992",
    "HumanFootprint-croplands2005",
    "HumanFootprint-Lights1994",
    "HumanFootprint-Lights2009",
    "HumanFootprint-NavWater1994",
    "HumanFootprint-NavWater2009",
    "HumanFootprint-Pasture1993",
    "HumanFootprint-Pasture2009",
    "HumanFootprint-Popdensity1990",
    "HumanFootprint-Popdensity2010",
    "HumanFootprint-Railways",
    "HumanFootprint-Roads",
    "HumanFootprint-HFP1993",
    "HumanFootprint-HFP2009",
];
/// The 9 SoilGrids columns.
pub const SOILGRIDS_COLUMNS: [&str; 9] = [
    "Soilgrid-bdod",
    "Soilgrid-cec",
    "Soilgrid-cfvo",
    "Soilgrid-clay",
    "Soilgrid-nitrogen",
    "Soilgrid-phh2o",
    "Soilgrid-sand",
    "Soilgrid-silt",
    "Soilgrid-soc",
];
/// The MODIS land-cover class (categorical).
pub const LANDCOVER_COLUMNS: [&str; 1] = ["LandCover"];

/// One environmental CSV (a group of tabular features).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnvGroup {
    /// Bio1..Bio19 (1981-2010 averages).
    Bioclim,
    /// Elevation.
    Elevation,
    /// 16 HumanFootprint-* columns.
    HumanFootprint,
    /// 9 Soilgrid-* columns.
    SoilGrids,
    /// LandCover (categorical).
    LandCover,
    /// The 912 monthly climate columns (optional, not in the seed).
    MonthlyClimate,
}

impl EnvGroup {
    /// The seed's 46 features, in its order.
    pub const SEED: [EnvGroup; 5] = [
        EnvGroup::Bioclim,
        EnvGroup::Elevation,
        EnvGroup::HumanFootprint,
        EnvGroup::SoilGrids,
        EnvGroup::LandCover,
    ];
    /// Every group.
    pub const ALL: [EnvGroup; 6] = [
        EnvGroup::Bioclim,
        EnvGroup::Elevation,
        EnvGroup::HumanFootprint,
        EnvGroup::SoilGrids,
        EnvGroup::LandCover,
        EnvGroup::MonthlyClimate,
    ];

    /// The fixed columns of the group (in the official header order; a file may order them
    /// otherwise, see [`group_columns`]); `None` for the monthly climate table (all columns but
    /// `surveyId`).
    pub fn columns(self) -> Option<&'static [&'static str]> {
        match self {
            EnvGroup::Bioclim => Some(&BIOCLIM_COLUMNS),
            EnvGroup::Elevation => Some(&ELEVATION_COLUMNS),
            EnvGroup::HumanFootprint => Some(&HUMAN_FOOTPRINT_COLUMNS),
            EnvGroup::SoilGrids => Some(&SOILGRIDS_COLUMNS),
            EnvGroup::LandCover => Some(&LANDCOVER_COLUMNS),
            EnvGroup::MonthlyClimate => None,
        }
    }

    /// Lower-case name for messages and options.
    pub fn name(self) -> &'static str {
        match self {
            EnvGroup::Bioclim => "bioclim",
            EnvGroup::Elevation => "elevation",
            EnvGroup::HumanFootprint => "human-footprint",
            EnvGroup::SoilGrids => "soilgrids",
            EnvGroup::LandCover => "landcover",
            EnvGroup::MonthlyClimate => "monthly-climate",
        }
    }
}

impl std::str::FromStr for EnvGroup {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        EnvGroup::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "unknown env group `{s}`: expected one of bioclim, elevation, human-footprint, soilgrids, landcover, monthly-climate"
                ))
            })
    }
}

/// The seed's 46 tabular features in the official files' order: the groups in the seed's merge
/// order, each in its CSV's official header order. What a seed model's tabular MLP expects when
/// it was trained on the official files.
pub fn official_feature_names() -> Vec<String> {
    EnvGroup::SEED
        .iter()
        .flat_map(|g| g.columns().unwrap_or_default())
        .map(|c| c.to_string())
        .collect()
}

/// The feature columns of group `g` in the CSV at `path`, in that file's header order: the
/// seed's rule (`list(df.columns)` of its merge on `surveyId`, file after file). A fixed group
/// gives its known columns (every one required, other columns ignored); the monthly table gives
/// every column but `surveyId`.
pub fn group_columns(path: &Path, g: EnvGroup) -> Result<Vec<String>> {
    let csv = CsvFile::open(path, &format!("{} CSV", g.name()))?;
    let c_id = csv.column("surveyId")?;
    let header = csv.header_names();
    match g.columns() {
        Some(cols) => {
            for c in cols {
                csv.column(c)?;
            }
            let mut names: Vec<String> = Vec::with_capacity(cols.len());
            for h in header {
                if cols.contains(&h.as_str()) && !names.contains(&h) {
                    names.push(h);
                }
            }
            Ok(names)
        }
        None => Ok(header
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| i != c_id)
            .map(|(_, n)| n)
            .collect()),
    }
}

/// Whether a feature is a category id rather than a quantity.
pub fn is_categorical(feature: &str) -> bool {
    feature == "LandCover"
}

/// How one environmental CSV covered a split's surveys: every row the merge did not use, and
/// every survey it did not find, is counted here rather than dropped in silence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvCoverage {
    /// Group name (`elevation`, `landcover`, ...).
    pub group: String,
    /// The CSV read.
    pub path: PathBuf,
    /// Data rows in the file.
    pub rows: usize,
    /// Surveys of the split without a row, ascending: their features of this group are NaN.
    pub missing_surveys: Vec<u64>,
    /// Rows that repeat an earlier row of the same survey with the same values (ignored).
    pub exact_duplicate_rows: usize,
    /// Rows whose survey is not in the split's metadata (ignored).
    pub unknown_survey_rows: usize,
    /// The first [`MAX_EXAMPLES`] of those, as (survey id, line).
    pub unknown_survey_examples: Vec<(u64, u64)>,
    /// Surveys with two rows that disagree (the first row's values are in the table).
    pub conflicts: Vec<RowConflict>,
}

/// Examples of unknown-survey rows kept per file.
pub const MAX_EXAMPLES: usize = 10;

impl EnvCoverage {
    /// Whether the file matched the split exactly: one row per survey, nothing else.
    pub fn is_clean(&self) -> bool {
        self.missing_surveys.is_empty()
            && self.exact_duplicate_rows == 0
            && self.unknown_survey_rows == 0
            && self.conflicts.is_empty()
    }
}

/// Tabular features of one split, aligned with its surveys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TabularTable {
    /// Feature names in column order.
    pub feature_names: Vec<String>,
    /// Row-major `n x F` values as read (NaN/inf kept; a survey absent from a CSV -> NaN; a
    /// survey with conflicting rows -> its first row, listed in `coverage`).
    pub values: Vec<f32>,
    /// Per feature: categorical (LandCover) or not.
    pub categorical: Vec<bool>,
    /// Per group read: surveys that had no row in that group's CSV (filled with NaN).
    pub missing_rows: Vec<(EnvGroup, usize)>,
    /// Per group read, in order: what the CSV held beyond one row per survey of the split.
    pub coverage: Vec<EnvCoverage>,
}

impl TabularTable {
    /// Number of features per row.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let f = self.n_features();
        &self.values[i * f..(i + 1) * f]
    }

    /// The first survey with conflicting rows in any CSV, as an error naming file and survey.
    pub fn check_conflicts(&self) -> Result<()> {
        for c in &self.coverage {
            if let Some(x) = c.conflicts.first() {
                return Err(x.to_error(&c.path));
            }
        }
        Ok(())
    }
}

/// Reads `groups` for the surveys in `survey_ids` (sorted or not) and merges them on
/// `surveyId`, each group's columns in its own file's header order ([`group_columns`]).
/// `csv_of` gives each group's CSV path (checked to exist by the caller). Lenient: conflicting
/// rows of a survey are listed in [`TabularTable::coverage`] (the first row is kept), not
/// refused; see [`TabularTable::check_conflicts`].
pub fn read_tabular(
    groups: &[EnvGroup],
    survey_ids: &[u64],
    csv_of: impl Fn(EnvGroup) -> Result<PathBuf>,
) -> Result<TabularTable> {
    read_tabular_with(groups, survey_ids, &csv_of, |g| {
        group_columns(&csv_of(g)?, g)
    })
}

/// [`read_tabular`] with each group's columns named by `columns_of` (read by name, in that
/// order): how a test split takes the train files' order.
pub fn read_tabular_with(
    groups: &[EnvGroup],
    survey_ids: &[u64],
    csv_of: impl Fn(EnvGroup) -> Result<PathBuf>,
    columns_of: impl Fn(EnvGroup) -> Result<Vec<String>>,
) -> Result<TabularTable> {
    if groups.is_empty() {
        return Err(DataError::Invalid("no environmental group selected".into()));
    }
    let n = survey_ids.len();
    let index: HashMap<u64, usize> = survey_ids
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, i))
        .collect();
    let mut parts = Vec::with_capacity(groups.len());
    for &g in groups {
        let path = csv_of(g)?;
        let names = columns_of(g)?;
        parts.push((g, read_group(&path, g, names, &index, survey_ids)?));
    }
    let f: usize = parts.iter().map(|(_, p)| p.names.len()).sum();
    let mut table = TabularTable {
        feature_names: Vec::with_capacity(f),
        values: vec![f32::NAN; n * f],
        categorical: Vec::with_capacity(f),
        missing_rows: Vec::new(),
        coverage: Vec::new(),
    };
    let mut col0 = 0;
    for (g, p) in parts {
        let w = p.names.len();
        for row in 0..n {
            table.values[row * f + col0..row * f + col0 + w]
                .copy_from_slice(&p.values[row * w..(row + 1) * w]);
        }
        table
            .categorical
            .extend(p.names.iter().map(|c| is_categorical(c)));
        table.feature_names.extend(p.names);
        table
            .missing_rows
            .push((g, p.coverage.missing_surveys.len()));
        table.coverage.push(p.coverage);
        col0 += w;
    }
    Ok(table)
}

/// One group's columns for the indexed surveys.
struct GroupPart {
    names: Vec<String>,
    values: Vec<f32>,
    coverage: EnvCoverage,
}

/// Same value as read: equal bits, or both NaN (an empty cell and `nan` are the same).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// The columns `names` of group `g`'s CSV at `path`, by name.
fn read_group(
    path: &Path,
    g: EnvGroup,
    names: Vec<String>,
    index: &HashMap<u64, usize>,
    survey_ids: &[u64],
) -> Result<GroupPart> {
    let n = survey_ids.len();
    let mut csv = CsvFile::open(path, &format!("{} CSV", g.name()))?;
    let c_id = csv.column("surveyId")?;
    let cols = names
        .iter()
        .map(|c| csv.column(c))
        .collect::<Result<Vec<_>>>()?;
    let w = names.len();
    let mut values = vec![f32::NAN; n * w];
    // Line of each survey's first row (0 = not seen yet).
    let mut first_line = vec![0u64; n];
    let mut conflicted = vec![false; n];
    let mut coverage = EnvCoverage {
        group: g.name().to_string(),
        path: path.to_path_buf(),
        ..EnvCoverage::default()
    };
    let mut again = vec![0f32; w];
    let mut rec = csv::ByteRecord::new();
    loop {
        match csv.reader.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(&csv.path, 0, None, e)),
        }
        coverage.rows += 1;
        let row = Row {
            path: &csv.path,
            line: rec.position().map(|p| p.line()).unwrap_or(0),
            survey: survey_of(&rec, c_id).into(),
        };
        let id = row.id(&rec, c_id, "surveyId", u64::MAX)?;
        let Some(&i) = index.get(&id) else {
            coverage.unknown_survey_rows += 1;
            if coverage.unknown_survey_examples.len() < MAX_EXAMPLES {
                coverage.unknown_survey_examples.push((id, row.line));
            }
            continue;
        };
        if first_line[i] == 0 {
            first_line[i] = row.line.max(1);
            for (k, (&c, name)) in cols.iter().zip(&names).enumerate() {
                values[i * w + k] = row.f32_raw(&rec, c, name)?;
            }
            continue;
        }
        // A second row of the same survey: an exact repeat is counted, a different one is a
        // conflict (the first row stays in the table; the caller decides).
        for (k, (&c, name)) in cols.iter().zip(&names).enumerate() {
            again[k] = row.f32_raw(&rec, c, name)?;
        }
        let kept = &values[i * w..(i + 1) * w];
        match (0..w).find(|&k| !same(kept[k], again[k])) {
            None => coverage.exact_duplicate_rows += 1,
            Some(k) if !conflicted[i] => {
                conflicted[i] = true;
                coverage.conflicts.push(RowConflict {
                    survey_id: id,
                    first_line: first_line[i],
                    line: row.line,
                    column: names[k].clone(),
                    first: kept[k].to_string(),
                    other: again[k].to_string(),
                });
            }
            Some(_) => {}
        }
    }
    let mut missing: Vec<u64> = (0..n)
        .filter(|&i| first_line[i] == 0)
        .map(|i| survey_ids[i])
        .collect();
    missing.sort_unstable();
    coverage.missing_surveys = missing;
    coverage.conflicts.sort_by_key(|c| c.survey_id);
    Ok(GroupPart {
        names,
        values,
        coverage,
    })
}
