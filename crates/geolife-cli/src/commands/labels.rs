//! Where validation labels come from, for `evaluate`, `calibrate` and `ensemble --fit`:
//! `--solution CSV` (Kaggle solution format) or `--labels-from RUN|CACHE`, which reads a run
//! folder's `val_labels.csv` or takes the train labels of a packed cache. The one loader of
//! labels for the three commands.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use geolife_data::Split;
use geolife_data::cache::{PackedSplit, files};
use geolife_metrics::{Solution, read_solution};

/// File names in a run folder written by `geolife train` (the light commands build without
/// geolife-train; a test checks these against its names).
pub const RUN_JSON: &str = "run.json";
pub const RUN_CONFIG: &str = "config.toml";
/// The run's validation labels in the solution format, beside `val_scores.safetensors`.
pub const VAL_LABELS: &str = "val_labels.csv";

/// The label flags; at most one of them (commands that always need labels require one).
#[derive(clap::Args, Clone, Debug)]
pub struct LabelArgs {
    /// Labels as a solution CSV (`surveyId,predictions`, species ids space-separated).
    #[arg(long, conflicts_with = "labels_from")]
    pub solution: Option<PathBuf>,
    /// Labels from a run folder (its val_labels.csv) or a packed cache (the train labels of
    /// exactly the scored surveys; a scored survey the cache lacks is an error).
    #[arg(long, value_name = "RUN|CACHE")]
    pub labels_from: Option<PathBuf>,
}

/// The group of the label flags, id `labels`: `.required(true)` where labels are always
/// needed, a `requires = "labels"` on the flags that need them otherwise.
pub fn group() -> clap::ArgGroup {
    clap::ArgGroup::new("labels").args(["solution", "labels_from"])
}

/// What a command without labels is told.
const NO_LABELS: &str = "no labels: give --solution <CSV> or --labels-from <RUN|CACHE>";

impl LabelArgs {
    /// The path the labels come from (the CSV, run folder or cache), for messages and records.
    pub fn path(&self) -> anyhow::Result<&Path> {
        self.solution
            .as_deref()
            .or(self.labels_from.as_deref())
            .context(NO_LABELS)
    }

    /// The labels, read as the flags say; `survey_ids` are the scored surveys (a cache gives
    /// labels for exactly these, in this order, duplicates dropped).
    pub fn load(&self, survey_ids: &[u64]) -> anyhow::Result<Solution> {
        match (&self.solution, &self.labels_from) {
            (Some(csv), None) => read_csv(csv),
            (None, Some(from)) => labels_from(from, survey_ids),
            (Some(_), Some(_)) => anyhow::bail!("give --solution or --labels-from, not both"),
            (None, None) => anyhow::bail!(NO_LABELS),
        }
    }
}

fn read_csv(path: &Path) -> anyhow::Result<Solution> {
    read_solution(path).with_context(|| format!("reading solution {}", path.display()))
}

/// Labels from a run folder or a packed cache: the run's `val_labels.csv`; else a cache's
/// train labels of `survey_ids`; else, for a run without `val_labels.csv`, the train labels
/// of the cache its `config.toml` names.
pub fn labels_from(from: &Path, survey_ids: &[u64]) -> anyhow::Result<Solution> {
    let expected = "expected a run folder (from `geolife train`: val_labels.csv or run.json) \
                    or a packed cache (from `geolife prepare`: train/manifest.json); a labels \
                    CSV goes to --solution";
    anyhow::ensure!(
        from.is_dir(),
        "--labels-from {}: not a folder; {expected}",
        from.display()
    );
    let csv = from.join(VAL_LABELS);
    if csv.is_file() {
        return read_csv(&csv);
    }
    if let Some(train) = cache_train_dir(from) {
        return cache_labels(from, &train, survey_ids);
    }
    if from.join(RUN_JSON).is_file() {
        let (cache, train) = run_cache(from)?;
        return cache_labels(&cache, &train, survey_ids).with_context(|| {
            format!(
                "{}: no {VAL_LABELS} (a run of an older geolife): labels from the cache its \
                 {RUN_CONFIG} names",
                from.display()
            )
        });
    }
    anyhow::bail!(
        "--labels-from {}: neither a run folder nor a packed cache; {expected}",
        from.display()
    )
}

/// The train split folder of a packed cache at `dir` (or `dir` itself when it is a split
/// folder), told by a split manifest; `None` when `dir` is no cache.
fn cache_train_dir(dir: &Path) -> Option<PathBuf> {
    let is_split = |d: &Path| d.join(files::MANIFEST).is_file();
    if is_split(dir) {
        return Some(dir.to_path_buf());
    }
    let train = dir.join(Split::Train.as_str());
    // A cache with only its test split packed is still a cache: opening train says what to do.
    (is_split(&train) || is_split(&dir.join(Split::Test.as_str()))).then_some(train)
}

/// The cache a run was trained on and its train split folder: `data.path` of the run's
/// `config.toml`, when that is a packed cache.
fn run_cache(run: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let missing = |what: String| {
        anyhow::anyhow!(
            "{}: no {VAL_LABELS} (a run of an older geolife) and {what}; give the cache the run \
             was trained on with --labels-from <CACHE>, or a labels CSV with --solution",
            run.display()
        )
    };
    let text = std::fs::read_to_string(run.join(RUN_CONFIG))
        .map_err(|e| missing(format!("no readable {RUN_CONFIG} ({e})")))?;
    let value: toml::Value = toml::from_str(&text)
        .map_err(|e| missing(format!("its {RUN_CONFIG} does not parse ({e})")))?;
    let data = value
        .get("data")
        .and_then(|d| d.get("path"))
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| missing(format!("its {RUN_CONFIG} names no data.path")))?;
    match cache_train_dir(&data) {
        Some(train) => Ok((data, train)),
        None => Err(missing(format!(
            "data.path {} of its {RUN_CONFIG} is not a packed cache",
            data.display()
        ))),
    }
}

/// The train labels of `survey_ids` (first-occurrence order) from the packed train split at
/// `train` of the cache `cache`; a survey the split lacks is an error naming it and the cache.
fn cache_labels(cache: &Path, train: &Path, survey_ids: &[u64]) -> anyhow::Result<Solution> {
    let split = PackedSplit::open_dir(train, Split::Train)?;
    anyhow::ensure!(
        split.has_labels(),
        "{}: the packed train split holds no labels",
        train.display()
    );
    let mut seen = HashSet::with_capacity(survey_ids.len());
    let ids: Vec<u64> = survey_ids
        .iter()
        .copied()
        .filter(|&id| seen.insert(id))
        .collect();
    let labels = split.labels_of(&ids).map_err(|id| {
        anyhow::anyhow!(
            "survey {id} of the scores is not in the cache at {}: it holds the labels of {} \
             train surveys (test surveys have none)",
            cache.display(),
            split.len()
        )
    })?;
    Ok(Solution::new(ids, labels)?)
}

#[cfg(all(test, feature = "dl"))]
mod tests {
    #[test]
    fn run_folder_names_match_the_trainer() {
        use geolife_train::trainer::files;
        assert_eq!(super::RUN_JSON, files::RUN);
        assert_eq!(super::RUN_CONFIG, files::CONFIG);
        assert_eq!(super::VAL_LABELS, files::VAL_LABELS);
    }
}
