//! Times one training step (forward + BCE backward + AdamW) on CPU for the cube ResNet18 branch
//! (batch 64, 6x4x21) and the full fusion model with convnext_tiny (batch 16, 4x128x128).
//! Run: `cargo run --release -p geolife-model --example bench_step -- [steps]`; compare with
//! benches/bench_step.py (PyTorch, same shapes).

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use geolife_model::backbones::BackboneKind;
use geolife_model::backbones::resnet::ResNetConfig;
use geolife_model::fusion::{FusionConfig, FusionInput};
use geolife_model::loss::bce_with_logits;

fn normal<const D: usize>(shape: [usize; D], d: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), d)
}

fn time<F: FnMut()>(name: &str, steps: usize, mut f: F) {
    f(); // warm-up
    let t = Instant::now();
    for _ in 0..steps {
        f();
    }
    let per = t.elapsed().as_secs_f64() / steps as f64;
    println!("{name}: {per:.3} s/step ({steps} steps)");
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let which = std::env::args().nth(2).unwrap_or_else(|| "all".into());
    let d = std::env::var("GEOLIFE_DEVICE")
        .ok()
        .filter(|v| v == "wgpu")
        .map(|_| wgpu_device())
        .unwrap_or_else(Device::flex)
        .autodiff();
    println!("device: {d:?}");

    if which == "all" || which == "cube" {
        let mut model = Some(ResNetConfig::cube(6).init(&d));
        let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
        let x = normal([64, 6, 4, 21], &d);
        let y = Tensor::<2>::zeros([64, 1000], &d).add_scalar(0.01);
        time("cube resnet18 b64", steps, || {
            let m = model.take().unwrap();
            let loss = bce_with_logits(m.forward(x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            model = Some(optim.step(8e-4, m, grads));
            let _ = model.as_ref().map(|m| m.num_params());
        });
    }
    if which == "all" || which == "fusion" {
        let config = FusionConfig::paper(11255, BackboneKind::ConvnextTiny);
        let mut model = Some(config.init(&d));
        let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
        let b = 16;
        let input = FusionInput {
            tabular: normal([b, 46], &d),
            landsat: normal([b, 6, 4, 21], &d),
            bioclim: normal([b, 4, 19, 12], &d),
            sentinel: normal([b, 4, 128, 128], &d),
            prior: None,
        };
        let y = Tensor::<2>::zeros([b, 11255], &d).add_scalar(0.001);
        // Per-phase wall time (forward incl. loss, backward, AdamW), to see where a step goes.
        let mut phases = [0f64; 3];
        time("fusion convnext_tiny b16", steps, || {
            let m = model.take().unwrap();
            let t = Instant::now();
            let loss = bce_with_logits(m.forward(input.clone()), y.clone());
            let _: f32 = loss.clone().into_scalar();
            phases[0] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            phases[1] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let m = optim.step(8e-4, m, grads);
            let _ = m.num_params();
            phases[2] += t.elapsed().as_secs_f64();
            model = Some(m);
        });
        let n = (steps + 1) as f64; // the warm-up step is included in the phase sums
        println!(
            "  per step (mean incl. warm-up; flex only: wgpu runs asynchronously): forward+loss {:.3} s, backward {:.3} s, AdamW {:.3} s",
            phases[0] / n,
            phases[1] / n,
            phases[2] / n
        );
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Device {
    Device::wgpu(Default::default())
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Device {
    eprintln!("built without the `wgpu` feature: using flex");
    Device::flex()
}
