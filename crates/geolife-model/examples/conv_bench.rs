//! Forward + backward time of burn's convolution against the CPU kernels of
//! `geolife_model::kernels::conv` (dense: one batch-wide matrix product; depthwise: direct
//! gradients), channels-first and channels-last (the layout the backbones run in on the CPU), at
//! the shapes of the seed network's cube ResNet18s and ConvNeXt, with the largest relative
//! difference of the channels-last outputs and of both gradients from burn's.
//!
//!     cargo run --release -p geolife-model --example conv_bench [REPEATS]

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use geolife_model::kernels::conv::{
    dense_conv2d, dense_conv2d_nhwc, depthwise_conv2d, depthwise_conv2d_nhwc,
};

/// (name, batch, in channels, out channels, H, W, kernel, stride, padding)
type Case = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const CASES: &[Case] = &[
    ("landsat stem 3x3", 64, 6, 64, 4, 21, 3, 1, 1),
    ("landsat layer1 3x3", 64, 64, 64, 4, 21, 3, 1, 1),
    ("landsat layer2 3x3/2", 64, 64, 128, 4, 21, 3, 2, 1),
    ("landsat layer2 3x3", 64, 128, 128, 2, 11, 3, 1, 1),
    ("landsat layer3 3x3", 64, 256, 256, 1, 6, 3, 1, 1),
    ("landsat layer4 3x3", 64, 512, 512, 1, 3, 3, 1, 1),
    ("landsat down 1x1/2", 64, 128, 256, 2, 11, 1, 2, 0),
    ("bioclim layer1 3x3", 64, 64, 64, 19, 12, 3, 1, 1),
    ("bioclim layer2 3x3", 64, 128, 128, 10, 6, 3, 1, 1),
    ("bioclim layer3 3x3", 64, 256, 256, 5, 3, 3, 1, 1),
    ("convnext stem 4x4/4", 16, 4, 96, 128, 128, 4, 4, 0),
    ("convnext down 2x2/2", 16, 96, 192, 32, 32, 2, 2, 0),
    ("32x32 map 3x3, 64 -> 64", 16, 64, 64, 32, 32, 3, 1, 1),
    ("64x64 map 3x3, 32 -> 32", 16, 32, 32, 64, 64, 3, 1, 1),
    ("ImageNet stem 7x7/2", 16, 3, 64, 128, 128, 7, 2, 3),
];

/// Depthwise cases: (name, batch, channels, H, W, kernel, padding).
const DEPTHWISE: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("convnext_tiny dw 7x7 s1", 16, 96, 32, 32, 7, 3),
    ("convnext_tiny dw 7x7 s3", 16, 384, 8, 8, 7, 3),
    ("smoke dw 7x7 s1", 64, 16, 32, 32, 7, 3),
];

fn max_rel(a: Tensor<4>, b: Tensor<4>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-12);
    (a - b).abs().max().into_scalar::<f32>() / scale
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("REPEATS is a number"))
        .unwrap_or(5);
    let device = Device::flex().autodiff();
    // The machine's practical matrix-multiply rate, the ceiling the kernels are read against:
    // one 2048^3 f32 product through burn flex (the same gemm crate the kernels call).
    let n: usize = 2048;
    let a: Tensor<2> = Tensor::random([n, n], Distribution::Normal(0.0, 1.0), &Device::flex());
    let b: Tensor<2> = Tensor::random([n, n], Distribution::Normal(0.0, 1.0), &Device::flex());
    a.clone().matmul(b.clone()).into_data();
    let t = Instant::now();
    for _ in 0..repeats {
        a.clone().matmul(b.clone()).into_data();
    }
    let peak = 2.0 * (n * n * n) as f64 * repeats as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!("reference: {n}x{n}x{n} f32 matmul at {peak:.1} GFLOP/s");
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>8}",
        "case", "burn ms", "NCHW ms", "NHWC ms", "ratio", "d out", "d x", "d w", "GFLOP/s"
    );
    for &(name, b, ci, co, h, w, k, st, p) in CASES {
        let x0 = Tensor::random([b, ci, h, w], Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::random([co, ci, k, k], Distribution::Normal(0.0, 0.1), &device);
        let options = burn::tensor::ops::ConvOptions::new([st, st], [p, p], [1, 1], 1);
        compare(
            name,
            &x0,
            &w0,
            |x, w| dense_conv2d(x, w, [st, st], [p, p]),
            |x, w| dense_conv2d_nhwc(x, w, [st, st], [p, p]),
            |x, w| burn::tensor::module::conv2d(x, w, None, options.clone()),
            repeats,
            // Forward, input gradient and weight gradient: three products of 2*B*Ho*Wo*Co*C*k*k.
            |[_, _, ho, wo]| Some(3.0 * 2.0 * (b * ho * wo * co * ci * k * k) as f64),
        );
    }
    for &(name, b, c, h, w, k, p) in DEPTHWISE {
        let x0 = Tensor::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::random([c, 1, k, k], Distribution::Normal(0.0, 0.1), &device);
        let options = burn::tensor::ops::ConvOptions::new([1, 1], [p, p], [1, 1], c);
        let bias = Tensor::<1>::zeros([c], &device);
        compare(
            name,
            &x0,
            &w0,
            |x, w| depthwise_conv2d(x, w, [p, p]),
            |x, w| depthwise_conv2d_nhwc(x, w, bias.clone(), [p, p]),
            |x, w| burn::tensor::module::conv2d(x, w, None, options.clone()),
            repeats,
            |_| None,
        );
    }
}

/// Times forward + backward of `ours` (channels-first), `nhwc` (channels-last: its input, output
/// and input gradient are `[B, H, W, C]`) and `burn` on the same input and weight, and prints the
/// times, burn's time over the channels-last one, the largest relative differences of the
/// channels-last kernel from burn and (given the FLOPs for the output shape) its rate.
#[allow(clippy::too_many_arguments)]
fn compare(
    name: &str,
    x0: &Tensor<4>,
    w0: &Tensor<4>,
    ours: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
    nhwc: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
    burn: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
    repeats: usize,
    flop: impl Fn([usize; 4]) -> Option<f64>,
) {
    // The channels-last input, contiguous (as the previous layer writes it).
    let x0_last = Tensor::<4>::from_data(
        x0.clone().inner().permute([0, 2, 3, 1]).into_data(),
        &x0.device(),
    );
    let run = |f: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<4>, x0: &Tensor<4>| {
        let x = x0.clone().detach().require_grad();
        let wt = w0.clone().detach().require_grad();
        let y = f(x.clone(), wt.clone());
        let g = y.clone().sin().sum().backward();
        let gx = x.grad(&g).expect("x grad");
        let gw = wt.grad(&g).expect("w grad");
        (y.inner(), gx, gw)
    };
    let time = |f: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<4>, x0: &Tensor<4>| {
        run(f, x0);
        let t = Instant::now();
        for _ in 0..repeats {
            run(f, x0);
        }
        t.elapsed().as_secs_f64() * 1e3 / repeats as f64
    };
    let (yb, xb, wb) = run(&burn, x0);
    let (yl, xl, wl) = run(&nhwc, &x0_last);
    let (yl, xl) = (yl.permute([0, 3, 1, 2]), xl.permute([0, 3, 1, 2]));
    let (tb, tg, tl) = (time(&burn, x0), time(&ours, x0), time(&nhwc, &x0_last));
    let rate = flop(yl.dims()).map_or(String::new(), |f| format!("{:.1}", f / (tl * 1e-3) / 1e9));
    println!(
        "{:<24} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>9.1e} {:>9.1e} {:>9.1e} {:>8}",
        name,
        tb,
        tg,
        tl,
        tb / tl,
        max_rel(yl, yb),
        max_rel(xl, xb),
        max_rel(wl, wb),
        rate
    );
}
