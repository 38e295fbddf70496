//! The trained members: each trained (or resumed, or skipped when done) and its test split
//! predicted, then every member's score files read back on the one shared validation split.
//! The slow, resumable part of the pipeline, kept apart from what is recomputed every run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use geolife_data::Split;
use geolife_data::cache::PackedSplit;
use geolife_metrics::{ScoreFile, Solution};
use serde::{Deserialize, Serialize};

use super::{PipelineOptions, ResolvedMember, ResolvedPipeline, outputs};
use crate::error::TrainError;
use crate::predict::{PredictOptions, predict};
use crate::trainer::run_dir::{read_json, write_json};
use crate::trainer::{RunInfo, TrainOptions, files, train};

/// A member's record once its run and test scores exist (`member.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    pub best_epoch: Option<usize>,
    pub best_val_f1: f64,
    pub train_seconds: f64,
    pub predict_seconds: f64,
}

/// Labels of the validation surveys `ids`, from the train split of the cache.
pub fn val_labels(cache: &Path, ids: &[u64]) -> Result<Solution, TrainError> {
    let train = PackedSplit::open(cache, Split::Train)?;
    let labels = train.labels_of(ids).map_err(|id| {
        TrainError::Invalid(format!(
            "validation survey {id} is not in the train split of {}",
            cache.display()
        ))
    })?;
    Solution::new(ids.to_vec(), labels).map_err(|e| TrainError::Metrics(e.to_string()))
}

/// A member's run folder (`members/<name>`).
fn member_dir(out: &Path, m: &ResolvedMember) -> PathBuf {
    out.join(outputs::MEMBERS).join(&m.name)
}

/// Trains (or resumes, or skips) every member in order and predicts its test split; their
/// records, in the members' order.
pub(super) fn train_members(opts: &PipelineOptions) -> Result<Vec<MemberRecord>, TrainError> {
    let p = &opts.pipeline;
    let mut records = Vec::with_capacity(p.members.len());
    for (i, m) in p.members.iter().enumerate() {
        let tag = format!("member {}/{} `{}`", i + 1, p.members.len(), m.name);
        records.push(train_member(opts, m, &tag)?);
    }
    Ok(records)
}

/// One member: its record when `member.json` says it is done, else trained (resumed from
/// `last.ckpt` when there is one), its test scores predicted and written, then `member.json`.
fn train_member(
    opts: &PipelineOptions,
    m: &ResolvedMember,
    tag: &str,
) -> Result<MemberRecord, TrainError> {
    let p = &opts.pipeline;
    let dir = member_dir(&opts.out, m);
    let done = dir.join(outputs::MEMBER_DONE);
    if done.is_file() {
        let record: MemberRecord = read_json(&done)?;
        println!("{tag}: done (best validation F1 {:.4})", record.best_val_f1);
        return Ok(record);
    }
    let resume = dir.join(files::LAST).is_file();
    println!(
        "{tag}: {} ({} backbone, {} epochs)",
        if resume { "resuming" } else { "training" },
        m.config.model.backbone.name(),
        m.config.train.epochs
    );
    let t = Instant::now();
    let summary = train(&TrainOptions {
        config: m.config.clone(),
        cache: opts.cache.clone(),
        run_dir: dir.clone(),
        resume,
        progress: opts.progress,
        stop_after_batches: None,
    })?;
    let train_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let test = predict(&PredictOptions {
        run_dir: Some(dir.clone()),
        weights: None,
        config: None,
        cache: opts.cache.clone(),
        split: Split::Test,
        batch_size: p.predict.batch_size,
        workers: p.predict.workers,
        device: None,
    })?;
    test.write(&dir.join(outputs::MEMBER_TEST_SCORES))
        .map_err(|e| TrainError::Metrics(e.to_string()))?;
    let record = MemberRecord {
        best_epoch: summary.best_epoch,
        best_val_f1: summary.best_f1,
        train_seconds,
        predict_seconds: t.elapsed().as_secs_f64(),
    };
    write_json(&done, &record)?;
    println!(
        "{tag}: best validation F1 {:.4} at epoch {} ({:.1}s)",
        record.best_val_f1,
        record.best_epoch.unwrap_or(0),
        record.train_seconds + record.predict_seconds
    );
    Ok(record)
}

/// Every blend member's validation and test scores, in order (the trained members, then the
/// prior's once [`super::prior::add_prior_member`] has run), and the validation survey ids.
pub(super) struct MemberScores {
    pub val: Vec<ScoreFile>,
    pub test: Vec<ScoreFile>,
    pub val_ids: Vec<u64>,
}

/// Reads every trained member's validation and test scores back; refuses members validated
/// on other surveys than the first (they must share one split to be blended).
pub(super) fn read_member_scores(
    p: &ResolvedPipeline,
    out: &Path,
) -> Result<MemberScores, TrainError> {
    let read_scores = |path: PathBuf| {
        ScoreFile::read(&path).map_err(|e| TrainError::Metrics(format!("{}: {e}", path.display())))
    };
    let val: Vec<ScoreFile> = p
        .members
        .iter()
        .map(|m| read_scores(member_dir(out, m).join(files::VAL_SCORES)))
        .collect::<Result<_, _>>()?;
    let test: Vec<ScoreFile> = p
        .members
        .iter()
        .map(|m| read_scores(member_dir(out, m).join(outputs::MEMBER_TEST_SCORES)))
        .collect::<Result<_, _>>()?;
    let val_ids = RunInfo::load(&member_dir(out, &p.members[0]))?.val_survey_ids;
    for (m, v) in p.members.iter().zip(&val) {
        let mut a = v.survey_ids.clone();
        let mut b = val_ids.clone();
        a.sort_unstable();
        b.sort_unstable();
        if a != b {
            return Err(TrainError::Invalid(format!(
                "member `{}` validated on other surveys than `{}`: the members' validation \
                 sections differ (they must share one split to be blended)",
                m.name, p.members[0].name
            )));
        }
    }
    Ok(MemberScores { val, test, val_ids })
}
