//! The location prior as a model input: per-species scores of every survey a run sees, from
//! `geolife_prior` over the packed cache (and the presence-only file), in the model's output
//! columns, handed to the loader so each batch carries its surveys' prior rows.
//!
//! Who sees whose labels (the prior crate's rule, applied to a run's split):
//! - a **training-part** survey is scored from the other training-part surveys
//!   (leave-one-out; validation labels never enter);
//! - a **validation** survey is scored from the training part only;
//! - a **test** survey (`predict`) is scored from every train survey.
//!
//! Presence-only records are a separate dataset: every survey sees all of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use geolife_data::cache::PackedSplit;
use geolife_metrics::{ScoreFile, Scores};
use geolife_prior::{CachedSurveys, PoRecords, Target, score_split};

use crate::config::{LocationSection, TrainConfig};
use crate::error::TrainError;
use crate::vocab::Vocabulary;

/// Prior scores of a source's rows in the model's columns, sparse (the prior keeps its
/// `top` species per survey). Rows without a prior (not asked for) are empty.
#[derive(Debug, Clone, Default)]
pub struct PriorRows {
    /// Model columns.
    width: usize,
    /// Per source row: `(column, score)`.
    rows: Vec<Vec<(u32, f32)>>,
}

impl PriorRows {
    /// Columns of a dense row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The sparse row of source row `i`.
    pub fn row(&self, i: usize) -> &[(u32, f32)] {
        self.rows.get(i).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Dense `[indices.len(), width]` rows into `out` (zero where the prior has no evidence).
    pub fn fill(&self, indices: &[usize], out: &mut Vec<f32>) {
        out.clear();
        out.resize(indices.len() * self.width, 0.0);
        for (r, &i) in indices.iter().enumerate() {
            for &(c, x) in self.row(i) {
                out[r * self.width + c as usize] = x;
            }
        }
    }

    /// Puts a score file's rows (survey ids of `split`) into the model's columns; species the
    /// model does not predict are dropped.
    fn put(
        &mut self,
        scores: &ScoreFile,
        split: &PackedSplit,
        vocab: &Vocabulary,
    ) -> Result<(), TrainError> {
        let cols: Vec<Option<u32>> = scores
            .species
            .iter()
            .map(|&s| vocab.column(s).map(|c| c as u32))
            .collect();
        let Scores::Sparse { rows } = &scores.scores else {
            return Err(TrainError::Invalid(
                "location.prior.top must be > 0 for a model input (sparse rows)".into(),
            ));
        };
        for (id, row) in scores.survey_ids.iter().zip(rows) {
            let i = split.index_of(*id).ok_or_else(|| {
                TrainError::Invalid(format!("prior scored survey {id}, which the cache lacks"))
            })?;
            self.rows[i] = row
                .iter()
                .filter_map(|&(c, x)| cols[c as usize].map(|m| (m, x)))
                .collect();
        }
        Ok(())
    }
}

/// Sets `location.po_file` to `data`'s presence-only file when the run needs one, none is set
/// and `data` is a dataset root holding it ([`geolife_prior::PriorSource::resolve`]); the
/// saved config then names the file used. Otherwise the config is left as it is, and
/// [`check_po_file`] names what is missing.
pub fn resolve_po_file(cfg: &mut TrainConfig, data: &Path) {
    let loc = &mut cfg.location;
    if loc.needs_po()
        && loc.po_file.is_none()
        && let Ok(resolved) = loc.source().resolve(Some(data))
    {
        loc.po_file = resolved.po_file;
    }
}

/// The presence-only file of a run that needs one ([`geolife_prior::PriorSource::resolve`]
/// of the config as [`resolve_po_file`] left it): an error naming what is missing when it is
/// not given or not a file (checked before a run folder is created).
pub fn check_po_file(loc: &LocationSection) -> Result<Option<PathBuf>, TrainError> {
    if !loc.on() {
        return Ok(None);
    }
    Ok(loc
        .source()
        .resolve(None)
        .map_err(|e| TrainError::prior_in("location", e))?
        .po_file)
}

/// The presence-only records of the PO source, or `None` when the source is off.
fn po_records(loc: &LocationSection) -> Result<Option<PoRecords>, TrainError> {
    loc.source()
        .read_po(|_| {})
        .map_err(|e| TrainError::prior_in("location", e))
}

/// Prior rows of a run's training and validation surveys (rows of `data`, the train cache).
pub fn for_training(
    cfg: &TrainConfig,
    data: &PackedSplit,
    train: &[usize],
    val: &[usize],
    vocab: &Vocabulary,
) -> Result<Arc<PriorRows>, TrainError> {
    let loc = &cfg.location;
    let po = po_records(loc)?;
    let pool = CachedSurveys::rows(data, train);
    let queries = CachedSurveys::rows(data, val);
    let mut out = PriorRows {
        width: vocab.len(),
        rows: vec![Vec::new(); data.len()],
    };
    let none = &|| {};
    let own = score_split(
        &loc.prior,
        pool.as_train(),
        Target::Train,
        po.as_ref(),
        none,
    )
    .map_err(|e| TrainError::prior_in("location", e))?;
    out.put(&own, data, vocab)?;
    let held_out = score_split(
        &loc.prior,
        pool.as_train(),
        Target::Test(&queries.surveys),
        po.as_ref(),
        none,
    )
    .map_err(|e| TrainError::prior_in("location", e))?;
    out.put(&held_out, data, vocab)?;
    Ok(Arc::new(out))
}

/// Prior rows of every survey of `split` (e.g. test), pooled from every survey of `train`
/// (for the train split itself, each survey without its own labels).
pub fn for_split(
    loc: &LocationSection,
    train: &PackedSplit,
    split: &PackedSplit,
    vocab: &Vocabulary,
) -> Result<Arc<PriorRows>, TrainError> {
    let po = po_records(loc)?;
    let pool = CachedSurveys::of(train);
    let queries = CachedSurveys::of(split);
    // Scoring the train split itself: each survey without its own labels.
    let target = match split.manifest().split.as_str() {
        "train" => Target::Train,
        _ => Target::Test(&queries.surveys),
    };
    let scores = score_split(&loc.prior, pool.as_train(), target, po.as_ref(), &|| {})
        .map_err(|e| TrainError::prior_in("location", e))?;
    let mut out = PriorRows {
        width: vocab.len(),
        rows: vec![Vec::new(); split.len()],
    };
    out.put(&scores, split, vocab)?;
    Ok(Arc::new(out))
}
