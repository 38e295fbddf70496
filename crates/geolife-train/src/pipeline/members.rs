//! The trained members: each trained (or resumed, or skipped when done) and its test split
//! predicted, then every member's score files read back on the one shared validation split.
//! The slow, resumable part of the pipeline, kept apart from what is recomputed every run.
//!
//! k-fold (`[validation] folds = K`): a member is K runs, `members/<name>/fold-<i>`, run `i`
//! validating on fold `i` of the spatial blocks. Once all are done the member's own
//! `val_scores.safetensors` holds the out-of-fold scores (every train survey scored by the run
//! that did not train on it) and `test_scores.safetensors` the mean of the K runs' test
//! scores, so everything after (blend, policy, report) reads a k-fold member as any other.

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

/// A member's record once its run and test scores exist (`member.json`); a k-fold member's
/// (written once every fold is done) lists its folds, and its best epoch is none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    pub best_epoch: Option<usize>,
    /// Best validation F1 (k-fold: the mean over the folds, each on its own fold).
    pub best_val_f1: f64,
    pub train_seconds: f64,
    pub predict_seconds: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<FoldRecord>,
}

/// One fold of a k-fold member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FoldRecord {
    pub fold: usize,
    pub best_epoch: Option<usize>,
    /// Best validation F1 of this fold's run, on its own fold.
    pub best_val_f1: f64,
    /// Surveys of the fold.
    pub n_val: usize,
}

/// A training run of the pipeline: a member, or one fold of a k-fold member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unit {
    pub member: usize,
    pub fold: Option<usize>,
}

impl Unit {
    /// `NAME` or `NAME fold I`: how logs, the status and the Slurm records name a run.
    pub fn name(self, p: &ResolvedPipeline) -> String {
        match self.fold {
            Some(f) => format!("{} fold {f}", p.members[self.member].name),
            None => p.members[self.member].name.clone(),
        }
    }
}

/// Whether a member's or a run's folder holds its `member.json` (it is done).
pub(super) fn is_done(dir: &Path) -> bool {
    dir.join(outputs::MEMBER_DONE).is_file()
}

/// Every run of the pipeline in `out` that is not done, in order (none of a member that is
/// done as a whole): what `--jobs` and the Slurm executor have left to run.
pub(super) fn pending_units(out: &Path, p: &ResolvedPipeline) -> Vec<Unit> {
    (0..p.members.len())
        .filter(|&i| !is_done(&member_dir(out, &p.members[i])))
        .flat_map(|i| member_units(p, i))
        .filter(|u| !is_done(&unit_dir(out, &p.members[u.member], u.fold)))
        .collect()
}

/// Folds of a member: `validation.folds` (1: one split).
pub(super) fn folds_of(m: &ResolvedMember) -> usize {
    m.config.validation.folds.max(1)
}

/// The training runs of a member, in order.
pub(super) fn member_units(p: &ResolvedPipeline, member: usize) -> Vec<Unit> {
    match folds_of(&p.members[member]) {
        1 => vec![Unit { member, fold: None }],
        k => (0..k)
            .map(|f| Unit {
                member,
                fold: Some(f),
            })
            .collect(),
    }
}

/// A run's folder: the member's own, or `fold-<i>` inside it.
pub(super) fn unit_dir(out: &Path, m: &ResolvedMember, fold: Option<usize>) -> PathBuf {
    let dir = member_dir(out, m);
    match fold {
        Some(f) => dir.join(format!("fold-{f}")),
        None => dir,
    }
}

/// Labels of the validation surveys `ids`, from the train split of the cache.
pub(super) fn val_labels(cache: &Path, ids: &[u64]) -> Result<Solution, TrainError> {
    let train = PackedSplit::open(cache, Split::Train)?;
    let labels = train.labels_of(ids).map_err(|id| {
        TrainError::Invalid(format!(
            "validation survey {id} is not in the train split of {}",
            cache.display()
        ))
    })?;
    Ok(Solution::new(ids.to_vec(), labels)?)
}

/// A member's run folder (`members/<name>`).
pub(super) fn member_dir(out: &Path, m: &ResolvedMember) -> PathBuf {
    out.join(outputs::MEMBERS).join(&m.name)
}

/// Trains (or resumes, or skips) every member in order and predicts its test split; their
/// records, in the members' order.
pub(super) fn train_members(opts: &PipelineOptions) -> Result<Vec<MemberRecord>, TrainError> {
    let p = &opts.pipeline;
    let mut records = Vec::with_capacity(p.members.len());
    for i in 0..p.members.len() {
        records.push(train_member(opts, i)?);
    }
    Ok(records)
}

/// Every run of member `i` (each skipped when done), then, for a k-fold member, its
/// out-of-fold and mean test scores; its record.
pub(super) fn train_member(opts: &PipelineOptions, i: usize) -> Result<MemberRecord, TrainError> {
    let units = member_units(&opts.pipeline, i);
    for &u in &units {
        train_unit(opts, u)?;
    }
    match units[..] {
        [Unit { fold: None, .. }] => {
            read_json(&member_dir(&opts.out, &opts.pipeline.members[i]).join(outputs::MEMBER_DONE))
        }
        _ => assemble_folds(opts, i),
    }
}

/// A k-fold member's `member.json` and score files from its folds' (all done), unless written.
pub(super) fn assemble_folds(opts: &PipelineOptions, i: usize) -> Result<MemberRecord, TrainError> {
    let m = &opts.pipeline.members[i];
    let dir = member_dir(&opts.out, m);
    let done = dir.join(outputs::MEMBER_DONE);
    if done.is_file() {
        return read_json(&done);
    }
    let k = folds_of(m);
    let (mut val, mut test, mut folds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut train_seconds, mut predict_seconds) = (0.0, 0.0);
    for f in 0..k {
        let fd = unit_dir(&opts.out, m, Some(f));
        let r: MemberRecord = read_json(&fd.join(outputs::MEMBER_DONE))?;
        let v = ScoreFile::read(&fd.join(files::VAL_SCORES))?;
        folds.push(FoldRecord {
            fold: f,
            best_epoch: r.best_epoch,
            best_val_f1: r.best_val_f1,
            n_val: v.len(),
        });
        val.push(v);
        test.push(ScoreFile::read(&fd.join(outputs::MEMBER_TEST_SCORES))?);
        train_seconds += r.train_seconds;
        predict_seconds += r.predict_seconds;
    }
    let mut oof = ScoreFile::concat(&val)?;
    oof.split = "val".into();
    let (mut mean, _) = geolife_metrics::blend(&test, &vec![1.0; k], Default::default())?;
    mean.model.clone_from(&oof.model);
    oof.write(&dir.join(files::VAL_SCORES))?;
    mean.write(&dir.join(outputs::MEMBER_TEST_SCORES))?;
    let record = MemberRecord {
        best_epoch: None,
        best_val_f1: folds.iter().map(|f| f.best_val_f1).sum::<f64>() / k as f64,
        train_seconds,
        predict_seconds,
        folds,
    };
    write_json(&done, &record)?;
    tracing::info!(
        target: crate::PROGRESS,
        "`{}`: {k} folds done: out-of-fold scores for {} surveys",
        m.name,
        oof.len()
    );
    Ok(record)
}

/// One run: its record when `member.json` says it is done, else trained (resumed from
/// `last.ckpt` when there is one), its test scores predicted and written, then `member.json`.
pub(super) fn train_unit(opts: &PipelineOptions, u: Unit) -> Result<MemberRecord, TrainError> {
    let p = &opts.pipeline;
    let m = &p.members[u.member];
    let tag = match u.fold {
        None => format!("member {}/{} `{}`", u.member + 1, p.members.len(), m.name),
        Some(f) => format!(
            "member {}/{} `{}` fold {}/{}",
            u.member + 1,
            p.members.len(),
            m.name,
            f + 1,
            folds_of(m)
        ),
    };
    let mut config = m.config.clone();
    if let Some(f) = u.fold {
        config.validation.fold = f;
    }
    let dir = unit_dir(&opts.out, m, u.fold);
    let done = dir.join(outputs::MEMBER_DONE);
    if done.is_file() {
        let record: MemberRecord = read_json(&done)?;
        tracing::info!(target: crate::PROGRESS, "{tag}: done (best validation F1 {:.4})", record.best_val_f1);
        return Ok(record);
    }
    let resume = dir.join(files::LAST).is_file();
    tracing::info!(target: crate::PROGRESS,
        "{tag}: {} ({} backbone, {} epochs)",
        if resume { "resuming" } else { "training" },
        m.config.model.backbone.name(),
        m.config.train.epochs
    );
    let t = Instant::now();
    let summary = train(&TrainOptions {
        config,
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
        precision: None,
    })?;
    test.write(&dir.join(outputs::MEMBER_TEST_SCORES))?;
    let record = MemberRecord {
        best_epoch: summary.best_epoch,
        best_val_f1: summary.best_f1,
        train_seconds,
        predict_seconds: t.elapsed().as_secs_f64(),
        folds: Vec::new(),
    };
    write_json(&done, &record)?;
    tracing::info!(target: crate::PROGRESS,
        "{tag}: best validation F1 {:.4} at epoch {} ({:.1}s)",
        record.best_val_f1,
        record.best_epoch.unwrap_or(0),
        record.train_seconds + record.predict_seconds
    );
    Ok(record)
}

/// Every blend member's validation and test scores, in order (the trained members, then the
/// prior's once `prior::add_prior_member` has run), and the validation survey ids.
pub(super) struct MemberScores {
    pub val: Vec<ScoreFile>,
    pub test: Vec<ScoreFile>,
    pub val_ids: Vec<u64>,
    /// The held-out groups whose union is `val_ids`: the one validation split, or each fold's
    /// surveys (k-fold). Baselines and the prior score each group from the surveys outside it.
    pub groups: Vec<Vec<u64>>,
}

/// Reads every trained member's validation and test scores back; refuses members validated
/// on other surveys than the first (they must share one split to be blended).
pub(super) fn read_member_scores(
    p: &ResolvedPipeline,
    out: &Path,
) -> Result<MemberScores, TrainError> {
    let read_scores = |path: PathBuf| ScoreFile::read(&path);
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
    let first = &p.members[0];
    let groups: Vec<Vec<u64>> = match folds_of(first) {
        1 => vec![RunInfo::load(&member_dir(out, first))?.val_survey_ids],
        k => (0..k)
            .map(|f| Ok(RunInfo::load(&unit_dir(out, first, Some(f)))?.val_survey_ids))
            .collect::<Result<_, TrainError>>()?,
    };
    let val_ids: Vec<u64> = groups.concat();
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
    Ok(MemberScores {
        val,
        test,
        val_ids,
        groups,
    })
}
