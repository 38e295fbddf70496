//! End to end on a tiny synthetic dataset: synth -> prepare -> train -> predict -> submission ->
//! evaluation, plus resume-equals-uninterrupted and the run folder's contents.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use geolife_data::Split;
use geolife_data::cache::PackedSplit;
use geolife_data::synth::layout::SOLUTION_CSV;
use geolife_metrics::{Policy, ScoreFile, Scores, read_solution, samples_f1, write_submission};
use geolife_train::predict::{PredictOptions, predict};
use geolife_train::trainer::files;
use geolife_train::{TrainConfig, TrainOptions, train};

/// Dataset root and packed cache, built once per test binary.
fn fixture() -> &'static (PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| common::synth_dataset(360, 80, 30, 11))
}

fn tiny(epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::tiny();
    c.train.epochs = epochs;
    c.train.batch_size = 32;
    c.train.mixup_prob = 0.4; // exercise mixup in the resume test too
    c
}

fn options(config: TrainConfig, run: &Path) -> TrainOptions {
    common::train_options(config, &fixture().1, run)
}

#[test]
fn tiny_end_to_end_learns_and_writes_every_file() {
    let _guard = common::serial();
    let _ = fixture();
    let (data, cache) = fixture();
    let run = tempfile::tempdir().unwrap();
    let run = run.path().join("run");
    let mut cfg = tiny(3);
    cfg.train.mixup_prob = 0.0;
    let summary = train(&options(cfg, &run)).unwrap();
    assert!(summary.finished);
    for f in [
        files::CONFIG,
        files::RUN,
        files::METRICS,
        files::LOG,
        files::LAST,
        files::BEST,
        files::VAL_SCORES,
        files::VAL_LABELS,
        files::CURVES,
        files::PROFILE,
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(run.join(files::METRICS)).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    // The validation labels are the validation surveys' label sets, in the scores' order.
    let labels = read_solution(&run.join(files::VAL_LABELS)).unwrap();
    let val = ScoreFile::read(&run.join(files::VAL_SCORES)).unwrap();
    assert_eq!(labels.survey_ids, val.survey_ids);
    let train_split = PackedSplit::open(cache, Split::Train).unwrap();
    for (id, l) in labels.survey_ids.iter().zip(&labels.labels) {
        let mut want = train_split
            .labels(train_split.index_of(*id).unwrap())
            .to_vec();
        want.sort_unstable();
        assert_eq!(l, &want, "labels of survey {id}");
    }
    // The time profile covers the 3 epochs and its parts fit in the measured total.
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(files::PROFILE)).unwrap()).unwrap();
    assert_eq!(p["epochs"], 3, "{p}");
    let total = p["total_s"].as_f64().unwrap();
    let parts: f64 = [
        &p["step"]["forward_s"],
        &p["step"]["backward_s"],
        &p["step"]["optimizer_s"],
        &p["loader_wait_s"],
        &p["validation_s"],
        &p["checkpoints_s"],
    ]
    .iter()
    .map(|v| v.as_f64().unwrap())
    .sum();
    assert!(
        parts > 0.0 && parts <= total * 1.01,
        "{parts} of {total}: {p}"
    );
    assert!(p["step"]["forward_s"].as_f64().unwrap() > 0.0, "{p}");
    let log = std::fs::read_to_string(run.join(files::LOG)).unwrap();
    assert!(log.contains("time over 3 epoch(s)"), "{log}");
    let h = &summary.history;
    assert!(
        h[2].train_loss < h[0].train_loss,
        "train loss did not decrease: {h:?}"
    );

    // Predict the test split and write a submission.
    let test = predict(&PredictOptions {
        run_dir: Some(run.clone()),
        weights: None,
        config: None,
        cache: cache.clone(),
        split: Split::Test,
        batch_size: 40,
        workers: 2,
        device: None,
        precision: None,
    })
    .unwrap();
    let test_cache = PackedSplit::open(cache, Split::Test).unwrap();
    assert_eq!(test.survey_ids, test_cache.survey_ids());
    let Scores::Dense { data: probs } = &test.scores else {
        panic!("dense scores expected")
    };
    assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
    let out = run.join("test_scores.safetensors");
    test.write(&out).unwrap();
    let back = ScoreFile::read(&out).unwrap();
    assert_eq!(back.survey_ids, test.survey_ids);

    let k = summary.history[summary.best_epoch.unwrap() - 1].best_k;
    let pred = Policy::TopK { k }.select(&test);
    let sub = run.join("submission.csv");
    write_submission(&sub, &test.survey_ids, &pred).unwrap();
    let text = std::fs::read_to_string(&sub).unwrap();
    assert!(text.starts_with("surveyId,predictions"));
    assert_eq!(text.lines().count(), test.len() + 1);

    // Learning: the model beats the species-frequency baseline at the same K on the test set.
    let solution = read_solution(&data.join(SOLUTION_CSV)).unwrap();
    let truth = solution.align(&test.survey_ids).truth;
    let f1 = samples_f1(&pred, &truth);
    let train_cache = PackedSplit::open(cache, Split::Train).unwrap();
    let mut counts = std::collections::HashMap::<u32, usize>::new();
    for i in 0..train_cache.len() {
        for &s in train_cache.labels(i) {
            *counts.entry(s).or_default() += 1;
        }
    }
    let mut by_freq: Vec<(u32, usize)> = counts.into_iter().collect();
    by_freq.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<u32> = by_freq.iter().take(k).map(|p| p.0).collect();
    let baseline = samples_f1(&vec![top; truth.len()], &truth);
    assert!(
        f1 > baseline,
        "model F1 {f1:.4} <= frequency baseline {baseline:.4} at K={k}"
    );
}

#[test]
fn resume_equals_uninterrupted() {
    let _guard = common::serial();
    let _ = fixture();
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let parts = dir.path().join("parts");
    let mut cfg = tiny(2);
    cfg.train.checkpoint_every_steps = 2;
    let a = train(&options(cfg.clone(), &whole)).unwrap();

    // Killed mid-epoch 1 (after 3 batches), then resumed twice more mid-epoch 2.
    let mut o = options(cfg.clone(), &parts);
    o.stop_after_batches = Some(3);
    let first = train(&o).unwrap();
    assert!(!first.finished);
    o.resume = true;
    o.stop_after_batches = Some(12);
    let second = train(&o).unwrap();
    assert!(!second.finished);
    o.stop_after_batches = None;
    let b = train(&o).unwrap();
    assert!(b.finished);

    assert_eq!(a.history.len(), b.history.len());
    // Weights, optimiser state, schedule, data order, mixup and dropout draws and BatchNorm
    // running statistics are restored: training and validation agree epoch by epoch.
    for (x, y) in a.history.iter().zip(&b.history) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-6, "{x:?} vs {y:?}");
        assert!((x.lr - y.lr).abs() < 1e-12, "{x:?} vs {y:?}");
        assert!((x.val_loss - y.val_loss).abs() < 1e-6, "{x:?} vs {y:?}");
        assert!((x.val_f1 - y.val_f1).abs() < 1e-9, "{x:?} vs {y:?}");
        assert_eq!(x.best_k, y.best_k, "{x:?} vs {y:?}");
    }
    // The best checkpoints hold the same tensors (running statistics included).
    assert_eq!(a.best_epoch, b.best_epoch);
    let wa = std::fs::read(whole.join("best.safetensors")).unwrap();
    let wb = std::fs::read(parts.join("best.safetensors")).unwrap();
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&wa).unwrap(),
        safetensors::SafeTensors::deserialize(&wb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    let mut names_b = tb.names();
    names_b.sort();
    assert_eq!(names, names_b);
    assert!(names.iter().any(|n| n.ends_with("running_var")));
    for name in names {
        let (x, y) = (ta.tensor(name).unwrap(), tb.tensor(name).unwrap());
        assert!(x.data() == y.data(), "tensor {name} differs after resume");
    }
}

#[test]
fn a_second_run_into_the_same_folder_is_refused_and_resume_needs_the_same_config() {
    let _guard = common::serial();
    let _ = fixture();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cfg = tiny(1);
    cfg.train.max_batches_per_epoch = 1;
    train(&options(cfg.clone(), &run)).unwrap();
    let e = train(&options(cfg.clone(), &run)).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");
    let mut other = cfg.clone();
    other.optim.lr = 0.5;
    let mut o = options(other, &run);
    o.resume = true;
    let e = train(&o).unwrap_err().to_string();
    assert!(e.contains("config differs"), "{e}");
    // --resume where no run was ever started says so instead of a bare file error.
    let mut o = options(cfg, &dir.path().join("empty"));
    o.resume = true;
    let e = train(&o).unwrap_err().to_string();
    assert!(e.contains("holds no run to resume"), "{e}");
    // predict --run on a folder that is not a run names the problem.
    let e = predict(&PredictOptions {
        run_dir: Some(dir.path().join("empty")),
        weights: None,
        config: None,
        cache: fixture().1.clone(),
        split: Split::Test,
        batch_size: 8,
        workers: 1,
        device: None,
        precision: None,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("not a training run folder"), "{e}");
}

#[test]
fn nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint() {
    let _guard = common::serial();
    let _ = fixture();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // A learning rate of 1e30 sends the weights to inf at the first step: the next loss is not
    // finite and training must stop, naming the run and keeping any checkpoint readable.
    let mut bad = tiny(3);
    bad.train.max_batches_per_epoch = 2;
    bad.optim.lr = 1e30;
    bad.schedule.warmup_steps = 0;
    let e = train(&options(bad, &run)).unwrap_err().to_string();
    assert!(e.contains("loss is"), "{e}");
    assert!(e.contains("last good checkpoint"), "{e}");
    if run.join(files::LAST).exists() {
        geolife_train::checkpoint::load(&run.join(files::LAST)).unwrap();
    }
    let log = std::fs::read_to_string(run.join(files::LOG)).unwrap();
    assert!(log.contains("loss is"), "{log}");
}

/// A copy of the dataset root whose human-footprint and SoilGrids CSVs (train and test) hold
/// their columns in reverse order, with every file's size and modification time kept: the same
/// dataset by fingerprint, as when a newer geolife re-packs the same files in another column
/// order.
fn reversed_columns_copy(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(from).unwrap();
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            continue;
        }
        let name = rel.to_string_lossy();
        if name.ends_with("human_footprint.csv") || name.ends_with("soilgrids.csv") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let mut out = String::with_capacity(text.len());
            for line in text.lines() {
                let mut cells: Vec<&str> = line.split(',').collect();
                cells[1..].reverse();
                out.push_str(&cells.join(","));
                out.push('\n');
            }
            assert_eq!(out.len(), text.len());
            std::fs::write(&dest, out).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
        let mtime = entry.metadata().unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&dest)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
}

#[test]
fn resume_on_a_cache_with_another_column_order_maps_the_columns_by_name() {
    let _guard = common::serial();
    let (data, cache) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let reversed = dir.path().join("data");
    reversed_columns_copy(data, &reversed);
    let reversed_cache =
        geolife_train::data::resolve_cache(&reversed, &dir.path().join("cache")).unwrap();
    let names = |c: &Path| {
        PackedSplit::open(c, Split::Train)
            .unwrap()
            .manifest()
            .feature_names
            .clone()
    };
    let (before, after) = (names(cache), names(&reversed_cache));
    assert_ne!(before, after, "the second cache has another column order");
    let (mut a, mut b) = (before.clone(), after.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "... of the same columns");

    let mut cfg = tiny(2);
    cfg.train.max_batches_per_epoch = 4;
    assert!(cfg.model.use_tabular);
    let whole = train(&options(cfg.clone(), &dir.path().join("whole"))).unwrap();
    // Stopped mid-run on the first cache, resumed on the reordered one.
    let parts = dir.path().join("parts");
    let mut o = options(cfg.clone(), &parts);
    o.stop_after_batches = Some(3);
    assert!(!train(&o).unwrap().finished);
    o.resume = true;
    o.stop_after_batches = None;
    o.cache = reversed_cache.clone();
    let resumed = train(&o).unwrap();
    assert!(resumed.finished);
    for (x, y) in whole.history.iter().zip(&resumed.history) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-6, "{x:?} vs {y:?}");
        assert!((x.val_loss - y.val_loss).abs() < 1e-6, "{x:?} vs {y:?}");
    }
    let log = std::fs::read_to_string(parts.join(files::LOG)).unwrap();
    assert!(log.contains("matched by name"), "{log}");
    // The run and its checkpoint still name the columns in the model's (first cache's) order,
    // and predict on the reordered cache gives the scores of the first one.
    let best = parts.join(files::BEST);
    assert_eq!(
        geolife_model::checkpoint::RecordedInputs::read(&best)
            .unwrap()
            .feature_names,
        Some(before)
    );
    let scores = |cache: &Path| {
        let f = predict(&PredictOptions {
            run_dir: Some(parts.clone()),
            weights: None,
            config: None,
            cache: cache.to_path_buf(),
            split: Split::Test,
            batch_size: 16,
            workers: 1,
            device: None,
            precision: None,
        })
        .unwrap();
        match f.scores {
            Scores::Dense { data } => data,
            other => panic!("dense scores expected, got {}", other.kind()),
        }
    };
    let (x, y) = (scores(cache), scores(&reversed_cache));
    let diff = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-6,
        "predict on the reordered cache differs by {diff}"
    );
}
