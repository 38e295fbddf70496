//! The CPU convolution kernels of `geolife_model::kernels::conv` against burn's own convolution
//! (an independent implementation): equal outputs and equal gradients of the input, the weight and
//! the bias, at the shapes the seed network uses and at awkward ones (odd sizes, strides larger
//! than the map, kernels wider than the map with padding, one output pixel).

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use geolife_model::kernels::conv::{
    self, dense_conv2d, dense_conv2d_nhwc, depthwise_conv2d, depthwise_conv2d_nhwc,
};

fn device() -> Device {
    Device::flex().autodiff()
}

/// Largest difference relative to the largest magnitude of `want`.
fn rel(got: Tensor<4>, want: Tensor<4>) -> f32 {
    let scale = want.clone().abs().max().into_scalar::<f32>().max(1e-12);
    (got - want).abs().max().into_scalar::<f32>() / scale
}

fn rel1(got: Tensor<1>, want: Tensor<1>) -> f32 {
    rel(got.reshape([1, 1, 1, -1]), want.reshape([1, 1, 1, -1]))
}

/// Output and gradients (x, weight) of `f`, with a loss that weights every output differently.
fn run(
    f: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
    x: &Tensor<4>,
    w: &Tensor<4>,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let x = x.clone().detach().require_grad();
    let w = w.clone().detach().require_grad();
    let y = f(x.clone(), w.clone());
    let grads = (y.clone().sin() * y.clone()).sum().backward();
    let gx = x.grad(&grads).expect("the input gets a gradient");
    let gw = w.grad(&grads).expect("the weight gets a gradient");
    (y.inner(), gx, gw)
}

/// Output, input gradient and weight gradient equal within 1e-5 relative.
fn assert_same(
    ours: (Tensor<4>, Tensor<4>, Tensor<4>),
    burn: (Tensor<4>, Tensor<4>, Tensor<4>),
    case: &str,
) {
    assert_eq!(ours.0.dims(), burn.0.dims(), "output shape, case {case}");
    for (what, got, want) in [
        ("output", ours.0, burn.0),
        ("x grad", ours.1, burn.1),
        ("weight grad", ours.2, burn.2),
    ] {
        let e = rel(got, want);
        assert!(e < 1e-5, "{what}: relative difference {e}, case {case}");
    }
}

fn random(shape: [usize; 4], std: f64, d: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, std), d)
}

/// (batch, in, out, H, W, kernel, stride, padding)
type DenseCase = (usize, usize, usize, usize, usize, usize, usize, usize);

const DENSE: &[DenseCase] = &[
    (4, 6, 8, 4, 21, 3, 1, 1),     // Landsat stem
    (3, 8, 16, 4, 21, 3, 2, 1),    // stride 2 on an even / odd map
    (2, 16, 16, 1, 3, 3, 1, 1),    // a one-row map: only the middle kernel row sees data
    (2, 16, 32, 2, 11, 1, 2, 0),   // 1x1 strided shortcut
    (2, 5, 7, 19, 12, 3, 1, 1),    // Bioclim-sized map
    (2, 4, 6, 16, 16, 4, 4, 0),    // ConvNeXt stem (patchify)
    (2, 6, 6, 8, 8, 2, 2, 0),      // ConvNeXt downsampling
    (1, 3, 5, 5, 7, 5, 3, 2),      // kernel 5, stride 3
    (2, 3, 4, 2, 2, 7, 1, 3),      // kernel wider than the map
    (1, 2, 3, 3, 3, 3, 3, 0),      // one output pixel
    (1, 2, 2, 2, 2, 1, 1, 2),      // padding wider than the kernel: border outputs see no pixel
    (3, 64, 8, 32, 32, 3, 1, 1),   // one sample per cache-sized piece of the batch
    (5, 32, 4, 32, 32, 3, 1, 1),   // on two threads, pieces of 3 and 2 samples (a ragged last one)
    (16, 64, 128, 4, 21, 3, 2, 1), // Landsat layer2.0 at batch 16
    (16, 64, 128, 4, 21, 1, 2, 0), // its 1x1 shortcut
    (16, 64, 64, 4, 21, 3, 1, 1),  // Landsat layer1 at batch 16
];

#[test]
fn dense_kernel_equals_burns_convolution_and_its_gradients() {
    let d = device();
    for &(b, ci, co, h, w, k, s, p) in DENSE {
        let x = random([b, ci, h, w], 1.0, &d);
        let wt = random([co, ci, k, k], 0.2, &d);
        let ours = run(|x, w| dense_conv2d(x, w, [s, s], [p, p]), &x, &wt);
        let opts = ConvOptions::new([s, s], [p, p], [1, 1], 1);
        let burn = run(|x, w| conv2d(x, w, None, opts.clone()), &x, &wt);
        // The channels-last kernel, between permutations (whose gradients burn computes).
        let nhwc = run(
            |x, w| {
                dense_conv2d_nhwc(x.permute([0, 2, 3, 1]), w, [s, s], [p, p]).permute([0, 3, 1, 2])
            },
            &x,
            &wt,
        );
        let case = format!("{b} {ci} {co} {h}x{w} k{k} s{s} p{p}");
        assert_same(nhwc, burn.clone(), &format!("{case}, channels-last"));
        assert_same(ours, burn, &case);
    }
}

/// A first layer: its input is data and tracks no gradient, so the kernel skips the input's
/// gradient; the weight's must still equal burn's (which computes both).
#[test]
fn dense_kernel_on_untracked_input_gives_burns_weight_gradient() {
    let d = device();
    for &(b, ci, co, h, w, k, s, p) in DENSE {
        let x = random([b, ci, h, w], 1.0, &d).detach();
        let wt = random([co, ci, k, k], 0.2, &d);
        let weight_grad = |ours: Option<bool>| {
            let w = wt.clone().detach().require_grad();
            let opts = ConvOptions::new([s, s], [p, p], [1, 1], 1);
            let y = match ours {
                Some(false) => dense_conv2d(x.clone(), w.clone(), [s, s], [p, p]),
                Some(true) => {
                    let x = x.clone().permute([0, 2, 3, 1]);
                    dense_conv2d_nhwc(x, w.clone(), [s, s], [p, p]).permute([0, 3, 1, 2])
                }
                None => conv2d(x.clone(), w.clone(), None, opts),
            };
            let grads = (y.clone().sin() * y).sum().backward();
            assert!(x.grad(&grads).is_none(), "data gets no gradient");
            w.grad(&grads).expect("the weight gets a gradient")
        };
        let want = weight_grad(None);
        let case = format!("{b} {ci} {co} {h}x{w} k{k} s{s} p{p}");
        for nhwc in [false, true] {
            let e = rel(weight_grad(Some(nhwc)), want.clone());
            assert!(
                e < 1e-5,
                "weight grad: relative difference {e}, case {case}, channels-last {nhwc}"
            );
        }
    }
}

#[test]
fn depthwise_kernel_equals_burns_grouped_convolution_and_its_gradients() {
    let d = device();
    // (batch, channels, H, W, kernel, padding)
    for &(b, c, h, w, k, p) in &[
        (2, 8, 16, 16, 7, 3),
        (3, 5, 4, 4, 7, 3), // kernel wider than the map
        (2, 4, 9, 5, 3, 1),
        (1, 3, 6, 6, 3, 0), // no padding
        (2, 6, 1, 1, 7, 3), // ConvNeXt's last stage on a 32-pixel patch
    ] {
        let x = random([b, c, h, w], 1.0, &d);
        let wt = random([c, 1, k, k], 0.2, &d);
        let ours = run(|x, w| depthwise_conv2d(x, w, [p, p]), &x, &wt);
        let opts = ConvOptions::new([1, 1], [p, p], [1, 1], c);
        let burn = run(|x, w| conv2d(x, w, None, opts.clone()), &x, &wt);
        assert_same(ours, burn, &format!("{b} {c} {h}x{w} k{k} p{p}"));
    }
}

/// The channels-last depthwise kernel with its bias (ConvNeXt's `block.0`) against burn's grouped
/// convolution on the permuted maps: output and the input, weight and bias gradients.
#[test]
fn depthwise_nhwc_kernel_equals_burns_grouped_convolution_and_its_gradients() {
    let d = device();
    // (batch, channels, H, W, kernel, padding)
    for &(b, c, h, w, k, p) in &[
        (2, 16, 16, 16, 7, 3), // a ConvNeXt stage (16 channels: one AVX-512 vector)
        (3, 5, 4, 4, 7, 3),    // kernel wider than the map
        (2, 4, 9, 5, 3, 1),
        (1, 3, 6, 6, 3, 0),  // no padding
        (2, 6, 1, 1, 7, 3),  // ConvNeXt's last stage on a 32-pixel patch
        (9, 33, 5, 7, 7, 3), // more samples than tasks, odd channels
        (2, 4, 6, 5, 5, 4),  // padding of kernel - 1: border outputs see one tap
    ] {
        let x0 = random([b, h, w, c], 1.0, &d);
        let w0 = random([c, 1, k, k], 0.2, &d);
        let b0: Tensor<1> = Tensor::random([c], Distribution::Normal(0.0, 1.0), &d);
        let grads_of = |ours: bool| {
            let x = x0.clone().detach().require_grad();
            let wt = w0.clone().detach().require_grad();
            let bias = b0.clone().detach().require_grad();
            let y = match ours {
                true => depthwise_conv2d_nhwc(x.clone(), wt.clone(), bias.clone(), [p, p]),
                false => {
                    let opts = ConvOptions::new([1, 1], [p, p], [1, 1], c);
                    let xt = x.clone().permute([0, 3, 1, 2]);
                    conv2d(xt, wt.clone(), Some(bias.clone()), opts).permute([0, 2, 3, 1])
                }
            };
            let g = (y.clone().sin() * y.clone()).sum().backward();
            (
                y.inner(),
                x.grad(&g).expect("x grad"),
                wt.grad(&g).expect("weight grad"),
                bias.grad(&g).expect("bias grad"),
            )
        };
        let (y1, x1, w1, b1) = grads_of(true);
        let (y2, x2, w2, b2) = grads_of(false);
        assert_eq!(y1.dims(), y2.dims());
        for (what, e) in [
            ("output", rel(y1, y2)),
            ("x grad", rel(x1, x2)),
            ("weight grad", rel(w1, w2)),
            ("bias grad", rel1(b1, b2)),
        ] {
            assert!(
                e < 1e-5,
                "{what}: relative difference {e}, case {b} {c} {h}x{w} k{k} p{p}"
            );
        }
    }
}

/// `conv::forward` of a module (the path the backbones take) against `Conv2d::forward`, bias
/// gradient included, for layers each kernel takes and for two that fall back to burn.
#[test]
fn module_forward_matches_burn_with_bias_gradients() {
    let d = device();
    let cases = [
        // dense, small map
        (
            Conv2dConfig::new([6, 8], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            [4, 6, 4, 21],
        ),
        // depthwise
        (
            Conv2dConfig::new([8, 8], [7, 7])
                .with_groups(8)
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3)),
            [2, 8, 8, 8],
        ),
        // patchify
        (
            Conv2dConfig::new([4, 6], [4, 4]).with_stride([4, 4]),
            [2, 4, 16, 16],
        ),
        // dense on a map large enough for one sample per piece of the batch
        (
            Conv2dConfig::new([64, 8], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            [3, 64, 32, 32],
        ),
        // falls back: dilation, and asymmetric padding
        (
            Conv2dConfig::new([3, 4], [3, 3])
                .with_dilation([2, 2])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2)),
            [1, 3, 9, 9],
        ),
        (
            Conv2dConfig::new([3, 4], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 0, 1, 2)),
            [1, 3, 6, 6],
        ),
    ];
    for (config, shape) in cases {
        let mut layer: Conv2d = config.init(&d);
        let [co, ..] = layer.weight.dims();
        layer.bias = Some(Param::from_tensor(Tensor::random(
            [co],
            Distribution::Normal(0.0, 1.0),
            &d,
        )));
        let x0 = random(shape, 1.0, &d);
        // Ours channels-first (`Some(false)`), ours channels-last (`Some(true)`), burn's.
        let grads_of = |ours: Option<bool>| {
            let x = x0.clone().detach().require_grad();
            let y = match ours {
                Some(false) => conv::forward(&layer, x.clone()),
                Some(true) => conv::forward_nhwc(&layer, x.clone().permute([0, 2, 3, 1]))
                    .permute([0, 3, 1, 2]),
                None => layer.forward(x.clone()),
            };
            let g = (y.clone().cos() * y.clone()).sum().backward();
            let gx = x.grad(&g).expect("x grad");
            let gw = layer.weight.val().grad(&g).expect("weight grad");
            let gb = layer
                .bias
                .as_ref()
                .and_then(|b| b.val().grad(&g))
                .expect("bias grad");
            (y.inner(), gx, gw, gb)
        };
        let (y2, x2, w2, b2) = grads_of(None);
        for nhwc in [false, true] {
            let (y1, x1, w1, b1) = grads_of(Some(nhwc));
            for (what, e) in [
                ("output", rel(y1, y2.clone())),
                ("x grad", rel(x1, x2.clone())),
                ("weight grad", rel(w1, w2.clone())),
                ("bias grad", rel1(b1, b2.clone())),
            ] {
                assert!(
                    e < 1e-5,
                    "{what}: relative difference {e} for input {shape:?}, channels-last {nhwc}"
                );
            }
        }
    }
}

/// Without autodiff (validation, `predict`) the kernels run untracked and give the same values.
#[test]
fn inference_device_runs_the_same_kernels() {
    let d = Device::flex();
    let x: Tensor<4> = Tensor::random([2, 3, 4, 9], Distribution::Normal(0.0, 1.0), &d);
    let w: Tensor<4> = Tensor::random([5, 3, 3, 3], Distribution::Normal(0.0, 0.3), &d);
    let ours = dense_conv2d(x.clone(), w.clone(), [1, 1], [1, 1]);
    let want = conv2d(x, w, None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
    assert!(rel(ours, want) < 1e-6);
}

/// A hand computation: a 1x1 input channel of ones, a 3x3 kernel of ones with padding 1 counts
/// the in-map neighbours of each pixel (4 in the corners, 6 on edges, 9 inside), and the input
/// gradient of the sum of outputs counts the same.
#[test]
fn dense_kernel_counts_neighbours_by_hand() {
    let d = device();
    let x = Tensor::<4>::ones([1, 1, 3, 4], &d).require_grad();
    let w = Tensor::<4>::ones([1, 1, 3, 3], &d).require_grad();
    let y = dense_conv2d(x.clone(), w.clone(), [1, 1], [1, 1]);
    let want = [
        4.0f32, 6.0, 6.0, 4.0, 6.0, 9.0, 9.0, 6.0, 4.0, 6.0, 6.0, 4.0,
    ];
    y.clone()
        .inner()
        .into_data()
        .assert_eq(&TensorData::new(want.to_vec(), [1, 1, 3, 4]), false);
    let g = y.sum().backward();
    x.grad(&g)
        .expect("x grad")
        .into_data()
        .assert_eq(&TensorData::new(want.to_vec(), [1, 1, 3, 4]), false);
    // Each weight tap sees the pixels it overlaps: the centre all 12, corners 2x3 = 6, ...
    let gw = [6.0f32, 8.0, 6.0, 9.0, 12.0, 9.0, 6.0, 8.0, 6.0];
    w.grad(&g)
        .expect("w grad")
        .into_data()
        .assert_eq(&TensorData::new(gw.to_vec(), [1, 1, 3, 3]), false);
}
