//! Numerical parity of Swin V2 and MaxViT with torchvision: small random-initialised torchvision
//! models (4-channel stems) and their eval-mode outputs, written by `fixtures/gen_transformers.py`,
//! are loaded key by key (names equal torchvision's) and must match to ~1e-4 relative error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use geolife_model::backbones::maxvit::{MaxVit, MaxVitConfig};
use geolife_model::backbones::swin_v2::{SwinV2, SwinV2Config};

/// `name -> (shape, f32 values)` of a safetensors fixture (F32 and I64 only).
type Dict = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn read(name: &str) -> Dict {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/transformers")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut out = Dict::new();
    for (k, v) in st.tensors() {
        let values = match v.dtype() {
            safetensors::Dtype::F32 => v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::I64 => v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => panic!("{name}: {k}: unexpected dtype {other:?}"),
        };
        out.insert(k, (v.shape().to_vec(), values));
    }
    out
}

/// Test-only loader: walks the module, maps each burn path to the torchvision key (norm
/// `gamma`/`beta` -> `weight`/`bias`, Linear weights transposed) and fills it from the dict.
struct Loader<'a> {
    dict: &'a Dict,
    names: Vec<String>,
    containers: Vec<String>,
    used: BTreeSet<String>,
    missing: Vec<String>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.names.push(name.to_string());
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.names.pop();
        self.containers.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let owner = self.containers.last().cloned().unwrap_or_default();
        let leaf = self.names.last().cloned().unwrap_or_default();
        let norm = owner == "Struct:LayerNorm" || owner == "Struct:BatchNorm";
        let mut names = self.names.clone();
        if norm && leaf == "gamma" {
            *names.last_mut().expect("leaf") = "weight".into();
        } else if norm && leaf == "beta" {
            *names.last_mut().expect("leaf") = "bias".into();
        }
        let key = names.join(".");
        let transposed = owner == "Struct:Linear" && leaf == "weight";
        let Some((shape, values)) = self.dict.get(&key) else {
            self.missing.push(key);
            return param;
        };
        self.used.insert(key.clone());
        let device = param.val().device();
        let t = Tensor::<D>::from_data(TensorData::new(values.clone(), shape.clone()), &device);
        let t = if transposed { t.transpose() } else { t };
        let want = param.val().dims();
        assert_eq!(t.dims(), want, "{key}: file shape {shape:?}");
        param.map(|_| t)
    }
}

/// Loads every parameter; fails on model parameters absent from the file and on file keys
/// that are neither loaded nor constant buffers the model recomputes.
fn load<M: Module>(model: M, dict: &Dict) -> M {
    let mut l = Loader {
        dict,
        names: vec![],
        containers: vec![],
        used: BTreeSet::new(),
        missing: vec![],
    };
    let model = model.map(&mut l);
    assert!(l.missing.is_empty(), "missing in file: {:?}", l.missing);
    let unused: Vec<_> = dict
        .keys()
        .filter(|k| !l.used.contains(*k))
        .filter(|k| {
            !(k.ends_with("relative_position_index")
                || k.ends_with("relative_coords_table")
                || k.ends_with("num_batches_tracked"))
        })
        .collect();
    assert!(unused.is_empty(), "file keys not loaded: {unused:?}");
    model
}

fn tensor<const D: usize>(io: &Dict, key: &str, device: &Device) -> Tensor<D> {
    let (shape, values) = io.get(key).unwrap_or_else(|| panic!("fixture lacks {key}"));
    Tensor::from_data(TensorData::new(values.clone(), shape.clone()), device)
}

/// `max|a - b| / (max|b| + 1e-6)`, after checking shapes.
fn rel_err<const D: usize>(got: Tensor<D>, io: &Dict, key: &str) -> f32 {
    let (shape, want) = &io[key];
    assert_eq!(&got.dims().to_vec(), shape, "{key}: shape");
    let got = got.into_data().try_to_vec::<f32>().expect("f32");
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = want.iter().map(|b| b.abs()).fold(0f32, f32::max);
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{key}: non-finite output"
    );
    diff / (scale + 1e-6)
}

fn small_swin(device: &Device) -> SwinV2 {
    SwinV2Config::swin_v2_t()
        .with_in_channels(4)
        .with_num_classes(10)
        .with_embed_dim(8)
        .with_depths(vec![2, 2, 2, 2])
        .with_num_heads(vec![2, 2, 4, 4])
        .init(device)
        .expect("valid config")
}

fn small_maxvit(device: &Device, resize: bool) -> MaxVit {
    MaxVitConfig::maxvit_t()
        .with_in_channels(4)
        .with_num_classes(10)
        .with_input_size(64)
        .with_resize_input(resize)
        .with_stem_channels(16)
        .with_partition_size(4)
        .with_block_channels(vec![16, 32, 64])
        .with_block_layers(vec![2, 1, 1])
        .with_head_dim(8)
        .init(device)
        .expect("valid config")
}

/// Pooled features and logits both within 1e-4 (relative) of torchvision's.
fn assert_features_and_logits_match(feats: Tensor<2>, logits: Tensor<2>, io: &Dict) {
    let (ef, el) = (
        rel_err(feats, io, "features"),
        rel_err(logits, io, "logits"),
    );
    eprintln!("max relative error: features {ef:e}, logits {el:e}");
    assert!(ef < 1e-4 && el < 1e-4, "features {ef:e}, logits {el:e}");
}

#[test]
fn swin_v2_matches_torchvision_with_padding_shift_and_small_maps() {
    let device = Device::flex();
    let model = load(
        small_swin(&device),
        &read("swin_v2_small_state.safetensors"),
    );
    let io = read("swin_v2_small_io.safetensors");
    let x = tensor::<4>(&io, "input", &device); // [2, 4, 72, 104]
    model.check_input(x.dims()).expect("valid input");
    let feats = model.forward_features(x);
    let logits = model.forward_head(feats.clone(), false);
    assert_features_and_logits_match(feats, logits, &io);
}

#[test]
fn swin_v2_random_weights_do_not_match_torchvision() {
    // The parity above is not vacuous: the same architecture with its own init differs.
    let device = Device::flex();
    let io = read("swin_v2_small_io.safetensors");
    let out = small_swin(&device).forward(tensor::<4>(&io, "input", &device));
    assert!(rel_err(out, &io, "logits") > 1e-2);
}

#[test]
fn maxvit_matches_torchvision_block_and_grid_attention() {
    let device = Device::flex();
    let model = load(
        small_maxvit(&device, false),
        &read("maxvit_small_state.safetensors"),
    );
    let io = read("maxvit_small_io.safetensors");
    let x = tensor::<4>(&io, "input", &device); // [2, 4, 64, 64]
    model.check_input(x.dims()).expect("valid input");
    let feats = model.forward_features(x);
    let logits = model.forward_head(feats.clone(), false);
    assert_features_and_logits_match(feats, logits, &io);
}

#[test]
fn maxvit_resize_input_matches_torch_bilinear_interpolate() {
    let device = Device::flex();
    let model = load(
        small_maxvit(&device, true),
        &read("maxvit_small_state.safetensors"),
    );
    let io = read("maxvit_small_io.safetensors");
    let x = tensor::<4>(&io, "input_48", &device); // [2, 4, 48, 48] -> resized to 64
    model
        .check_input(x.dims())
        .expect("resize accepts any size");
    let logits = model.forward(x);
    let e = rel_err(logits, &io, "logits_48");
    eprintln!("max relative error (resized): logits {e:e}");
    assert!(e < 1e-4, "logits {e:e}");
}

#[test]
fn maxvit_without_resize_rejects_other_sizes() {
    let device = Device::flex();
    let model = small_maxvit(&device, false);
    let err = model
        .check_input([2, 4, 48, 48])
        .expect_err("48 is not the built size");
    assert!(err.to_string().contains("64"), "{err}");
    assert!(
        model.check_input([2, 3, 64, 64]).is_err(),
        "3 channels on a 4-channel model"
    );
}
