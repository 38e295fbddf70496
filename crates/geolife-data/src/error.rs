//! The data crate's typed error: every variant names the file, the survey (when known) and
//! what was expected, so a user can fix the input without reading the code.

use std::fmt;
use std::path::PathBuf;

use geolife_io::torchfile::TorchError;

/// A survey id attached to an error, printed as ` (survey 123)` or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SurveyTag(pub Option<u64>);

impl fmt::Display for SurveyTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (survey {id})"),
            None => Ok(()),
        }
    }
}

impl From<u64> for SurveyTag {
    fn from(id: u64) -> Self {
        SurveyTag(Some(id))
    }
}

impl From<Option<u64>> for SurveyTag {
    fn from(id: Option<u64>) -> Self {
        SurveyTag(id)
    }
}

/// Everything that can go wrong while reading a GLC24 dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An OS-level read/write failure.
    #[error("{path}{survey}")]
    Io {
        path: PathBuf,
        survey: SurveyTag,
        #[source]
        source: std::io::Error,
    },
    /// A file or folder of the layout is absent; `hint` says how to fix it.
    #[error("missing {what}{survey}: expected at {path}; {hint}")]
    Missing {
        path: PathBuf,
        survey: SurveyTag,
        what: String,
        hint: String,
    },
    /// A `.pt` file that is not a readable zip archive.
    #[error("{path}{survey}: not a torch.save zip archive: {reason}")]
    NotZip {
        path: PathBuf,
        survey: SurveyTag,
        reason: String,
    },
    /// A file that ends before the data it declares (zip entry, tensor storage).
    #[error("{path}{survey}: truncated: {reason}")]
    Truncated {
        path: PathBuf,
        survey: SurveyTag,
        reason: String,
    },
    /// A pickle that uses an opcode or global outside the allowed tensor subset.
    #[error(
        "{path}{survey}: refused pickle content {what} (only plain tensors and state dicts are read; nothing is executed)"
    )]
    ForbiddenPickle {
        path: PathBuf,
        survey: SurveyTag,
        what: String,
    },
    /// A pickle that is structurally invalid (stack underflow, bad argument, ...).
    #[error("{path}{survey}: malformed pickle: {reason}")]
    Pickle {
        path: PathBuf,
        survey: SurveyTag,
        reason: String,
    },
    /// A tensor or image with an unexpected shape.
    #[error("{path}{survey}: wrong shape: expected {expected:?}, found {found:?}")]
    Shape {
        path: PathBuf,
        survey: SurveyTag,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor with an unexpected element type.
    #[error("{path}{survey}: wrong dtype: expected {expected}, found {found}")]
    Dtype {
        path: PathBuf,
        survey: SurveyTag,
        expected: String,
        found: String,
    },
    /// An image that does not decode.
    #[error("{path}{survey}: cannot decode image: {reason}")]
    Image {
        path: PathBuf,
        survey: SurveyTag,
        reason: String,
    },
    /// A CSV without a column the reader needs.
    #[error("{path}: missing column `{column}` (header has: {header})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        header: String,
    },
    /// A CSV row that does not parse.
    #[error("{path}:{line}{survey}: {reason}")]
    Csv {
        path: PathBuf,
        line: u64,
        survey: SurveyTag,
        reason: String,
    },
    /// A NaN or infinite value where a finite one is required.
    #[error("{path}{survey}: non-finite value in {what}")]
    NonFinite {
        path: PathBuf,
        survey: SurveyTag,
        what: String,
    },
    /// A survey asked for that a file/table does not hold.
    #[error("{path}: survey {survey} not found ({what})")]
    UnknownSurvey {
        path: PathBuf,
        survey: u64,
        what: String,
    },
    /// A survey with two rows in one table that disagree: no row can be chosen.
    #[error("{path}{survey}: conflicting rows: {reason}")]
    ConflictingRows {
        path: PathBuf,
        survey: SurveyTag,
        reason: String,
    },
    /// A survey of the metadata without a row in a table where one is required (`--strict`).
    #[error("{path}{survey}: no row for this survey: {reason}")]
    MissingRow {
        path: PathBuf,
        survey: SurveyTag,
        reason: String,
    },
    /// An argument or option that makes no sense (empty group list, ...).
    #[error("invalid option: {0}")]
    Invalid(String),
}

impl DataError {
    /// Builds an [`DataError::Io`] for `path`.
    pub fn io(
        path: impl Into<PathBuf>,
        survey: impl Into<SurveyTag>,
        source: std::io::Error,
    ) -> Self {
        DataError::Io {
            path: path.into(),
            survey: survey.into(),
            source,
        }
    }

    /// Short stable name of the variant, used in reports and skip counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DataError::Io { .. } => "io",
            DataError::Missing { .. } => "missing",
            DataError::NotZip { .. } => "not-zip",
            DataError::Truncated { .. } => "truncated",
            DataError::ForbiddenPickle { .. } => "forbidden-pickle",
            DataError::Pickle { .. } => "pickle",
            DataError::Shape { .. } => "shape",
            DataError::Dtype { .. } => "dtype",
            DataError::Image { .. } => "image",
            DataError::MissingColumn { .. } => "missing-column",
            DataError::Csv { .. } => "csv",
            DataError::NonFinite { .. } => "non-finite",
            DataError::UnknownSurvey { .. } => "unknown-survey",
            DataError::ConflictingRows { .. } => "conflicting-rows",
            DataError::MissingRow { .. } => "missing-row",
            DataError::Invalid(_) => "invalid",
        }
    }
}

/// The torch reader's errors (geolife-io) as the variant of the same name: same message, same
/// [`DataError::kind`].
impl From<TorchError> for DataError {
    fn from(e: TorchError) -> Self {
        match e {
            TorchError::Io {
                path,
                survey,
                source,
            } => DataError::Io {
                path,
                survey: survey.into(),
                source,
            },
            TorchError::Missing {
                path,
                survey,
                what,
                hint,
            } => DataError::Missing {
                path,
                survey: survey.into(),
                what,
                hint,
            },
            TorchError::NotZip {
                path,
                survey,
                reason,
            } => DataError::NotZip {
                path,
                survey: survey.into(),
                reason,
            },
            TorchError::Truncated {
                path,
                survey,
                reason,
            } => DataError::Truncated {
                path,
                survey: survey.into(),
                reason,
            },
            TorchError::ForbiddenPickle { path, survey, what } => DataError::ForbiddenPickle {
                path,
                survey: survey.into(),
                what,
            },
            TorchError::Pickle {
                path,
                survey,
                reason,
            } => DataError::Pickle {
                path,
                survey: survey.into(),
                reason,
            },
            TorchError::Shape {
                path,
                survey,
                expected,
                found,
            } => DataError::Shape {
                path,
                survey: survey.into(),
                expected,
                found,
            },
            TorchError::Dtype {
                path,
                survey,
                expected,
                found,
            } => DataError::Dtype {
                path,
                survey: survey.into(),
                expected,
                found,
            },
            TorchError::Invalid(reason) => DataError::Invalid(reason),
        }
    }
}

/// Two rows of one survey in one CSV that disagree on `column` (the first differing one).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RowConflict {
    pub survey_id: u64,
    /// Line of the first row of the survey (the one whose values are kept).
    pub first_line: u64,
    /// Line of the row that disagrees with it.
    pub line: u64,
    pub column: String,
    /// The two values as read (`` for an empty cell).
    pub first: String,
    pub other: String,
}

impl RowConflict {
    /// The error naming `path` (the CSV), the survey, both lines and both values.
    pub fn to_error(&self, path: &std::path::Path) -> DataError {
        DataError::ConflictingRows {
            path: path.to_path_buf(),
            survey: self.survey_id.into(),
            reason: format!(
                "lines {} and {} give `{}` = `{}` and `{}`; one row per survey is expected \
                 (fix or remove one row, or pass --skip-bad to leave the survey out)",
                self.first_line, self.line, self.column, self.first, self.other
            ),
        }
    }
}

/// Result alias of the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every torch-reader error keeps its message and variant name through the conversion.
    #[test]
    fn torch_errors_convert_with_the_same_message_and_kind() {
        let p = || PathBuf::from("x.pt");
        let s = |r: &str| r.to_string();
        for survey in [None, Some(7)] {
            let errors = [
                TorchError::Io {
                    path: p(),
                    survey,
                    source: std::io::Error::other("disk"),
                },
                TorchError::Missing {
                    path: p(),
                    survey,
                    what: s("torch file"),
                    hint: s("check"),
                },
                TorchError::NotZip {
                    path: p(),
                    survey,
                    reason: s("r"),
                },
                TorchError::Truncated {
                    path: p(),
                    survey,
                    reason: s("r"),
                },
                TorchError::ForbiddenPickle {
                    path: p(),
                    survey,
                    what: s("w"),
                },
                TorchError::Pickle {
                    path: p(),
                    survey,
                    reason: s("r"),
                },
                TorchError::Shape {
                    path: p(),
                    survey,
                    expected: vec![1, 2],
                    found: vec![3],
                },
                TorchError::Dtype {
                    path: p(),
                    survey,
                    expected: s("float32"),
                    found: s("int64"),
                },
                TorchError::Invalid(s("empty stack")),
            ];
            // The variant's name, as the fuzz verdicts record it.
            let variant = |debug: String| {
                debug
                    .split(|c: char| !c.is_alphanumeric())
                    .next()
                    .unwrap_or("")
                    .to_string()
            };
            for e in errors {
                let (text, name) = (e.to_string(), variant(format!("{e:?}")));
                let d = DataError::from(e);
                assert_eq!(d.to_string(), text);
                assert_eq!(variant(format!("{d:?}")), name);
                if !matches!(d, DataError::Invalid(_)) {
                    assert_eq!(text.contains(" (survey 7)"), survey.is_some(), "{text}");
                }
            }
        }
    }
}
