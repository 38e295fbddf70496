//! Selection policies that turn scores into species lists: fixed top-K, a global threshold
//! with min/max K, and a per-survey K learned from validation labels; fitting, cross-validation
//! and TOML persistence (with a record of what each policy was fitted on).
// Index loops read clearer than iterator chains in the small linear algebra below.
#![allow(clippy::needless_range_loop)]

use std::ops::Range;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::f1::{RankTable, RankedRow, ordered_sum};
use crate::scores::ScoreFile;
use crate::{MetricsError, atomic::write_atomic};

/// How many species each survey keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Policy {
    /// The `k` best species of every survey.
    TopK { k: usize },
    /// Species scoring `>= t`, at least `min_k` and at most `max_k` of them.
    Threshold { t: f32, min_k: usize, max_k: usize },
    /// A K per survey from its score distribution (see [`PerSurveyModel`]).
    PerSurveyK {
        #[serde(flatten)]
        model: PerSurveyModel,
    },
}

/// Per-survey K: a ridge regression predicts the number of true species `C` from features of
/// the survey's top-`depth` scores (and the typical richness of surveys where its top species
/// occur); a logistic model with per-species offsets turns each ranked score into a hit
/// probability `q_j`; the survey keeps the `k` entries of highest `q` (k in `min_k..=max_k`)
/// maximising the plug-in expected F1 `2 sum_{j<=k} q_j / (k + s C)`, `s` tuned on validation F1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerSurveyModel {
    /// Scores looked at per survey (features and candidates).
    pub depth: usize,
    pub min_k: usize,
    pub max_k: usize,
    /// Count model on standardised survey features: `ln(1 + C) = w . z`.
    pub count_weights: Vec<f64>,
    pub feature_mean: Vec<f64>,
    pub feature_std: Vec<f64>,
    /// Hit model: `q = sigmoid(v . [1, ln p, ln(1 + rank), ln p - ln p_1, ln C] + offset_s)`.
    pub hit_weights: Vec<f64>,
    /// Scale of the predicted count in the expected-F1 denominator.
    pub count_scale: f64,
    /// Species seen in fitting (sorted real ids) with their hit offset and mean `ln(1 + C)` of
    /// the surveys ranking them in the top 10 (both shrunk towards the global value).
    pub species_ids: Vec<u32>,
    pub species_offset: Vec<f64>,
    pub species_richness: Vec<f64>,
    /// Richness used for species never seen in fitting.
    pub default_richness: f64,
}

/// What a saved policy was fitted on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FitInfo {
    /// Score file used for fitting.
    pub scores: String,
    /// Where the labels came from: a solution CSV, a run folder or a packed cache.
    pub solution: String,
    pub model: String,
    pub split: String,
    /// Number of labelled surveys fitted on.
    pub n_surveys: usize,
    /// Cross-validated samples-F1 of this policy.
    pub cv_f1: f64,
    /// Cross-validated samples-F1 of top-25 on the same data, for comparison.
    pub cv_f1_top25: f64,
    pub folds: usize,
    pub seed: u64,
}

/// The TOML file: the policy plus an optional record of its fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyFile {
    pub policy: Policy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted_on: Option<FitInfo>,
}

impl PolicyFile {
    /// Writes the file as TOML, atomically.
    pub fn save(&self, path: &Path) -> Result<(), MetricsError> {
        let text = toml::to_string_pretty(self).map_err(|e| MetricsError::Policy {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        write_atomic(path, |w| w.write_all(text.as_bytes()))
    }

    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<PolicyFile, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(|e| MetricsError::io(path, e))?;
        let file: PolicyFile = toml::from_str(&text).map_err(|e| MetricsError::Policy {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.policy
            .check()
            .map_err(|message| MetricsError::Policy {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(file)
    }
}

impl Policy {
    /// Saves the bare policy (no fit record) as TOML.
    pub fn save(&self, path: &Path) -> Result<(), MetricsError> {
        PolicyFile {
            policy: self.clone(),
            fitted_on: None,
        }
        .save(path)
    }

    /// Loads the policy of a policy file.
    pub fn load(path: &Path) -> Result<Policy, MetricsError> {
        Ok(PolicyFile::load(path)?.policy)
    }

    /// Short description for tables and logs.
    pub fn describe(&self) -> String {
        match self {
            Policy::TopK { k } => format!("top-{k}"),
            Policy::Threshold { t, min_k, max_k } => {
                format!("threshold {t:.5} (K {min_k}..{max_k})")
            }
            Policy::PerSurveyK { model } => format!(
                "per-survey K (K {}..{}, count scale {:.2})",
                model.min_k, model.max_k, model.count_scale
            ),
        }
    }

    /// Checks parameter consistency (K bounds, vector lengths, finite values).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Policy::TopK { k } if *k == 0 => Err("top_k: k must be at least 1".into()),
            Policy::Threshold { t, min_k, max_k } => {
                if t.is_nan() {
                    Err("threshold: t is NaN".into())
                } else if *min_k == 0 || min_k > max_k {
                    Err(format!(
                        "threshold: need 1 <= min_k <= max_k, got {min_k}..{max_k}"
                    ))
                } else {
                    Ok(())
                }
            }
            Policy::PerSurveyK { model: m } => {
                if m.min_k == 0 || m.min_k > m.max_k || m.depth < m.max_k {
                    Err(format!(
                        "per_survey_k: need 1 <= min_k <= max_k <= depth, got {}..{} depth {}",
                        m.min_k, m.max_k, m.depth
                    ))
                } else if m.count_weights.len() != N_FEATURES + 1
                    || m.feature_mean.len() != N_FEATURES
                    || m.feature_std.len() != N_FEATURES
                    || m.hit_weights.len() != N_HIT
                    || m.species_offset.len() != m.species_ids.len()
                    || m.species_richness.len() != m.species_ids.len()
                    || !m.species_ids.is_sorted()
                {
                    Err("per_survey_k: weight vectors have the wrong length".into())
                } else if m
                    .count_weights
                    .iter()
                    .chain(&m.feature_mean)
                    .chain(&m.feature_std)
                    .chain(&m.hit_weights)
                    .any(|x| !x.is_finite())
                    || !m.count_scale.is_finite()
                {
                    Err("per_survey_k: non-finite parameter".into())
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether the policy needs real scores (not only ranks).
    pub fn needs_scores(&self) -> bool {
        !matches!(self, Policy::TopK { .. })
    }

    /// How many of the top scores the policy looks at.
    pub fn depth(&self) -> usize {
        match self {
            Policy::TopK { k } => *k,
            Policy::Threshold { max_k, .. } => *max_k,
            Policy::PerSurveyK { model } => model.depth,
        }
    }

    /// Positions (into the survey's ranked top list) of the species to keep, in output order;
    /// at least one when the survey has any score.
    pub fn pick(&self, species: &[u32], scores: &[f32]) -> Vec<usize> {
        let len = scores.len();
        match self {
            Policy::TopK { k } => (0..(*k).max(1).min(len)).collect(),
            Policy::Threshold { t, min_k, max_k } => {
                let above = scores.iter().take(*max_k).filter(|&&x| x >= *t).count();
                (0..above.max(*min_k).min(*max_k).max(1).min(len)).collect()
            }
            Policy::PerSurveyK { model } => model.pick(species, scores, model.count_scale),
        }
    }

    /// Real species ids per survey; never empty unless the survey has no score at all.
    /// Ranked-only files use the pseudo-score `1 / (rank + 1)`: prefer [`Policy::try_select`].
    pub fn select(&self, scores: &ScoreFile) -> Vec<Vec<u32>> {
        let depth = self.depth();
        (0..scores.len())
            .into_par_iter()
            .map(|i| {
                let top = scores.top(i, depth);
                let sp: Vec<u32> = top
                    .iter()
                    .map(|&(c, _)| scores.species[c as usize])
                    .collect();
                let s: Vec<f32> = top.iter().map(|&(_, x)| x).collect();
                self.pick(&sp, &s).into_iter().map(|j| sp[j]).collect()
            })
            .collect()
    }

    /// Like [`Policy::select`], but refuses score-based policies on ranked-only files.
    pub fn try_select(&self, scores: &ScoreFile) -> Result<Vec<Vec<u32>>, MetricsError> {
        if self.needs_scores() && !scores.has_scores() {
            return Err(MetricsError::NeedsScores(format!(
                "policy {} on model {:?}",
                self.describe(),
                scores.model
            )));
        }
        Ok(self.select(scores))
    }

    /// Per-survey F1 of the policy on a rank table.
    pub fn f1_rows(&self, table: &RankTable) -> Vec<f64> {
        table
            .rows
            .par_iter()
            .map(|r| r.f1_of_pick(&self.pick(&r.species, &r.scores)))
            .collect()
    }

    /// Mean F1 of the policy on a rank table.
    pub fn mean_f1(&self, table: &RankTable) -> f64 {
        mean(&self.f1_rows(table))
    }
}

/// Number of survey features of the count model.
const N_FEATURES: usize = 9;
/// Number of inputs of the hit model.
const N_HIT: usize = 5;
const EPS: f64 = 1e-7;

/// Survey features from its top scores: ln sum, ln top-1, ln p at ranks 5/10/20/last,
/// normalised entropy, share of the top-5 in the sum, mean richness of its top-10 species.
fn survey_features(s: &[f32], richness: f64) -> [f64; N_FEATURES] {
    let at = |r: usize| -> f64 {
        let p = s
            .get(r.min(s.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0);
        (p.max(0.0) as f64 + EPS).ln()
    };
    let sum: f64 = s.iter().map(|&x| x.max(0.0) as f64).sum();
    let top5: f64 = s.iter().take(5).map(|&x| x.max(0.0) as f64).sum();
    let entropy = if sum > 0.0 {
        -s.iter()
            .map(|&x| {
                let q = x.max(0.0) as f64 / sum;
                if q > 0.0 { q * q.ln() } else { 0.0 }
            })
            .sum::<f64>()
            / (s.len().max(2) as f64).ln()
    } else {
        0.0
    };
    [
        (sum + EPS).ln(),
        at(0),
        at(4),
        at(9),
        at(19),
        at(usize::MAX),
        entropy,
        top5 / (sum + EPS),
        richness,
    ]
}

fn hit_inputs(p: f32, rank: usize, p1: f32, ln_count: f64) -> [f64; N_HIT] {
    let lp = (p.max(0.0) as f64 + EPS).ln();
    let lp1 = (p1.max(0.0) as f64 + EPS).ln();
    [1.0, lp, (1.0 + rank as f64).ln(), lp - lp1, ln_count]
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Species in the top 10 used for the richness feature.
const RICH_TOP: usize = 10;
/// Pseudo-counts shrinking per-species statistics towards the global value.
const SHRINK: f64 = 10.0;

impl PerSurveyModel {
    fn species_pos(&self, s: u32) -> Option<usize> {
        self.species_ids.binary_search(&s).ok()
    }

    fn richness(&self, species: &[u32]) -> f64 {
        let top = &species[..species.len().min(RICH_TOP)];
        if top.is_empty() {
            return self.default_richness;
        }
        top.iter()
            .map(|&s| {
                self.species_pos(s)
                    .map_or(self.default_richness, |p| self.species_richness[p])
            })
            .sum::<f64>()
            / top.len() as f64
    }

    /// Predicted number of true species of a survey.
    pub fn predicted_count(&self, species: &[u32], s: &[f32]) -> f64 {
        let f = survey_features(s, self.richness(species));
        let mut y = self.count_weights[0];
        for j in 0..N_FEATURES {
            y += self.count_weights[j + 1] * (f[j] - self.feature_mean[j]) / self.feature_std[j];
        }
        (y.exp() - 1.0).max(1.0)
    }

    /// Hit probability of each of the first `max_k` entries.
    fn hit_probs(&self, species: &[u32], s: &[f32], count: f64) -> Vec<f64> {
        let p1 = s.first().copied().unwrap_or(0.0);
        let lc = count.ln();
        s.iter()
            .zip(species)
            .take(self.max_k)
            .enumerate()
            .map(|(j, (&p, &sp))| {
                let x = hit_inputs(p, j, p1, lc);
                let off = self.species_pos(sp).map_or(0.0, |q| self.species_offset[q]);
                sigmoid(
                    x.iter()
                        .zip(&self.hit_weights)
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                        + off,
                )
            })
            .collect()
    }

    /// Positions to keep with the count scaled by `scale`.
    fn pick(&self, species: &[u32], s: &[f32], scale: f64) -> Vec<usize> {
        if s.is_empty() {
            return Vec::new();
        }
        let count = self.predicted_count(species, s);
        let q = self.hit_probs(species, s, count);
        pick_from(&q, scale * count, self.min_k, self.max_k)
    }
}

/// Orders entries by hit probability and keeps the best expected-F1 prefix.
fn pick_from(q: &[f64], c: f64, min_k: usize, max_k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..q.len()).collect();
    order.sort_by(|&a, &b| q[b].total_cmp(&q[a]).then(a.cmp(&b)));
    let sorted: Vec<f64> = order.iter().map(|&j| q[j]).collect();
    let k = best_k(&sorted, c, min_k, max_k).min(order.len());
    order.truncate(k.max(1));
    order
}

/// argmax over k in min_k..=max_k of 2 sum_{j<k} q_j / (k + c).
fn best_k(q: &[f64], c: f64, min_k: usize, max_k: usize) -> usize {
    let mut best = (min_k, f64::NEG_INFINITY);
    let mut cum = 0.0;
    for (j, &qj) in q.iter().enumerate().take(max_k) {
        cum += qj;
        let k = j + 1;
        if k >= min_k {
            let v = 2.0 * cum / (k as f64 + c);
            if v > best.1 {
                best = (k, v);
            }
        }
    }
    best.0
}

/// Options for fitting policies.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    /// Smallest and largest K any policy may keep.
    pub min_k: usize,
    pub max_k: usize,
    /// Ridge penalty of the count model (on standardised features).
    pub ridge: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            min_k: 1,
            max_k: 50,
            ridge: 1.0,
        }
    }
}

/// The K in 1..=max_k with the best mean F1.
pub fn fit_top_k(table: &RankTable, max_k: usize) -> (Policy, f64) {
    let (k, f1) = crate::f1::best_k(&table.f1_at_k_curve(max_k.max(1)));
    (Policy::TopK { k }, f1)
}

/// The best global threshold with the given K bounds.
pub fn fit_threshold(table: &RankTable, opts: &FitOptions) -> (Policy, f64) {
    let min_k = opts.min_k.max(1);
    let (t, f1) = table.best_threshold(min_k, opts.max_k);
    (
        Policy::Threshold {
            t,
            min_k,
            max_k: opts.max_k.max(min_k),
        },
        f1,
    )
}

/// Fits the per-survey K model on a labelled rank table (depth >= `opts.max_k`).
pub fn fit_per_survey(table: &RankTable, opts: &FitOptions) -> Result<(Policy, f64), MetricsError> {
    let rows: Vec<&RankedRow> = table.rows.iter().filter(|r| !r.scores.is_empty()).collect();
    if rows.len() < 10 {
        return Err(MetricsError::Invalid(format!(
            "per-survey K needs at least 10 labelled surveys with scores, got {}",
            rows.len()
        )));
    }
    let min_k = opts.min_k.max(1);
    let max_k = opts.max_k.max(min_k);
    // 0. Per-species richness: mean ln(1 + |truth|) of surveys ranking the species top-10.
    let global_rich = rows
        .iter()
        .map(|r| (1.0 + r.n_true as f64).ln())
        .sum::<f64>()
        / rows.len() as f64;
    let mut rich: std::collections::BTreeMap<u32, (f64, f64)> = Default::default();
    for r in &rows {
        let y = (1.0 + r.n_true as f64).ln();
        for &sp in r.species.iter().take(RICH_TOP) {
            let e = rich.entry(sp).or_insert((0.0, 0.0));
            e.0 += y;
            e.1 += 1.0;
        }
        for &sp in r.species.iter().take(max_k) {
            rich.entry(sp).or_insert((0.0, 0.0));
        }
    }
    let species_ids: Vec<u32> = rich.keys().copied().collect();
    let species_richness: Vec<f64> = rich
        .values()
        .map(|&(s, n)| (s + SHRINK * global_rich) / (n + SHRINK))
        .collect();
    let mut model = PerSurveyModel {
        depth: table.depth.max(max_k),
        min_k,
        max_k,
        count_weights: vec![0.0; N_FEATURES + 1],
        feature_mean: vec![0.0; N_FEATURES],
        feature_std: vec![1.0; N_FEATURES],
        hit_weights: vec![0.0; N_HIT],
        count_scale: 1.0,
        species_offset: vec![0.0; species_ids.len()],
        species_ids,
        species_richness,
        default_richness: global_rich,
    };
    // 1. Count model: ridge regression of ln(1 + |truth|) on standardised features.
    let feats: Vec<[f64; N_FEATURES]> = rows
        .iter()
        .map(|r| survey_features(&r.scores, model.richness(&r.species)))
        .collect();
    let n = feats.len() as f64;
    let mut mean_f = vec![0.0; N_FEATURES];
    for f in &feats {
        for j in 0..N_FEATURES {
            mean_f[j] += f[j] / n;
        }
    }
    let mut std_f = vec![0.0; N_FEATURES];
    for f in &feats {
        for j in 0..N_FEATURES {
            std_f[j] += (f[j] - mean_f[j]).powi(2) / n;
        }
    }
    for s in &mut std_f {
        *s = s.sqrt().max(1e-9);
    }
    let d = N_FEATURES + 1;
    let mut ata = vec![vec![0.0; d]; d];
    let mut atb = vec![0.0; d];
    for (f, r) in feats.iter().zip(&rows) {
        let mut z = vec![1.0; d];
        for j in 0..N_FEATURES {
            z[j + 1] = (f[j] - mean_f[j]) / std_f[j];
        }
        let y = (1.0 + r.n_true as f64).ln();
        for a in 0..d {
            atb[a] += z[a] * y;
            for b in 0..d {
                ata[a][b] += z[a] * z[b];
            }
        }
    }
    for (a, row) in ata.iter_mut().enumerate().skip(1) {
        row[a] += opts.ridge;
    }
    model.count_weights = solve(ata, atb)?;
    model.feature_mean = mean_f;
    model.feature_std = std_f;
    // 2. Hit model: logistic regression (Newton / IRLS) on every ranked entry, then
    //    per-species offsets ln((hits + a) / (expected hits + a)).
    let mut xs: Vec<[f64; N_HIT]> = Vec::new();
    let mut ys: Vec<f64> = Vec::new();
    for r in &rows {
        let c = model.predicted_count(&r.species, &r.scores);
        let p1 = r.scores[0];
        for j in 0..r.scores.len().min(max_k) {
            xs.push(hit_inputs(r.scores[j], j, p1, c.ln()));
            ys.push(if r.hits[j] { 1.0 } else { 0.0 });
        }
    }
    model.hit_weights = logistic(&xs, &ys)?;
    let mut observed = vec![0.0; model.species_ids.len()];
    let mut expected = vec![0.0; model.species_ids.len()];
    for r in &rows {
        let c = model.predicted_count(&r.species, &r.scores);
        let q = model.hit_probs(&r.species, &r.scores, c);
        for (j, &qj) in q.iter().enumerate() {
            if let Some(p) = model.species_pos(r.species[j]) {
                expected[p] += qj;
                if r.hits[j] {
                    observed[p] += 1.0;
                }
            }
        }
    }
    let a = SHRINK * 0.5;
    model.species_offset = observed
        .iter()
        .zip(&expected)
        .map(|(o, e)| ((o + a) / (e + a)).ln().clamp(-3.0, 3.0))
        .collect();
    // 3. Scale of the count in the denominator: grid search on mean F1. Counts and hit
    //    probabilities do not depend on the scale: compute them once per survey.
    let cache: Vec<(f64, Vec<usize>, Vec<f64>)> = table
        .rows
        .par_iter()
        .map(|r| {
            if r.scores.is_empty() {
                return (1.0, Vec::new(), Vec::new());
            }
            let c = model.predicted_count(&r.species, &r.scores);
            let q = model.hit_probs(&r.species, &r.scores, c);
            let mut order: Vec<usize> = (0..q.len()).collect();
            order.sort_by(|&a, &b| q[b].total_cmp(&q[a]).then(a.cmp(&b)));
            let sorted = order.iter().map(|&j| q[j]).collect();
            (c, order, sorted)
        })
        .collect();
    let mut best = (1.0, f64::NEG_INFINITY);
    for step in 0..=40 {
        let scale = 0.4 + 0.04 * step as f64;
        let f1 = |i: usize| {
            let (c, order, sorted) = &cache[i];
            if order.is_empty() {
                return 0.0;
            }
            let k = best_k(sorted, scale * c, min_k, max_k).clamp(1, order.len());
            table.rows[i].f1_of_pick(&order[..k])
        };
        let part = |range: Range<usize>| range.map(f1).sum::<f64>();
        let f = ordered_sum(table.rows.len(), 0.0, part, |a, b| *a += b) / table.rows.len() as f64;
        if f > best.1 {
            best = (scale, f);
        }
    }
    model.count_scale = best.0;
    Ok((Policy::PerSurveyK { model }, best.1))
}

/// Solves `a x = b` (small, dense) by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>, MetricsError> {
    let d = b.len();
    for col in 0..d {
        let piv = (col..d)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[piv][col].abs() < 1e-12 {
            return Err(MetricsError::Invalid(
                "singular system while fitting the per-survey K model (constant scores?)".into(),
            ));
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for i in col + 1..d {
            let f = a[i][col] / a[col][col];
            for j in col..d {
                a[i][j] -= f * a[col][j];
            }
            b[i] -= f * b[col];
        }
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|j| a[i][j] * x[j]).sum();
        x[i] = (b[i] - s) / a[i][i];
    }
    Ok(x)
}

/// Logistic regression by Newton's method with a tiny ridge for stability.
fn logistic(xs: &[[f64; N_HIT]], ys: &[f64]) -> Result<Vec<f64>, MetricsError> {
    let mut w = vec![0.0; N_HIT];
    for _ in 0..25 {
        let part = |range: Range<usize>| {
            let (mut g, mut h) = (vec![0.0; N_HIT], vec![vec![0.0; N_HIT]; N_HIT]);
            for (x, &y) in xs[range.clone()].iter().zip(&ys[range]) {
                let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
                let p = sigmoid(z);
                let wgt = (p * (1.0 - p)).max(1e-9);
                for a in 0..N_HIT {
                    g[a] += (p - y) * x[a];
                    for b in 0..N_HIT {
                        h[a][b] += wgt * x[a] * x[b];
                    }
                }
            }
            (g, h)
        };
        let zero = (vec![0.0; N_HIT], vec![vec![0.0; N_HIT]; N_HIT]);
        let (g, h) = ordered_sum(xs.len(), zero, part, |(g1, h1), (g2, h2)| {
            for a in 0..N_HIT {
                g1[a] += g2[a];
                for b in 0..N_HIT {
                    h1[a][b] += h2[a][b];
                }
            }
        });
        let mut h = h;
        for (a, row) in h.iter_mut().enumerate() {
            row[a] += 1e-6 * xs.len() as f64;
        }
        let step = solve(h, g.clone())?;
        let mut moved = 0.0f64;
        for a in 0..N_HIT {
            w[a] -= step[a];
            moved = moved.max(step[a].abs());
        }
        if moved < 1e-8 {
            break;
        }
    }
    Ok(w)
}

fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        0.0
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Kind of policy fitted by [`cross_validate`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::VariantNames,
)]
#[strum(serialize_all = "snake_case")]
pub enum PolicyKind {
    /// Fixed top-25 (no fitting: the competition default).
    Top25,
    /// Fixed K chosen on the training folds.
    FixedK,
    /// Global threshold.
    Threshold,
    /// Per-survey K model.
    PerSurveyK,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Top25,
        PolicyKind::FixedK,
        PolicyKind::Threshold,
        PolicyKind::PerSurveyK,
    ];

    /// Name used in reports and on the command line.
    pub fn name(&self) -> &'static str {
        self.into()
    }

    /// Fits this kind on a labelled rank table; returns the policy and its training F1.
    pub fn fit(&self, table: &RankTable, opts: &FitOptions) -> Result<(Policy, f64), MetricsError> {
        match self {
            PolicyKind::Top25 => {
                let p = Policy::TopK { k: 25 };
                let f = p.mean_f1(table);
                Ok((p, f))
            }
            PolicyKind::FixedK => Ok(fit_top_k(table, opts.max_k)),
            PolicyKind::Threshold => Ok(fit_threshold(table, opts)),
            PolicyKind::PerSurveyK => fit_per_survey(table, opts),
        }
    }
}

/// Cross-validated mean F1 of a policy kind: `folds` seeded random folds; each survey is scored
/// by the policy fitted on the other folds.
pub fn cross_validate(
    table: &RankTable,
    kind: PolicyKind,
    opts: &FitOptions,
    folds: usize,
    seed: u64,
) -> Result<f64, MetricsError> {
    let n = table.rows.len();
    let folds = folds.clamp(2, n.max(2));
    let assign = fold_assignment(n, folds, seed);
    let mut total = 0.0;
    for f in 0..folds {
        let train: Vec<usize> = (0..n).filter(|&i| assign[i] != f).collect();
        let test: Vec<usize> = (0..n).filter(|&i| assign[i] == f).collect();
        let (policy, _) = kind.fit(&table.subset(&train), opts)?;
        total += policy.f1_rows(&table.subset(&test)).iter().sum::<f64>();
    }
    Ok(total / n.max(1) as f64)
}

/// Seeded random fold of each row (balanced sizes).
pub fn fold_assignment(n: usize, folds: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    let mut assign = vec![0; n];
    for (pos, &i) in order.iter().enumerate() {
        assign[i] = pos % folds.max(1);
    }
    assign
}

/// Absolute path text for fit records.
pub fn path_text(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| PathBuf::from(p))
        .display()
        .to_string()
}

/// One policy kind fitted on a labelled rank table: its cross-validated F1, its training F1 and
/// the policy fitted on every row.
#[derive(Debug, Clone)]
pub struct Calibrated {
    pub kind: PolicyKind,
    pub cv_f1: f64,
    pub train_f1: f64,
    pub policy: Policy,
}

/// The kinds [`calibrate_all`] fitted, and those it skipped with the reason.
pub type Calibration = (Vec<Calibrated>, Vec<(PolicyKind, String)>);

/// Fits every [`PolicyKind`] with `folds`-fold cross-validation. A kind that cannot be fitted
/// on this table (e.g. too few surveys for the per-survey model) is returned with its reason
/// in the second list; top-25 needs no fitting and is always first in the first list.
pub fn calibrate_all(
    table: &RankTable,
    opts: &FitOptions,
    folds: usize,
    seed: u64,
) -> Result<Calibration, MetricsError> {
    let mut fitted = Vec::new();
    let mut skipped = Vec::new();
    for kind in PolicyKind::ALL {
        let result = cross_validate(table, kind, opts, folds, seed)
            .and_then(|cv| kind.fit(table, opts).map(|(p, tr)| (cv, tr, p)));
        match result {
            Ok((cv_f1, train_f1, policy)) => fitted.push(Calibrated {
                kind,
                cv_f1,
                train_f1,
                policy,
            }),
            Err(e) if kind != PolicyKind::Top25 => skipped.push((kind, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok((fitted, skipped))
}

/// The calibrated policy with the best cross-validated F1 (the later kind on ties, as
/// `calibrate --policy auto` always chose).
pub fn best_calibrated(fitted: &[Calibrated]) -> Option<&Calibrated> {
    fitted.iter().max_by(|a, b| a.cv_f1.total_cmp(&b.cv_f1))
}

/// Which policy to keep after [`calibrate_all`]: the best cross-validated (`auto`) or a kind.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PolicyChoice {
    #[default]
    Auto,
    Top25,
    FixedK,
    Threshold,
    PerSurveyK,
}

impl PolicyChoice {
    /// The chosen calibrated policy; `None` when that kind could not be fitted.
    pub fn pick(self, fitted: &[Calibrated]) -> Option<&Calibrated> {
        let kind = match self {
            Self::Auto => return best_calibrated(fitted),
            Self::Top25 => PolicyKind::Top25,
            Self::FixedK => PolicyKind::FixedK,
            Self::Threshold => PolicyKind::Threshold,
            Self::PerSurveyK => PolicyKind::PerSurveyK,
        };
        fitted.iter().find(|c| c.kind == kind)
    }
}

#[cfg(test)]
mod names {
    use super::*;
    use strum::VariantNames;

    /// The names on the command line and in reports (and the same order as `ALL`).
    #[test]
    fn policy_names_are_the_documented_ones() {
        assert_eq!(
            PolicyKind::VARIANTS,
            ["top25", "fixed_k", "threshold", "per_survey_k"]
        );
        let names: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, PolicyKind::VARIANTS);
        assert_eq!(
            PolicyChoice::VARIANTS,
            ["auto", "top25", "fixed_k", "threshold", "per_survey_k"]
        );
        for (i, k) in PolicyKind::ALL.iter().enumerate() {
            let c: PolicyChoice = k.name().parse().unwrap();
            assert_eq!(<&str>::from(c), PolicyChoice::VARIANTS[i + 1]);
        }
        assert_eq!(crate::BlendMethod::VARIANTS, ["mean", "rank"]);
    }
}
