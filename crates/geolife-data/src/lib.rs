//! geolife-data: GLC24 files -> typed, validated arrays (readers; torch files through
//! geolife-io's safe reader), the packed training cache and the synthetic dataset writer. No
//! tensor library.

pub mod cache;
mod csvutil;
pub mod cubes;
pub mod dataset;
pub mod env;
pub mod error;
pub mod inspect;
pub mod layout;
pub mod metadata;
pub mod patches;
pub mod po;
pub mod split;
pub mod synth;

pub use cubes::NanPolicy;
pub use dataset::{Dataset, DatasetOptions};
pub use env::{EnvCoverage, EnvGroup, TabularTable};
pub use error::{DataError, Result, RowConflict, SurveyTag};
pub use metadata::SurveyMeta;

use std::fmt;
use std::str::FromStr;

/// A PA split of the official dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// Both splits, train first.
    pub const ALL: [Split; 2] = [Split::Train, Split::Test];

    /// Lower-case name used in file names (`train`, `test`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(DataError::Invalid(format!(
                "unknown split `{other}`: expected `train` or `test`"
            ))),
        }
    }
}
