//! `geolife bench norms`: the forward and backward pass of one normalisation layer, timed with
//! geolife's kernels and with burn's own layers on the same device, at shapes of the paper's
//! backbones. On a GPU it shows what the cubecl norm kernels (`geolife-model`'s `norm_gpu.rs`)
//! gain per layer, in time and in kernel launches; on the CPU, what the flex kernels gain.

use std::time::Instant;

use burn::module::Param;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Tensor, TensorData};
use geolife_model::kernels;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::config::DeviceKind;
use crate::error::TrainError;
use crate::trainer::device::make_device;
use crate::trainer::launches::LaunchWatch;

/// Which normalisation a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm over the last axis of `[B, H, W, C]` (ConvNeXt's and Swin's).
    LayerNorm,
    /// Training BatchNorm followed by ReLU, of `[B, C, H, W]` values (MaxViT's MBConv) or,
    /// `nhwc`, of channels-last `[B, H, W, C]` values (the ResNets on the GPU and the CPU).
    BatchNormRelu { nhwc: bool },
}

/// One timed layer.
#[derive(Debug, Clone)]
pub struct NormCase {
    /// What the shape is, for the printout.
    pub name: &'static str,
    pub kind: NormKind,
    /// The input's shape, batch first.
    pub shape: [usize; 4],
}

/// A case's mean time per forward-and-backward pass (milliseconds) with the kernels and with
/// burn's layers, and the cubecl kernels each launched per pass (`None` on the CPU).
#[derive(Debug, Clone)]
pub struct NormTiming {
    pub case: NormCase,
    pub kernels_ms: f64,
    pub burn_ms: f64,
    pub kernels_launches: Option<usize>,
    pub burn_launches: Option<usize>,
}

/// The timed layers at batch `batch`: the largest norm inputs of the paper's backbones at the
/// 128 x 128 Sentinel patch, and a small map like the seed's cube ResNets'.
pub fn norm_cases(batch: usize) -> Vec<NormCase> {
    let b = batch.max(1);
    vec![
        NormCase {
            name: "LayerNorm, ConvNeXt stage 1 (rows of 128)",
            kind: NormKind::LayerNorm,
            shape: [b, 32, 32, 128],
        },
        NormCase {
            name: "LayerNorm, ConvNeXt-B stage 3 (rows of 512)",
            kind: NormKind::LayerNorm,
            shape: [b, 8, 8, 512],
        },
        NormCase {
            name: "BatchNorm + ReLU, channels-first, MaxViT-T stem (64 channels of 64 x 64)",
            kind: NormKind::BatchNormRelu { nhwc: false },
            shape: [b, 64, 64, 64],
        },
        NormCase {
            name: "BatchNorm + ReLU, channels-last, ResNet-50 layer 1 (256 channels of 32 x 32)",
            kind: NormKind::BatchNormRelu { nhwc: true },
            shape: [b, 32, 32, 256],
        },
        NormCase {
            name: "BatchNorm + ReLU, channels-last, small map (64 channels of 4 x 21)",
            kind: NormKind::BatchNormRelu { nhwc: true },
            shape: [b, 4, 21, 64],
        },
    ]
}

/// Values drawn from `N(mean, sd^2)` with a fixed seed.
fn normal<const D: usize>(
    shape: [usize; D],
    mean: f32,
    sd: f32,
    seed: u64,
    d: &Device,
) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            mean + sd * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)
        })
        .collect();
    Tensor::from_data(TensorData::new(v, shape), d)
}

/// Times every case of [`norm_cases`] on device `kind`: one warm-up pass (compilation and
/// autotuning on a GPU), then `steps` timed passes, each with the kernels and with burn's
/// layers (the kernels' switch, [`kernels::set_cpu_kernels`], is restored afterwards).
pub fn bench_norms(
    kind: DeviceKind,
    batch: usize,
    steps: usize,
) -> Result<Vec<NormTiming>, TrainError> {
    let d = make_device(kind)?.autodiff();
    let gpu = kind == DeviceKind::Wgpu;
    let was_on = kernels::kernels_on();
    let out = norm_cases(batch)
        .into_iter()
        .map(|case| time_case(&d, gpu, case, steps.max(1)))
        .collect();
    kernels::set_cpu_kernels(was_on);
    out
}

fn time_case(
    d: &Device,
    gpu: bool,
    case: NormCase,
    steps: usize,
) -> Result<NormTiming, TrainError> {
    let x = normal(case.shape, 0.7, 3.0, 1, d);
    let [_, _, _, last] = case.shape;
    let channels = match case.kind {
        NormKind::BatchNormRelu { nhwc: false } => case.shape[1],
        _ => last,
    };
    let gamma = normal([channels], 1.0, 0.5, 2, d);
    let beta = normal([channels], 0.0, 0.5, 3, d);
    let mut bn = BatchNormConfig::new(channels).init(d);
    bn.gamma = Param::from_tensor(gamma.clone());
    bn.beta = Param::from_tensor(beta.clone());
    let pass = |bn: &BatchNorm| -> Result<(), TrainError> {
        let x = x.clone().detach().require_grad();
        let grads = match case.kind {
            NormKind::LayerNorm => {
                let (g, b) = (gamma.clone().require_grad(), beta.clone().require_grad());
                let y = kernels::layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-6);
                let grads = y.sum().backward();
                let _ = (g.grad(&grads), b.grad(&grads));
                grads
            }
            NormKind::BatchNormRelu { nhwc } => {
                let y = match nhwc {
                    true => kernels::batch_norm_nhwc(bn, x.clone(), true),
                    false => kernels::batch_norm(bn, x.clone(), true),
                };
                let grads = y.sum().backward();
                let _ = (bn.gamma.val().grad(&grads), bn.beta.val().grad(&grads));
                grads
            }
        };
        let _ = x.grad(&grads);
        d.sync()
            .map_err(|e| TrainError::Invalid(format!("bench norms: the device failed: {e:?}")))
    };
    let timed = |on: bool| -> Result<(f64, Option<usize>), TrainError> {
        kernels::set_cpu_kernels(on);
        pass(&bn)?;
        let watch = LaunchWatch::start();
        let t = Instant::now();
        for _ in 0..steps {
            pass(&bn)?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        // flex launches no cubecl kernels: no count there.
        let launches = gpu.then(|| watch.finish().total / steps);
        Ok((ms, launches))
    };
    let (kernels_ms, kernels_launches) = timed(true)?;
    let (burn_ms, burn_launches) = timed(false)?;
    Ok(NormTiming {
        case,
        kernels_ms,
        burn_ms,
        kernels_launches,
        burn_launches,
    })
}
