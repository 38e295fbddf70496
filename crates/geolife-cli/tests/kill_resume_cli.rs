//! `geolife train` killed with SIGKILL mid-epoch, then `--resume`d, ends exactly where an
//! uninterrupted run ends: the same metrics.csv (wall-clock seconds aside) and the same tensors
//! in best.safetensors. The kill is real (the process gets SIGKILL while it trains), not a
//! simulated stop. SIGTERM (Slurm's preemption) instead makes it write `last.ckpt` and exit
//! 143, and the resumed run ends at the same place too.
#![cfg(all(feature = "dl", unix))]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{run_ok, wait_while_running};

fn geolife() -> Command {
    Command::new(env!("CARGO_BIN_EXE_geolife"))
}

/// metrics.csv without its last column (the epoch's wall-clock seconds).
fn metrics_without_seconds(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string())
        .collect()
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn sigkill_mid_epoch_then_resume_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    run_ok(
        geolife()
            .args([
                "synth",
                "--surveys",
                "320",
                "--test-surveys",
                "16",
                "--species",
                "30",
            ])
            .arg("--out")
            .arg(&data),
    );
    let cache = d.join("cache");
    run_ok(geolife().arg("prepare").arg(&data).arg("--out").arg(&cache));
    // The tiny recipe with mixup on, a checkpoint every 2 optimizer steps, 2 epochs.
    let config = d.join("kill.toml");
    let tiny = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml"),
    )
    .unwrap()
    .replace("epochs = 8", "epochs = 2\ncheckpoint_every_steps = 2")
    .replace("mixup_prob = 0.0", "mixup_prob = 0.4");
    assert!(
        tiny.contains("checkpoint_every_steps = 2"),
        "tiny.toml changed: {tiny}"
    );
    std::fs::write(&config, tiny).unwrap();
    let train = |out: &Path| {
        let mut c = geolife();
        c.arg("train")
            .arg("--config")
            .arg(&config)
            .arg("--data")
            .arg(&cache)
            .arg("--out")
            .arg(out);
        c
    };

    let whole = d.join("whole");
    run_ok(&mut train(&whole));

    // Start the same run and SIGKILL it as soon as its first mid-epoch checkpoint exists.
    let parts = d.join("parts");
    let mut child = train(&parts)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_while_running(&mut child, "its first checkpoint", || {
        parts.join("last.ckpt").exists()
    });
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "killed by SIGKILL, not finished: {status:?}"
    );
    // Killed during epoch 1: no epoch had finished yet.
    assert!(
        !parts.join("metrics.csv").exists()
            || metrics_without_seconds(&parts).len() < metrics_without_seconds(&whole).len(),
        "the run was not interrupted"
    );

    run_ok(train(&parts).arg("--resume"));
    assert_same_run(&whole, &parts);

    // SIGTERM once the run logs its first batches: it checkpoints where it stands and exits
    // 143 (128 + 15) with a message that says how to continue.
    let termed = d.join("termed");
    let mut child = train(&termed)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = termed.join("train.log");
    wait_while_running(&mut child, "a logged batch", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("epoch 1/2 batch"))
    });
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(
        termed.join("last.ckpt").is_file(),
        "no checkpoint at SIGTERM"
    );
    assert!(
        !termed.join("metrics.csv").exists()
            || metrics_without_seconds(&termed).len() < metrics_without_seconds(&whole).len(),
        "the run was not interrupted"
    );
    run_ok(train(&termed).arg("--resume"));
    assert_same_run(&whole, &termed);
}

/// Two runs with the same metrics.csv (wall-clock seconds aside) and best.safetensors.
fn assert_same_run(whole: &Path, parts: &Path) {
    assert_eq!(
        metrics_without_seconds(whole),
        metrics_without_seconds(parts)
    );
    assert_eq!(
        metrics_without_seconds(whole).len(),
        3,
        "header and 2 epochs"
    );
    let (a, b) = (
        tensors(&whole.join("best.safetensors")),
        tensors(&parts.join("best.safetensors")),
    );
    assert!(a.iter().any(|(k, _)| k.ends_with("running_var")));
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(va == vb, "tensor {ka} differs after kill + resume");
    }
}
