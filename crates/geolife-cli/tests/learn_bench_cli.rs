//! `crates/geolife-train/benches/learn_bench.sh` (the seed-recipe learning benchmark) runs its
//! geolife side end to end at a tiny size: synth, prepare, train with the seed recipe, the best
//! epoch's K, predict, evaluate, one result row and the mean +- sd summary. (The PyTorch side
//! needs torch and is run by hand; see the README.)
#![cfg(feature = "dl")]

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

#[test]
fn the_learning_benchmark_runs_its_geolife_side() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../geolife-train/benches/learn_bench.sh");
    // The script with seed 1, the geolife side only, at the given sizes.
    let bench = |sizes: &[(&str, &str)]| {
        Command::new("bash")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_geolife"))
            .arg("no-python-needed")
            .arg(dir.path())
            .arg("1")
            .env("LEARN_TOOLS", "geolife")
            .envs(sizes.iter().copied())
            .output()
            .expect("run bash")
    };
    let out = bench(&[
        ("LEARN_SURVEYS", "150"),
        ("LEARN_TEST_SURVEYS", "30"),
        ("LEARN_EPOCHS", "1"),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let rows = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["tool"], "geolife");
    assert_eq!(row["seed"], 1);
    assert_eq!(row["best_epoch"], 1);
    let f1 = row["test_f1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f1), "{row}");
    assert!(row["k"].as_u64().unwrap() >= 1, "{row}");
    // The summary line carries the same value.
    assert!(
        stdout.contains(&format!(
            "geolife: test samples-F1 {f1:.4} +- nan over 1 seeds"
        )),
        "{stdout}"
    );
    // A second call finds the run done and only summarises.
    let again = bench(&[]);
    assert!(again.status.success());
    let rows = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 1);
}
