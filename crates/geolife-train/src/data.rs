//! `--data` may name a packed cache or a raw dataset root: a raw root is packed (once; an
//! up-to-date cache is reused) into a cache folder before training or prediction.

use std::path::{Path, PathBuf};

use geolife_data::DatasetOptions;
use geolife_data::cache::{NoProgress, PrepareOptions, files};

use crate::error::TrainError;

/// True when `dir` holds a packed split (`train/manifest.json` or `test/manifest.json`).
pub fn is_cache(dir: &Path) -> bool {
    ["train", "test"]
        .iter()
        .any(|s| dir.join(s).join(files::MANIFEST).is_file())
}

/// The cache to read: `data` itself when it is a cache, else `data` packed into `cache_dir`.
pub fn resolve_cache(data: &Path, cache_dir: &Path) -> Result<PathBuf, TrainError> {
    if is_cache(data) {
        return Ok(data.to_path_buf());
    }
    if !data.is_dir() {
        return Err(TrainError::Invalid(format!(
            "{}: not a folder (expected a GLC24 dataset root or a cache from `geolife prepare`)",
            data.display()
        )));
    }
    let opts = PrepareOptions::new(DatasetOptions::default());
    geolife_data::cache::prepare(data, cache_dir, &opts, &NoProgress)?;
    Ok(cache_dir.to_path_buf())
}
