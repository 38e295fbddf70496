//! geolife-prior: a per-species score for every survey of a split from where it is, out of two
//! sources of location evidence, written as a geolife score file (`geolife prior`).
//!
//! # Sources
//! Distances are great-circle distances `d` (km) between places, found with a k-d tree over
//! 3-D unit vectors (the chord is monotone in the great-circle distance), never by scanning
//! all pairs. `K(d)` is the kernel: Gaussian `exp(-d^2 / (2 h^2))` or uniform 1.
//! - **PA neighbours**: the `k` nearest PA surveys `j` of the pool (optionally only of the
//!   same year and/or region), with labels `y_js` in {0, 1}:
//!   `PA_s = (sum_j K(d_j) y_js + α g_s) / (sum_j K(d_j) + α)`, `g_s` the share of pool
//!   surveys holding `s`. With `α = 0` only the weights' ratios matter (they are scaled so the
//!   nearest weighs 1); with `α > 0` a survey far from all neighbours gets `g`. Without a
//!   neighbour (an empty year/region group) the score is `g`.
//! - **PO density**: the presence-only records `r` within `radius_km`, of species `s_r`, give
//!   kernel-weighted counts `c_s = sum_r K(d_r) [s_r = s]` and `C = sum_s c_s`; `G_s` is the
//!   share of `s` in the whole PO file. Plain share (`debias = false`):
//!   `PO_s = (c_s + β G_s) / (C + β)`, shrunk towards `G_s` where records are few.
//!   Debiased (default): `PO_s = g_s (c_s + β) / (C G_s + β)`, the PA frequency times the
//!   shrunk ratio of the records seen to those expected from the global share. Observers
//!   over-report common and showy species everywhere alike: a per-species factor that the
//!   ratio cancels (the plain share ranks showy species first wherever they occur). The
//!   ratio shrinks to 1 where fewer than about `β` records of the species are expected.
//! - **Blend**: `(1 - λ) PA_s + λ PO_s` (debiased PO is on the PA frequency scale); a plain
//!   share is multiplied by `m`, the mean number of species per pool survey (shares sum to 1,
//!   PA frequencies to about `m`). A source alone is used as is.
//!
//! # Honest validation: who sees whose labels
//! The **pool** is the set of PA train surveys whose labels may enter a score.
//! - `test`: the pool is every PA train survey.
//! - `train`: the pool is every PA train survey, and a survey never sees its own labels: it
//!   is left out of its own neighbours (leave-one-out; another survey at the same place is
//!   another survey and counts).
//! - `val`: the validation surveys are a run's (`val_survey_ids` of its `run.json`) or those of
//!   the spatial split with the training rule (`geolife_data::split::spatial_split`: whole
//!   blocks of `block_arcmin` arc-minutes, in a seeded order, until `fraction` of the surveys;
//!   over the PA train surveys in ascending id order, as `geolife train` splits its cache).
//!   The pool is the training part only, so no validation label reaches any score.
//!
//! PO records are a separate dataset, not PA labels: every survey of every split sees all of
//! them. The vocabulary (score columns) is every species of the PA train labels plus every PO
//! species; a species seen only in validation surveys gets a column but no evidence.

pub mod cached;
pub mod config;
pub mod model;
pub mod po;
pub mod source;
pub mod sphere;

use std::collections::HashMap;

use geolife_data::SurveyMeta;
use geolife_metrics::{ScoreFile, Scores};
use rayon::prelude::*;

pub use cached::{CachedSurveys, check_cache_config};
pub use config::{Kernel, PaConfig, PoConfig, PriorConfig};
pub use model::{PaSource, PoSource, Prior, Query, Vocabulary};
pub use po::PoRecords;
pub use source::PriorSource;

/// Errors of the prior.
#[derive(Debug, thiserror::Error)]
pub enum PriorError {
    #[error("{0}")]
    Invalid(String),
    /// A setting that cannot work, by its key (`prior.pa.k`, `po_file`, ...).
    #[error("{key}: {message}")]
    Key { key: String, message: String },
    #[error(transparent)]
    Data(#[from] geolife_data::DataError),
}

impl PriorError {
    /// The key of the setting at fault, when the error names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            PriorError::Key { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The labelled PA train surveys (sorted by id, as `read_pa_metadata` returns them).
#[derive(Debug, Clone, Copy)]
pub struct PaTrain<'a> {
    pub surveys: &'a [SurveyMeta],
    pub labels: &'a [Vec<u32>],
}

/// The surveys to score, and so the pool (see the crate docs).
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Every train survey, each without its own labels.
    Train,
    /// These train surveys (ids), seeing only the other train surveys.
    Val(&'a [u64]),
    /// Surveys outside train (the test split), seeing every train survey.
    Test(&'a [SurveyMeta]),
}

impl Target<'_> {
    /// Split name written in the score file.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Train => "train",
            Target::Val(_) => "val",
            Target::Test(_) => "test",
        }
    }
}

/// Validation survey ids of the spatial split with the training rule (see the crate docs).
pub fn spatial_val_ids(
    train: &[SurveyMeta],
    fraction: f64,
    block_arcmin: f64,
    seed: u64,
) -> Vec<u64> {
    let coords: Vec<(f64, f64)> = train.iter().map(|s| (s.lon, s.lat)).collect();
    geolife_data::split::spatial_split(&coords, fraction, block_arcmin, seed)
        .val
        .iter()
        .map(|&i| train[i].survey_id)
        .collect()
}

/// Scores every survey of `target` (see the crate docs for the pool rule). `on_survey` is
/// called once per scored survey (progress).
pub fn score_split(
    cfg: &PriorConfig,
    train: PaTrain,
    target: Target,
    po: Option<&PoRecords>,
    on_survey: &(dyn Fn() + Sync),
) -> Result<ScoreFile, PriorError> {
    cfg.validate()?;
    if train.surveys.len() != train.labels.len() {
        return Err(PriorError::Invalid(format!(
            "{} train surveys but {} label sets",
            train.surveys.len(),
            train.labels.len()
        )));
    }
    let (pool, queries) = plan(train, target)?;
    let po = po.filter(|_| cfg.po.enabled);
    if !cfg.pa.enabled && po.is_none() {
        return Err(PriorError::Invalid(
            "the PA source is off and there are no presence-only records: nothing to score with"
                .into(),
        ));
    }
    let po_species = po.iter().flat_map(|r| r.entries.iter().map(|e| e.0));
    let vocab = Vocabulary::new(train.labels.iter().flatten().copied().chain(po_species));
    let prior = Prior::new(cfg, &pool, po, vocab);
    let v = prior.vocab.len();
    let top = if cfg.top == 0 { v } else { cfg.top.min(v) };
    let rows: Vec<Vec<(u32, f32)>> = queries
        .par_iter()
        .map_init(Vec::new, |acc, q| {
            prior.score(q, acc);
            on_survey();
            top_n(acc, top)
        })
        .collect();
    let scores = if cfg.top == 0 {
        let mut data = vec![0f32; rows.len() * v];
        for (i, row) in rows.iter().enumerate() {
            for &(c, x) in row {
                data[i * v + c as usize] = x;
            }
        }
        Scores::Dense { data }
    } else {
        Scores::Sparse { rows }
    };
    Ok(ScoreFile {
        model: "prior".into(),
        split: target.name().into(),
        survey_ids: queries.iter().map(|q| q.survey.survey_id).collect(),
        species: prior.vocab.species,
        scores,
    })
}

/// The pool `(survey, labels)` and the queries of a target.
#[allow(clippy::type_complexity)]
fn plan<'a>(
    train: PaTrain<'a>,
    target: Target<'a>,
) -> Result<(Vec<(&'a SurveyMeta, &'a [u32])>, Vec<Query<'a>>), PriorError> {
    let all = || {
        train
            .surveys
            .iter()
            .zip(train.labels)
            .map(|(s, l)| (s, l.as_slice()))
    };
    Ok(match target {
        Target::Train => (
            all().collect(),
            (0..train.surveys.len())
                .map(|i| Query {
                    survey: &train.surveys[i],
                    exclude: Some(i as u32),
                })
                .collect(),
        ),
        Target::Test(test) => (
            all().collect(),
            test.iter()
                .map(|survey| Query {
                    survey,
                    exclude: None,
                })
                .collect(),
        ),
        Target::Val(ids) => {
            let index: HashMap<u64, usize> = train
                .surveys
                .iter()
                .enumerate()
                .map(|(i, s)| (s.survey_id, i))
                .collect();
            let mut in_val = vec![false; train.surveys.len()];
            for id in ids {
                let i = *index.get(id).ok_or_else(|| {
                    PriorError::Invalid(format!(
                        "validation survey {id} is not a PA train survey of this dataset"
                    ))
                })?;
                in_val[i] = true;
            }
            let pool = all().zip(&in_val).filter(|(_, v)| !**v).map(|(p, _)| p);
            let queries = train.surveys.iter().zip(&in_val).filter(|(_, v)| **v);
            (
                pool.collect(),
                queries
                    .map(|(survey, _)| Query {
                        survey,
                        exclude: None,
                    })
                    .collect(),
            )
        }
    })
}

/// The `n` best columns of `scores` with a positive score, best first (ties: lower column).
pub fn top_n(scores: &[f64], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<(u32, f64)> = scores
        .iter()
        .enumerate()
        .filter(|(_, x)| **x > 0.0)
        .map(|(c, &x)| (c as u32, x))
        .collect();
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if idx.len() > n && n > 0 {
        idx.select_nth_unstable_by(n - 1, order);
        idx.truncate(n);
    }
    idx.sort_unstable_by(order);
    idx.into_iter().map(|(c, x)| (c, x as f32)).collect()
}
