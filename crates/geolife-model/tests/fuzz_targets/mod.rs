//! The geolife-model fuzz targets: safetensors checkpoints (weights + config metadata) and
//! PyTorch `.pth` weight import. Seeds: checkpoints written by `write_state_dict` with real
//! config metadata, the safetensors fixtures' small members, the PyTorch-written state dict
//! fixture and synthetic `.pt` files. Shared by `tests/fuzz_checkpoints.rs` and
//! `examples/fuzz_checkpoints.rs`; the engine is geolife-data's `tests/fuzz_common`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rand::Rng;
use rand::seq::IndexedRandom;

use geolife_data::synth::torch_pt::{PtTensor, encode_pt, serialization_id};
use geolife_model::backbones::BackboneKind;
use geolife_model::checkpoint::{
    CONFIG_KEY, KIND_KEY, TRANSFORMS_KEY, read_config, read_metadata, write_state_dict,
};
use geolife_model::fusion::FusionConfig;
use geolife_model::import::{
    adapt_input_channels, is_stem_key, read_state_dict, unwrap_checkpoint,
};
use geolife_model::state::{NamedTensor, StateDict};

use crate::fuzz_common::{
    Case, Input, Target, Verdict, class, lie_in_zip, mutate, mutate_safetensors_or_bytes,
};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tensor(shape: &[usize]) -> NamedTensor {
    let n: usize = shape.iter().product();
    NamedTensor {
        shape: shape.to_vec(),
        data: (0..n).map(|i| i as f32 * 0.125 - 1.0).collect(),
    }
}

/// Small checkpoints with geolife metadata (config JSON, model kind, transforms), a plain
/// state dict without metadata, and the smallest safetensors fixture.
pub fn safetensors_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut dict = StateDict::new();
    dict.insert("conv1.weight".into(), tensor(&[2, 3, 3, 3]));
    dict.insert("bn1.running_mean".into(), tensor(&[2]));
    dict.insert("bn1.running_var".into(), tensor(&[2]));
    dict.insert("model.fc.weight".into(), tensor(&[5, 2]));
    dict.insert("model.fc.bias".into(), tensor(&[5]));
    let configs = [
        FusionConfig::tiny(5),
        FusionConfig::new(50, BackboneKind::SmokeConvnext),
    ];
    let mut out = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let meta = HashMap::from([
            (
                CONFIG_KEY.to_string(),
                serde_json::to_string(c).expect("config json"),
            ),
            (KIND_KEY.to_string(), "fusion".to_string()),
            (
                TRANSFORMS_KEY.to_string(),
                r#"{"mode":"seed","patch_scale":255.0}"#.to_string(),
            ),
        ]);
        let p = dir.path().join(format!("{i}.safetensors"));
        write_state_dict(&dict, meta, &p).expect("writing a seed checkpoint");
        out.push(std::fs::read(&p).expect("reading it back"));
    }
    let p = dir.path().join("plain.safetensors");
    write_state_dict(&dict, HashMap::new(), &p).expect("writing a seed state dict");
    out.push(std::fs::read(&p).expect("reading it back"));
    out.push(
        std::fs::read(manifest().join("tests/fixtures/cnn/resnet18_cube_io.safetensors"))
            .expect("fixture"),
    );
    out
}

/// The PyTorch-written state dict fixture of geolife-data and synthetic bare tensors.
pub fn pth_seeds() -> Vec<Vec<u8>> {
    let mut out = vec![
        std::fs::read(manifest().join("../geolife-data/tests/fixtures/torchfile_state_dict.pth"))
            .expect("state dict fixture"),
    ];
    for (i, (size, stride)) in [(&[2usize, 3][..], &[3usize, 1][..]), (&[4], &[1])]
        .into_iter()
        .enumerate()
    {
        let storage: Vec<f32> = (0..6).map(|k| k as f32).collect();
        out.push(encode_pt(
            &format!("w{i}"),
            PtTensor {
                size,
                stride,
                offset: 0,
                storage: &storage,
            },
            &serialization_id(i as u64, 3),
        ));
    }
    out
}

/// What import does with a dict once read: unwrap wrapper prefixes, adapt stems.
fn use_dict(dict: geolife_model::state::StateDict) -> usize {
    for t in dict.values() {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
    }
    let (dict, _) = unwrap_checkpoint(dict);
    for (k, t) in &dict {
        if is_stem_key(k) && t.shape.len() == 4 {
            for c in [1, 4] {
                let a = adapt_input_channels(t, c);
                assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
            }
        }
    }
    dict.len()
}

pub fn check_safetensors(c: &Case) -> Verdict {
    let a = match read_state_dict(c.path) {
        Ok(d) => {
            use_dict(d);
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    let b = match read_metadata(c.path) {
        Ok(_) => "Ok".to_string(),
        Err(e) => class(&e),
    };
    let d = match read_config(c.path) {
        Ok(cfg) => {
            let _ = cfg.fusion_width();
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    Ok(format!("{a}/{b}/{d}"))
}

pub fn check_pth(c: &Case) -> Verdict {
    match read_state_dict(c.path) {
        Ok(d) => Ok(format!("Ok {}", use_dict(d).min(1))),
        Err(e) => Err(class(&e)),
    }
}

/// Every geolife-model target.
pub fn targets() -> Vec<Target> {
    let st = Arc::new(safetensors_seeds());
    let max_st = st.iter().map(Vec::len).max().unwrap_or(0) * 2 + 64;
    let pth = Arc::new(pth_seeds());
    let max_pth = pth.iter().map(Vec::len).max().unwrap_or(0) * 2 + 64;
    vec![
        Target::new(
            "checkpoint-safetensors",
            "import::read_state_dict, checkpoint::read_metadata, read_config (files)",
            Input::File("safetensors"),
            move |rng| {
                let s = st.choose(rng).cloned().unwrap_or_default();
                mutate_safetensors_or_bytes(rng, &s, &st, max_st)
            },
            check_safetensors,
        ),
        Target::new(
            "import-pth",
            "import::read_state_dict on PyTorch .pth (safe torch reader + data_f32)",
            Input::File("pth"),
            move |rng| {
                let s = pth.choose(rng).cloned().unwrap_or_default();
                if rng.random_bool(0.3) {
                    lie_in_zip(rng, &s)
                } else {
                    mutate(rng, &s, &pth, max_pth)
                }
            },
            check_pth,
        ),
    ]
}
