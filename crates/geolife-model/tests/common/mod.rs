//! Test helpers: the fixtures' "formula weights" (re-exported from `geolife_model::formula`, the
//! bit-exact twin of gen_cnn.py), fixture IO and a robust relative error.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
#[allow(unused_imports)] // used by some of the test binaries that include this module
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

/// Every parameter's gradient by module path (BatchNorm running statistics left out).
pub fn grads_by_path<M: Module>(
    model: &M,
    grads: &burn::tensor::Gradients,
) -> BTreeMap<String, Vec<f32>> {
    struct Collect<'a> {
        grads: &'a burn::tensor::Gradients,
        path: Vec<String>,
        out: BTreeMap<String, Vec<f32>>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let path = self.path.join(".");
            if path.ends_with("running_mean") || path.ends_with("running_var") {
                return;
            }
            let g = param
                .val()
                .grad(self.grads)
                .map(|g| g.into_data().try_to_vec::<f32>().unwrap());
            self.out.insert(path, g.unwrap_or_default());
        }
    }
    let mut c = Collect {
        grads,
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    model.visit(&mut c);
    c.out
}

/// Largest difference relative to the largest magnitude of `want`.
pub fn rel_vec(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Outputs and gradients of `forward` (a scalar loss weighting every output differently) and
/// of the parameters, by path.
pub fn output_and_grads<M: Module>(
    model: &M,
    x: &Tensor<4>,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
) -> (Vec<f32>, BTreeMap<String, Vec<f32>>) {
    let y = forward(model, x.clone());
    // A fixed weight per output (the same in both runs): the output's gradient does not
    // depend on the output, so the comparison measures the backward passes, not a nonlinear
    // loss magnifying the outputs' last-digit differences.
    let [b, k] = y.dims();
    let w: Tensor<2> = Tensor::arange(0..(b * k) as i64, &y.device())
        .float()
        .mul_scalar(0.37)
        .sin()
        .reshape([b, k]);
    let grads = (y.clone() * w).sum().backward();
    (
        y.inner().into_data().try_to_vec::<f32>().unwrap(),
        grads_by_path(model, &grads),
    )
}
