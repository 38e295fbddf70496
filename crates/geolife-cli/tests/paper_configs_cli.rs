//! Every `configs/paper-*.toml` trains end to end at its real size: `geolife bench train
//! --config` builds the paper network (11,255 classes, the config's backbone and input size)
//! on a small synthetic dataset in the official layout and takes optimizer steps at batch 2.
//! Before the fix, MaxViT-T panicked on 128x128 patches and SwinV2-B's loss was NaN after the
//! first step; the command now fails on a non-finite loss, so finite losses are asserted here.
//! The configs ask for f16 products, so these steps also show that mixed precision trains
//! through every paper backbone.
#![cfg(feature = "dl")]

use std::path::PathBuf;
use std::process::Command;

fn bench(config: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("configs").join(config);
    let out = Command::new(env!("CARGO_BIN_EXE_geolife"))
        .args(["bench", "train", "--config"])
        .arg(&path)
        .args(["--batch-size", "2", "--steps", "1", "--surveys", "16"])
        .output()
        .expect("run geolife");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{config}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let losses: Vec<f32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("losses (all finite): "))
        .unwrap_or_else(|| panic!("{config}: no losses line in {stdout}"))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 2, "{config}: warm-up and one timed step");
    // The configs train as the seed did, in mixed precision (f16 products through all four
    // backbones, dynamic loss scaling).
    assert!(stdout.contains("precision f16"), "{config}: {stdout}");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
}

#[test]
fn paper_maxvit_t_trains_on_128_patches() {
    bench("paper-maxvit-t.toml");
}

#[test]
fn paper_swinv2_base_trains_without_nan() {
    bench("paper-swinv2-base.toml");
}

#[test]
fn paper_convnext_base_trains() {
    bench("paper-convnext-base.toml");
}

#[test]
fn paper_convnext_large_trains() {
    bench("paper-convnext-large.toml");
}

/// `geolife bench norms` times every norm case with the kernels and with burn's layers and
/// prints a ratio for each (on the CPU here; the wgpu test times them on the GPU build).
#[test]
fn bench_norms_times_each_case_with_and_without_the_kernels() {
    let out = Command::new(env!("CARGO_BIN_EXE_geolife"))
        .args(["bench", "norms", "--batch-size", "1", "--steps", "1"])
        .output()
        .expect("run geolife");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains(" ms")).collect();
    assert_eq!(rows.len(), 5, "one line per case: {stdout}");
    for row in rows {
        let ratio: f64 = row
            .rsplit(": ")
            .next()
            .and_then(|r| r.strip_suffix('x'))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no ratio in {row}"));
        assert!(ratio.is_finite() && ratio > 0.0, "{row}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_geolife"))
        .args(["bench", "norms", "--steps", "0"])
        .output()
        .expect("run geolife");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("--steps"), "{err}");
}
