//! Shared fixtures of the cache tests: a tiny seeded synthetic dataset and a quiet `prepare`.

#![allow(dead_code)]

use std::path::Path;

use geolife_data::Split;
use geolife_data::cache::{CacheError, NoProgress, PrepareOptions, SplitReport, prepare};
use geolife_data::dataset::DatasetOptions;
use geolife_data::synth::{SynthConfig, write_dataset};

/// Writes a 40 + 10 survey synthetic dataset into `dir/data` and returns its root.
pub fn synth_into(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("data");
    let cfg = SynthConfig {
        train_surveys: 40,
        test_surveys: 10,
        species: 30,
        mean_species_per_survey: 6.0,
        surveys_per_cluster: 10,
        seed: 11,
        ..SynthConfig::default()
    };
    write_dataset(&root, &cfg).expect("synth writes the fixture");
    root
}

/// Default reader options for `splits`, small chunks so several chunks are exercised.
pub fn opts(splits: &[Split]) -> PrepareOptions {
    let mut o = PrepareOptions::new(DatasetOptions::default());
    o.splits = splits.to_vec();
    o.chunk = 16;
    o
}

/// Runs `prepare` without progress output.
pub fn pack(root: &Path, out: &Path, o: PrepareOptions) -> Result<Vec<SplitReport>, CacheError> {
    prepare(root, out, &o, &NoProgress)
}
