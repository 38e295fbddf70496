//! Typed errors of the model crate: unknown names, bad configs, unreadable or mismatching
//! weight files. Each names the file or key involved and what was expected.

use std::path::PathBuf;

/// Errors of model construction, weight import and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A backbone name not in the registry.
    #[error("unknown backbone `{name}`; known: {known}")]
    UnknownBackbone {
        /// The name given.
        name: String,
        /// Registered names.
        known: String,
    },
    /// An inconsistent model configuration.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// A batch tensor whose shape does not fit the model, caught before the forward pass.
    #[error("{branch} input: expected {expected}, got {got:?}")]
    BadInput {
        /// The branch (`sentinel`, `landsat`, `bioclim`, `tabular`).
        branch: &'static str,
        /// The shape the model was built for, in words.
        expected: String,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A weight file that is not a valid safetensors / torch file.
    #[error("{path}: not a readable weight file: {reason}")]
    BadWeightFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor whose shape cannot be fitted to the parameter.
    #[error("{path}: key `{key}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// State-dict key.
        key: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape of the parameter.
        expected: Vec<usize>,
    },
    /// Parameters absent from the file while a strict load was requested.
    #[error("{path}: {} model parameter(s) missing from the file, e.g. {}", missing.len(), missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    MissingKeys {
        /// The file.
        path: PathBuf,
        /// Missing keys.
        missing: Vec<String>,
    },
    /// A checkpoint without (or with an unreadable) geolife config in its metadata.
    #[error("{path}: {reason}")]
    BadCheckpointConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}
