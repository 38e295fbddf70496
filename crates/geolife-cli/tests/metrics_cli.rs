//! End-to-end runs of `geolife evaluate / calibrate / ensemble / submit` on the real GLC24
//! solution file and real model outputs (`tests/data/glc24-real` at the workspace root), plus bad-input exits.

mod common;
use common::*;

use std::path::PathBuf;

fn real(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/glc24-real")
        .join(name)
}

#[test]
fn evaluate_reproduces_reference_scores_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("f1k.png");
    let sol = real("GLC24_SOLUTION_FILE.csv");
    let j = ok_json(&[
        "evaluate",
        "--solution",
        s(&sol),
        "--predictions",
        s(&real("predictions/malpolon_mme_top25_probas.csv")),
        "--json",
        "--plot",
        s(&png),
    ]);
    assert_eq!(
        format!("{:.4}", j["samples_f1"].as_f64().unwrap()),
        "0.2954"
    );
    assert_eq!(j["n_surveys"], 4716);
    assert_eq!(j["n_missing"], 0);
    assert_eq!(j["f1_at_k"].as_array().unwrap().len(), 50);
    for key in [
        "samples_precision",
        "samples_recall",
        "micro_f1",
        "best_k",
        "best_threshold",
        "oracle_f1",
    ] {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    // Top-25 of a top-25 file is the file itself; the oracle bounds every K.
    let curve = j["f1_at_k"].as_array().unwrap();
    let top25 = curve[24].as_f64().unwrap();
    assert!((top25 - j["samples_f1"].as_f64().unwrap()).abs() < 1e-12);
    assert!(j["oracle_f1"].as_f64().unwrap() > j["best_k_f1"].as_f64().unwrap());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let j = ok_json(&[
        "evaluate",
        "--solution",
        s(&sol),
        "--predictions",
        s(&real("predictions/official_multimodal_baseline_top25.csv")),
        "--json",
    ]);
    assert_eq!(
        format!("{:.4}", j["samples_f1"].as_f64().unwrap()),
        "0.3229"
    );
}

#[test]
fn evaluate_counts_missing_surveys_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(real("predictions/official_multimodal_baseline_top25.csv"))
        .unwrap();
    let head: Vec<&str> = text.lines().take(101).collect();
    let part = dir.path().join("part.csv");
    std::fs::write(&part, head.join("\n") + "\n").unwrap();
    // A solution holding only those 100 surveys.
    let sol_text = std::fs::read_to_string(real("GLC24_SOLUTION_FILE.csv")).unwrap();
    let ids: Vec<&str> = head[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let mut sub_sol = String::from("surveyId,predictions\n");
    for l in sol_text.lines().skip(1) {
        if ids.contains(&l.split(',').next().unwrap()) {
            sub_sol.push_str(l);
            sub_sol.push('\n');
        }
    }
    let sub_sol_path = dir.path().join("sol100.csv");
    std::fs::write(&sub_sol_path, sub_sol).unwrap();
    let full = ok_json(&[
        "evaluate",
        "--solution",
        s(&real("GLC24_SOLUTION_FILE.csv")),
        "--predictions",
        s(&part),
        "--json",
    ]);
    let only = ok_json(&[
        "evaluate",
        "--solution",
        s(&sub_sol_path),
        "--predictions",
        s(&part),
        "--json",
    ]);
    assert_eq!(full["n_missing"], 4616);
    assert_eq!(only["n_missing"], 0);
    let scaled = only["samples_f1"].as_f64().unwrap() * 100.0 / 4716.0;
    assert!((full["samples_f1"].as_f64().unwrap() - scaled).abs() < 1e-12);
}

#[test]
fn calibrate_submit_evaluate_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let probs = real("predictions/malpolon_mme_top25_probas.csv");
    let sol = real("GLC24_SOLUTION_FILE.csv");
    let policy = d.join("policy.toml");
    let (stdout, _) = run_expect(
        &[
            "calibrate",
            "--scores",
            s(&probs),
            "--solution",
            s(&sol),
            "--half",
            "a",
            "--folds",
            "3",
            "--out",
            s(&policy),
            "--json",
        ],
        0,
    );
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["n_surveys"], 2358);
    assert_eq!(j["results"].as_array().unwrap().len(), 4);
    let toml_text = std::fs::read_to_string(&policy).unwrap();
    assert!(toml_text.contains("[fitted_on]") && toml_text.contains("malpolon_mme_top25_probas"));
    // Submission in a given metadata order (reversed ids, one duplicate row).
    let text = std::fs::read_to_string(&probs).unwrap();
    let mut ids: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(';').next().unwrap())
        .collect();
    ids.reverse();
    let mut meta = String::from("lon,lat,surveyId\n");
    for id in &ids {
        meta.push_str(&format!("0,0,{id}\n"));
    }
    meta.push_str(&format!("0,0,{}\n", ids[0]));
    let meta_path = d.join("meta.csv");
    std::fs::write(&meta_path, meta).unwrap();
    let sub = d.join("sub.csv");
    run_expect(
        &[
            "submit",
            "--scores",
            s(&probs),
            "--policy",
            s(&policy),
            "--metadata",
            s(&meta_path),
            "--out",
            s(&sub),
        ],
        0,
    );
    let sub_text = std::fs::read_to_string(&sub).unwrap();
    let rows: Vec<&str> = sub_text.lines().collect();
    assert_eq!(rows[0], "surveyId,predictions");
    assert_eq!(rows.len(), 4717);
    for (row, id) in rows[1..].iter().zip(&ids) {
        let (rid, preds) = row.split_once(',').unwrap();
        assert_eq!(rid, *id);
        assert!(!preds.trim().is_empty());
    }
    // Scoring the submission equals scoring the policy on the scores.
    let a = ok_json(&[
        "evaluate",
        "--solution",
        s(&sol),
        "--predictions",
        s(&sub),
        "--json",
    ]);
    let b = ok_json(&[
        "evaluate",
        "--solution",
        s(&sol),
        "--predictions",
        s(&probs),
        "--policy",
        s(&policy),
        "--json",
    ]);
    let (fa, fb) = (
        a["samples_f1"].as_f64().unwrap(),
        b["samples_f1"].as_f64().unwrap(),
    );
    assert!((fa - fb).abs() < 1e-12, "{fa} vs {fb}");
    assert!(a["samples_f1"].as_f64().unwrap() > 0.31);
    // A metadata survey without scores is an error, not an empty row.
    std::fs::write(&meta_path, "surveyId\n123456789\n").unwrap();
    let out = geolife(&[
        "submit",
        "--scores",
        s(&probs),
        "--metadata",
        s(&meta_path),
        "--out",
        s(&d.join("x.csv")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("123456789"));
    assert!(!d.join("x.csv").exists());
}

#[test]
fn ensemble_fit_writes_weights_that_reproduce_the_blend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = real("predictions/malpolon_mme_top25_probas.csv");
    let b = real("predictions/official_multimodal_baseline_top25.csv");
    let sol = real("GLC24_SOLUTION_FILE.csv");
    let out1 = d.join("ens.safetensors");
    run_expect(
        &[
            "ensemble",
            s(&a),
            s(&b),
            "--method",
            "rank",
            "--fit",
            "--solution",
            s(&sol),
            "--out",
            s(&out1),
        ],
        0,
    );
    let wfile = d.join("ens.weights.toml");
    assert!(wfile.exists());
    let out2 = d.join("ens2.safetensors");
    run_expect(
        &[
            "ensemble",
            s(&a),
            s(&b),
            "--weights",
            s(&wfile),
            "--out",
            s(&out2),
        ],
        0,
    );
    // Same blend (the metadata header's key order may differ between runs, so compare content).
    let e1 = geolife_metrics::ScoreFile::read(&out1).unwrap();
    let e2 = geolife_metrics::ScoreFile::read(&out2).unwrap();
    assert!(e1 == e2, "blends differ");
    assert_eq!(e1.len(), 4716);
    // Weighted mean needs probabilities: the Kaggle file has none.
    let out = geolife(&["ensemble", s(&a), s(&b), "--out", s(&d.join("m.st"))]);
    assert!(!out.status.success());
    let out = geolife(&[
        "ensemble",
        s(&a),
        s(&b),
        "--weights",
        "1,x",
        "--out",
        s(&d.join("m.st")),
    ]);
    assert!(!out.status.success());
}

#[test]
fn malformed_predictions_fail_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "surveyId,predictions\n642,1 2\nabc,3\n").unwrap();
    let out = geolife(&[
        "evaluate",
        "--solution",
        s(&real("GLC24_SOLUTION_FILE.csv")),
        "--predictions",
        s(&bad),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv") && err.contains("line 3") && err.contains("abc"),
        "{err}"
    );
}

/// A missing file is named once with its OS reason, not once per layer of the error chain.
#[test]
fn a_missing_file_error_names_the_file_and_reason_once() {
    let out = geolife(&[
        "submit",
        "--scores",
        "/nonexistent/scores.safetensors",
        "--out",
        "/nonexistent/sub.csv",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/scores.safetensors"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn paper_ensemble_config_blends_four_runs_with_its_weights() {
    // configs/ensemble-paper.toml on four copies of one real probability file: its weights
    // (0.15, 0.1, 0.4, 0.35) sum to 1, so the weighted mean must equal that file's scores.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = real("predictions/malpolon_mme_top25_probas.csv");
    let config =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/ensemble-paper.toml");
    let (four, one) = (d.join("four.safetensors"), d.join("one.safetensors"));
    run_expect(
        &[
            "ensemble",
            s(&a),
            s(&a),
            s(&a),
            s(&a),
            "--weights",
            s(&config),
            "--out",
            s(&four),
        ],
        0,
    );
    run_expect(&["ensemble", s(&a), "--weights", "1", "--out", s(&one)], 0);
    let (four, one) = (
        geolife_metrics::ScoreFile::read(&four).unwrap(),
        geolife_metrics::ScoreFile::read(&one).unwrap(),
    );
    assert_eq!(four.survey_ids, one.survey_ids);
    assert_eq!(four.species, one.species);
    assert_eq!(four.len(), 4716);
    use geolife_metrics::Scores::{Dense, Sparse};
    let max_diff = match (&four.scores, &one.scores) {
        (Dense { data: x }, Dense { data: y }) => {
            assert_eq!(x.len(), y.len());
            x.iter()
                .zip(y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max)
        }
        (Sparse { rows: x }, Sparse { rows: y }) => {
            assert_eq!(x.len(), y.len());
            let mut m = 0.0f32;
            for (rx, ry) in x.iter().zip(y) {
                assert_eq!(
                    rx.iter().map(|p| p.0).collect::<Vec<_>>(),
                    ry.iter().map(|p| p.0).collect::<Vec<_>>()
                );
                for (p, q) in rx.iter().zip(ry) {
                    m = m.max((p.1 - q.1).abs());
                }
            }
            m
        }
        (x, y) => panic!("score kinds {} and {}", x.kind(), y.kind()),
    };
    assert!(
        max_diff < 1e-6,
        "weighted mean of copies differs by {max_diff}"
    );
    // Three weights only for four files is refused.
    let bad = d.join("three.toml");
    std::fs::write(&bad, "weights = [0.5, 0.25, 0.25]\n").unwrap();
    let out = geolife(&[
        "ensemble",
        s(&a),
        s(&a),
        s(&a),
        s(&a),
        "--weights",
        s(&bad),
        "--out",
        s(&d.join("x.safetensors")),
    ]);
    assert!(!out.status.success());
}
