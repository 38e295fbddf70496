//! Environmental CSVs merged on `surveyId` by column name into the tabular feature vector:
//! the seed's 46 features (Bio1..19, Elevation, 16 HumanFootprint, 9 SoilGrids, LandCover) by
//! default, the 912 monthly climate columns as an option. Values are kept raw (NaN/inf kept).

use std::collections::HashMap;
use std::path::Path;

use crate::csvutil::{CsvFile, Row, csv_err, survey_of};
use crate::{DataError, Result};

/// The 19 bioclimatic averages.
pub const BIOCLIM_COLUMNS: [&str; 19] = [
    "Bio1", "Bio2", "Bio3", "Bio4", "Bio5", "Bio6", "Bio7", "Bio8", "Bio9", "Bio10", "Bio11",
    "Bio12", "Bio13", "Bio14", "Bio15", "Bio16", "Bio17", "Bio18", "Bio19",
];
/// The elevation column.
pub const ELEVATION_COLUMNS: [&str; 1] = ["Elevation"];
/// The 16 human-footprint columns, in the official CSV's order.
pub const HUMAN_FOOTPRINT_COLUMNS: [&str; 16] = [
    "HumanFootprint-Built1994",
    "HumanFootprint-Built2009",
    "HumanFootprint-HFP1993",
    "HumanFootprint-HFP2009",
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
    "HumanFootprint-croplands1992",
    "HumanFootprint-croplands2005",
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

    /// The fixed columns of the group; `None` for the monthly climate table (all columns but
    /// `surveyId`, in header order).
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

/// Whether a feature is a category id rather than a quantity.
pub fn is_categorical(feature: &str) -> bool {
    feature == "LandCover"
}

/// Tabular features of one split, aligned with its surveys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TabularTable {
    /// Feature names in column order.
    pub feature_names: Vec<String>,
    /// Row-major `n x F` values as read (NaN/inf kept; a survey absent from a CSV -> NaN).
    pub values: Vec<f32>,
    /// Per feature: categorical (LandCover) or not.
    pub categorical: Vec<bool>,
    /// Per group read: surveys that had no row in that group's CSV (filled with NaN).
    pub missing_rows: Vec<(EnvGroup, usize)>,
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
}

/// Reads `groups` for the surveys in `survey_ids` (sorted or not) and merges them on
/// `surveyId`. `csv_of` gives each group's CSV path (checked to exist by the caller).
pub fn read_tabular(
    groups: &[EnvGroup],
    survey_ids: &[u64],
    csv_of: impl Fn(EnvGroup) -> Result<std::path::PathBuf>,
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
        parts.push((g, read_group(&path, g, &index, n)?));
    }
    let f: usize = parts.iter().map(|(_, p)| p.names.len()).sum();
    let mut table = TabularTable {
        feature_names: Vec::with_capacity(f),
        values: vec![f32::NAN; n * f],
        categorical: Vec::with_capacity(f),
        missing_rows: Vec::new(),
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
        table.missing_rows.push((g, p.missing));
        col0 += w;
    }
    Ok(table)
}

/// One group's columns for the indexed surveys.
struct GroupPart {
    names: Vec<String>,
    values: Vec<f32>,
    missing: usize,
}

fn read_group(
    path: &Path,
    g: EnvGroup,
    index: &HashMap<u64, usize>,
    n: usize,
) -> Result<GroupPart> {
    let mut csv = CsvFile::open(path, &format!("{} CSV", g.name()))?;
    let c_id = csv.column("surveyId")?;
    let (names, cols): (Vec<String>, Vec<usize>) = match g.columns() {
        Some(cols) => {
            let idx = cols
                .iter()
                .map(|c| csv.column(c))
                .collect::<Result<Vec<_>>>()?;
            (cols.iter().map(|c| c.to_string()).collect(), idx)
        }
        None => csv
            .header_names()
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| i != c_id)
            .map(|(i, n)| (n, i))
            .unzip(),
    };
    let w = names.len();
    let mut values = vec![f32::NAN; n * w];
    let mut seen = vec![false; n];
    let mut rec = csv::ByteRecord::new();
    loop {
        match csv.reader.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(&csv.path, 0, None, e)),
        }
        let row = Row {
            path: &csv.path,
            line: rec.position().map(|p| p.line()).unwrap_or(0),
            survey: survey_of(&rec, c_id).into(),
        };
        let id = row.id(&rec, c_id, "surveyId", u64::MAX)?;
        let Some(&i) = index.get(&id) else { continue };
        if seen[i] {
            continue;
        }
        seen[i] = true;
        for (k, (&c, name)) in cols.iter().zip(&names).enumerate() {
            values[i * w + k] = row.f32_raw(&rec, c, name)?;
        }
    }
    Ok(GroupPart {
        names,
        values,
        missing: seen.iter().filter(|&&s| !s).count(),
    })
}
