//! Test helpers: the fixtures' "formula weights" (bit-exact twin of gen_cnn.py), fixture IO and
//! a robust relative error.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use geolife_model::import::read_safetensors;
use geolife_model::state::{Layout, NamedTensor, StateDict, TorchNamed, slots};

/// Folder of the CNN fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cnn")
}

/// Named tensors of a fixture file.
pub fn fixture(name: &str) -> StateDict {
    read_safetensors(&fixtures().join(name)).expect("fixture readable")
}

fn fnv1a64(key: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

fn unit(key: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(key);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 24) as f64
        })
        .collect()
}

/// gen_cnn.py's `formula(key, shape)`.
pub fn formula(key: &str, shape: &[usize]) -> NamedTensor {
    let n: usize = shape.iter().product();
    let u = unit(key, n);
    let data = u
        .iter()
        .map(|&u| {
            let v = if key.ends_with("running_var") {
                0.5 + u
            } else if key.ends_with("running_mean") {
                0.2 * (2.0 * u - 1.0)
            } else if key.ends_with("layer_scale") {
                0.5 + 0.5 * u
            } else if shape.len() == 1 && key.ends_with("weight") {
                1.0 + 0.2 * (2.0 * u - 1.0)
            } else if shape.len() == 1 {
                0.1 * (2.0 * u - 1.0)
            } else {
                let fan_in: usize = shape[1..].iter().product();
                (2.0 * u - 1.0) * (3.0 / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect();
    NamedTensor {
        shape: shape.to_vec(),
        data,
    }
}

/// Formula weights for every parameter of `model`, under PyTorch names and shapes.
pub fn formula_dict<M: TorchNamed>(model: &M) -> StateDict {
    slots(model)
        .into_iter()
        .map(|s| {
            let shape = match s.layout {
                Layout::Transposed => s.shape.iter().rev().copied().collect(),
                Layout::Same => model.torch_shape(&s.torch_key, &s.shape),
            };
            let t = formula(&s.torch_key, &shape);
            (s.torch_key, t)
        })
        .collect()
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
