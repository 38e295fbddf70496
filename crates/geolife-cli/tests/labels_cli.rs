//! `--labels-from RUN|CACHE` of `evaluate`, `calibrate` and `ensemble --fit` on a tiny
//! synthetic dataset packed by `geolife prepare`: a cache (or a run folder) gives the same
//! numbers as the equivalent solution CSV written by hand from the raw metadata; a scored
//! survey the cache lacks, a folder that is neither run nor cache, and both label flags at once
//! are refused with messages that say what is wrong.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use geolife_metrics::{FittedWeights, PolicyFile, ScoreFile, Scores};
use serde_json::Value;

/// A survey id no synthetic dataset holds.
const STRANGER: u64 = 987_654_321;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cache: PathBuf,
    /// Dense validation-like scores of most train surveys (not in cache order).
    scores: PathBuf,
    /// The same surveys' labels as a solution CSV written by hand, in the scores' row order.
    solution: PathBuf,
}

/// `geolife synth` + `geolife prepare` at tiny size, a score file of train surveys and the
/// solution CSV of those surveys built from `GLC24_PA_metadata_train.csv` read by hand.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data = root.join("data");
    let cache = root.join("cache");
    run_expect(
        &[
            "synth",
            "--out",
            s(&data),
            "--surveys",
            "40",
            "--test-surveys",
            "4",
            "--species",
            "20",
            "--mean-species",
            "5",
            "--seed",
            "3",
        ],
        0,
    );
    run_expect(&["prepare", s(&data), "--out", s(&cache)], 0);
    let truth = train_labels(&data.join("GLC24_PA_metadata_train.csv"));
    // Every train survey but three, last first: cache labels must follow the scores' rows.
    let ids: Vec<u64> = truth.keys().rev().skip(3).copied().collect();
    let scores = root.join("val_scores.safetensors");
    write_scores(&scores, &ids, &vocabulary(&truth), &truth, 0);
    let solution = root.join("solution.csv");
    write_solution(&solution, &ids, &truth);
    Fixture {
        _dir: dir,
        root,
        cache,
        scores,
        solution,
    }
}

/// survey -> distinct species of a metadata CSV read by hand (the synthetic files hold no
/// quotes; species ids may be written as `12.0`).
fn train_labels(path: &Path) -> BTreeMap<u64, BTreeSet<u32>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (c_id, c_sp) = (col("surveyId"), col("speciesId"));
    let mut out: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        out.entry(f[c_id].parse().unwrap())
            .or_default()
            .insert(f[c_sp].trim_end_matches(".0").parse().unwrap());
    }
    out
}

/// Every species of the labels, ascending.
fn vocabulary(truth: &BTreeMap<u64, BTreeSet<u32>>) -> Vec<u32> {
    let all: BTreeSet<u32> = truth.values().flatten().copied().collect();
    all.into_iter().collect()
}

/// A solution CSV of `ids` (in this order), written by hand.
fn write_solution(path: &Path, ids: &[u64], truth: &BTreeMap<u64, BTreeSet<u32>>) {
    let mut text = String::from("surveyId,predictions\n");
    for id in ids {
        let list: Vec<String> = truth[id].iter().map(u32::to_string).collect();
        text.push_str(&format!("{id},{}\n", list.join(" ")));
    }
    std::fs::write(path, text).unwrap();
}

/// Dense scores with some signal: a true species scores high in two cells of three; `salt`
/// varies the noise between files.
fn write_scores(
    path: &Path,
    ids: &[u64],
    species: &[u32],
    truth: &BTreeMap<u64, BTreeSet<u32>>,
    salt: u64,
) {
    let mut data = Vec::with_capacity(ids.len() * species.len());
    for (i, id) in ids.iter().enumerate() {
        for (j, sp) in species.iter().enumerate() {
            let h = (i as u64 * 31 + j as u64 * 17 + salt * 7).wrapping_mul(2_654_435_761) % 1000;
            let noise = h as f32 / 2000.0;
            let hit = truth.get(id).is_some_and(|t| t.contains(sp))
                && !(i + j + salt as usize).is_multiple_of(3);
            data.push(if hit { 0.5 + noise } else { noise });
        }
    }
    ScoreFile {
        model: format!("fixture{salt}"),
        split: "val".into(),
        survey_ids: ids.to_vec(),
        species: species.to_vec(),
        scores: Scores::Dense { data },
    }
    .write(path)
    .unwrap();
}

/// `geolife <args> --json` parsed, with the keys that name the label source removed.
fn json_without(args: &[&str], drop: &[&str]) -> Value {
    let (o, _) = run_expect(args, 0);
    let mut v: Value = serde_json::from_str(&o).unwrap_or_else(|e| panic!("{e}: {o}"));
    for k in drop {
        v.as_object_mut().unwrap().remove(*k);
    }
    v
}

fn evaluate(f: &Fixture, labels: [&str; 2]) -> Value {
    json_without(
        &[
            "evaluate",
            labels[0],
            labels[1],
            "--predictions",
            s(&f.scores),
            "--json",
        ],
        &["solution"],
    )
}

/// The error of `evaluate --labels-from FROM` (exit 1).
fn evaluate_fails(f: &Fixture, from: &Path) -> String {
    let args = [
        "evaluate",
        "--predictions",
        s(&f.scores),
        "--labels-from",
        s(from),
    ];
    run_expect(&args, 1).1
}

/// `calibrate --json` and the policy it saved (without the record of its label source).
fn calibrate(f: &Fixture, labels: [&str; 2], out: &Path) -> (Value, PolicyFile) {
    let v = json_without(
        &[
            "calibrate",
            "--scores",
            s(&f.scores),
            labels[0],
            labels[1],
            "--out",
            s(out),
            "--json",
        ],
        &["out"],
    );
    let mut policy = PolicyFile::load(out).unwrap();
    policy.fitted_on.as_mut().unwrap().solution.clear();
    (v, policy)
}

#[test]
fn labels_from_a_cache_or_run_equal_the_hand_written_solution() {
    let f = fixture();
    let csv = ["--solution", s(&f.solution)];
    let want = evaluate(&f, csv);
    assert_eq!(want["n_missing"], 0);
    assert_eq!(want["n_unknown"], 0);
    assert_eq!(want["n_surveys"], 37);
    assert!(want["samples_f1"].as_f64().unwrap() > 0.2, "{want}");
    assert_eq!(evaluate(&f, ["--labels-from", s(&f.cache)]), want);
    // The cache's train split folder itself is a cache too.
    assert_eq!(
        evaluate(&f, ["--labels-from", s(&f.cache.join("train"))]),
        want
    );

    // A run folder: its val_labels.csv. A run of an older geolife (run.json, no
    // val_labels.csv): the cache its config.toml names.
    let run = f.root.join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("run.json"), "{}").unwrap();
    std::fs::copy(&f.solution, run.join("val_labels.csv")).unwrap();
    assert_eq!(evaluate(&f, ["--labels-from", s(&run)]), want);
    let old = f.root.join("old-run");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("run.json"), "{}").unwrap();
    std::fs::write(
        old.join("config.toml"),
        format!("preset = \"tiny\"\n\n[data]\npath = {:?}\n", s(&f.cache)),
    )
    .unwrap();
    assert_eq!(evaluate(&f, ["--labels-from", s(&old)]), want);

    let (want_cal, want_policy) = calibrate(&f, csv, &f.root.join("p-csv.toml"));
    let (cal, policy) = calibrate(
        &f,
        ["--labels-from", s(&f.cache)],
        &f.root.join("p-cache.toml"),
    );
    assert_eq!(cal, want_cal);
    assert_eq!(policy, want_policy);
    assert_eq!(want_cal["n_surveys"], 37);

    // ensemble --fit over two files: the cache gives the labels of their surveys.
    let truth = train_labels(&f.root.join("data/GLC24_PA_metadata_train.csv"));
    let ids: Vec<u64> = truth.keys().copied().skip(3).collect();
    let other = f.root.join("other.safetensors");
    write_scores(&other, &ids, &vocabulary(&truth), &truth, 1);
    let fit = |labels: [&str; 2], stem: &str| {
        run_expect(
            &[
                "ensemble",
                s(&f.scores),
                s(&other),
                "--fit",
                labels[0],
                labels[1],
                "--out",
                s(&f.root.join(format!("{stem}.safetensors"))),
            ],
            0,
        );
        FittedWeights::load(&f.root.join(format!("{stem}.weights.toml"))).unwrap()
    };
    // The fixture's CSV lacks the three surveys only `other` scores; the cache has them.
    let with_cache = fit(["--labels-from", s(&f.cache)], "ens-cache");
    assert!(with_cache.f1.is_some() && with_cache.f1_equal.is_some());
    let all = f.root.join("all.csv");
    write_solution(&all, &truth.keys().copied().collect::<Vec<_>>(), &truth);
    assert_eq!(fit(["--solution", s(&all)], "ens-csv"), with_cache);
}

#[test]
fn a_scored_survey_the_cache_lacks_is_an_error_naming_it() {
    let f = fixture();
    let truth = train_labels(&f.root.join("data/GLC24_PA_metadata_train.csv"));
    let mut ids: Vec<u64> = truth.keys().copied().collect();
    ids.push(STRANGER);
    let scores = f.root.join("stranger.safetensors");
    write_scores(&scores, &ids, &[1, 2, 3], &truth, 0);
    for args in [
        vec!["evaluate", "--predictions", s(&scores)],
        vec![
            "calibrate",
            "--scores",
            s(&scores),
            "--out",
            "/nonexistent/p.toml",
        ],
    ] {
        let mut args = args;
        args.extend(["--labels-from", s(&f.cache)]);
        let (_, e) = run_expect(&args, 1);
        assert!(e.contains(&format!("survey {STRANGER}")), "{e}");
        assert!(e.contains(s(&f.cache)), "{e}");
    }
    // A run of an older geolife without a cache named in its config: what is missing.
    let old = f.root.join("old-run");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("run.json"), "{}").unwrap();
    let e = evaluate_fails(&f, &old);
    assert!(e.contains("no val_labels.csv"), "{e}");
    assert!(e.contains("config.toml"), "{e}");
    assert!(e.contains("--labels-from <CACHE>"), "{e}");
}

#[test]
fn a_folder_that_is_neither_run_nor_cache_is_refused() {
    let f = fixture();
    let plain = f.root.join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("notes.txt"), "hello").unwrap();
    let e = evaluate_fails(&f, &plain);
    assert!(e.contains(s(&plain)), "{e}");
    assert!(e.contains("neither a run folder nor a packed cache"), "{e}");
    // The raw dataset root is no cache either; a CSV belongs to --solution.
    let e = evaluate_fails(&f, &f.root.join("data"));
    assert!(e.contains("neither a run folder nor a packed cache"), "{e}");
    let e = evaluate_fails(&f, &f.solution);
    assert!(
        e.contains("not a folder") && e.contains("--solution"),
        "{e}"
    );
}

#[test]
fn solution_and_labels_from_together_are_refused() {
    // Parsing refuses these before any file is read.
    let both = ["--solution", "a.csv", "--labels-from", "cache"];
    for mut args in [
        vec!["evaluate", "--predictions", "s.safetensors"],
        vec!["calibrate", "--scores", "s.safetensors", "--out", "p.toml"],
        vec![
            "ensemble",
            "s.safetensors",
            "--out",
            "e.safetensors",
            "--fit",
        ],
    ] {
        args.extend(both);
        let (_, e) = run_expect(&args, 2);
        assert!(e.contains("cannot be used with"), "{args:?}: {e}");
    }
    // One of them is required where labels are always needed, and only --fit uses them.
    let (_, e) = run_expect(&["evaluate", "--predictions", "s.safetensors"], 2);
    assert!(
        e.contains("--solution") && e.contains("--labels-from"),
        "{e}"
    );
    let (_, e) = run_expect(
        &[
            "ensemble",
            "s.safetensors",
            "--out",
            "e.safetensors",
            "--fit",
        ],
        2,
    );
    assert!(e.contains("--labels-from"), "{e}");
    let (_, e) = run_expect(
        &[
            "ensemble",
            "s.safetensors",
            "--out",
            "e.safetensors",
            "--labels-from",
            "c",
        ],
        2,
    );
    assert!(e.contains("--fit"), "{e}");
}
