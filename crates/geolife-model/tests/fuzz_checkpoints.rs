//! Fuzzing the checkpoint and weight readers (safetensors checkpoints with config metadata,
//! PyTorch `.pth` import): 10,000 seeded, reproducible cases per target, each under
//! `catch_unwind`, timed and allocation-watched (engine: geolife-data's `tests/fuzz_common`).
//! Longer runs: `cargo run --release -p geolife-model --example fuzz_checkpoints -- --cases 1000000`.

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
        "geolife-model --example fuzz_checkpoints",
    );
}

#[test]
fn checkpoint_safetensors() {
    fuzz("checkpoint-safetensors");
}

#[test]
fn import_pth() {
    fuzz("import-pth");
}
