//! Typed errors of the scoring crate: every variant names the file and, where it applies,
//! the survey and what was expected, so a user can fix the input without reading code.

use std::path::PathBuf;

/// Anything that can go wrong while reading, checking or writing scores and submissions.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The operating system refused a read or write.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A row or header of a text file does not have the expected shape.
    #[error("{path}, line {line}: {message}")]
    Malformed {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A binary score file is not a valid geolife safetensors file.
    #[error("{path}: not a valid geolife score file: {message}")]
    BadScoreFile { path: PathBuf, message: String },
    /// A score is NaN or infinite.
    #[error("{path}: survey {survey_id}, species {species}: score {value} is not a finite number")]
    NonFinite {
        path: PathBuf,
        survey_id: u64,
        species: u32,
        value: f32,
    },
    /// A survey id occurs twice where ids must be unique.
    #[error("{path}: survey {survey_id} occurs more than once (expected one row per survey)")]
    DuplicateSurvey { path: PathBuf, survey_id: u64 },
    /// In-memory data violate an invariant (lengths, vocabularies, arguments).
    #[error("{0}")]
    Invalid(String),
    /// A selection policy needs probabilities but the file only ranks species.
    #[error("{0}: this operation needs scores, but the file only holds ranked species lists")]
    NeedsScores(String),
    /// A policy file could not be parsed or written.
    #[error("{path}: {message}")]
    Policy { path: PathBuf, message: String },
    /// The plot could not be drawn.
    #[error("{path}: cannot draw plot: {message}")]
    Plot { path: PathBuf, message: String },
}

impl MetricsError {
    /// Wraps an I/O error with the file it concerns.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        MetricsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
