//! Fuzzing the score-file readers (geolife safetensors, Kaggle/malpolon text, solution files):
//! 10,000 seeded, reproducible cases per target, each under `catch_unwind`, timed and
//! allocation-watched (engine: geolife-data's `tests/fuzz_common`). Longer runs:
//! `cargo run --release -p geolife-metrics --example fuzz_scores -- --cases 1000000 --seed N`.

#[path = "../../geolife-data/tests/fuzz_common/mod.rs"]
mod fuzz_common;
#[path = "fuzz_targets/mod.rs"]
mod fuzz_targets;

#[global_allocator]
static ALLOC: fuzz_common::CapAlloc = fuzz_common::CapAlloc;

fn fuzz(name: &str) {
    fuzz_common::assert_clean(
        fuzz_targets::targets(),
        name,
        "geolife-metrics --example fuzz_scores",
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
