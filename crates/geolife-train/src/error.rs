//! Typed errors of training and prediction: each names the file, the key or survey, and what
//! was expected.

use std::path::PathBuf;

/// Everything that can go wrong in geolife-train.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config value is unknown or impossible.
    #[error("config {}: {}{message}", path.display(), if key.is_empty() { String::new() } else { format!("`{key}`: ") })]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The raw dataset is missing files or holds bad values.
    #[error("data: {0}")]
    Data(#[from] geolife_data::DataError),
    /// The packed cache is missing, incomplete, or from another version / dataset.
    #[error("cache: {0}")]
    Cache(#[from] geolife_data::cache::CacheError),
    /// Scoring or score-file failure.
    #[error("metrics: {0}")]
    Metrics(String),
    /// A checkpoint is missing, truncated or does not match the config.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// The loss became NaN or infinite: training stops, the last good checkpoint is kept.
    #[error(
        "loss is {value} at epoch {epoch}, step {step}: training stopped; the last good checkpoint is kept in {}",
        run.display()
    )]
    NonFiniteLoss {
        value: f32,
        epoch: usize,
        step: usize,
        run: PathBuf,
    },
    /// Inputs do not fit together (shapes, vocabularies, survey ids).
    #[error("{0}")]
    Invalid(String),
}
