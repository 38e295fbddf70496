//! Helpers shared by the CLI test files: run the built `geolife` binary and read its output.
// Each test file uses its own subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `geolife` binary of this build with `args`.
pub fn geolife(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geolife"))
        .args(args)
        .output()
        .expect("run geolife")
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// (stdout, stderr) as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs geolife, asserts exit code `code`, returns (stdout, stderr).
pub fn run_expect(args: &[&str], code: i32) -> (String, String) {
    let out = geolife(args);
    let (o, e) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "geolife {args:?}\nstdout:\n{o}\nstderr:\n{e}"
    );
    (o, e)
}

/// Runs geolife, asserts success, parses its stdout as JSON.
pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = geolife(args);
    assert!(
        out.status.success(),
        "geolife {args:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Runs a prepared command, asserts success, returns its stdout and stderr together.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// The repository's `configs/` folder.
pub fn configs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// `geolife pipeline` with configs/pipeline-tiny.toml at 2 epochs into `out`, test F1 against
/// `solution`.
pub fn tiny_pipeline(data: &Path, out: &Path, solution: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_geolife"));
    c.args(["pipeline", "--config"])
        .arg(configs().join("pipeline-tiny.toml"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--set", "train.epochs=2", "--test-solution"])
        .arg(solution);
    c
}

/// The files a finished pipeline must reproduce byte for byte.
pub const PIPELINE_RESULTS: [&str; 10] = [
    "submission.csv",
    "report.md",
    "report.json",
    "ensemble.toml",
    "policy.toml",
    "val_scores.safetensors",
    "test_scores.safetensors",
    "pipeline.toml",
    "prior/val_scores.safetensors",
    "prior/test_scores.safetensors",
];

/// Asserts that two pipeline folders hold the same [`PIPELINE_RESULTS`].
pub fn assert_same_results(a: &Path, b: &Path, what: &str) {
    for f in PIPELINE_RESULTS {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs: {what}");
    }
}

/// A small synthetic dataset in `d/data` (official layout: 300 train / 40 test surveys, 25
/// species), packed once into `d/cache`; (data, cache, test solution).
pub fn small_packed_dataset(
    d: &Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let data = d.join("data");
    run_expect(
        &[
            "synth",
            "--surveys",
            "300",
            "--test-surveys",
            "40",
            "--species",
            "25",
            "--out",
            s(&data),
        ],
        0,
    );
    let cache = d.join("cache");
    run_expect(&["prepare", s(&data), "--out", s(&cache)], 0);
    let solution = data.join("GLC24_SOLUTION_FILE.csv");
    (data, cache, solution)
}

/// Polls (every 2 ms, for at most 300 s) until `ready`, asserting that `child` still runs:
/// the moment to interrupt a run under test.
pub fn wait_while_running(
    child: &mut std::process::Child,
    what: &str,
    mut ready: impl FnMut() -> bool,
) {
    let start = std::time::Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process ended before {what}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(300),
            "no {what} after 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
