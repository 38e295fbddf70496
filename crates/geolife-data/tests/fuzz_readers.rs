//! Fuzzing the readers of untrusted files (torch `.pt`/`.pth` zips and pickles, JPEG patches,
//! CSVs): 10,000 seeded, reproducible cases per target, each under `catch_unwind`, timed and
//! allocation-watched. Every case must end in `Ok` or a typed error, in under a second, with
//! no allocation above the target's cap. Longer runs and single-case replays:
//! `cargo run --release -p geolife-data --example fuzz_readers -- --cases 1000000 --seed N`.

#[path = "fuzz_common/mod.rs"]
mod fuzz_common;
#[path = "fuzz_data/mod.rs"]
mod fuzz_data;

#[global_allocator]
static ALLOC: fuzz_common::CapAlloc = fuzz_common::CapAlloc;

fn fuzz(name: &str) {
    fuzz_common::assert_clean(
        fuzz_data::targets(),
        name,
        "geolife-data --example fuzz_readers",
    );
}

#[test]
fn torch_bytes() {
    fuzz("torch-bytes");
}

#[test]
fn torch_zip_sizes() {
    fuzz("torch-zip-sizes");
}

#[test]
fn torch_pickle() {
    fuzz("torch-pickle");
}

#[test]
fn torch_file() {
    fuzz("torch-file");
}

#[test]
fn jpeg() {
    fuzz("jpeg");
}

#[test]
fn csv_metadata() {
    fuzz("csv-metadata");
}

#[test]
fn csv_po() {
    fuzz("csv-po");
}

#[test]
fn csv_env() {
    fuzz("csv-env");
}

/// Replaying a case gives the same input: failures reported by seed and case reproduce.
#[test]
fn cases_are_reproducible() {
    for t in fuzz_data::targets() {
        for case in [0, 7, 9_999] {
            assert_eq!(
                t.input_of(fuzz_common::SUITE_SEED, case),
                t.input_of(fuzz_common::SUITE_SEED, case),
                "{}",
                t.name
            );
        }
        assert_ne!(
            t.input_of(fuzz_common::SUITE_SEED, 1),
            t.input_of(fuzz_common::SUITE_SEED + 1, 1),
            "{}",
            t.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the fuzzer found in the torch reader, kept as deterministic regressions.

mod found {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use geolife_io::torchfile::{TorchError, load_state_dict_from_bytes, load_tensor_from_bytes};
    use zip::CompressionMethod::{Deflated, Stored};

    use crate::fuzz_common::measure;
    use crate::fuzz_data::{set_central_size, tensor_pickle, torch_zip};

    fn f32s(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    fn is_pickle_error(e: &TorchError, needle: &str) -> bool {
        matches!(e, TorchError::Pickle { reason, .. } if reason.contains(needle))
    }

    /// A 230-byte "billion laughs" pickle: `[] q0` then 40 x `( h0 h0 t q0`. Memoised values
    /// are copies, so each step doubled what the reader built: more than 2 GiB and 6-14 s
    /// before the 16M-value limit. Now a budget of materialised bytes (memo copies and marks
    /// included) stops it.
    #[test]
    fn memo_doubling_is_bounded() {
        let mut pkl = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            pkl.extend_from_slice(b"(h\x00h\x00tq\x00");
        }
        pkl.push(b'.');
        let file = torch_zip(&pkl, &[], Stored);
        let start = Instant::now();
        let (r, biggest, live) =
            measure(|| load_state_dict_from_bytes(Path::new("bomb.pth"), &file));
        let e = r.unwrap_err();
        assert!(is_pickle_error(&e, "MiB of values"), "{e}");
        // Unbounded, the 40 doublings take hours; 10 s leaves room for a loaded CI machine.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert!(biggest < 64 << 20 && live < 64 << 20, "{biggest} {live}");
    }

    /// A broadcast view (stride 0) of 2^40 elements over a 1-element storage was accepted,
    /// and `data_f32` (which the `.pth` weight import calls) then asked for 4 TiB.
    #[test]
    fn broadcast_view_is_refused() {
        let pkl = tensor_pickle("FloatStorage", 1, 0, &[1 << 40], &[0]);
        let file = torch_zip(&pkl, &f32s(1), Stored);
        let e = load_tensor_from_bytes(Path::new("b.pt"), &file).unwrap_err();
        assert!(is_pickle_error(&e, "broadcast views are not read"), "{e}");
        let e = load_state_dict_from_bytes(Path::new("b.pt"), &file).unwrap_err();
        assert!(matches!(e, TorchError::Pickle { .. }), "{e}");
    }

    /// A size whose product overflows but contains a 0 skipped the extent check, and
    /// `numel()` then panicked on the overflow (debug) or wrapped (release).
    #[test]
    fn overflowing_size_is_refused() {
        let pkl = tensor_pickle("FloatStorage", 1, 0, &[1 << 32, 1 << 32, 0], &[0, 0, 0]);
        let file = torch_zip(&pkl, &f32s(1), Stored);
        let e = load_tensor_from_bytes(Path::new("o.pt"), &file).unwrap_err();
        assert!(is_pickle_error(&e, "overflows"), "{e}");
    }

    /// An entry's declared size (zip central directory) sized the read buffer unchecked, up to
    /// twice what the pickle claims for the storage: here 4 GiB for a 5-element storage.
    #[test]
    fn lying_entry_size_does_not_allocate() {
        let pkl = tensor_pickle("FloatStorage", 1 << 31, 0, &[5], &[1]);
        let mut file = torch_zip(&pkl, &f32s(5), Stored);
        set_central_size(&mut file, "t/data/0", 0xFFFF_FFF0);
        let (r, biggest, _) = measure(|| load_tensor_from_bytes(Path::new("l.pt"), &file));
        assert!(r.is_err());
        assert!(biggest < 1 << 20, "{biggest}");
    }

    /// A deflated storage that inflates beyond its declared size was read to the end (1032x
    /// the compressed bytes at most); now reading stops after the declared size.
    #[test]
    fn entry_inflating_past_its_size_is_refused() {
        let pkl = tensor_pickle("FloatStorage", 4, 0, &[4], &[1]);
        let mut file = torch_zip(&pkl, &vec![0u8; 8 << 20], Deflated);
        assert!(file.len() < 64 << 10);
        set_central_size(&mut file, "t/data/0", 16);
        let (r, _, live) = measure(|| load_tensor_from_bytes(Path::new("d.pt"), &file));
        let e = r.unwrap_err();
        assert!(matches!(e, TorchError::NotZip { .. }), "{e}");
        assert!(live < 1 << 20, "{live}");
    }
}
