//! Shared fixture of the training tests: a small synthetic dataset and its packed cache.

use std::path::PathBuf;

use geolife_data::synth::{SynthConfig, write_dataset};

/// Dataset root and packed cache of a synthetic dataset (with presence-only records) of
/// `train` / `test` surveys and `species` species, written into a kept temporary folder.
pub fn synth_dataset(train: usize, test: usize, species: usize, seed: u64) -> (PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let data = dir.join("data");
    let cfg = SynthConfig {
        train_surveys: train,
        test_surveys: test,
        species,
        seed,
        mean_species_per_survey: (species as f64 / 6.0).max(3.0),
        surveys_per_cluster: (train / 18).max(8),
        ..SynthConfig::default()
    };
    write_dataset(&data, &cfg).unwrap();
    let cache = geolife_train::data::resolve_cache(&data, &dir.join("cache")).unwrap();
    (data, cache)
}

/// burn's flex backend keeps one process-wide RNG (dropout, init): trainings running in
/// parallel test threads would interleave its draws, so every training test of a binary holds
/// this lock.
#[allow(dead_code)] // not every test binary trains
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TRAINING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh, quiet, uninterrupted training of `config` on `cache` into `run`.
#[allow(dead_code)] // not every test binary trains
pub fn train_options(
    config: geolife_train::TrainConfig,
    cache: &std::path::Path,
    run: &std::path::Path,
) -> geolife_train::TrainOptions {
    geolife_train::TrainOptions {
        config,
        cache: cache.to_path_buf(),
        run_dir: run.to_path_buf(),
        resume: false,
        progress: geolife_train::Progress::Quiet,
        stop_after_batches: None,
    }
}
