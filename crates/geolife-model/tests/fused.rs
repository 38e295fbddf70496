//! The CPU kernels of `geolife_model::kernels` against burn's own layers (an independent
//! implementation): GELU and BatchNorm (+ ReLU) give the same outputs, the same gradients of
//! the input and the parameters, and BatchNorm the same running statistics; plus a BatchNorm
//! computed by hand.

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::activation::{gelu, relu};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use geolife_model::kernels;

fn autodiff() -> Device {
    Device::flex().autodiff()
}

/// Largest difference relative to the largest magnitude of `want`.
fn rel<const D: usize>(got: Tensor<D>, want: Tensor<D>) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let scale = want.clone().abs().max().into_scalar::<f32>().max(1e-12);
    (got - want).abs().max().into_scalar::<f32>() / scale
}

/// A loss that weights every output differently, so every gradient value is exercised.
fn loss<const D: usize>(y: Tensor<D>) -> Tensor<1> {
    (y.clone().sin() * y).sum()
}

#[test]
fn gelu_matches_burn_values_and_gradient() {
    let d = autodiff();
    // Normal values plus the tails, where erf saturates and the derivative's exp underflows.
    let mut x = Tensor::<4>::random([3, 5, 7, 11], Distribution::Normal(0.0, 2.0), &d);
    let tails = Tensor::<1>::from_data(
        TensorData::new(vec![-12.0f32, -6.0, -4.5, -0.0, 4.5, 6.0, 12.0], [7]),
        &d,
    );
    x = x.slice_assign([0..1, 0..1, 0..1, 0..7], tails.reshape([1, 1, 1, 7]));
    let run = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let x = x.clone().detach().require_grad();
        let y = f(x.clone());
        let g = loss(y.clone()).backward();
        (y.inner(), x.grad(&g).expect("x gets a gradient"))
    };
    let (y, gx) = run(&|x| kernels::gelu(x));
    let (y_ref, gx_ref) = run(&|x| gelu(x));
    let (ey, eg) = (rel(y, y_ref), rel(gx, gx_ref));
    assert!(ey < 1e-6, "output: relative difference {ey}");
    assert!(eg < 2e-6, "gradient: relative difference {eg}");
    // Inference (no autodiff): the same values.
    let xi = x.clone().inner();
    let e = rel(kernels::gelu(xi.clone()), gelu(xi));
    assert!(e < 1e-6, "inference output: relative difference {e}");
}

/// Two BatchNorms with equal random scale and shift.
fn norms(c: usize, momentum: f64, d: &Device) -> (BatchNorm, BatchNorm) {
    let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), d);
    let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), d);
    let make = || {
        let mut bn = BatchNormConfig::new(c).with_momentum(momentum).init(d);
        bn.gamma = Param::from_tensor(gamma.clone());
        bn.beta = Param::from_tensor(beta.clone());
        bn
    };
    (make(), make())
}

/// The fused BatchNorm on `[B, C, H, W]` maps, or on their channels-last view (`nhwc`: the
/// kernel reads `[B, H, W, C]`, burn permutes around it and takes the permutations' gradients).
fn ours_bn(bn: &BatchNorm, x: Tensor<4>, act: bool, nhwc: bool) -> Tensor<4> {
    match nhwc {
        true => kernels::batch_norm_nhwc(bn, x.permute([0, 2, 3, 1]), act).permute([0, 3, 1, 2]),
        false => kernels::batch_norm(bn, x, act),
    }
}

#[test]
fn batch_norm_training_matches_burn() {
    let d = autodiff();
    // [B, C, H, W] with maps from one pixel to a cube-sized one; values off-centre per channel.
    for (case, shape) in [
        [4, 6, 3, 5],
        [64, 8, 1, 3],
        [2, 3, 19, 12],
        [5, 2, 1, 1],
        [64, 64, 4, 21], // a cube layer: more rows than one task takes
    ]
    .into_iter()
    .enumerate()
    {
        for (act, nhwc) in [(false, false), (true, false), (false, true), (true, true)] {
            let (ours, burns) = norms(shape[1], 0.1, &d);
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.7, 3.0), &d);
            let run = |bn: &BatchNorm, fused: bool| {
                let x = x.clone().detach().require_grad();
                let y = if fused {
                    ours_bn(bn, x.clone(), act, nhwc)
                } else if act {
                    relu(bn.forward(x.clone()))
                } else {
                    bn.forward(x.clone())
                };
                let g = loss(y.clone()).backward();
                (
                    y.inner(),
                    x.grad(&g).expect("x gets a gradient"),
                    bn.gamma.val().grad(&g).expect("gamma gets a gradient"),
                    bn.beta.val().grad(&g).expect("beta gets a gradient"),
                )
            };
            let (a, b) = (run(&ours, true), run(&burns, false));
            let at = format!("case {case} {shape:?} relu {act} channels-last {nhwc}");
            for (what, e) in [
                ("output", rel(a.0, b.0)),
                ("x grad", rel(a.1, b.1)),
                ("gamma grad", rel(a.2, b.2)),
                ("beta grad", rel(a.3, b.3)),
            ] {
                assert!(e < 2e-5, "{what}: relative difference {e}, {at}");
            }
            // The running statistics moved the same way.
            let (ours, burns) = (ours.valid(), burns.valid());
            for (what, e) in [
                (
                    "running mean",
                    rel(ours.running_mean.value(), burns.running_mean.value()),
                ),
                (
                    "running var",
                    rel(ours.running_var.value(), burns.running_var.value()),
                ),
            ] {
                assert!(e < 1e-5, "{what}: relative difference {e}, {at}");
            }
            // Inference with those statistics, on the plain CPU device.
            let xi = x.clone().inner();
            for act in [false, true] {
                let want = burns.forward(xi.clone());
                let want = if act { relu(want) } else { want };
                let e = rel(ours_bn(&ours, xi.clone(), act, nhwc), want);
                assert!(e < 1e-5, "inference: relative difference {e}, {at}");
            }
        }
    }
}

/// A frozen BatchNorm left on the training device (burn's `freeze`, partial fine-tuning)
/// normalises with its running statistics, leaves them alone and passes gradients to its
/// input, and to gamma and beta when they are trainable again, as burn's layer does. (The
/// kernels' route runs burn's layer there, so this guards the route: before, its inference
/// kernel's untracked output made `backward` panic; channels-last goes through permutations.)
#[test]
fn frozen_batch_norm_on_the_training_device_passes_gradients() {
    use burn::module::ParamGroup;
    let d = autodiff();
    let (bn, _) = norms(5, 0.1, &d);
    // Statistics of its own, so that the frozen layer's output differs from its input.
    for _ in 0..3 {
        let x = Tensor::<4>::random([4, 5, 3, 3], Distribution::Normal(2.0, 3.0), &d);
        let _ = bn.forward(x);
    }
    let bn = bn.freeze();
    let group = ParamGroup::ids_from_module(bn.clone());
    let bn = bn.set_require_grad_group(group, true);
    let x = Tensor::<4>::random([2, 5, 4, 3], Distribution::Normal(1.0, 2.0), &d);
    for (act, nhwc) in [(false, false), (true, false), (true, true)] {
        let run = |kernel: bool| {
            let x = x.clone().detach().require_grad();
            let y = match kernel {
                true => ours_bn(&bn, x.clone(), act, nhwc),
                false if act => relu(bn.forward(x.clone())),
                false => bn.forward(x.clone()),
            };
            let g = loss(y.clone()).backward();
            (
                y.inner(),
                x.grad(&g)
                    .expect("the frozen layer's input gets a gradient"),
                bn.gamma.val().grad(&g).expect("gamma gets a gradient"),
            )
        };
        let before = bn.running_mean.value();
        let (a, b) = (run(true), run(false));
        let at = format!("relu {act} channels-last {nhwc}");
        assert!(rel(a.0, b.0) < 1e-5, "output, {at}");
        assert!(rel(a.1, b.1) < 1e-5, "x gradient, {at}");
        assert!(rel(a.2, b.2) < 1e-5, "gamma gradient, {at}");
        let moved = (bn.running_mean.value() - before)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(moved == 0.0, "running mean moved by {moved}, {at}");
    }
}

/// One channel of values 1, 2, 3, 4 (two samples of two pixels): mean 2.5, variance 1.25, so
/// the outputs are `(x - 2.5) / sqrt(1.25 + eps)` times 2 plus 1 (-1.68, 0.11, 1.89, 3.68); the
/// ReLU zeroes the first.
/// The gradient of the sum of outputs is zero for x (a shift of all x leaves the output
/// unchanged), 4 for beta and 0 for gamma (normalised values sum to zero).
#[test]
fn batch_norm_by_hand() {
    let d = autodiff();
    let mut bn = BatchNormConfig::new(1).with_epsilon(1e-5).init(&d);
    bn.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(vec![2.0f32], [1]), &d));
    bn.beta = Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32], [1]), &d));
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 1, 1, 2]),
        &d,
    )
    .require_grad();
    let y = kernels::batch_norm(&bn, x.clone(), false);
    let s = (1.25f64 + 1e-5).sqrt();
    let want: Vec<f32> = [1.0, 2.0, 3.0, 4.0]
        .iter()
        .map(|v| ((v - 2.5) / s * 2.0 + 1.0) as f32)
        .collect();
    let got = y.clone().inner().into_data().try_to_vec::<f32>().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    let grads = y.sum().backward();
    let gx = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(gx.iter().all(|v| v.abs() < 1e-5), "{gx:?}");
    let gb = bn.beta.val().grad(&grads).unwrap().into_scalar::<f32>();
    let gg = bn.gamma.val().grad(&grads).unwrap().into_scalar::<f32>();
    assert!(
        (gb - 4.0).abs() < 1e-5 && gg.abs() < 1e-5,
        "beta {gb}, gamma {gg}"
    );
    let relu_out = kernels::batch_norm(&bn, x.detach(), true)
        .inner()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(relu_out[0], 0.0);
    for (g, w) in relu_out.iter().zip(&want).skip(1) {
        assert!((g - w).abs() < 1e-5, "{relu_out:?} vs {want:?}");
    }
}

/// `kernels::linear` against `Linear::forward`: 2-D and 4-D (channels-last ConvNeXt) inputs,
/// with and without a bias, and the head's shape (few rows, many columns).
#[test]
fn linear_matches_burn_values_and_gradients() {
    use burn::nn::LinearConfig;
    let d = autodiff();
    for (case, (rows, d_in, d_out, bias)) in [
        (vec![5], 7, 3, true),
        (vec![2, 3, 4], 6, 24, true),
        (vec![4], 33, 517, false),
        (vec![1], 1, 1, true),
    ]
    .into_iter()
    .enumerate()
    {
        let lin = LinearConfig::new(d_in, d_out).with_bias(bias).init(&d);
        let mut shape = rows.clone();
        shape.push(d_in);
        let n: usize = shape.iter().product();
        let x = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &d);
        let run = |fused: bool| {
            let x = x.clone().detach().require_grad();
            let y: Tensor<2> = if shape.len() == 2 {
                let x2 = x.clone().reshape([shape[0], shape[1]]);
                if fused {
                    kernels::linear(&lin, x2)
                } else {
                    lin.forward(x2)
                }
            } else {
                let x4 = x.clone().reshape([shape[0], shape[1], shape[2], shape[3]]);
                let y = if fused {
                    kernels::linear(&lin, x4)
                } else {
                    lin.forward(x4)
                };
                assert_eq!(y.dims(), [shape[0], shape[1], shape[2], d_out]);
                y.reshape([-1, d_out as i32])
            };
            let g = loss(y.clone()).backward();
            let gb = lin
                .bias
                .as_ref()
                .map(|b| b.val().grad(&g).expect("bias grad"));
            (
                y.inner(),
                x.grad(&g).expect("x grad"),
                lin.weight.val().grad(&g).expect("weight grad"),
                gb,
            )
        };
        let (a, b) = (run(true), run(false));
        for (what, e) in [
            ("output", rel(a.0, b.0)),
            ("x grad", rel(a.1, b.1)),
            ("weight grad", rel(a.2, b.2)),
        ] {
            assert!(e < 1e-5, "{what}: relative difference {e}, case {case}");
        }
        if let (Some(ga), Some(gb)) = (a.3, b.3) {
            let e = rel(ga, gb);
            assert!(e < 1e-5, "bias grad: relative difference {e}, case {case}");
        }
    }
}

/// `kernels::layer_norm` against `burn::tensor::module::layer_norm`: rows of 1 to 1,000 values
/// (the fusion network's widths and ConvNeXt's channels-last maps), a permuted (strided) input
/// as `LayerNorm2d` passes, and inference.
#[test]
fn layer_norm_matches_burn_values_and_gradients() {
    use burn::tensor::module::layer_norm;
    let d = autodiff();
    for (case, shape) in [[4, 1, 1, 1000], [2, 5, 7, 16], [3, 2, 2, 46], [2, 1, 1, 1]]
        .into_iter()
        .enumerate()
    {
        for permuted in [false, true] {
            let c = shape[3];
            let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &d);
            let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &d);
            // Off-centre rows: a mean far from zero tests the centring.
            let x = Tensor::<4>::random(shape, Distribution::Normal(3.0, 2.0), &d);
            let run = |fused: bool| {
                let x = x.clone().detach().require_grad();
                let (g, b) = (gamma.clone().require_grad(), beta.clone().require_grad());
                // The permuted case reads [b, c, h, w] through a [b, h, w, c] view.
                let input = if permuted {
                    x.clone().permute([0, 3, 1, 2]).permute([0, 2, 3, 1])
                } else {
                    x.clone()
                };
                let y = if fused {
                    kernels::layer_norm(input, g.clone(), Some(b.clone()), 1e-6)
                } else {
                    layer_norm(input, g.clone(), Some(b.clone()), 1e-6)
                };
                let grads = loss(y.clone()).backward();
                (
                    y.inner(),
                    x.grad(&grads).expect("x grad"),
                    g.grad(&grads).expect("gamma grad"),
                    b.grad(&grads).expect("beta grad"),
                )
            };
            let (a, b) = (run(true), run(false));
            let at = format!("case {case} {shape:?} permuted {permuted}");
            for (what, e) in [
                ("output", rel(a.0, b.0)),
                ("x grad", rel(a.1, b.1)),
                ("gamma grad", rel(a.2, b.2)),
                ("beta grad", rel(a.3, b.3)),
            ] {
                // A row of one value normalises to 0: its x gradient is 0 in both.
                assert!(e < 2e-5, "{what}: relative difference {e}, {at}");
            }
            let (xi, gi, bi) = (
                x.clone().inner(),
                gamma.clone().inner(),
                beta.clone().inner(),
            );
            let e = rel(
                kernels::layer_norm(xi.clone(), gi.clone(), Some(bi.clone()), 1e-6),
                layer_norm(xi, gi, Some(bi), 1e-6),
            );
            assert!(e < 1e-5, "inference: relative difference {e}, {at}");
        }
    }
}

/// The fused binary cross-entropy against the same formula in burn's element-wise operations
/// (`max(x, 0) - x t + log(1 + exp(-|x|))`, mean): equal loss and equal logit gradient, with
/// logits far into both tails and soft (mixup) targets.
#[test]
fn bce_matches_burn_formula_value_and_gradient() {
    let d = autodiff();
    let x = Tensor::<2>::random([7, 301], Distribution::Normal(0.0, 8.0), &d);
    let t = Tensor::<2>::random([7, 301], Distribution::Uniform(0.0, 1.0), &d);
    let run = |fused: bool| {
        let x = x.clone().detach().require_grad();
        let loss = if fused {
            geolife_model::loss::bce_with_logits(x.clone(), t.clone())
        } else {
            let positive = x.clone().clamp_min(0.0);
            let cross = x.clone() * t.clone();
            (positive - cross + x.clone().abs().neg().exp().log1p()).mean()
        };
        let g = loss.backward();
        (loss.inner(), x.grad(&g).expect("logit grad"))
    };
    let (a, b) = (run(true), run(false));
    let (el, eg) = (rel(a.0, b.0), rel(a.1, b.1));
    assert!(el < 1e-6, "loss: relative difference {el}");
    assert!(eg < 1e-5, "gradient: relative difference {eg}");
}
