//! Long fuzz runs of the geolife-data readers (the targets of `tests/fuzz_readers.rs`):
//!
//! ```text
//! cargo run --release -p geolife-data --example fuzz_readers -- --cases 1000000 --seed 7
//! cargo run --release -p geolife-data --example fuzz_readers -- --target torch-pickle --cases 200000
//! cargo run -p geolife-data --example fuzz_readers -- --target jpeg --seed 7 --case 123 --dump case.jpeg
//! cargo run -p geolife-data --example fuzz_readers -- --list
//! ```

#[path = "../tests/fuzz_common/mod.rs"]
mod fuzz_common;
#[path = "../tests/fuzz_data/mod.rs"]
mod fuzz_data;

#[global_allocator]
static ALLOC: fuzz_common::CapAlloc = fuzz_common::CapAlloc;

fn main() {
    fuzz_common::main_with("geolife-data --example fuzz_readers", fuzz_data::targets());
}
