//! Ensembles of score files: weighted mean of probabilities or weighted reciprocal-rank average,
//! over the union of surveys and species (gaps handled explicitly and reported), and a search
//! for weights that maximise validation samples-F1 after a selection policy.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::f1::RankTable;
use crate::policy::{FitOptions, Policy, fit_threshold, fit_top_k};
use crate::scores::{ScoreFile, Scores, cmp_entry};
use crate::{MetricsError, Solution};

/// How scores are combined.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Default,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BlendMethod {
    /// Weighted mean of probabilities (absent species score 0).
    #[default]
    Mean,
    /// Weighted mean of `1 / (rank + 1)` within each file's ranking (absent species: 0).
    Rank,
}

/// What the blend did with gaps between the inputs.
#[derive(Debug, Clone, Serialize)]
pub struct EnsembleReport {
    /// Surveys in the output (union of all inputs).
    pub n_surveys: usize,
    /// Species in the output vocabulary (union of all inputs).
    pub n_species: usize,
    /// Per input: surveys of the union it lacks (its weight is spread over the other files
    /// for those surveys).
    pub surveys_missing: Vec<usize>,
    /// Per input: species of the union outside its vocabulary (they score 0 in that file).
    pub species_missing: Vec<usize>,
    /// Normalised weights used.
    pub weights: Vec<f64>,
}

/// Blends score files with the given weights (normalised to sum 1; negative or non-finite
/// weights are errors). Output rows: the first file's surveys, then those only later files have.
/// Dense output when any input is dense, otherwise sparse.
pub fn blend(
    files: &[ScoreFile],
    weights: &[f64],
    method: BlendMethod,
) -> Result<(ScoreFile, EnsembleReport), MetricsError> {
    if files.is_empty() {
        return Err(MetricsError::Invalid(
            "ensemble: no score file given".into(),
        ));
    }
    if weights.len() != files.len() {
        return Err(MetricsError::Invalid(format!(
            "ensemble: {} weights for {} score files (give them in the same order)",
            weights.len(),
            files.len()
        )));
    }
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights.iter().sum::<f64>() <= 0.0 {
        return Err(MetricsError::Invalid(format!(
            "ensemble: weights {weights:?} must be finite, non-negative and not all zero"
        )));
    }
    if method == BlendMethod::Mean
        && let Some(f) = files.iter().find(|f| !f.has_scores())
    {
        return Err(MetricsError::NeedsScores(format!(
            "weighted mean over model {:?} (use the rank method)",
            f.model
        )));
    }
    let total: f64 = weights.iter().sum();
    let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();

    // Union of surveys (first-seen order) and species (sorted).
    let mut survey_ids: Vec<u64> = Vec::new();
    let mut row_of: HashMap<u64, usize> = HashMap::new();
    for f in files {
        for &id in &f.survey_ids {
            row_of.entry(id).or_insert_with(|| {
                survey_ids.push(id);
                survey_ids.len() - 1
            });
        }
    }
    let mut species: Vec<u32> = files
        .iter()
        .flat_map(|f| f.species.iter().copied())
        .collect();
    species.sort_unstable();
    species.dedup();
    let col_of: HashMap<u32, u32> = species
        .iter()
        .enumerate()
        .map(|(c, &s)| (s, c as u32))
        .collect();
    let n = survey_ids.len();
    let v = species.len();

    // Per file: its row for each output row, and its column -> output column map.
    let src_rows: Vec<Vec<Option<usize>>> = files
        .iter()
        .map(|f| {
            let idx = f.index();
            survey_ids.iter().map(|id| idx.get(id).copied()).collect()
        })
        .collect();
    let col_maps: Vec<Vec<u32>> = files
        .iter()
        .map(|f| f.species.iter().map(|s| col_of[s]).collect())
        .collect();
    let report = EnsembleReport {
        n_surveys: n,
        n_species: v,
        surveys_missing: src_rows
            .iter()
            .map(|r| r.iter().filter(|x| x.is_none()).count())
            .collect(),
        species_missing: files.iter().map(|f| v - f.species.len()).collect(),
        weights: weights.clone(),
    };

    // One output row: (column, weighted contribution) pairs, weights renormalised over the
    // files that have this survey.
    let row_entries = |r: usize| -> Vec<(u32, f32)> {
        let present: f64 = (0..files.len())
            .filter(|&k| src_rows[k][r].is_some())
            .map(|k| weights[k])
            .sum();
        let mut out: Vec<(u32, f32)> = Vec::new();
        if present <= 0.0 {
            return out;
        }
        for (k, f) in files.iter().enumerate() {
            let Some(i) = src_rows[k][r] else { continue };
            let w = (weights[k] / present) as f32;
            if w == 0.0 {
                continue;
            }
            let map = &col_maps[k];
            match (method, &f.scores) {
                (BlendMethod::Mean, Scores::Dense { data }) => {
                    let fv = f.species.len();
                    for (c, &x) in data[i * fv..(i + 1) * fv].iter().enumerate() {
                        out.push((map[c], w * x));
                    }
                }
                (BlendMethod::Mean, Scores::Sparse { rows }) => {
                    out.extend(rows[i].iter().map(|&(c, x)| (map[c as usize], w * x)));
                }
                (BlendMethod::Mean, Scores::Ranked { .. }) => {}
                (BlendMethod::Rank, _) => {
                    let ranked = f.top(i, usize::MAX);
                    out.extend(
                        ranked
                            .iter()
                            .enumerate()
                            .map(|(rank, &(c, _))| (map[c as usize], w / (rank as f32 + 1.0))),
                    );
                }
            }
        }
        out
    };

    let any_dense = files
        .iter()
        .any(|f| matches!(f.scores, Scores::Dense { .. }));
    let scores = if any_dense {
        let mut data = vec![0f32; n * v];
        data.par_chunks_mut(v.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (c, x) in row_entries(r) {
                    row[c as usize] += x;
                }
            });
        Scores::Dense { data }
    } else {
        let rows = (0..n)
            .into_par_iter()
            .map(|r| {
                let mut acc: HashMap<u32, f32> = HashMap::new();
                for (c, x) in row_entries(r) {
                    *acc.entry(c).or_insert(0.0) += x;
                }
                let mut row: Vec<(u32, f32)> = acc.into_iter().collect();
                row.sort_unstable_by(cmp_entry);
                row
            })
            .collect();
        Scores::Sparse { rows }
    };
    let model = files
        .iter()
        .map(|f| f.model.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let split = files[0].split.clone();
    Ok((
        ScoreFile {
            model: format!("ensemble({model})"),
            split,
            survey_ids,
            species,
            scores,
        },
        report,
    ))
}

/// What the weight search optimises: samples-F1 after this selection.
#[derive(Debug, Clone)]
pub enum FitTarget {
    /// A fixed policy applied to every candidate blend.
    Policy(Policy),
    /// The best fixed K (1..=max_k) of each candidate blend.
    BestTopK { max_k: usize },
    /// The best global threshold of each candidate blend.
    BestThreshold(FitOptions),
}

/// Ensemble weights: the result of a weight search (`ensemble --fit`), or weights from
/// elsewhere (such as the paper's, `configs/ensemble-paper.toml`). The F1 fields are absent
/// when geolife did not measure them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedWeights {
    /// Normalised weights, one per input file in order.
    pub weights: Vec<f64>,
    pub method: BlendMethod,
    /// Validation samples-F1 geolife measured with these weights (labelled surveys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    /// Samples-F1 geolife measured with equal weights on the same data, for comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_equal: Option<f64>,
    /// Samples-F1 a publication reports for these weights (not measured by geolife).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper_f1: Option<f64>,
    /// What the F1 was measured after (e.g. "best top-K"), and where for a paper's figure.
    pub target: String,
    /// The score files the weights were fitted on, in order.
    pub files: Vec<String>,
}

/// Searches weights on the simplex (coordinate search, grid step 0.05, 3 sweeps) maximising
/// the samples-F1 of the blend's selection on the labelled surveys of `solution`.
pub fn fit_weights(
    files: &[ScoreFile],
    solution: &Solution,
    method: BlendMethod,
    target: &FitTarget,
) -> Result<FittedWeights, MetricsError> {
    let m = files.len();
    let depth = match target {
        FitTarget::Policy(p) => p.depth(),
        FitTarget::BestTopK { max_k } => *max_k,
        FitTarget::BestThreshold(o) => o.max_k,
    }
    .max(1);
    let evaluate = |w: &[f64]| -> Result<f64, MetricsError> {
        let (blended, _) = blend(files, w, method)?;
        let al = solution.align(&blended.survey_ids);
        let known: Vec<usize> = (0..blended.len()).filter(|&i| al.known[i]).collect();
        if known.is_empty() {
            return Err(MetricsError::Invalid(
                "ensemble --fit: no survey of the score files is in the solution".into(),
            ));
        }
        let sub = blended.subset(&known);
        let truth: Vec<Vec<u32>> = known.iter().map(|&i| al.truth[i].clone()).collect();
        let table = RankTable::new(&sub, &truth, depth);
        Ok(match target {
            FitTarget::Policy(p) => p.mean_f1(&table),
            FitTarget::BestTopK { max_k } => fit_top_k(&table, *max_k).1,
            FitTarget::BestThreshold(o) => fit_threshold(&table, o).1,
        })
    };
    let equal = vec![1.0 / m as f64; m];
    let f1_equal = evaluate(&equal)?;
    let mut best = (equal, f1_equal);
    if m > 1 {
        let mut cache: HashMap<Vec<u64>, f64> = HashMap::new();
        for _sweep in 0..3 {
            let mut improved = false;
            for k in 0..m {
                for step in 0..=20 {
                    let wk = step as f64 * 0.05;
                    let rest: f64 = (0..m).filter(|&j| j != k).map(|j| best.0[j]).sum();
                    let cand: Vec<f64> = (0..m)
                        .map(|j| {
                            if j == k {
                                wk
                            } else if rest > 0.0 {
                                best.0[j] / rest * (1.0 - wk)
                            } else {
                                (1.0 - wk) / (m - 1) as f64
                            }
                        })
                        .collect();
                    if cand.iter().sum::<f64>() <= 0.0 {
                        continue;
                    }
                    let key: Vec<u64> = cand.iter().map(|x| (x * 1e6).round() as u64).collect();
                    let f = match cache.get(&key) {
                        Some(&f) => f,
                        None => {
                            let f = evaluate(&cand)?;
                            cache.insert(key, f);
                            f
                        }
                    };
                    if f > best.1 + 1e-9 {
                        best = (cand, f);
                        improved = true;
                    }
                }
            }
            if !improved {
                break;
            }
        }
    }
    Ok(FittedWeights {
        weights: best.0,
        method,
        f1: Some(best.1),
        f1_equal: Some(f1_equal),
        paper_f1: None,
        target: match target {
            FitTarget::Policy(p) => p.describe(),
            FitTarget::BestTopK { max_k } => format!("best top-K (K <= {max_k})"),
            FitTarget::BestThreshold(_) => "best global threshold".into(),
        },
        files: Vec::new(),
    })
}

impl FittedWeights {
    /// The F1 figures the file holds, in words: "samples-F1 0.4123 after best top-K (K <= 50)
    /// (equal weights 0.4010)", "paper's samples-F1 0.4258 (...)", or that none is recorded.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f1) = self.f1 {
            let equal = self
                .f1_equal
                .map(|e| format!(" (equal weights {e:.4})"))
                .unwrap_or_default();
            parts.push(format!("samples-F1 {f1:.4} after {}{equal}", self.target));
        }
        if let Some(p) = self.paper_f1 {
            parts.push(format!("paper's samples-F1 {p} ({})", self.target));
        }
        if parts.is_empty() {
            "no samples-F1 recorded".into()
        } else {
            parts.join("; ")
        }
    }

    /// Writes the weights as TOML, atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<(), MetricsError> {
        let text = toml::to_string_pretty(self).map_err(|e| MetricsError::Policy {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        crate::write_atomic(path, |w| w.write_all(text.as_bytes()))
    }

    /// Reads weights written by [`FittedWeights::save`].
    pub fn load(path: &std::path::Path) -> Result<FittedWeights, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(|e| MetricsError::io(path, e))?;
        toml::from_str(&text).map_err(|e| MetricsError::Policy {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}
