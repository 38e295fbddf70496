//! Relative paths of the official GLC24 Kaggle layout as the synthetic writer produces them
//! (GLC24.md §2): repeated folder names, the space in "Human Footprint", hyphens in train
//! Landsat cube names and underscores in test ones, and the CD/AB patch folders.

use std::path::PathBuf;

use crate::{Split, env};

/// PA metadata CSV of a split.
pub fn metadata_csv(split: Split) -> PathBuf {
    PathBuf::from(format!("GLC24_PA_metadata_{split}.csv"))
}

/// The released-solution-style label file of the test split.
pub const SOLUTION_CSV: &str = "GLC24_SOLUTION_FILE.csv";

/// Root of the environmental CSVs (the folder name really repeats).
const ENV_ROOT: &str = "EnvironmentalRasters/EnvironmentalRasters";

/// The five environmental tables of the seed's 46 tabular features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvTable {
    Bioclimatic,
    Elevation,
    HumanFootprint,
    LandCover,
    SoilGrids,
}

impl EnvTable {
    /// All tables, in the order the writer emits them.
    pub const ALL: [EnvTable; 5] = [
        EnvTable::Bioclimatic,
        EnvTable::Elevation,
        EnvTable::HumanFootprint,
        EnvTable::LandCover,
        EnvTable::SoilGrids,
    ];

    /// Path of this table's CSV for `split`.
    pub fn csv(self, split: Split) -> PathBuf {
        let (folder, name) = match self {
            EnvTable::Bioclimatic => ("Climate/Average 1981-2010", "bioclimatic"),
            EnvTable::Elevation => ("Elevation", "elevation"),
            EnvTable::HumanFootprint => ("Human Footprint", "human_footprint"),
            EnvTable::LandCover => ("LandCover", "landcover"),
            EnvTable::SoilGrids => ("SoilGrids", "soilgrids"),
        };
        PathBuf::from(format!("{ENV_ROOT}/{folder}/GLC24-PA-{split}-{name}.csv"))
    }

    /// Value columns (after `surveyId`), with the real names: the readers' own constants,
    /// so writer and reader cannot disagree.
    pub fn columns(self) -> Vec<String> {
        let names: &[&str] = match self {
            EnvTable::Bioclimatic => &env::BIOCLIM_COLUMNS,
            EnvTable::Elevation => &env::ELEVATION_COLUMNS,
            EnvTable::HumanFootprint => &env::HUMAN_FOOTPRINT_COLUMNS,
            EnvTable::LandCover => &env::LANDCOVER_COLUMNS,
            EnvTable::SoilGrids => &env::SOILGRIDS_COLUMNS,
        };
        names.iter().map(|s| s.to_string()).collect()
    }
}

/// Path of the optional monthly climate CSV of `split` (912 columns after `surveyId`).
pub fn monthly_climate_csv(split: Split) -> PathBuf {
    PathBuf::from(format!(
        "{ENV_ROOT}/Climate/Monthly/GLC24-PA-{split}-bioclimatic_monthly.csv"
    ))
}

/// Variables of the monthly climate table, in the bioclimatic cube's order.
pub const MONTHLY_VARIABLES: [&str; 4] = ["pr", "tas", "tasmax", "tasmin"];
/// First year of the monthly climate table (19 years: 2000-2018).
pub const MONTHLY_FIRST_YEAR: usize = 2000;

/// The 912 value columns of the monthly climate CSV, `{var}_{MM}_{YYYY}`, in the C order of
/// the bioclimatic cube (variable, year, month), so column `k` holds cube value `k`.
///
/// The real file's header names are not recorded in our docs (GLC24.md only says "912
/// monthly columns"); the reader takes every column but `surveyId` whatever its name, so
/// these names only need to be distinct and readable.
pub fn monthly_climate_columns() -> Vec<String> {
    let [_, years, months] = super::world::BIOCLIM_SIZE;
    let mut out = Vec::with_capacity(MONTHLY_VARIABLES.len() * years * months);
    for var in MONTHLY_VARIABLES {
        for y in 0..years {
            for m in 1..=months {
                out.push(format!("{var}_{m:02}_{}", MONTHLY_FIRST_YEAR + y));
            }
        }
    }
    out
}

/// Root of the `.pt` cubes (the folder name repeats).
const CUBE_ROOT: &str = "TimeSeries-Cubes/TimeSeries-Cubes";

/// File stem of a survey's Landsat cube: hyphens in train, underscores in test.
pub fn landsat_stem(split: Split, id: u64) -> String {
    match split {
        Split::Train => format!("GLC24-PA-train-landsat-time-series_{id}_cube"),
        Split::Test => format!("GLC24-PA-test-landsat_time_series_{id}_cube"),
    }
}

/// File stem of a survey's bioclimatic monthly cube.
pub fn bioclim_stem(split: Split, id: u64) -> String {
    format!("GLC24-PA-{split}-bioclimatic_monthly_{id}_cube")
}

/// Path of a survey's Landsat cube.
pub fn landsat_cube(split: Split, id: u64) -> PathBuf {
    PathBuf::from(format!(
        "{CUBE_ROOT}/GLC24-PA-{split}-landsat_time_series/{}.pt",
        landsat_stem(split, id)
    ))
}

/// Path of a survey's bioclimatic monthly cube.
pub fn bioclim_cube(split: Split, id: u64) -> PathBuf {
    PathBuf::from(format!(
        "{CUBE_ROOT}/GLC24-PA-{split}-bioclimatic_monthly/{}.pt",
        bioclim_stem(split, id)
    ))
}

/// Sentinel-2 patch kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Rgb,
    Nir,
}

/// Path of a survey's patch: `PA_Train_SatellitePatches_RGB/pa_train_patches_rgb/CD/AB/<id>.jpeg`,
/// where CD are the id's last two decimal digits and AB the two before (fewer for short ids;
/// an empty component is skipped).
pub fn patch(split: Split, kind: PatchKind, id: u64) -> PathBuf {
    let (upper, lower) = match kind {
        PatchKind::Rgb => ("RGB", "rgb"),
        PatchKind::Nir => ("NIR", "nir"),
    };
    let cap = match split {
        Split::Train => "Train",
        Split::Test => "Test",
    };
    let mut p = PathBuf::from(format!("PA_{cap}_SatellitePatches_{upper}"));
    p.push(format!("pa_{split}_patches_{lower}"));
    let digits = id.to_string();
    let n = digits.len();
    let cd = &digits[n.saturating_sub(2)..];
    let ab = &digits[n.saturating_sub(4)..n.saturating_sub(2)];
    for part in [cd, ab] {
        if !part.is_empty() {
            p.push(part);
        }
    }
    p.push(format!("{id}.jpeg"));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_paths_follow_the_documented_examples() {
        // Examples from GLC24.md §2.
        assert_eq!(
            patch(Split::Train, PatchKind::Rgb, 1400102),
            PathBuf::from("PA_Train_SatellitePatches_RGB/pa_train_patches_rgb/02/01/1400102.jpeg")
        );
        assert_eq!(
            patch(Split::Test, PatchKind::Nir, 212),
            PathBuf::from("PA_Test_SatellitePatches_NIR/pa_test_patches_nir/12/2/212.jpeg")
        );
        assert_eq!(
            patch(Split::Train, PatchKind::Nir, 7),
            PathBuf::from("PA_Train_SatellitePatches_NIR/pa_train_patches_nir/7/7.jpeg")
        );
    }

    #[test]
    fn monthly_columns_are_distinct_and_in_cube_order() {
        let cols = monthly_climate_columns();
        assert_eq!(cols.len(), 912);
        assert_eq!(cols[0], "pr_01_2000");
        assert_eq!(cols[11], "pr_12_2000");
        assert_eq!(cols[12], "pr_01_2001");
        assert_eq!(cols[228], "tas_01_2000");
        assert_eq!(cols[911], "tasmin_12_2018");
        let distinct: std::collections::BTreeSet<&String> = cols.iter().collect();
        assert_eq!(distinct.len(), 912);
        assert_eq!(
            monthly_climate_csv(Split::Test),
            PathBuf::from(
                "EnvironmentalRasters/EnvironmentalRasters/Climate/Monthly/GLC24-PA-test-bioclimatic_monthly.csv"
            )
        );
    }

    #[test]
    fn cube_names_use_hyphens_in_train_only() {
        assert_eq!(
            landsat_cube(Split::Train, 1322301),
            PathBuf::from(
                "TimeSeries-Cubes/TimeSeries-Cubes/GLC24-PA-train-landsat_time_series/GLC24-PA-train-landsat-time-series_1322301_cube.pt"
            )
        );
        assert_eq!(
            landsat_cube(Split::Test, 642),
            PathBuf::from(
                "TimeSeries-Cubes/TimeSeries-Cubes/GLC24-PA-test-landsat_time_series/GLC24-PA-test-landsat_time_series_642_cube.pt"
            )
        );
    }
}
