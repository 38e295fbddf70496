//! `--precision` on the command line: `train` records and runs the precision it was given,
//! `predict` overrides the run's, `bench train` prints it, and an unknown name is refused with
//! the valid ones.
#![cfg(feature = "dl")]

mod common;

use common::{run_expect, s, small_packed_dataset};

#[test]
fn precision_flags_reach_train_predict_and_bench() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, cache, _) = small_packed_dataset(d);
    let config = common::configs().join("tiny.toml");
    let run = d.join("run");
    run_expect(
        &[
            "train",
            "--config",
            s(&config),
            "--data",
            s(&cache),
            "--out",
            s(&run),
            "--epochs",
            "1",
            "--precision",
            "bf16",
        ],
        0,
    );
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("precision bf16"), "{log}");
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("precision = \"bf16\""), "{cfg}");
    // The run's bf16 products, and f32 on request: both write finite scores of the test split.
    for (precision, name) in [
        (None, "half.safetensors"),
        (Some("f32"), "full.safetensors"),
    ] {
        let out = d.join(name);
        let mut args = vec![
            "predict",
            "--run",
            s(&run),
            "--data",
            s(&cache),
            "--split",
            "test",
            "--out",
            s(&out),
        ];
        if let Some(p) = precision {
            args.extend(["--precision", p]);
        }
        run_expect(&args, 0);
        assert!(out.is_file(), "{name}");
    }
    let (half, full) = (
        std::fs::read(d.join("half.safetensors")).unwrap(),
        std::fs::read(d.join("full.safetensors")).unwrap(),
    );
    assert!(half != full, "bf16 and f32 products gave the same bytes");
    let (out, _) = run_expect(
        &[
            "bench",
            "train",
            "--config",
            s(&config),
            "--data",
            s(&cache),
            "--batch-size",
            "4",
            "--steps",
            "1",
            "--precision",
            "f16",
        ],
        0,
    );
    assert!(out.contains("precision f16"), "{out}");
    let (_, err) = run_expect(
        &[
            "train",
            "--config",
            s(&config),
            "--data",
            s(&cache),
            "--out",
            s(&d.join("bad")),
            "--precision",
            "f8",
        ],
        2,
    );
    assert!(err.contains("f32") && err.contains("bf16"), "{err}");
}
