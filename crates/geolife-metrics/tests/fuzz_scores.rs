//! Fuzzing the score-file readers (geolife safetensors, Kaggle/malpolon text, solution files):
//! 10,000 seeded, reproducible cases per target, each under `catch_unwind`, timed and
//! allocation-watched (engine: geolife-data's `tests/fuzz_common`). Longer runs:
//! `cargo run --release -p geolife-metrics --example fuzz_scores -- --cases 1000000 --seed N`.

#[path = "../../geolife-data/tests/fuzz_common/mod.rs"]
mod fuzz_common;
#[path = "fuzz_targets/mod.rs"]
mod fuzz_targets;

use std::time::Duration;

#[global_allocator]
static ALLOC: fuzz_common::CapAlloc = fuzz_common::CapAlloc;

const CASES: u64 = 10_000;
const SEED: u64 = 2024;

fn fuzz(name: &str) {
    let target = fuzz_targets::targets()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let dir = tempfile::tempdir().unwrap();
    let r = fuzz_common::run(&target, SEED, 0..CASES, Duration::from_secs(1), dir.path());
    eprintln!("{}", r.summary());
    assert_eq!(r.cases, CASES);
    assert!(
        r.clean(),
        "{}\n{}",
        r.summary(),
        r.failures("geolife-metrics --example fuzz_scores")
    );
}

#[test]
fn scores_safetensors() {
    fuzz("scores-safetensors");
}

#[test]
fn scores_text() {
    fuzz("scores-text");
}
