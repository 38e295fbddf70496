//! geolife-train: the training spine of the fusion network: config, splits, transforms, a
//! prefetching loader, the trainer with checkpoints and resume, and batched prediction.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod interrupt;
pub mod loader;
pub mod location;
pub mod pipeline;
pub mod plot;
pub mod predict;
pub mod schedule;
pub mod source;
pub mod split;
pub mod trainer;
pub mod transform;
pub mod vocab;

pub use geolife_io::PROGRESS;

pub use config::TrainConfig;
pub use error::TrainError;
pub use trainer::{Progress, RunInfo, TrainOptions, TrainSummary, train};
