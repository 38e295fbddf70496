//! Test helpers: the fixtures' "formula weights" (re-exported from `geolife_model::formula`, the
//! bit-exact twin of gen_cnn.py), fixture IO and a robust relative error.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
pub use geolife_model::formula::formula_dict;
use geolife_model::import::read_safetensors;
use geolife_model::state::{NamedTensor, StateDict};

/// Folder of the CNN fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cnn")
}

/// Named tensors of a fixture file.
pub fn fixture(name: &str) -> StateDict {
    read_safetensors(&fixtures().join(name)).expect("fixture readable")
}

/// A fixture tensor as a burn tensor.
pub fn tensor<const D: usize>(t: &NamedTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// max|a - b| / (max|b| + 1e-6), with shapes checked.
pub fn rel_err<const D: usize>(a: Tensor<D>, b: &NamedTensor) -> f32 {
    assert_eq!(a.dims().to_vec(), b.shape, "output shape");
    let a = a.into_data().try_to_vec::<f32>().expect("f32 output");
    let diff = a
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let scale = b.data.iter().map(|y| y.abs()).fold(0.0f32, f32::max);
    diff / (scale + 1e-6)
}
