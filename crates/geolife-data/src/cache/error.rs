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
    #[error("{path}")]
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
    /// Another `prepare` run holds the cache folder's lock file (`path`); `pid` and `host`
    /// are the holder's as written in the file (`None` when unreadable).
    #[error(
        "{path}: this cache folder is being written by another `geolife prepare` ({holder}), which holds the lock; wait for that run to finish (the lock is released when it ends, even if it is killed)",
        holder = describe_holder(*.pid, .host.as_deref())
    )]
    Locked {
        path: PathBuf,
        pid: Option<u32>,
        host: Option<String>,
    },
}

/// How a [`CacheError::Locked`] message names the holder: "pid 123", "pid 123 on host h",
/// or that the file names no pid.
fn describe_holder(pid: Option<u32>, host: Option<&str>) -> String {
    match (pid, host) {
        (Some(p), Some(h)) => format!("pid {p} on host {h}"),
        (Some(p), None) => format!("pid {p}"),
        (None, _) => "holder not named in the lock file".into(),
    }
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
