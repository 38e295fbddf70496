//! The pipeline's maps (`maps/` in its folder, PNG, drawn by `geolife_maps`): where the
//! members trained, validated and were tested, and where the ensemble does well or badly.
//!
//! - `split.png`: train / validation / test surveys of the first member (the members share
//!   one split; of a k-fold member, fold 0's), with its validation blocks.
//! - `f1-val.png`: per-survey samples-F1 of the ensemble on validation after its policy
//!   (`val_scores.safetensors`, `policy.toml`; labels from the cache's train split, which
//!   covers both a single split and k-fold out-of-fold scores).
//! - `f1-test.png`: the same on test, only with a test solution.
//! - `richness-test.png`: species the ensemble's policy selects per test survey.
//! - `prior.png` (with `[prior]`): the location prior's expected species richness per test
//!   survey, the sum of its probabilities (of the species it keeps, `[prior] top`): how many
//!   species the neighbouring surveys and presence-only records lead one to expect there, to
//!   set beside the ensemble's richness.
//!
//! Like `report.png`, the maps are a convenience: recomputed on every run (seconds), not part
//! of the results a resumed run reproduces byte for byte (their titles name folders), and a
//! map that cannot be drawn is a warning, not a failed pipeline. A map not drawn this run is
//! removed, so `maps/` never shows an older run's map beside this one's.

use std::path::{Path, PathBuf};

use geolife_maps::{F1Map, Labels, MapOptions, MapRequest, RichnessMap, SplitMap, render};

use super::members::{folds_of, member_dir, unit_dir};
use super::{PipelineOptions, outputs};
use crate::trainer::run_dir::files;

/// The maps folder inside a pipeline folder.
pub const MAPS: &str = "maps";

/// The map files, in the order they are drawn and listed.
pub const MAP_FILES: [&str; 5] = [
    "split.png",
    "f1-val.png",
    "f1-test.png",
    "richness-test.png",
    "prior.png",
];

/// Hidden folder inside `maps/` that stands in for the split's run folder while its map is
/// drawn (see [`split_source`]); removed afterwards.
const SPLIT_SOURCE: &str = ".split-run";

/// The maps of a pipeline folder that exist, in [`MAP_FILES`] order: what `geolife pipeline`
/// and `geolife demo` print after a run.
pub fn map_paths(out: &Path) -> Vec<PathBuf> {
    let dir = out.join(MAPS);
    MAP_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}

/// One map to draw.
#[derive(Debug)]
enum Job {
    /// The split of a member's run folder (`run`), titled `title`.
    Split {
        run: PathBuf,
        title: String,
    },
    Map {
        request: MapRequest,
        title: String,
    },
}

/// What to draw, by file name; a map left out here (no test solution, no prior, no run
/// folder for the split) is not drawn, and a stale file of its name is removed.
fn plan(opts: &PipelineOptions) -> Vec<(&'static str, Job)> {
    let out = &opts.out;
    let p = &opts.pipeline;
    let coords = opts.cache.clone();
    let policy = Some(out.join(outputs::POLICY));
    let mut jobs = Vec::new();
    if let Some(m) = p.members.first() {
        let k = folds_of(m);
        let (run, title) = if k > 1 {
            (
                unit_dir(out, m, Some(0)),
                format!("Split of member `{}`, fold 1 of {k}", m.name),
            )
        } else {
            (member_dir(out, m), format!("Split of member `{}`", m.name))
        };
        jobs.push(("split.png", Job::Split { run, title }));
    }
    jobs.push((
        "f1-val.png",
        Job::Map {
            request: MapRequest::F1(F1Map {
                scores: out.join(outputs::VAL_SCORES),
                labels: Labels::Train,
                policy: policy.clone(),
                coords: coords.clone(),
            }),
            title: "Per-survey samples-F1 of the ensemble on validation".into(),
        },
    ));
    if let Some(solution) = &opts.test_solution {
        jobs.push((
            "f1-test.png",
            Job::Map {
                request: MapRequest::F1(F1Map {
                    scores: out.join(outputs::TEST_SCORES),
                    labels: Labels::Loaded {
                        origin: "the test solution (--test-solution)".into(),
                        solution: solution.clone(),
                    },
                    policy: policy.clone(),
                    coords: coords.clone(),
                }),
                title: "Per-survey samples-F1 of the ensemble on test".into(),
            },
        ));
    }
    jobs.push((
        "richness-test.png",
        Job::Map {
            request: MapRequest::Richness(RichnessMap {
                scores: out.join(outputs::TEST_SCORES),
                policy,
                expected: false,
                coords: coords.clone(),
            }),
            title: "Species the ensemble selects per test survey".into(),
        },
    ));
    if p.prior.is_some() {
        jobs.push((
            "prior.png",
            Job::Map {
                request: MapRequest::Richness(RichnessMap {
                    scores: out.join(outputs::PRIOR).join(outputs::TEST_SCORES),
                    policy: None,
                    expected: true,
                    coords,
                }),
                title: "Expected species per test survey: the location prior".into(),
            },
        ));
    }
    jobs
}

/// Draws the pipeline's maps into `<out>/maps/` (see the module docs); returns the files
/// written. Never fails: a map that cannot be drawn is logged (`tracing::warn!`, naming the
/// map and why) and skipped.
pub(super) fn write_maps(opts: &PipelineOptions) -> Vec<PathBuf> {
    let dir = opts.out.join(MAPS);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!("no maps: cannot create {}: {e}", dir.display());
        return Vec::new();
    }
    let jobs = plan(opts);
    let mut written = Vec::new();
    for name in MAP_FILES {
        let path = dir.join(name);
        let drawn = match jobs.iter().find(|(n, _)| *n == name) {
            Some((_, job)) => match draw(job, &path, &dir, &opts.cache) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("no map {}: {e}", path.display());
                    false
                }
            },
            None => false,
        };
        if drawn {
            written.push(path);
        } else if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the stale map {}: {e}", path.display());
        }
    }
    written
}

fn draw(job: &Job, path: &Path, dir: &Path, cache: &Path) -> Result<(), String> {
    let options = |title: &str| MapOptions {
        title: Some(title.to_string()),
        ..MapOptions::default()
    };
    match job {
        Job::Map { request, title } => render(request, path, &options(title))
            .map(|_| ())
            .map_err(|e| geolife_io::error_text(&e)),
        Job::Split { run, title } => {
            let source = dir.join(SPLIT_SOURCE);
            let drawn = split_source(run, cache, &source).and_then(|()| {
                render(
                    &MapRequest::Split(SplitMap {
                        from: source.clone(),
                    }),
                    path,
                    &options(title),
                )
                .map(|_| ())
                .map_err(|e| geolife_io::error_text(&e))
            });
            let _ = std::fs::remove_dir_all(&source);
            drawn
        }
    }
}

/// A member's run folder as the split map needs it, in `source`: its `run.json` (validation
/// surveys) and `config.toml` (validation settings) with `data.path` set to `cache`. A
/// pipeline member's config names no data (the pipeline hands each member its cache), and
/// `geolife_maps` finds a run's surveys through `data.path`.
fn split_source(run: &Path, cache: &Path, source: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(source);
    std::fs::create_dir_all(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let read = |name: &str| {
        let p = run.join(name);
        std::fs::read_to_string(&p)
            .map(|text| (p.clone(), text))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (path, text) = read(files::CONFIG)?;
    let mut config: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let cache = cache
        .to_str()
        .ok_or_else(|| format!("the cache path {} is not UTF-8", cache.display()))?;
    let data = config
        .entry("data")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(data) = data.as_table_mut() else {
        return Err(format!("{}: `data` is not a table", path.display()));
    };
    data.insert("path".into(), toml::Value::String(cache.into()));
    let (_, run_json) = read(files::RUN)?;
    let write = |name: &str, text: &str| {
        let p = source.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(
        files::CONFIG,
        &toml::to_string(&config).map_err(|e| e.to_string())?,
    )?;
    write(files::RUN, &run_json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrainConfig;
    use crate::pipeline::{PriorSpec, ResolvedMember, ResolvedPipeline};
    use crate::trainer::Progress;
    use geolife_metrics::Solution;
    use geolife_prior::PriorConfig;

    /// A pipeline of two tiny members (the first with `folds` folds) in `out`.
    fn options(out: &Path, folds: usize, prior: bool, test: bool) -> PipelineOptions {
        let member = |name: &str, folds: usize| {
            let mut config = TrainConfig::tiny();
            config.validation.folds = folds;
            ResolvedMember {
                name: name.into(),
                config,
            }
        };
        PipelineOptions {
            pipeline: ResolvedPipeline {
                ensemble: Default::default(),
                policy: Default::default(),
                predict: Default::default(),
                prior: prior.then(|| PriorSpec::new(PriorConfig::default())),
                report: Default::default(),
                members: vec![member("a", folds), member("b", 1)],
            },
            cache: out.join("cache"),
            data_root: None,
            out: out.to_path_buf(),
            test_solution: test.then(|| Solution::new(vec![1], vec![vec![2]]).unwrap()),
            progress: Progress::Quiet,
            executor: Default::default(),
        }
    }

    fn names(jobs: &[(&'static str, Job)]) -> Vec<&'static str> {
        jobs.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn the_plan_has_test_f1_with_a_solution_and_the_prior_map_with_a_prior() {
        let out = Path::new("/p");
        let all = plan(&options(out, 1, true, true));
        assert_eq!(names(&all), MAP_FILES);
        let some = plan(&options(out, 1, false, false));
        assert_eq!(
            names(&some),
            ["split.png", "f1-val.png", "richness-test.png"]
        );
        // The split is the first member's; validation F1 takes the cache's train labels.
        match &all[0].1 {
            Job::Split { run, title } => {
                assert_eq!(run, &out.join("members/a"));
                assert!(title.contains("`a`"), "{title}");
            }
            other => panic!("{other:?}"),
        }
        match &all[1].1 {
            Job::Map {
                request: MapRequest::F1(m),
                ..
            } => {
                assert!(matches!(m.labels, Labels::Train));
                assert_eq!(m.scores, out.join("val_scores.safetensors"));
                assert_eq!(m.policy.as_deref(), Some(out.join("policy.toml").as_path()));
                assert_eq!(m.coords, out.join("cache"));
            }
            other => panic!("{other:?}"),
        }
        // The prior's map: its expected richness on test.
        match &all[4].1 {
            Job::Map {
                request: MapRequest::Richness(m),
                ..
            } => {
                assert!(m.expected && m.policy.is_none());
                assert_eq!(m.scores, out.join("prior/test_scores.safetensors"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_split_of_a_k_fold_member_is_its_first_folds() {
        let jobs = plan(&options(Path::new("/p"), 3, false, false));
        match &jobs[0].1 {
            Job::Split { run, title } => {
                assert_eq!(run, Path::new("/p/members/a/fold-0"));
                assert!(title.contains("fold 1 of 3"), "{title}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_split_source_is_the_run_with_the_cache_as_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join(files::CONFIG),
            "[data]\nvocabulary = \"compact\"\n\n[validation]\nblock_arcmin = 30.0\n",
        )
        .unwrap();
        std::fs::write(run.join(files::RUN), r#"{"val_survey_ids": [3, 1]}"#).unwrap();
        let source = dir.path().join("maps").join(SPLIT_SOURCE);
        split_source(&run, Path::new("/c/cache"), &source).unwrap();
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(source.join(files::CONFIG)).unwrap()).unwrap();
        assert_eq!(config["data"]["path"].as_str(), Some("/c/cache"));
        assert_eq!(config["data"]["vocabulary"].as_str(), Some("compact"));
        assert_eq!(config["validation"]["block_arcmin"].as_float(), Some(30.0));
        assert_eq!(
            std::fs::read_to_string(source.join(files::RUN)).unwrap(),
            r#"{"val_survey_ids": [3, 1]}"#
        );
        // A run folder without run.json (a k-fold member's own) is an error, not a panic.
        std::fs::remove_file(run.join(files::RUN)).unwrap();
        let e = split_source(&run, Path::new("/c"), &source).unwrap_err();
        assert!(e.contains("run.json"), "{e}");
    }

    #[test]
    fn maps_that_cannot_be_drawn_are_skipped_and_their_stale_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let maps = out.join(MAPS);
        std::fs::create_dir_all(&maps).unwrap();
        for f in ["split.png", "f1-test.png", "notes.png"] {
            std::fs::write(maps.join(f), b"old").unwrap();
        }
        assert_eq!(
            map_paths(out),
            [maps.join("split.png"), maps.join("f1-test.png")]
        );
        // Nothing to draw from (no cache, no scores): no map, no error, no stale map left,
        // nor the split's stand-in run folder; files of other names are left alone.
        assert!(write_maps(&options(out, 1, true, true)).is_empty());
        assert!(map_paths(out).is_empty());
        assert!(!maps.join(SPLIT_SOURCE).exists());
        assert!(maps.join("notes.png").is_file());
    }
}
