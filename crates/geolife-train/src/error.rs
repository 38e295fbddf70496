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
    /// A file of a run could not be read or written.
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The raw dataset is missing files or holds bad values.
    #[error(transparent)]
    Data(#[from] geolife_data::DataError),
    /// The packed cache is missing, incomplete, or from another version / dataset.
    #[error(transparent)]
    Cache(#[from] geolife_data::cache::CacheError),
    /// Scoring, policies or score files.
    #[error(transparent)]
    Metrics(#[from] geolife_metrics::MetricsError),
    /// Model construction, weight files and input shapes.
    #[error(transparent)]
    Model(#[from] geolife_model::ModelError),
    /// The location prior.
    #[error(transparent)]
    Prior(#[from] geolife_prior::PriorError),
    /// A JSON file of a run (`run.json`, `done.json`, ...) that cannot be read or written.
    #[error("{}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A CSV file of a run (the epoch log) that cannot be read or written.
    #[error("{}", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
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
    /// SIGTERM or SIGINT ([`crate::interrupt`]) stopped training at an optimiser step, after
    /// writing `last.ckpt`.
    #[error(
        "stopped by {}: {}/last.ckpt holds where the run stands; run the same command again \
         (`geolife train` with --resume) to continue",
        crate::interrupt::signal_name(*signal),
        run.display()
    )]
    Interrupted { signal: i32, run: PathBuf },
    /// Inputs do not fit together (shapes, vocabularies, survey ids).
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    /// A prior error of the config table `table` (`prior`, `location`): its `po_file` key is
    /// named under that table, as the user wrote it.
    pub(crate) fn prior_in(table: &str, e: geolife_prior::PriorError) -> Self {
        match e {
            geolife_prior::PriorError::Key { key, message }
                if key == geolife_prior::source::PO_FILE_KEY =>
            {
                TrainError::Prior(geolife_prior::PriorError::Key {
                    key: format!("{table}.{key}"),
                    message,
                })
            }
            other => TrainError::Prior(other),
        }
    }
}
