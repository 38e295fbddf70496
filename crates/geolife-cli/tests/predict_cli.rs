//! `geolife predict` end to end through the binary: a run trained by `geolife train` scores the
//! test split (with `--device flex`, the override of the run's `train.device`) into a score file
//! and a submission; an unknown device is refused by name with the valid ones.
#![cfg(feature = "dl")]

mod common;

use std::path::Path;

use common::{geolife, run_expect, s, text};

#[test]
fn predict_scores_a_trained_run_and_writes_a_submission() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, cache, run) = (d.join("data"), d.join("cache"), d.join("run"));
    let ok = |args: &[&str]| {
        let out = geolife(args);
        let (o, e) = text(&out);
        assert!(out.status.success(), "geolife {args:?}: {o}{e}");
        o
    };
    ok(&[
        "synth",
        "--surveys",
        "320",
        "--test-surveys",
        "12",
        "--species",
        "30",
        "--out",
        s(&data),
    ]);
    ok(&["prepare", s(&data), "--out", s(&cache)]);
    let tiny = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml"),
    )
    .unwrap()
    .replace("epochs = 8", "epochs = 1");
    assert!(tiny.contains("epochs = 1"), "tiny.toml changed: {tiny}");
    let config = d.join("one-epoch.toml");
    std::fs::write(&config, tiny).unwrap();
    ok(&[
        "train",
        "--config",
        s(&config),
        "--data",
        s(&cache),
        "--out",
        s(&run),
    ]);

    let (scores, sub) = (d.join("test.safetensors"), d.join("submission.csv"));
    let o = ok(&[
        "predict",
        "--run",
        s(&run),
        "--data",
        s(&cache),
        "--out",
        s(&scores),
        "--device",
        "flex",
        "--submission",
        s(&sub),
        "--top-k",
        "3",
    ]);
    assert!(o.contains("12 surveys x"), "{o}");
    let bytes = std::fs::read(&scores).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    assert!(!names.is_empty(), "an empty score file");
    let csv = std::fs::read_to_string(&sub).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "surveyId,predictions");
    assert_eq!(
        rows.len(),
        13,
        "a header and one row per test survey:\n{csv}"
    );
    for row in &rows[1..] {
        let (_, species) = row.split_once(',').unwrap();
        assert_eq!(species.split_whitespace().count(), 3, "top-3 row {row}");
    }

    let (_, e) = run_expect(
        &[
            "predict",
            "--run",
            s(&run),
            "--data",
            s(&cache),
            "--out",
            s(&scores),
            "--device",
            "cuda",
        ],
        2,
    );
    assert!(
        e.contains("cuda") && e.contains("flex") && e.contains("wgpu"),
        "{e}"
    );
}
