//! Long fuzz runs of the score-file readers (the targets of `tests/fuzz_scores.rs`):
//!
//! ```text
//! cargo run --release -p geolife-metrics --example fuzz_scores -- --cases 1000000 --seed 7
//! cargo run -p geolife-metrics --example fuzz_scores -- --target scores-text --seed 7 --case 12 --dump case.csv
//! ```

#[path = "../../geolife-data/tests/fuzz_common/mod.rs"]
mod fuzz_common;
#[path = "../tests/fuzz_targets/mod.rs"]
mod fuzz_targets;

#[global_allocator]
static ALLOC: fuzz_common::CapAlloc = fuzz_common::CapAlloc;

fn main() {
    fuzz_common::main_with(
        "geolife-metrics --example fuzz_scores",
        fuzz_targets::targets(),
    );
}
