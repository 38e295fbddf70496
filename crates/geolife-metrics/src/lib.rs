//! Scoring for GeoLifeCLEF 2024 without any tensor library: samples-F1 and F1@K, thresholds and
//! per-survey K policies, score files (safetensors, Kaggle, malpolon), ensembles and submissions.

mod atomic;
pub mod ensemble;
mod error;
pub mod f1;
pub mod plot;
pub mod policy;
pub mod scores;
pub mod text;

pub use atomic::write_atomic;
pub use ensemble::{BlendMethod, EnsembleReport, FitTarget, FittedWeights, blend, fit_weights};
pub use error::MetricsError;
pub use f1::{
    RankTable, SetMetrics, THRESHOLD_MAX_K, best_global_threshold, best_k, f1_at_k_curve,
    oracle_f1, samples_f1, set_metrics,
};
pub use policy::{
    Calibrated, FitInfo, FitOptions, Policy, PolicyChoice, PolicyFile, PolicyKind, best_calibrated,
    calibrate_all, cross_validate, fold_assignment,
};
pub use scores::{ScoreFile, Scores};
pub use text::{Alignment, Solution, read_solution, read_survey_ids, write_submission};
