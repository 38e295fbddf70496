//! The location prior as one more blend member, named `prior`: its presence-only file, its
//! validation scores (from the other train surveys only) and test scores, written once and
//! reused. Apart from the trained members because it needs no training and no device.

use std::path::{Path, PathBuf};
use std::time::Instant;

use geolife_data::cache::PackedSplit;
use geolife_data::{Split, SurveyMeta};
use geolife_metrics::ScoreFile;
use geolife_prior::{CachedSurveys, PoRecords, PriorConfig, PriorSource, Target};
use serde::{Deserialize, Serialize};

use super::members::MemberScores;
use super::{PipelineOptions, PriorSpec, outputs};
use crate::error::TrainError;
use crate::trainer::run_dir::{read_json, write_json};

/// What the prior member's folder records once both score files exist (`prior.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PriorRecord {
    pub n_val_surveys: usize,
    pub n_test_surveys: usize,
    pub n_species: usize,
    /// PA train surveys of the test pool (the validation pool lacks the validation ones).
    pub n_train_surveys: usize,
    /// Presence-only records read (0 with `po.enabled = false`), and the file.
    pub po_records: usize,
    pub po_file: Option<PathBuf>,
    pub seconds: f64,
}

/// The `[prior]` member's source with its presence-only file resolved once, before anything
/// is written ([`PriorSource::resolve`]: `po_file` when given, else the dataset root's; `None`
/// for `data_root`: a packed cache). An error names the file expected and the key to set.
pub(super) fn resolve_prior_source(
    spec: &PriorSpec,
    data_root: Option<&Path>,
) -> Result<PriorSource, TrainError> {
    spec.resolve(data_root)
        .map_err(|e| TrainError::prior_in("prior", e))
}

/// The prior member's validation and test scores. Validation: the train surveys of `groups`
/// (the validation split, or each fold of k-fold), each group scored from the train surveys
/// outside it only (`Target::Val`: no validation label reaches a validation score), as one
/// file sorted by survey. Test: the `test` surveys, scored from every train survey. `po`: the
/// presence-only records (visible to both; they are not PA labels).
pub(super) fn prior_scores(
    cfg: &PriorConfig,
    train: &CachedSurveys,
    test: &[SurveyMeta],
    groups: &[Vec<u64>],
    po: Option<&PoRecords>,
) -> Result<(ScoreFile, ScoreFile), TrainError> {
    let none = || {};
    let val = (groups.iter())
        .map(|g| {
            geolife_prior::score_split(cfg, train.as_train(), Target::Val(g), po, &none)
                .map_err(|e| TrainError::prior_in("prior", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let val = match <[ScoreFile; 1]>::try_from(val) {
        Ok([one]) => one,
        Err(many) => ScoreFile::concat(&many)?,
    };
    let test = geolife_prior::score_split(cfg, train.as_train(), Target::Test(test), po, &none)
        .map_err(|e| TrainError::prior_in("prior", e))?;
    Ok((val, test))
}

/// The prior member's score files in `dir`: read back when `prior.json` says both are
/// written, else computed from the cache (and the resolved source's PO file) and written
/// atomically.
fn prior_member(
    source: &PriorSource,
    cache: &Path,
    groups: &[Vec<u64>],
    dir: &Path,
) -> Result<(ScoreFile, ScoreFile, PriorRecord), TrainError> {
    let done = dir.join(outputs::PRIOR_DONE);
    let val_path = dir.join(outputs::VAL_SCORES);
    let test_path = dir.join(outputs::TEST_SCORES);
    if done.is_file() {
        let record: PriorRecord = read_json(&done)?;
        let val = ScoreFile::read(&val_path)?;
        let test = ScoreFile::read(&test_path)?;
        return Ok((val, test, record));
    }
    let t = Instant::now();
    let po = source
        .read_po(|_| {})
        .map_err(|e| TrainError::prior_in("prior", e))?;
    let train = CachedSurveys::of(&PackedSplit::open(cache, Split::Train)?);
    let test_surveys = CachedSurveys::of(&PackedSplit::open(cache, Split::Test)?).surveys;
    let (val, test) = prior_scores(&source.config, &train, &test_surveys, groups, po.as_ref())?;
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    val.write(&val_path)?;
    test.write(&test_path)?;
    let record = PriorRecord {
        n_val_surveys: val.len(),
        n_test_surveys: test.len(),
        n_species: val.species.len().max(test.species.len()),
        n_train_surveys: train.surveys.len(),
        po_records: po.as_ref().map_or(0, PoRecords::len),
        po_file: source.po_file.clone(),
        seconds: t.elapsed().as_secs_f64(),
    };
    write_json(&done, &record)?;
    Ok((val, test, record))
}

/// Appends the prior member's validation and test scores to `scores` (after the trained
/// members') when the pipeline has a `[prior]`, and says what it scored; its record.
pub(super) fn add_prior_member(
    opts: &PipelineOptions,
    source: Option<&PriorSource>,
    scores: &mut MemberScores,
) -> Result<Option<PriorRecord>, TrainError> {
    let (Some(spec), Some(source)) = (&opts.pipeline.prior, source) else {
        return Ok(None);
    };
    let (v, t, record) = prior_member(
        source,
        &opts.cache,
        &scores.groups,
        &opts.out.join(outputs::PRIOR),
    )?;
    tracing::info!(
        target: crate::PROGRESS,
        "prior ({}): {} validation and {} test surveys, {} PO records ({:.1}s)",
        spec.sources(),
        record.n_val_surveys,
        record.n_test_surveys,
        record.po_records,
        record.seconds
    );
    scores.val.push(v);
    scores.test.push(t);
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PipelineConfig;

    /// A survey at (lon 0, `lat`) with these labels.
    fn site(id: u64, lat: f64) -> SurveyMeta {
        SurveyMeta {
            survey_id: id,
            lon: 0.0,
            lat,
            ..SurveyMeta::default()
        }
    }

    /// The dense row of survey `id` as (species id, score) pairs.
    fn row_of(f: &ScoreFile, id: u64) -> Vec<(u32, f32)> {
        let i = f.survey_ids.iter().position(|&s| s == id).unwrap();
        let v = f.species.len();
        match &f.scores {
            geolife_metrics::Scores::Dense { data } => f
                .species
                .iter()
                .copied()
                .zip(data[i * v..(i + 1) * v].iter().copied())
                .collect(),
            other => panic!("expected dense scores, got {}", other.kind()),
        }
    }

    fn close(got: &[(u32, f32)], want: &[(u32, f32)]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                g.0 == w.0 && (g.1 - w.1).abs() < 1e-6,
                "{got:?} vs {want:?}"
            );
        }
    }

    /// Four train surveys within about a kilometre of each other: A and B in the training
    /// part, V and W (ids 3, 4) in validation, each holding a species nobody else holds (99 and
    /// 98). With a uniform kernel and no pseudo-count a PA score is the share of pool
    /// surveys holding the species, so the golden values below are counts.
    fn four_sites() -> CachedSurveys {
        CachedSurveys {
            surveys: vec![site(1, 0.0), site(2, 0.01), site(3, 0.005), site(4, 0.006)],
            labels: vec![vec![10, 20], vec![20, 30], vec![99], vec![10, 98]],
        }
    }

    fn uniform_pa_only() -> PriorConfig {
        let mut cfg = PriorConfig::default();
        cfg.pa.kernel = geolife_prior::Kernel::Uniform;
        cfg.po.enabled = false;
        cfg.top = 0;
        cfg
    }

    #[test]
    fn prior_validation_scores_never_see_validation_labels() {
        let train = four_sites();
        let test = [site(100, 0.003)];
        let (val, test) =
            prior_scores(&uniform_pa_only(), &train, &test, &[vec![4, 3]], None).unwrap();
        // Exactly the validation surveys, and every train species as a column.
        let mut ids = val.survey_ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, [3, 4]);
        assert_eq!((val.split.as_str(), test.split.as_str()), ("val", "test"));
        assert_eq!(val.species, [10, 20, 30, 98, 99]);
        // V and W see only A {10, 20} and B {20, 30}: 10 in 1 of 2, 20 in 2 of 2, 30 in 1 of 2;
        // their own species (99, 98) and each other's are 0.
        for id in [3, 4] {
            close(
                &row_of(&val, id),
                &[(10, 0.5), (20, 1.0), (30, 0.5), (98, 0.0), (99, 0.0)],
            );
        }
        // A test survey sees all four: 10 in A and W, 20 in A and B, 30, 98, 99 once each.
        close(
            &row_of(&test, 100),
            &[(10, 0.5), (20, 0.5), (30, 0.25), (98, 0.25), (99, 0.25)],
        );
    }

    #[test]
    fn prior_presence_only_records_reach_validation_and_test() {
        let train = four_sites();
        // Three records of species 10 and one of 99, all within a kilometre or so.
        let po = PoRecords::from_places([
            (0.0, 0.004, 10),
            (0.0, 0.005, 10),
            (0.0, 0.006, 10),
            (0.0, 0.005, 99),
        ]);
        let mut cfg = uniform_pa_only();
        cfg.pa.enabled = false;
        cfg.po.enabled = true;
        cfg.po.kernel = geolife_prior::Kernel::Uniform;
        cfg.po.debias = false;
        cfg.po.pseudo_count = 0.0;
        let (val, test) =
            prior_scores(&cfg, &train, &[site(100, 0.003)], &[vec![3, 4]], Some(&po)).unwrap();
        // Plain shares 3/4 and 1/4, times the pool's mean species count: the validation pool
        // (A, B) holds 4 labels on 2 surveys (2), the test pool 7 on 4 (1.75).
        close(
            &row_of(&val, 3),
            &[(10, 1.5), (20, 0.0), (30, 0.0), (98, 0.0), (99, 0.5)],
        );
        close(
            &row_of(&test, 100),
            &[(10, 1.3125), (20, 0.0), (30, 0.0), (98, 0.0), (99, 0.4375)],
        );
    }

    #[test]
    fn prior_validation_surveys_must_be_train_surveys() {
        let e = prior_scores(&uniform_pa_only(), &four_sites(), &[], &[vec![3, 7]], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("validation survey 7"), "{e}");
    }

    #[test]
    fn the_prior_reads_the_po_file_named_or_the_dataset_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let pipeline = root.join("p.toml");
        let cfg = PipelineConfig::from_toml_str(
            "[[member]]\nname = \"a\"\nconfig = \"m.toml\"\n[prior]\npo_file = \"po/x.csv\"\n",
            &pipeline,
        )
        .unwrap();
        // A relative po_file is relative to the pipeline file.
        let named = cfg.prior.clone().map(|mut s| {
            s.po_file = s.po_file.take().map(|f| root.join(f));
            s
        });
        let named = named.unwrap();
        assert_eq!(
            named.po_file.as_deref(),
            Some(root.join("po/x.csv").as_path())
        );
        let e = resolve_prior_source(&named, None).unwrap_err().to_string();
        assert!(
            e.contains(&root.join("po/x.csv").display().to_string()),
            "{e}"
        );
        std::fs::create_dir_all(root.join("po")).unwrap();
        std::fs::write(root.join("po/x.csv"), "").unwrap();
        assert_eq!(
            resolve_prior_source(&named, Some(Path::new("/elsewhere")))
                .unwrap()
                .po_file,
            Some(root.join("po/x.csv"))
        );
        // No po_file: the dataset root's file, and an error naming it when it is absent.
        let plain = PriorSpec::new(PriorConfig::default());
        let expected = root.join(geolife_data::layout::PO_METADATA_TRAIN);
        let e = resolve_prior_source(&plain, Some(root))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&expected.display().to_string()), "{e}");
        std::fs::write(&expected, "").unwrap();
        assert_eq!(
            resolve_prior_source(&plain, Some(root)).unwrap().po_file,
            Some(expected)
        );
        // From a cache alone there is no PO file to read.
        let e = resolve_prior_source(&plain, None).unwrap_err().to_string();
        assert!(e.contains("po_file") && e.contains("packed cache"), "{e}");
        // With the PO source off nothing is read.
        let mut off = plain.clone();
        off.config.po.enabled = false;
        assert_eq!(resolve_prior_source(&off, None).unwrap().po_file, None);
    }
}
