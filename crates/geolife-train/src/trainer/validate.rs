//! The validation pass of an epoch: scores of the validation surveys, their mean BCE, the F1@K
//! curve with its best K, and the best global threshold, from one rank table.

use burn::tensor::Device;
use geolife_metrics::{RankTable, ScoreFile, Scores, THRESHOLD_MAX_K};
use geolife_model::fusion::{FusionConfig, FusionModel};

use super::inputs::score_surveys;
use crate::error::TrainError;
use crate::loader::{BatchPlan, SampleSource};
use crate::vocab::Vocabulary;

/// One epoch's validation results.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Probabilities of every validation survey (split `val`).
    pub scores: ScoreFile,
    /// Label sets aligned to the score rows.
    pub labels: Vec<Vec<u32>>,
    /// Mean BCE.
    pub loss: f64,
    /// Samples-F1 of top-K for K = 1..=k_max.
    pub curve: Vec<f64>,
    /// The best K of the curve and its F1.
    pub best_k: usize,
    pub f1: f64,
    /// Best global threshold and its F1.
    pub threshold: f32,
    pub threshold_f1: f64,
}

/// What to validate with and on.
pub struct Validator<'a, S: SampleSource + ?Sized> {
    pub data: &'a S,
    pub indices: &'a [usize],
    pub plan: BatchPlan,
    pub vocab: &'a Vocabulary,
    pub batch_size: usize,
    pub workers: usize,
    pub k_max: usize,
    /// Name recorded in the score file (`geolife-fusion-<backbone>`).
    pub model_name: String,
}

impl<S: SampleSource + ?Sized> Validator<'_, S> {
    /// Scores `model` (an inference model on `device`); a non-finite loss or score becomes
    /// the error `non_finite(loss)` gives.
    pub fn run(
        &self,
        model: &FusionModel,
        fc: &FusionConfig,
        device: &Device,
        non_finite: impl FnOnce(f64) -> TrainError,
    ) -> Result<Validation, TrainError> {
        let s = score_surveys(
            model,
            fc,
            self.data,
            self.indices,
            &self.plan,
            self.vocab,
            self.batch_size,
            self.workers,
            device,
        )?;
        if !s.loss.is_finite() || s.probs.iter().any(|p| !p.is_finite()) {
            return Err(non_finite(s.loss));
        }
        let scores = ScoreFile {
            model: self.model_name.clone(),
            split: "val".into(),
            survey_ids: s.survey_ids,
            species: self.vocab.species().to_vec(),
            scores: Scores::Dense { data: s.probs },
        };
        let table = RankTable::new(&scores, &s.labels, self.k_max.max(THRESHOLD_MAX_K));
        let curve = table.f1_at_k_curve(self.k_max);
        let (best_k, f1) = geolife_metrics::best_k(&curve);
        let (threshold, threshold_f1) = table.best_threshold(1, THRESHOLD_MAX_K);
        Ok(Validation {
            scores,
            labels: s.labels,
            loss: s.loss,
            curve,
            best_k,
            f1,
            threshold,
            threshold_f1,
        })
    }
}
