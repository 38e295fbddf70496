//! The JSON manifest of a packed split: format and geolife versions, the dataset fingerprint,
//! shapes, feature names, TRAIN statistics (copied into test manifests) and the species vocabulary.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::CacheError;
use crate::EnvCoverage;

/// Statistics of one tabular feature over the TRAIN rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    pub name: String,
    /// Mean of the finite values (0 when none).
    pub mean: f64,
    /// Population standard deviation of the finite values (0 when none).
    pub std: f64,
    pub finite_count: u64,
    pub nan_count: u64,
    /// Count of +inf and -inf.
    pub inf_count: u64,
    /// Smallest / largest finite value; `None` when the feature has no finite value.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Mean and standard deviation of one channel over the TRAIN rows (finite values only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub mean: f64,
    pub std: f64,
    pub count: u64,
    pub nan_count: u64,
}

/// A survey dropped by `--skip-bad`, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedSurvey {
    pub survey_id: u64,
    /// Short error kind (`image`, `missing`, `truncated`, `conflicting-rows`, `missing-row`, ...).
    pub kind: String,
    pub reason: String,
}

/// One data file of the split with its exact length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
}

/// The reader options a cache was packed with; a re-run with other options re-packs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackOptions {
    /// Environmental groups, as their debug names, in order.
    pub env_groups: Vec<String>,
    /// Cube NaN policy, as its debug name (`Zero` = the seed's `nan_to_num`).
    pub cube_nan: String,
    pub skip_bad: bool,
    /// `--strict`: surveys without an env row and rows of unknown surveys refused.
    #[serde(default)]
    pub strict: bool,
}

/// Everything needed to interpret the binary files of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub geolife_version: String,
    /// Hash of the relative paths, sizes and modification times of the dataset's files.
    pub dataset_fingerprint: String,
    pub split: String,
    /// Surveys packed (rows of every file).
    pub n: usize,
    pub feature_names: Vec<String>,
    pub categorical_features: Vec<String>,
    /// Per-feature TRAIN statistics, aligned with `feature_names`.
    pub tabular_stats: Vec<FeatureStats>,
    pub landsat_shape: [usize; 3],
    pub bioclim_shape: [usize; 3],
    pub patch_shape: [usize; 3],
    /// Per-band (6) TRAIN statistics of the Landsat cubes.
    pub landsat_channel_stats: Vec<ChannelStats>,
    /// Per-variable (4) TRAIN statistics of the bioclim cubes.
    pub bioclim_channel_stats: Vec<ChannelStats>,
    /// Per-channel (R, G, B, NIR) TRAIN statistics of the patches, 0-255 scale.
    pub patch_channel_stats: Vec<ChannelStats>,
    /// Sorted distinct species ids of the TRAIN labels: the compact vocabulary.
    pub species: Vec<u32>,
    pub has_labels: bool,
    /// Total label entries (length of `label_ids.u32`).
    pub n_label_ids: usize,
    pub options: PackOptions,
    /// Surveys dropped by `--skip-bad`.
    pub skipped: Vec<SkippedSurvey>,
    /// Per environmental CSV: surveys without a row (kept with NaN features unless
    /// `--strict`), exact duplicate rows and rows of unknown surveys (ignored), surveys with
    /// conflicting rows (refused or skipped).
    #[serde(default)]
    pub env_coverage: Vec<EnvCoverage>,
    /// Rows of the split's metadata that repeat a (survey, species) pair (ignored).
    #[serde(default)]
    pub metadata_duplicate_rows: usize,
    /// Every data file with its exact length, checked on open.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Reads and parses `path`; checks the format version before anything else.
    pub fn load(path: &Path) -> Result<Manifest, CacheError> {
        let text = std::fs::read_to_string(path).map_err(|e| CacheError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CacheError::Manifest {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| CacheError::Manifest {
                path: path.to_path_buf(),
                reason: "no integer `format_version`".into(),
            })?;
        if found != u64::from(super::FORMAT_VERSION) {
            return Err(CacheError::Version {
                path: path.to_path_buf(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                expected: super::FORMAT_VERSION,
            });
        }
        serde_json::from_value(value).map_err(|e| CacheError::Manifest {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes the manifest as pretty JSON to `path` through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> Result<(), CacheError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| CacheError::Manifest {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        geolife_io::atomic::write_bytes(path, text.as_bytes()).map_err(|e| CacheError::io(path, e))
    }

    /// Number of tabular features per row.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Index of each species id in the compact vocabulary, or `None` if unseen in train.
    pub fn species_index(&self, species_id: u32) -> Option<usize> {
        self.species.binary_search(&species_id).ok()
    }
}
