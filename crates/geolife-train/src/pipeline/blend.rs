//! Blending: the members' (and the prior's) score files into one, with fixed weights or
//! weights fitted on validation, and `ensemble.toml`, which records them. Shared by the
//! pipeline and the demo, which blends its own rows the same way.

use std::path::Path;

use geolife_metrics::{
    FitTarget, FittedWeights, RankTable, ScoreFile, Solution, best_k, blend, fit_weights,
};

use super::members::MemberScores;
use super::{EnsembleSpec, ResolvedPipeline, outputs};
use crate::error::TrainError;
use crate::trainer::files;

/// A blend of score files and its weights (see [`fit_blend`]).
#[derive(Debug, Clone)]
pub struct Blend {
    /// Normalised weights, one per input file.
    pub weights: Vec<f64>,
    /// Whether they were fitted on validation (else fixed).
    pub fitted: bool,
    pub val: ScoreFile,
    pub test: ScoreFile,
}

/// The rank table of a score file's labelled rows.
pub(super) fn table_of(scores: &ScoreFile, labels: &Solution, depth: usize) -> RankTable {
    let al = labels.align(&scores.survey_ids);
    RankTable::new(scores, &al.truth, depth)
}

/// (best K, its F1) on validation.
pub(super) fn best_k_f1(scores: &ScoreFile, labels: &Solution, max_k: usize) -> (usize, f64) {
    best_k(&table_of(scores, labels, max_k).f1_at_k_curve(max_k))
}

/// Blends `val` and `test` (one file per member, in the same order) with `spec`'s fixed
/// weights, or with weights fitted on the validation files against `labels` (coordinate
/// search maximising the best top-K samples-F1, K <= `max_k`). `model` names the blend.
pub(super) fn fit_blend(
    val: &[ScoreFile],
    test: &[ScoreFile],
    labels: &Solution,
    spec: &EnsembleSpec,
    max_k: usize,
    model: &str,
) -> Result<Blend, TrainError> {
    let (weights, fitted) = match &spec.weights {
        Some(w) => {
            let s: f64 = w.iter().sum();
            (w.iter().map(|x| x / s).collect::<Vec<_>>(), false)
        }
        None => {
            let target = FitTarget::BestTopK { max_k };
            let fitted =
                fit_weights(val, labels, spec.method, &target).map_err(TrainError::from)?;
            (fitted.weights, true)
        }
    };
    let (val, _) = blend(val, &weights, spec.method).map_err(TrainError::from)?;
    let (test, _) = blend(test, &weights, spec.method).map_err(TrainError::from)?;
    Ok(Blend {
        weights,
        fitted,
        val: ScoreFile {
            model: model.into(),
            ..val
        },
        test: ScoreFile {
            model: model.into(),
            ..test
        },
    })
}

impl Blend {
    /// `fitted` or `fixed` (the report's and `ensemble.toml`'s word for the weights).
    pub(super) fn weights_kind(&self) -> &'static str {
        if self.fitted { "fitted" } else { "fixed" }
    }
}

/// The pipeline's blend of every member's scores, its validation and test files written.
pub(super) fn blend_members(
    p: &ResolvedPipeline,
    out: &Path,
    scores: &MemberScores,
    labels: &Solution,
) -> Result<Blend, TrainError> {
    let blend = fit_blend(
        &scores.val,
        &scores.test,
        labels,
        &p.ensemble,
        p.policy.max_k,
        "geolife-pipeline-ensemble",
    )?;
    blend
        .val
        .write(&out.join(outputs::VAL_SCORES))
        .map_err(TrainError::from)?;
    blend
        .test
        .write(&out.join(outputs::TEST_SCORES))
        .map_err(TrainError::from)?;
    Ok(blend)
}

/// `ensemble.toml`: the weights, the blend's validation F1 at its best K (`f1`), that of
/// equal weights (`f1_equal`), and the members' validation files in blend order.
pub(super) fn write_ensemble_file(
    p: &ResolvedPipeline,
    out: &Path,
    val: &[ScoreFile],
    labels: &Solution,
    blended: &Blend,
    f1: f64,
) -> Result<(), TrainError> {
    let method = p.ensemble.method;
    let f1_equal = if val.len() == 1 {
        f1
    } else {
        let equal = vec![1.0 / val.len() as f64; val.len()];
        let (eq, _) = blend(val, &equal, method).map_err(TrainError::from)?;
        best_k_f1(&eq, labels, p.policy.max_k).1
    };
    FittedWeights {
        weights: blended.weights.clone(),
        method,
        f1: Some(f1),
        f1_equal: Some(f1_equal),
        paper_f1: None,
        target: format!(
            "best top-K (K <= {}), {} weights",
            p.policy.max_k,
            blended.weights_kind()
        ),
        files: p
            .members
            .iter()
            .map(|m| format!("{}/{}/{}", outputs::MEMBERS, m.name, files::VAL_SCORES))
            .chain(
                p.prior
                    .iter()
                    .map(|_| format!("{}/{}", outputs::PRIOR, outputs::VAL_SCORES)),
            )
            .collect(),
    }
    .save(&out.join(outputs::ENSEMBLE))
    .map_err(TrainError::from)
}
