//! Errors of the packed cache: each names the file (and survey when known), what was expected
//! and how to fix it; raw-dataset read failures are wrapped unchanged.

use std::path::PathBuf;

use crate::DataError;

/// Everything that can go wrong while packing or opening a cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A failure reading the raw dataset (names file and survey).
    #[error(transparent)]
    Data(#[from] DataError),
    /// An OS-level read/write failure on a cache file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No packed split at this place.
    #[error("no packed {split} split at {path}: run `geolife prepare <DATA> --out <CACHE>` first")]
    NotFound { path: PathBuf, split: String },
    /// A split folder without a manifest (an interrupted or foreign write).
    #[error(
        "{path}: incomplete cache ({reason}); re-run `geolife prepare <DATA> --out <CACHE> --force`"
    )]
    Incomplete { path: PathBuf, reason: String },
    /// A manifest written by another format version.
    #[error(
        "{path}: cache format version {found}, this geolife reads version {expected}; re-run `geolife prepare --force`"
    )]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    /// A manifest that does not parse or contradicts itself.
    #[error("{path}: invalid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    /// A data file whose length disagrees with the manifest (truncated or overwritten).
    #[error(
        "{path}: wrong length: expected {expected} bytes from the manifest, found {found} (truncated?); re-run `geolife prepare --force`"
    )]
    Length {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    /// A data file whose contents are inconsistent (unaligned map, bad label offsets, ...).
    #[error("{path}: corrupt cache file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// Raw data of one survey has the wrong size for the cache layout.
    #[error("survey {survey}: {what} has {found} values, expected {expected}")]
    RowSize {
        survey: u64,
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// Packing the test split needs the train statistics.
    #[error("{0}")]
    NeedTrain(String),
    /// An option that makes no sense.
    #[error("invalid option: {0}")]
    Invalid(String),
}

impl CacheError {
    /// Builds a [`CacheError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CacheError::Io {
            path: path.into(),
            source,
        }
    }
}
