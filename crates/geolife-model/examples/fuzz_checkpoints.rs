//! Long fuzz runs of the checkpoint and weight readers (the targets of
//! `tests/fuzz_checkpoints.rs`):
//!
//! ```text
//! cargo run --release -p geolife-model --example fuzz_checkpoints -- --cases 1000000 --seed 7
//! cargo run -p geolife-model --example fuzz_checkpoints -- --target import-pth --seed 7 --case 12 --dump case.pth
//! ```

#[path = "../../geolife-data/tests/fuzz_common/mod.rs"]
mod fuzz_common;
#[path = "../tests/fuzz_targets/mod.rs"]
mod fuzz_targets;

#[global_allocator]
static ALLOC: fuzz_common::CapAlloc = fuzz_common::CapAlloc;

fn main() {
    fuzz_common::main_with(
        "geolife-model --example fuzz_checkpoints",
        fuzz_targets::targets(),
    );
}
