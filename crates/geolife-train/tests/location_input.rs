//! The location prior as a model input (`[location]`, configs/tiny-prior.toml): a run trains
//! and predicts with it, its validation surveys' prior rows come from the training part only,
//! and a run without the presence-only file, or a checkpoint without its config, is refused
//! with an error naming what is missing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use geolife_data::Split;
use geolife_data::cache::PackedSplit;
use geolife_data::synth::layout::SOLUTION_CSV;
use geolife_metrics::{Policy, Scores, read_solution, samples_f1, write_submission};
use geolife_prior::{CachedSurveys, Target, score_split};
use geolife_train::predict::{PredictOptions, predict};
use geolife_train::vocab::Vocabulary;
use geolife_train::{Progress, TrainConfig, TrainOptions, location, train};

/// Dataset root (with presence-only records) and packed cache, built once.
fn fixture() -> &'static (PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let (data, cache) = common::synth_dataset(360, 80, 30, 12);
        assert!(
            data.join(geolife_data::layout::PO_METADATA_TRAIN).is_file(),
            "synth writes presence-only records"
        );
        (data, cache)
    })
}

fn shipped_config() -> TrainConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny-prior.toml");
    let mut cfg = TrainConfig::load(&root).unwrap();
    assert_ne!(
        cfg.location.input,
        geolife_model::fusion::PriorInput::Off,
        "tiny-prior.toml turns the prior input on"
    );
    cfg.train.epochs = 2;
    cfg.train.mixup_prob = 0.4; // the prior rows are mixed with the other inputs
    location::resolve_po_file(&mut cfg, &fixture().0);
    cfg
}

#[test]
fn tiny_prior_config_trains_and_predicts_with_the_prior_input() {
    let (data, cache) = fixture();
    let cfg = shipped_config();
    assert_eq!(
        cfg.location.po_file.as_deref(),
        Some(data.join(geolife_data::layout::PO_METADATA_TRAIN).as_path()),
        "the dataset root's PO file is resolved into the config"
    );
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let summary = train(&TrainOptions {
        config: cfg,
        cache: cache.clone(),
        run_dir: run.clone(),
        resume: false,
        progress: Progress::Quiet,
        stop_after_batches: None,
    })
    .unwrap();
    assert!(summary.finished);
    assert!(summary.best_f1 > 0.0 && summary.best_f1 <= 1.0);
    assert!(summary.history.iter().all(|h| h.train_loss.is_finite()));
    // The saved config names the PO file, so `predict` finds the same prior.
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("po_file"), "{saved}");

    let opts = PredictOptions {
        run_dir: Some(run.clone()),
        weights: None,
        config: None,
        cache: cache.clone(),
        split: Split::Test,
        batch_size: 32,
        workers: 1,
        device: None,
        precision: None,
    };
    let scores = predict(&opts).unwrap();
    let Scores::Dense { data: probs } = &scores.scores else {
        panic!("dense scores expected")
    };
    assert!(
        probs
            .iter()
            .all(|p| p.is_finite() && (0.0..=1.0).contains(p))
    );
    let solution = read_solution(&data.join(SOLUTION_CSV)).unwrap();
    let pred = Policy::TopK { k: 5 }.select(&scores);
    let sub = dir.path().join("sub.csv");
    write_submission(&sub, &scores.survey_ids, &pred).unwrap();
    assert!(sub.is_file());
    let f1 = samples_f1(&pred, &solution.align(&scores.survey_ids).truth);
    assert!(f1 > 0.0, "test F1 {f1}");

    // The checkpoint alone records its [location]: the same scores as the run.
    let alone = predict(&PredictOptions {
        run_dir: None,
        weights: Some(run.join("best.safetensors")),
        config: None,
        ..opts.clone()
    })
    .unwrap();
    assert_eq!(alone.survey_ids, scores.survey_ids);
    assert_eq!(alone.species, scores.species, "the checkpoint's vocabulary");
    let Scores::Dense { data: alone } = &alone.scores else {
        panic!("dense scores expected")
    };
    let diff = alone
        .iter()
        .zip(probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-6, "--weights alone vs --run: {diff}");
    // A config without [location] is refused by name.
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, "preset = \"tiny\"\n").unwrap();
    let err = predict(&PredictOptions {
        run_dir: None,
        weights: Some(run.join("best.safetensors")),
        config: Some(bare),
        ..opts
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("location"), "{err}");
}

#[test]
fn validation_prior_rows_come_from_the_training_part_only() {
    let (_, cache) = fixture();
    let mut cfg = shipped_config();
    cfg.location.prior.po.enabled = false; // labels are the only evidence here
    let data = PackedSplit::open(cache, Split::Train).unwrap();
    let split = geolife_train::trainer::train_val_split(&cfg, &data).unwrap();
    let vocab = Vocabulary::new(
        cfg.data.vocabulary,
        &data.manifest().species,
        cfg.data.full_size,
    );
    let rows = location::for_training(&cfg, &data, &split.train, &split.val, &vocab).unwrap();
    assert_eq!(rows.width(), vocab.len());

    // A species held only by validation surveys never gets prior mass anywhere.
    let in_train: std::collections::HashSet<u32> = split
        .train
        .iter()
        .flat_map(|&i| data.labels(i).iter().copied())
        .collect();
    let val_only: Vec<usize> = split
        .val
        .iter()
        .flat_map(|&i| data.labels(i).iter().copied())
        .filter(|s| !in_train.contains(s))
        .filter_map(|s| vocab.column(s))
        .collect();
    for i in 0..data.len() {
        for &(c, _) in rows.row(i) {
            assert!(
                !val_only.contains(&(c as usize)),
                "row {i} scores column {c}"
            );
        }
    }

    // Validation rows are those of the training-part pool, and differ from what the whole
    // train split (validation labels included) would give: the rule matters here.
    let pool = CachedSurveys::rows(&data, &split.train);
    let all = CachedSurveys::of(&data);
    let queries = CachedSurveys::rows(&data, &split.val);
    let scored_from = |pool: &CachedSurveys| {
        let target = Target::Test(&queries.surveys);
        score_split(&cfg.location.prior, pool.as_train(), target, None, &|| {}).unwrap()
    };
    let (honest, leaky) = (scored_from(&pool), scored_from(&all));
    let as_columns = |f: &geolife_metrics::ScoreFile, r: usize| -> Vec<(u32, f32)> {
        let Scores::Sparse { rows } = &f.scores else {
            panic!("sparse prior expected")
        };
        rows[r]
            .iter()
            .map(|&(c, x)| (vocab.column(f.species[c as usize]).unwrap() as u32, x))
            .collect()
    };
    let mut differs = 0;
    for (r, &i) in split.val.iter().enumerate() {
        assert_eq!(
            rows.row(i),
            as_columns(&honest, r).as_slice(),
            "val row {i}"
        );
        if as_columns(&leaky, r) != rows.row(i) {
            differs += 1;
        }
    }
    assert!(
        differs > 0,
        "no validation row would change with leaked labels"
    );
    // Training-part rows never hold their own survey's labels unless a neighbour has them.
    for &i in &split.train {
        for &(c, _) in rows.row(i) {
            let species = vocab.species()[c as usize];
            let neighbour_has = split
                .train
                .iter()
                .any(|&j| j != i && data.labels(j).contains(&species));
            assert!(
                neighbour_has,
                "train row {i} sees its own species {species}"
            );
        }
    }
}

#[test]
fn a_prior_input_without_the_presence_only_file_is_refused_by_name() {
    let (_, cache) = fixture();
    let mut cfg = shipped_config();
    cfg.location.po_file = None;
    let dir = tempfile::tempdir().unwrap();
    let refused = |config: TrainConfig, run: &str| {
        train(&TrainOptions {
            config,
            cache: cache.clone(),
            run_dir: dir.path().join(run),
            resume: false,
            progress: Progress::Quiet,
            stop_after_batches: None,
        })
        .unwrap_err()
        .to_string()
    };
    let err = refused(cfg.clone(), "run");
    assert!(
        err.contains("GLC24_P0_metadata_train.csv") && err.contains("location.po_file"),
        "{err}"
    );
    cfg.location.po_file = Some(dir.path().join("missing.csv"));
    let err = refused(cfg, "run2");
    assert!(err.contains("missing.csv"), "{err}");
    // Refused before anything is written.
    assert!(!dir.path().join("run").exists() && !dir.path().join("run2").exists());
}
