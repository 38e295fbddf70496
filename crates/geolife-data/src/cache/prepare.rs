//! Packs the splits of a raw dataset into the cache: parallel per-survey reads in bounded
//! chunks written at their row offsets, into `<split>.tmp-<pid>/`, renamed only when complete.
//! One run at a time per cache folder: a lock file (`<CACHE>/.prepare.lock`) keeps a second
//! `prepare` from swapping splits under the first.
//! Nothing is dropped in silence: a survey whose files are missing, truncated or corrupt, or
//! whose rows conflict (metadata or an environmental CSV), fails the run naming the file and
//! the survey, or is skipped and listed with `skip_bad`; a survey without an environmental row
//! (kept with NaN features), repeated rows and rows of unknown surveys are counted per file in
//! the manifest and the report, and refused with `strict`.

use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use super::error::CacheError;
use super::manifest::SkippedSurvey;
use super::manifest::{ChannelStats, FeatureStats, FileEntry, Manifest, PackOptions};
use super::reader::PackedSplit;
use super::stats::{Moments, channel_moments_f32, channel_moments_u8, merge_all};
use super::writer::{RowRef, SplitWriter, write_small};
use super::{BIOCLIM_LEN, BIOCLIM_SHAPE, FORMAT_VERSION, LANDSAT_LEN};
use super::{LANDSAT_SHAPE, PATCH_LEN, PATCH_SHAPE, files};
use crate::dataset::{Dataset, DatasetOptions};
use crate::layout::metadata_csv;
use crate::{DataError, EnvCoverage, Split};

/// Surveys read in parallel and held in memory at once (about 72 MB of rows).
pub const DEFAULT_CHUNK: usize = 1024;

/// Lock file a running `prepare` holds in the cache folder (see [`prepare`]).
pub const LOCK_FILE: &str = ".prepare.lock";

/// What to pack and how.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Reader options (environmental groups, cube NaN policy).
    pub dataset: DatasetOptions,
    /// Splits to pack; train is always packed before test.
    pub splits: Vec<Split>,
    /// Drop surveys whose files are missing or corrupt, or whose rows conflict (listed in the
    /// manifest), instead of failing.
    pub skip_bad: bool,
    /// Refuse what is otherwise accepted and reported: a survey without a row in an
    /// environmental CSV (per survey: an error, or skipped with `skip_bad`) and rows of
    /// surveys the split's metadata does not hold (an error).
    pub strict: bool,
    /// Re-pack even when an up-to-date cache exists.
    pub force: bool,
    /// Surveys per parallel chunk (bounds memory).
    pub chunk: usize,
}

impl PrepareOptions {
    /// Both splits, default reader options, no skipping.
    pub fn new(dataset: DatasetOptions) -> Self {
        PrepareOptions {
            dataset,
            splits: Split::ALL.to_vec(),
            skip_bad: false,
            strict: false,
            force: false,
            chunk: DEFAULT_CHUNK,
        }
    }

    fn pack_options(&self) -> PackOptions {
        PackOptions {
            env_groups: self
                .dataset
                .env_groups
                .iter()
                .map(|g| format!("{g:?}"))
                .collect(),
            cube_nan: format!("{:?}", self.dataset.cube_nan),
            skip_bad: self.skip_bad,
            strict: self.strict,
        }
    }
}

/// Progress callbacks; the CLI draws a bar or prints lines. All methods default to nothing.
pub trait PrepareProgress: Sync {
    /// A split with `total` surveys starts packing.
    fn start(&self, _split: Split, _total: usize) {}
    /// `done` surveys of the current split have been processed.
    fn advance(&self, _done: usize) {}
    /// The current split is complete.
    fn finish(&self) {}
}

/// A [`PrepareProgress`] that reports nothing.
pub struct NoProgress;
impl PrepareProgress for NoProgress {}

/// Whether a split was packed now or found up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitOutcome {
    Packed,
    UpToDate,
}

/// Summary of one split.
#[derive(Debug, Clone)]
pub struct SplitReport {
    pub split: Split,
    pub outcome: SplitOutcome,
    pub dir: PathBuf,
    /// Surveys in the cache.
    pub n: usize,
    /// Surveys dropped by `--skip-bad`.
    pub skipped: usize,
    /// The dropped surveys with their reasons (as in the manifest).
    pub skipped_surveys: Vec<SkippedSurvey>,
    /// What each environmental CSV held beyond one row per survey (as in the manifest).
    pub env_coverage: Vec<EnvCoverage>,
    /// Rows of the split's metadata that repeat a (survey, species) pair (ignored).
    pub metadata_duplicate_rows: usize,
    /// Bytes of all data files.
    pub bytes: u64,
    pub seconds: f64,
}

/// Packs `opts.splits` of the dataset at `root` into `out`; splits whose cache already matches
/// the dataset fingerprint, format version and options are left alone (unless `force`).
/// Holds an OS lock on `out/`[`LOCK_FILE`] while it runs: fails fast with
/// [`CacheError::Locked`] when another run holds it (a killed run's lock is released by the OS).
pub fn prepare(
    root: &Path,
    out: &Path,
    opts: &PrepareOptions,
    progress: &dyn PrepareProgress,
) -> Result<Vec<SplitReport>, CacheError> {
    if opts.chunk == 0 {
        return Err(CacheError::Invalid("chunk size must be at least 1".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| CacheError::io(out, e))?;
    let _lock = PrepareLock::acquire(out)?;
    let fingerprint = dataset_fingerprint(root, Some(out))?;
    let pack = opts.pack_options();
    let mut splits = opts.splits.clone();
    splits.sort();
    splits.dedup();

    let mut dataset: Option<Dataset> = None;
    let mut train_manifest: Option<Manifest> = None;
    let mut reports = Vec::new();
    for split in splits {
        let t0 = Instant::now();
        if !opts.force
            && let Ok(existing) = PackedSplit::open(out, split)
        {
            let m = existing.manifest();
            if m.dataset_fingerprint == fingerprint && m.options == pack {
                if split == Split::Train {
                    train_manifest = Some(m.clone());
                }
                reports.push(SplitReport {
                    split,
                    outcome: SplitOutcome::UpToDate,
                    dir: existing.dir().to_path_buf(),
                    n: m.n,
                    skipped: m.skipped.len(),
                    skipped_surveys: m.skipped.clone(),
                    env_coverage: m.env_coverage.clone(),
                    metadata_duplicate_rows: m.metadata_duplicate_rows,
                    bytes: m.files.iter().map(|f| f.bytes).sum(),
                    seconds: t0.elapsed().as_secs_f64(),
                });
                continue;
            }
        }
        let train_stats = match split {
            Split::Train => None,
            Split::Test => Some(train_statistics(out, &fingerprint, &pack, &train_manifest)?),
        };
        let ds: &Dataset = match &mut dataset {
            Some(d) => d,
            slot @ None => slot.insert(Dataset::open(root, opts.dataset.clone())?),
        };
        let manifest = pack_split(
            ds,
            split,
            out,
            &fingerprint,
            &pack,
            train_stats,
            opts,
            progress,
        )?;
        reports.push(SplitReport {
            split,
            outcome: SplitOutcome::Packed,
            dir: out.join(split.as_str()),
            n: manifest.n,
            skipped: manifest.skipped.len(),
            skipped_surveys: manifest.skipped.clone(),
            env_coverage: manifest.env_coverage.clone(),
            metadata_duplicate_rows: manifest.metadata_duplicate_rows,
            bytes: manifest.files.iter().map(|f| f.bytes).sum(),
            seconds: t0.elapsed().as_secs_f64(),
        });
        if split == Split::Train {
            train_manifest = Some(manifest);
        }
    }
    Ok(reports)
}

/// The train statistics a test split copies: from this run or a matching train cache.
fn train_statistics(
    out: &Path,
    fingerprint: &str,
    pack: &PackOptions,
    this_run: &Option<Manifest>,
) -> Result<Manifest, CacheError> {
    if let Some(m) = this_run {
        return Ok(m.clone());
    }
    let need = |why: String| {
        CacheError::NeedTrain(format!(
            "packing the test split needs the train statistics, but {why}: run `geolife prepare` with `--splits train,test`"
        ))
    };
    match PackedSplit::open(out, Split::Train) {
        Ok(t)
            if t.manifest().dataset_fingerprint == fingerprint && &t.manifest().options == pack =>
        {
            Ok(t.manifest().clone())
        }
        Ok(t) => Err(need(format!(
            "the train cache at {} was packed from other data or options",
            t.dir().display()
        ))),
        Err(e) => Err(need(format!(
            "no usable train cache ({})",
            geolife_io::error_text(&e)
        ))),
    }
}

/// Per-row result of the parallel read.
struct Row {
    landsat: Vec<f32>,
    bioclim: Vec<f32>,
    patch: Vec<u8>,
    /// Per-channel moments of (landsat, bioclim, patch) when statistics are computed.
    moments: Option<[Vec<Moments>; 3]>,
}

fn read_row(ds: &Dataset, split: Split, id: u64, stats: bool) -> Result<Row, CacheError> {
    let landsat = ds.read_landsat(split, id)?;
    let bioclim = ds.read_bioclim(split, id)?;
    let patch = ds.read_patch(split, id)?;
    for (what, expected, found) in [
        ("landsat cube", LANDSAT_LEN, landsat.len()),
        ("bioclim cube", BIOCLIM_LEN, bioclim.len()),
        ("patch", PATCH_LEN, patch.len()),
    ] {
        if expected != found {
            return Err(CacheError::RowSize {
                survey: id,
                what,
                expected,
                found,
            });
        }
    }
    let moments = stats.then(|| {
        [
            channel_moments_f32(&landsat, LANDSAT_SHAPE[0]),
            channel_moments_f32(&bioclim, BIOCLIM_SHAPE[0]),
            channel_moments_u8(&patch, PATCH_SHAPE[0]),
        ]
    });
    Ok(Row {
        landsat,
        bioclim,
        patch,
        moments,
    })
}

/// Removes leftover `<split>.tmp-<pid>` / `<split>.old-<pid>` folders of earlier runs. Called
/// while this run holds the cache lock, so no other `prepare` can be writing them.
fn clean_stale_tmp(out: &Path, split: Split) -> Result<(), CacheError> {
    let ours = std::process::id().to_string();
    let prefixes = [format!("{split}.tmp-"), format!("{split}.old-")];
    let entries = std::fs::read_dir(out).map_err(|e| CacheError::io(out, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let leftover = prefixes
            .iter()
            .any(|p| name.strip_prefix(p.as_str()).is_some_and(|pid| pid != ours));
        if leftover {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| CacheError::io(&path, e))?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn pack_split(
    ds: &Dataset,
    split: Split,
    out: &Path,
    fingerprint: &str,
    pack: &PackOptions,
    train: Option<Manifest>,
    opts: &PrepareOptions,
    progress: &dyn PrepareProgress,
) -> Result<Manifest, CacheError> {
    clean_stale_tmp(out, split)?;
    let tmp = out.join(format!("{split}.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| CacheError::io(&tmp, e))?;
    let result = pack_into(ds, split, &tmp, fingerprint, pack, train, opts, progress);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Swap the complete folder in: the old cache (if any) is moved aside, then removed.
    let dest = out.join(split.as_str());
    let old = out.join(format!("{split}.old-{}", std::process::id()));
    if dest.exists() {
        std::fs::rename(&dest, &old).map_err(|e| CacheError::io(&dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| CacheError::io(&dest, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| CacheError::io(&old, e))?;
    }
    Ok(manifest)
}

#[allow(clippy::too_many_arguments)]
fn pack_into(
    ds: &Dataset,
    split: Split,
    dir: &Path,
    fingerprint: &str,
    pack: &PackOptions,
    train: Option<Manifest>,
    opts: &PrepareOptions,
    progress: &dyn PrepareProgress,
) -> Result<Manifest, CacheError> {
    let metadata = ds.metadata(split)?;
    let metas = &metadata.surveys;
    let labels = ds.labels(split);
    let table = ds.tabular_report(split)?;
    let n = metas.len();
    let nf = table.feature_names.len();
    if table.values.len() != n * nf {
        return Err(CacheError::Invalid(format!(
            "{split} tabular table has {} values, expected {n} surveys x {nf} features",
            table.values.len()
        )));
    }
    if let Some(l) = labels
        && l.len() != n
    {
        return Err(CacheError::Invalid(format!(
            "{split} labels cover {} surveys, expected {n}",
            l.len()
        )));
    }
    let mut bad = table_problems(ds, split, &table, opts.strict)?;
    if !opts.skip_bad
        && let Some((_, e)) = bad.pop_first()
    {
        return Err(e.into());
    }
    let compute_stats = train.is_none();
    let writer = SplitWriter::create(dir, nf, n)?;
    let mut kept: Vec<usize> = Vec::with_capacity(n);
    let mut skipped: Vec<SkippedSurvey> = Vec::new();
    let mut ch: [Vec<Moments>; 3] = Default::default();
    progress.start(split, n);
    for start in (0..n).step_by(opts.chunk) {
        let end = (start + opts.chunk).min(n);
        // Surveys already refused by their table rows are not read.
        let rows: Vec<Option<Result<Row, CacheError>>> = (start..end)
            .into_par_iter()
            .map(|i| {
                (!bad.contains_key(&i))
                    .then(|| read_row(ds, split, metas[i].survey_id, compute_stats))
            })
            .collect();
        for (i, row) in (start..end).zip(rows) {
            let id = metas[i].survey_id;
            let row = match row {
                Some(Ok(r)) => r,
                None => {
                    // Only with skip_bad (otherwise the first one failed above).
                    let e = bad.remove(&i).map(CacheError::from).unwrap_or_else(|| {
                        CacheError::Invalid(format!("survey {id}: no reason recorded"))
                    });
                    skip(&mut skipped, id, &e);
                    continue;
                }
                Some(Err(e)) if opts.skip_bad => {
                    skip(&mut skipped, id, &e);
                    continue;
                }
                Some(Err(e)) => return Err(e),
            };
            writer.write_row(
                kept.len(),
                &RowRef {
                    tabular: &table.values[i * nf..(i + 1) * nf],
                    landsat: &row.landsat,
                    bioclim: &row.bioclim,
                    patch: &row.patch,
                },
            )?;
            if let Some(m) = &row.moments {
                for (acc, part) in ch.iter_mut().zip(m) {
                    merge_all(acc, part);
                }
            }
            kept.push(i);
        }
        progress.advance(end);
    }
    let k = kept.len();
    let mut file_entries: Vec<FileEntry> = writer.finish(k)?;

    let ids: Vec<u64> = kept.iter().map(|&i| metas[i].survey_id).collect();
    let lon_lat: Vec<f64> = kept
        .iter()
        .flat_map(|&i| [metas[i].lon, metas[i].lat])
        .collect();
    file_entries.push(write_small(
        dir,
        files::SURVEY_IDS,
        bytemuck::cast_slice(&ids),
    )?);
    file_entries.push(write_small(
        dir,
        files::LON_LAT,
        bytemuck::cast_slice(&lon_lat),
    )?);
    let mut n_label_ids = 0;
    let mut species: Vec<u32> = Vec::new();
    if let Some(labels) = labels {
        let mut offsets: Vec<u64> = Vec::with_capacity(k + 1);
        let mut flat: Vec<u32> = Vec::new();
        offsets.push(0);
        for &i in &kept {
            let mut l = labels[i].clone();
            l.sort_unstable();
            l.dedup();
            flat.extend_from_slice(&l);
            offsets.push(flat.len() as u64);
        }
        n_label_ids = flat.len();
        file_entries.push(write_small(
            dir,
            files::LABEL_OFFSETS,
            bytemuck::cast_slice(&offsets),
        )?);
        file_entries.push(write_small(
            dir,
            files::LABEL_IDS,
            bytemuck::cast_slice(&flat),
        )?);
        species = flat;
        species.sort_unstable();
        species.dedup();
    }

    let (tabular_stats, landsat_stats, bioclim_stats, patch_stats, species) = match train {
        Some(t) => (
            t.tabular_stats,
            t.landsat_channel_stats,
            t.bioclim_channel_stats,
            t.patch_channel_stats,
            t.species,
        ),
        None => {
            let tab = tabular_stats(&table.feature_names, &table.values, &kept);
            let [l, b, p] = ch;
            let to = |v: Vec<Moments>, c: usize| -> Vec<ChannelStats> {
                if v.is_empty() {
                    vec![Moments::default().to_channel(); c]
                } else {
                    v.into_iter().map(Moments::to_channel).collect()
                }
            };
            (
                tab,
                to(l, LANDSAT_SHAPE[0]),
                to(b, BIOCLIM_SHAPE[0]),
                to(p, PATCH_SHAPE[0]),
                species,
            )
        }
    };

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        geolife_version: env!("CARGO_PKG_VERSION").to_string(),
        dataset_fingerprint: fingerprint.to_string(),
        split: split.to_string(),
        n: k,
        categorical_features: table
            .feature_names
            .iter()
            .zip(&table.categorical)
            .filter(|(_, c)| **c)
            .map(|(n, _)| n.clone())
            .collect(),
        feature_names: table.feature_names.clone(),
        tabular_stats,
        landsat_shape: LANDSAT_SHAPE,
        bioclim_shape: BIOCLIM_SHAPE,
        patch_shape: PATCH_SHAPE,
        landsat_channel_stats: landsat_stats,
        bioclim_channel_stats: bioclim_stats,
        patch_channel_stats: patch_stats,
        species,
        has_labels: labels.is_some(),
        n_label_ids,
        options: pack.clone(),
        skipped,
        env_coverage: table.coverage.clone(),
        metadata_duplicate_rows: metadata.duplicate_rows,
        files: file_entries,
    };
    // The manifest goes last: its presence marks the folder complete.
    manifest.save(&dir.join(files::MANIFEST))?;
    progress.finish();
    Ok(manifest)
}

/// Records a survey dropped by `--skip-bad`.
fn skip(skipped: &mut Vec<SkippedSurvey>, id: u64, e: &CacheError) {
    let kind = match e {
        CacheError::Data(d) => d.kind().to_string(),
        CacheError::RowSize { .. } => "shape".to_string(),
        _ => "other".to_string(),
    };
    let reason = geolife_io::error_text(&e);
    tracing::warn!("skipping survey {id}: {reason}");
    skipped.push(SkippedSurvey {
        survey_id: id,
        kind,
        reason,
    });
}

/// Per-survey problems of the tables, by row index (the first problem of each survey):
/// metadata rows that disagree, env CSV rows that disagree, and (with `strict`) surveys
/// without a row in an env CSV. With `strict`, rows of surveys the metadata does not hold
/// fail the whole split.
fn table_problems(
    ds: &Dataset,
    split: Split,
    table: &crate::TabularTable,
    strict: bool,
) -> Result<std::collections::BTreeMap<usize, DataError>, CacheError> {
    let meta = ds.metadata(split)?;
    let mut bad = std::collections::BTreeMap::new();
    let mut add = |survey: u64, e: DataError| {
        if let Some(i) = meta.index_of(survey) {
            bad.entry(i).or_insert(e);
        }
    };
    let meta_path = ds.root().join(metadata_csv(split));
    for c in &meta.conflicts {
        add(c.survey_id, c.to_error(&meta_path));
    }
    for cov in &table.coverage {
        for c in &cov.conflicts {
            add(c.survey_id, c.to_error(&cov.path));
        }
    }
    if strict {
        for cov in &table.coverage {
            if let Some(&(survey, line)) = cov.unknown_survey_examples.first() {
                return Err(DataError::Csv {
                    path: cov.path.clone(),
                    line,
                    survey: survey.into(),
                    reason: format!(
                        "survey not in the {split} metadata {} ({} such row(s) in this file; \
                         --strict refuses rows of unknown surveys)",
                        metadata_csv(split),
                        cov.unknown_survey_rows
                    ),
                }
                .into());
            }
            for &survey in &cov.missing_surveys {
                add(
                    survey,
                    DataError::MissingRow {
                        path: cov.path.clone(),
                        survey: survey.into(),
                        reason: format!(
                            "its {} feature(s) would be NaN; --strict refuses surveys without \
                             a row (drop --strict to keep them with NaN, or pass --skip-bad \
                             to leave them out)",
                            cov.group
                        ),
                    },
                );
            }
        }
    }
    Ok(bad)
}

/// Per-feature statistics of the kept rows of a row-major `n x F` table.
fn tabular_stats(names: &[String], values: &[f32], kept: &[usize]) -> Vec<FeatureStats> {
    let nf = names.len();
    names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            Moments::of(kept.iter().map(|&i| values[i * nf + j] as f64)).to_feature(name)
        })
        .collect()
}

/// Exclusive hold on a cache folder for one `prepare` run: an advisory OS lock
/// (`File::try_lock`, `flock` on Linux) on [`LOCK_FILE`]. The OS releases it when the process
/// ends, however it ends, so a killed run never leaves a stale lock and a live run's lock is
/// never mistaken for a stale one. The file stays in place (deleting it would let a run that
/// still has the old file open and one that creates a new file both hold "the" lock); its
/// text names the current holder for the error message of a refused run.
#[derive(Debug)]
struct PrepareLock {
    _file: File,
}

impl PrepareLock {
    /// Takes the lock of `dir`, or fails at once with [`CacheError::Locked`] naming the holder.
    fn acquire(dir: &Path) -> Result<PrepareLock, CacheError> {
        let path = dir.join(LOCK_FILE);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        // A cache on read-only storage can still be checked as up to date: lock the existing
        // file read-only (a lock needs no write access) and leave its text alone.
        let (mut file, writable) = match opened {
            Ok(f) => (f, true),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                (
                    File::open(&path).map_err(|_| CacheError::io(&path, e))?,
                    false,
                )
            }
            Err(e) => return Err(CacheError::io(&path, e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| LockHolder::parse(&t));
                let (pid, host) = holder.map_or((None, None), |h| (Some(h.pid), h.host));
                return Err(CacheError::Locked { path, pid, host });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(CacheError::io(&path, e)),
        }
        if !writable {
            return Ok(PrepareLock { _file: file });
        }
        let text = LockHolder::current().to_text();
        file.set_len(0)
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| CacheError::io(&path, e))?;
        Ok(PrepareLock { _file: file })
    }
}

/// The process named in a lock file: `pid=` and `host=` lines; only `pid` is required.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LockHolder {
    pid: u32,
    host: Option<String>,
}

impl LockHolder {
    fn current() -> LockHolder {
        LockHolder {
            pid: std::process::id(),
            host: hostname(),
        }
    }

    fn to_text(&self) -> String {
        let mut t = format!("pid={}\n", self.pid);
        if let Some(h) = &self.host {
            t.push_str(&format!("host={h}\n"));
        }
        t
    }

    fn parse(text: &str) -> Option<LockHolder> {
        let field = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        };
        Some(LockHolder {
            pid: field("pid")?.parse().ok()?,
            host: field("host").filter(|h| !h.is_empty()),
        })
    }
}

/// This machine's host name (Linux), to tell locks of other machines on a shared disk.
fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

/// Fingerprint of a dataset folder: a hash of every file's relative path, size and
/// modification time (no content read, so it is fast on the full dataset). `exclude` (e.g.
/// the cache folder when it lies inside the dataset) is skipped.
pub fn dataset_fingerprint(root: &Path, exclude: Option<&Path>) -> Result<String, CacheError> {
    let exclude = exclude.and_then(|p| p.canonicalize().ok());
    let mut entries: Vec<(String, u64, u128)> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if exclude
            .as_deref()
            .is_some_and(|x| dir.canonicalize().ok().as_deref() == Some(x))
        {
            continue;
        }
        let rd = std::fs::read_dir(&dir).map_err(|e| CacheError::io(&dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| CacheError::io(&dir, e))?;
            let path = entry.path();
            let meta = std::fs::metadata(&path).map_err(|e| CacheError::io(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                entries.push((rel, meta.len(), mtime));
            }
        }
    }
    entries.sort();
    // FNV-1a 64 (the `fnv` crate): stable across Rust versions, unlike `DefaultHasher`.
    let mut h = fnv::FnvHasher::default();
    for (rel, len, mtime) in &entries {
        h.write(rel.as_bytes());
        h.write(&[0]);
        h.write(&len.to_le_bytes());
        h.write(&mtime.to_le_bytes());
    }
    Ok(format!(
        "fnv1a64:{:016x}:{}files",
        h.finish(),
        entries.len()
    ))
}
