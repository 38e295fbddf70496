//! The official GLC24 Kaggle layout (GLC24.md §2) as constants and path rules, plus up-front
//! verification that says what was expected where and how to fix it.

use std::path::{Path, PathBuf};

use crate::env::EnvGroup;
use crate::{DataError, Result, Split};

/// PA metadata of the train split (required).
pub const PA_METADATA_TRAIN: &str = "GLC24_PA_metadata_train.csv";
/// PA metadata of the test split.
pub const PA_METADATA_TEST: &str = "GLC24_PA_metadata_test.csv";
/// Presence-only metadata ("P0" with a zero, as distributed).
pub const PO_METADATA_TRAIN: &str = "GLC24_P0_metadata_train.csv";
/// Root of the environmental CSVs (the folder name really repeats).
pub const ENV_ROOT: &str = "EnvironmentalRasters/EnvironmentalRasters";
/// Root of the `.pt` cubes (the folder name repeats too).
pub const CUBES_ROOT: &str = "TimeSeries-Cubes/TimeSeries-Cubes";
/// File extension of the Sentinel-2 patches.
pub const PATCH_EXT: &str = "jpeg";

/// PA metadata CSV of `split`, relative to the root.
pub fn metadata_csv(split: Split) -> &'static str {
    match split {
        Split::Train => PA_METADATA_TRAIN,
        Split::Test => PA_METADATA_TEST,
    }
}

/// Environmental CSV of `group` for `split`, relative to the root.
pub fn env_csv(group: EnvGroup, split: Split) -> PathBuf {
    let (dir, stem) = match group {
        EnvGroup::Bioclim => ("Climate/Average 1981-2010", "bioclimatic"),
        EnvGroup::MonthlyClimate => ("Climate/Monthly", "bioclimatic_monthly"),
        EnvGroup::Elevation => ("Elevation", "elevation"),
        EnvGroup::HumanFootprint => ("Human Footprint", "human_footprint"),
        EnvGroup::LandCover => ("LandCover", "landcover"),
        EnvGroup::SoilGrids => ("SoilGrids", "soilgrids"),
    };
    Path::new(ENV_ROOT)
        .join(dir)
        .join(format!("GLC24-PA-{split}-{stem}.csv"))
}

/// The two cube modalities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CubeKind {
    /// Landsat time series, shape (6, 4, 21).
    Landsat,
    /// Monthly bioclimatic cube, shape (4, 19, 12).
    Bioclim,
}

impl CubeKind {
    /// Short lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            CubeKind::Landsat => "landsat cube",
            CubeKind::Bioclim => "bioclimatic cube",
        }
    }

    /// Official folder of this cube for `split`, relative to the root.
    pub fn dir(self, split: Split) -> PathBuf {
        let d = match self {
            CubeKind::Landsat => format!("GLC24-PA-{split}-landsat_time_series"),
            CubeKind::Bioclim => format!("GLC24-PA-{split}-bioclimatic_monthly"),
        };
        Path::new(CUBES_ROOT).join(d)
    }

    /// Candidate file names for `id`, the official one for `split` first. Train Landsat files
    /// use hyphens (`landsat-time-series`), test ones underscores: both are tried.
    pub fn file_names(self, split: Split, id: u64) -> [String; 2] {
        match self {
            CubeKind::Landsat => {
                let hyphen = format!("GLC24-PA-{split}-landsat-time-series_{id}_cube.pt");
                let under = format!("GLC24-PA-{split}-landsat_time_series_{id}_cube.pt");
                match split {
                    Split::Train => [hyphen, under],
                    Split::Test => [under, hyphen],
                }
            }
            CubeKind::Bioclim => {
                let under = format!("GLC24-PA-{split}-bioclimatic_monthly_{id}_cube.pt");
                let hyphen = format!("GLC24-PA-{split}-bioclimatic-monthly_{id}_cube.pt");
                [under, hyphen]
            }
        }
    }

    /// Finds the cube file of survey `id` under `root`, trying both name templates.
    pub fn find(self, root: &Path, split: Split, id: u64) -> Result<PathBuf> {
        let dir = root.join(self.dir(split));
        let names = self.file_names(split, id);
        for name in &names {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(DataError::Missing {
            path: dir.join(&names[0]),
            survey: id.into(),
            what: format!("{} of the {split} split", self.name()),
            hint: format!(
                "no file named {} or {} in {}; check that the TimeSeries-Cubes archive is fully unzipped",
                names[0],
                names[1],
                dir.display()
            ),
        })
    }
}

/// The two patch modalities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// 128x128 3-channel RGB JPEG.
    Rgb,
    /// 128x128 1-channel NIR JPEG.
    Nir,
}

impl PatchKind {
    /// Short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            PatchKind::Rgb => "RGB patch",
            PatchKind::Nir => "NIR patch",
        }
    }

    /// Official folder of the patches of `split`, relative to the root.
    pub fn dir(self, split: Split) -> PathBuf {
        let s = match split {
            Split::Train => ("Train", "train"),
            Split::Test => ("Test", "test"),
        };
        let b = match self {
            PatchKind::Rgb => ("RGB", "rgb"),
            PatchKind::Nir => ("NIR", "nir"),
        };
        Path::new(&format!("PA_{}_SatellitePatches_{}", s.0, b.0))
            .join(format!("pa_{}_patches_{}", s.1, b.1))
    }

    /// Path of the patch of survey `id` under `root` (see [`patch_rel_path`]).
    pub fn path(self, root: &Path, split: Split, id: u64) -> PathBuf {
        root.join(self.dir(split)).join(patch_rel_path(id))
    }
}

/// The CD/AB path rule: CD = last two digits of the decimal id, AB = the two before them
/// (fewer for short ids; an empty component is dropped). 212 -> `12/2/212.jpeg`,
/// 1400102 -> `02/01/1400102.jpeg`, 7 -> `7/7.jpeg`.
pub fn patch_rel_path(id: u64) -> PathBuf {
    let s = id.to_string();
    let n = s.len();
    let cd = &s[n.saturating_sub(2)..];
    let ab = &s[n.saturating_sub(4)..n.saturating_sub(2)];
    let mut p = PathBuf::new();
    for part in [cd, ab] {
        if !part.is_empty() {
            p.push(part);
        }
    }
    p.push(format!("{s}.{PATCH_EXT}"));
    p
}

/// What exists under a dataset root, per split. Built by [`Layout::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitParts {
    /// The PA metadata CSV exists.
    pub metadata: bool,
    /// Environmental CSVs that exist.
    pub env: Vec<EnvGroup>,
    /// The Landsat cube folder exists.
    pub landsat: bool,
    /// The bioclimatic cube folder exists.
    pub bioclim: bool,
    /// The RGB patch folder exists.
    pub rgb: bool,
    /// The NIR patch folder exists.
    pub nir: bool,
}

/// A verified dataset root and which parts of the official layout it holds.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The dataset root (the unzipped `geolifeclef-2024` folder).
    pub root: PathBuf,
    /// Parts of the train split.
    pub train: SplitParts,
    /// Parts of the test split.
    pub test: SplitParts,
    /// The presence-only metadata exists.
    pub po: bool,
}

impl Layout {
    /// Scans `root`; fails only when the root or the train metadata (required) is absent,
    /// with a message that says where they were expected and how to fix it.
    pub fn scan(root: &Path) -> Result<Layout> {
        if !root.is_dir() {
            return Err(DataError::Missing {
                path: root.to_path_buf(),
                survey: None.into(),
                what: "dataset root folder".into(),
                hint: "pass the unzipped Kaggle `geolifeclef-2024` folder (the one holding GLC24_PA_metadata_train.csv)".into(),
            });
        }
        if !root.join(PA_METADATA_TRAIN).is_file() {
            let nested = root.join("geolifeclef-2024");
            let hint = if nested.join(PA_METADATA_TRAIN).is_file() {
                format!(
                    "the data is one level down: pass {} instead",
                    nested.display()
                )
            } else {
                "pass the unzipped Kaggle `geolifeclef-2024` folder; the PA train metadata is required \
                 (download it from the GeoLifeCLEF 2024 Kaggle competition page)"
                    .into()
            };
            return Err(DataError::Missing {
                path: root.join(PA_METADATA_TRAIN),
                survey: None.into(),
                what: "PA train metadata".into(),
                hint,
            });
        }
        let parts = |split| SplitParts {
            metadata: root.join(metadata_csv(split)).is_file(),
            env: EnvGroup::ALL
                .into_iter()
                .filter(|&g| root.join(env_csv(g, split)).is_file())
                .collect(),
            landsat: root.join(CubeKind::Landsat.dir(split)).is_dir(),
            bioclim: root.join(CubeKind::Bioclim.dir(split)).is_dir(),
            rgb: root.join(PatchKind::Rgb.dir(split)).is_dir(),
            nir: root.join(PatchKind::Nir.dir(split)).is_dir(),
        };
        Ok(Layout {
            root: root.to_path_buf(),
            train: parts(Split::Train),
            test: parts(Split::Test),
            po: root.join(PO_METADATA_TRAIN).is_file(),
        })
    }

    /// Parts of `split`.
    pub fn parts(&self, split: Split) -> &SplitParts {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }

    /// Error for an environmental CSV that `group` needs but the root lacks.
    pub fn require_env(&self, group: EnvGroup, split: Split) -> Result<PathBuf> {
        let path = self.root.join(env_csv(group, split));
        if path.is_file() {
            Ok(path)
        } else {
            Err(DataError::Missing {
                path,
                survey: None.into(),
                what: format!("{} CSV of the {split} split", group.name()),
                hint:
                    "unzip EnvironmentalRasters into the dataset root, or leave this group out of \
                       the tabular features (env groups option)"
                        .into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_paths_follow_python_slicing() {
        assert_eq!(patch_rel_path(212), PathBuf::from("12/2/212.jpeg"));
        assert_eq!(patch_rel_path(1400102), PathBuf::from("02/01/1400102.jpeg"));
        assert_eq!(patch_rel_path(1322301), PathBuf::from("01/23/1322301.jpeg"));
        assert_eq!(patch_rel_path(80000), PathBuf::from("00/00/80000.jpeg"));
        assert_eq!(patch_rel_path(7), PathBuf::from("7/7.jpeg"));
        assert_eq!(patch_rel_path(42), PathBuf::from("42/42.jpeg"));
    }

    #[test]
    fn landsat_names_differ_between_splits() {
        let [tr, _] = CubeKind::Landsat.file_names(Split::Train, 5);
        let [te, _] = CubeKind::Landsat.file_names(Split::Test, 5);
        assert_eq!(tr, "GLC24-PA-train-landsat-time-series_5_cube.pt");
        assert_eq!(te, "GLC24-PA-test-landsat_time_series_5_cube.pt");
    }
}
