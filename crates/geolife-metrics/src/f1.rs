//! Samples-averaged F1 on species sets (the GeoLifeCLEF 2024 metric) and the fast, ranked
//! view of a score file that F1@K curves, thresholds, oracle bounds and policy fitting share.

use std::ops::Range;

use rayon::prelude::*;

use crate::scores::ScoreFile;

/// Terms per task of [`ordered_sum`]: a fixed split, where rayon's adaptive one varies.
const SUM_CHUNK: usize = 256;

/// The sum over `0..n` of `part(range)` for fixed consecutive ranges, computed in parallel and
/// added in order with `add` from `zero`: the same float result on every run and thread count.
/// (rayon's `sum` and `reduce` group terms by how work was stolen, so their last bits vary.)
pub(crate) fn ordered_sum<A: Send>(
    n: usize,
    zero: A,
    part: impl Fn(Range<usize>) -> A + Sync + Send,
    mut add: impl FnMut(&mut A, A),
) -> A {
    let parts: Vec<A> = (0..n.div_ceil(SUM_CHUNK))
        .into_par_iter()
        .map(|c| part(c * SUM_CHUNK..((c + 1) * SUM_CHUNK).min(n)))
        .collect();
    let mut total = zero;
    for p in parts {
        add(&mut total, p);
    }
    total
}

/// Adds `b` into `a` element by element.
fn add_into(a: &mut [f64], b: Vec<f64>) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

/// Largest K considered by [`best_global_threshold`] (a threshold never keeps more species).
pub const THRESHOLD_MAX_K: usize = 200;

/// Set-based scores of a prediction against the truth, averaged over surveys.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SetMetrics {
    /// Mean of per-survey F1 (the competition metric).
    pub samples_f1: f64,
    /// Mean of per-survey precision (empty prediction: 0).
    pub samples_precision: f64,
    /// Mean of per-survey recall (empty truth: 0).
    pub samples_recall: f64,
    /// F1 of the pooled true/false positive and negative counts.
    pub micro_f1: f64,
    /// Number of surveys averaged over.
    pub n: usize,
}

/// Counts of one survey: true positives, predicted set size, true set size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: usize,
    pub n_pred: usize,
    pub n_true: usize,
}

impl Counts {
    /// F1 = 2 TP / (|pred| + |true|); 0 when the prediction is empty.
    pub fn f1(&self) -> f64 {
        f1_of(self.tp, self.n_pred, self.n_true)
    }
}

/// 2 TP / (P + T), with an empty prediction scoring 0.
#[inline]
pub fn f1_of(tp: usize, n_pred: usize, n_true: usize) -> f64 {
    if n_pred == 0 || n_pred + n_true == 0 {
        0.0
    } else {
        2.0 * tp as f64 / (n_pred + n_true) as f64
    }
}

/// Counts of one survey after removing duplicates on both sides.
pub fn counts(pred: &[u32], truth: &[u32]) -> Counts {
    let mut p = pred.to_vec();
    p.sort_unstable();
    p.dedup();
    let mut t = truth.to_vec();
    t.sort_unstable();
    t.dedup();
    let tp = p.iter().filter(|s| t.binary_search(s).is_ok()).count();
    Counts {
        tp,
        n_pred: p.len(),
        n_true: t.len(),
    }
}

/// Samples-averaged F1 on sets: mean over surveys of 2 TP / (2 TP + FP + FN), duplicates removed,
/// an empty prediction scores 0. `pred` and `truth` are aligned; a missing side counts as empty.
pub fn samples_f1(pred: &[Vec<u32>], truth: &[Vec<u32>]) -> f64 {
    set_metrics(pred, truth).samples_f1
}

/// All set metrics over aligned prediction/truth lists (length = the longer of the two).
pub fn set_metrics(pred: &[Vec<u32>], truth: &[Vec<u32>]) -> SetMetrics {
    let n = pred.len().max(truth.len());
    let empty: Vec<u32> = Vec::new();
    let c: Vec<Counts> = (0..n)
        .into_par_iter()
        .map(|i| {
            counts(
                pred.get(i).unwrap_or(&empty),
                truth.get(i).unwrap_or(&empty),
            )
        })
        .collect();
    metrics_from_counts(&c, n)
}

/// Aggregates per-survey counts; `n_total` >= `c.len()` adds surveys that score 0 (missing).
pub fn metrics_from_counts(c: &[Counts], n_total: usize) -> SetMetrics {
    let n_total = n_total.max(c.len());
    if n_total == 0 {
        return SetMetrics {
            samples_f1: 0.0,
            samples_precision: 0.0,
            samples_recall: 0.0,
            micro_f1: 0.0,
            n: 0,
        };
    }
    let (mut f1, mut p, mut r) = (0.0, 0.0, 0.0);
    let (mut tp, mut np, mut nt) = (0usize, 0usize, 0usize);
    for x in c {
        f1 += x.f1();
        if x.n_pred > 0 {
            p += x.tp as f64 / x.n_pred as f64;
        }
        if x.n_true > 0 {
            r += x.tp as f64 / x.n_true as f64;
        }
        tp += x.tp;
        np += x.n_pred;
        nt += x.n_true;
    }
    let n = n_total as f64;
    SetMetrics {
        samples_f1: f1 / n,
        samples_precision: p / n,
        samples_recall: r / n,
        micro_f1: if np + nt == 0 {
            0.0
        } else {
            2.0 * tp as f64 / (np + nt) as f64
        },
        n: n_total,
    }
}

/// One survey of a [`RankTable`]: its best `m` scores and which of them are true species.
#[derive(Debug, Clone, Default)]
pub struct RankedRow {
    /// Real species ids, best first.
    pub species: Vec<u32>,
    /// Scores best first.
    pub scores: Vec<f32>,
    /// `hits[j]`: the species at rank `j` is in the truth.
    pub hits: Vec<bool>,
    /// Size of the (de-duplicated) true set.
    pub n_true: usize,
}

impl RankedRow {
    /// F1 of keeping the top `k` (capped at the row length).
    pub fn f1_at(&self, k: usize) -> f64 {
        let k = k.min(self.hits.len());
        let tp = self.hits[..k].iter().filter(|&&h| h).count();
        f1_of(tp, k, self.n_true)
    }

    /// F1 of keeping the entries at positions `pick`.
    pub fn f1_of_pick(&self, pick: &[usize]) -> f64 {
        let tp = pick.iter().filter(|&&j| self.hits[j]).count();
        f1_of(tp, pick.len(), self.n_true)
    }

    /// F1 of the top-k for k = 1..=k_max (k past the row length keeps the whole row).
    pub fn f1_curve(&self, k_max: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(k_max);
        let mut tp = 0;
        for k in 1..=k_max {
            if k <= self.hits.len() && self.hits[k - 1] {
                tp += 1;
            }
            out.push(f1_of(tp, k.min(self.hits.len()), self.n_true));
        }
        out
    }
}

/// The top-`m` ranking of every survey of a score file with hit flags against the truth:
/// everything F1@K, thresholds and policies need, computed once.
#[derive(Debug, Clone)]
pub struct RankTable {
    pub rows: Vec<RankedRow>,
    /// Depth `m` the table was built with.
    pub depth: usize,
}

impl RankTable {
    /// Builds the table from a score file and truth aligned to its rows (real species ids).
    pub fn new(scores: &ScoreFile, truth: &[Vec<u32>], depth: usize) -> RankTable {
        let empty: Vec<u32> = Vec::new();
        let rows = (0..scores.len())
            .into_par_iter()
            .map(|i| {
                let mut t = truth.get(i).unwrap_or(&empty).clone();
                t.sort_unstable();
                t.dedup();
                let top = scores.top(i, depth);
                RankedRow {
                    species: top
                        .iter()
                        .map(|&(c, _)| scores.species[c as usize])
                        .collect(),
                    scores: top.iter().map(|&(_, x)| x).collect(),
                    hits: top
                        .iter()
                        .map(|&(c, _)| t.binary_search(&scores.species[c as usize]).is_ok())
                        .collect(),
                    n_true: t.len(),
                }
            })
            .collect();
        RankTable { rows, depth }
    }

    /// Keeps the rows at `idx` (for cross-validation).
    pub fn subset(&self, idx: &[usize]) -> RankTable {
        RankTable {
            rows: idx.iter().map(|&i| self.rows[i].clone()).collect(),
            depth: self.depth,
        }
    }

    /// Mean F1 of top-k for k = 1..=k_max.
    pub fn f1_at_k_curve(&self, k_max: usize) -> Vec<f64> {
        let n = self.rows.len().max(1) as f64;
        let rows = &self.rows;
        let part = |range: Range<usize>| {
            let mut sums = vec![0.0; k_max];
            for r in &rows[range] {
                add_into(&mut sums, r.f1_curve(k_max));
            }
            sums
        };
        let sums = ordered_sum(rows.len(), vec![0.0; k_max], part, |a, b| add_into(a, b));
        sums.into_iter().map(|s| s / n).collect()
    }

    /// Mean over surveys of the best F1 over k = 1..=k_max (perfect per-survey K).
    pub fn oracle_f1(&self, k_max: usize) -> f64 {
        let n = self.rows.len().max(1) as f64;
        let best = |r: &RankedRow| r.f1_curve(k_max).into_iter().fold(0.0, f64::max);
        let part = |range: Range<usize>| self.rows[range].iter().map(best).sum::<f64>();
        ordered_sum(self.rows.len(), 0.0, part, |a, b| *a += b) / n
    }

    /// The global threshold `t` maximising mean F1 when each survey keeps the species scoring
    /// `>= t`, at least `min_k` and at most `max_k` of them. Exact sweep over all scores.
    /// Returns `(t, mean F1)`; `t = +inf` means "keep exactly `min_k`".
    pub fn best_threshold(&self, min_k: usize, max_k: usize) -> (f32, f64) {
        let n = self.rows.len();
        if n == 0 {
            return (f32::INFINITY, 0.0);
        }
        let max_k = max_k.max(min_k).max(1);
        let mut k = vec![0usize; n];
        let mut tp = vec![0usize; n];
        let mut total = 0.0;
        let mut events: Vec<(f32, u32, u32)> = Vec::new();
        for (i, r) in self.rows.iter().enumerate() {
            let len = r.hits.len();
            k[i] = min_k.min(len);
            tp[i] = r.hits[..k[i]].iter().filter(|&&h| h).count();
            total += f1_of(tp[i], k[i], r.n_true);
            for j in k[i]..max_k.min(len) {
                events.push((r.scores[j], i as u32, j as u32));
            }
        }
        events.par_sort_unstable_by(|a, b| {
            b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
        });
        let mut best = (f32::INFINITY, total);
        let mut e = 0;
        while e < events.len() {
            let t = events[e].0;
            while e < events.len() && events[e].0 == t {
                let (_, i, j) = events[e];
                let (i, j) = (i as usize, j as usize);
                let r = &self.rows[i];
                total -= f1_of(tp[i], k[i], r.n_true);
                debug_assert_eq!(k[i], j);
                k[i] = j + 1;
                if r.hits[j] {
                    tp[i] += 1;
                }
                total += f1_of(tp[i], k[i], r.n_true);
                e += 1;
            }
            if total > best.1 + 1e-12 {
                best = (t, total);
            }
        }
        (best.0, best.1 / n as f64)
    }
}

/// The best K of an F1@K curve (entry `k-1` is the F1 of keeping `k`) and its F1; the smallest
/// K on ties, `(1, -inf)` for an empty curve.
pub fn best_k(curve: &[f64]) -> (usize, f64) {
    curve.iter().enumerate().fold(
        (1, f64::NEG_INFINITY),
        |b, (j, &f)| if f > b.1 { (j + 1, f) } else { b },
    )
}

/// Samples-F1 of the top-k, for k = 1..=k_max: entry `k-1` is the F1 of keeping `k` species.
/// `truth` is aligned to the score rows (real species ids).
pub fn f1_at_k_curve(scores: &ScoreFile, truth: &[Vec<u32>], k_max: usize) -> Vec<f64> {
    RankTable::new(scores, truth, k_max).f1_at_k_curve(k_max)
}

/// Best global probability threshold (each survey keeps 1..=[`THRESHOLD_MAX_K`] species scoring
/// `>= t`) and its samples-F1.
pub fn best_global_threshold(scores: &ScoreFile, truth: &[Vec<u32>]) -> (f32, f64) {
    RankTable::new(scores, truth, THRESHOLD_MAX_K).best_threshold(1, THRESHOLD_MAX_K)
}

/// Upper bound of any per-survey K: mean over surveys of the best F1 over K = 1..=k_max.
pub fn oracle_f1(scores: &ScoreFile, truth: &[Vec<u32>], k_max: usize) -> f64 {
    RankTable::new(scores, truth, k_max).oracle_f1(k_max)
}

#[cfg(test)]
mod best_k_tests {
    /// Hand values: the first maximum wins; an empty curve has no best K.
    #[test]
    fn best_k_is_the_first_maximum() {
        assert_eq!(super::best_k(&[0.1, 0.3, 0.3, 0.2]), (2, 0.3));
        assert_eq!(super::best_k(&[0.5]), (1, 0.5));
        assert_eq!(super::best_k(&[]), (1, f64::NEG_INFINITY));
    }
}
