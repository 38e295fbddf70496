//! `geolife import-weights` end to end: a PyTorch Lightning checkpoint is unwrapped (weights
//! under `state_dict`, keys prefixed `model.`) and imports exactly as the plain state dict
//! written by PyTorch does; keys the model does not have are refused unless allowed.
#![cfg(feature = "dl")]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Output;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The smoke ConvNeXt state dict saved by PyTorch (`torch.save`), shared with the model tests.
fn torch_weights() -> PathBuf {
    fixture("../geolife-model/tests/fixtures/cnn/convnext_smoke_weights.pth")
}

fn import(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "import-weights",
        "--target",
        "backbone",
        "--backbone",
        "smoke_convnext",
        "--in-channels",
        "4",
        "--input",
        s(input),
        "--output",
        s(output),
    ];
    args.extend_from_slice(extra);
    geolife(&args)
}

#[test]
fn lightning_checkpoint_imports_like_the_plain_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let from_ckpt = dir.path().join("ckpt.safetensors");
    let from_pth = dir.path().join("pth.safetensors");
    let out = import(
        &fixture("tests/fixtures/lightning_smoke_convnext.ckpt"),
        &from_ckpt,
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What was stripped is reported, and every parameter came from the file.
    assert!(stdout.contains("`state_dict.model.`"), "{stdout}");
    assert!(stdout.contains("missing 0, unexpected 0"), "{stdout}");
    let out = import(&torch_weights(), &from_pth, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Same tensors, same metadata.
    let (a, b) = (
        std::fs::read(&from_ckpt).unwrap(),
        std::fs::read(&from_pth).unwrap(),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let (mut ta, mut tb) = (a.tensors(), b.tensors());
    ta.sort_by(|x, y| x.0.cmp(&y.0));
    tb.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(ta.len(), 56, "the smoke ConvNeXt's 56 weights");
    assert_eq!(ta, tb);
    let meta = |b: &[u8]| {
        safetensors::SafeTensors::read_metadata(b)
            .unwrap()
            .1
            .metadata()
            .clone()
    };
    assert_eq!(
        meta(&std::fs::read(&from_ckpt).unwrap()),
        meta(&std::fs::read(&from_pth).unwrap())
    );
}

#[test]
fn unexpected_keys_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // The PyTorch weights plus a block the smoke ConvNeXt (one block per stage) does not have:
    // a file from a deeper backbone than `--backbone`.
    let bytes = std::fs::read(fixture(
        "../geolife-model/tests/fixtures/cnn/convnext_smoke_weights.safetensors",
    ))
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let extra = views
        .iter()
        .find(|(k, _)| k == "features.1.0.block.0.weight")
        .map(|(_, v)| v.clone())
        .expect("fixture has stage 1 block 0");
    views.push(("features.1.1.block.0.weight".into(), extra));
    let deeper = dir.path().join("deeper.safetensors");
    std::fs::write(&deeper, safetensors::serialize(views, &None).unwrap()).unwrap();

    let output = dir.path().join("out.safetensors");
    let out = import(&deeper, &output, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unexpected features.1.1.block.0.weight"),
        "{stderr}"
    );
    assert!(stderr.contains("1 unexpected key(s)"), "{stderr}");
    assert!(
        !output.exists(),
        "nothing may be written on a refused import"
    );

    let out = import(&deeper, &output, &["--allow-unexpected"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(output.is_file());
}
