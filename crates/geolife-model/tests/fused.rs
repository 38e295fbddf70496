//! The fused CPU kernels of `geolife_model::fused` against burn's own layers (an independent
//! implementation): GELU and BatchNorm (+ ReLU) give the same outputs, the same gradients of
//! the input and the parameters, and BatchNorm the same running statistics; plus a BatchNorm
//! computed by hand.

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::activation::{gelu, relu};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use geolife_model::fused;

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
    let (y, gx) = run(&|x| fused::gelu(x));
    let (y_ref, gx_ref) = run(&|x| gelu(x));
    let (ey, eg) = (rel(y, y_ref), rel(gx, gx_ref));
    assert!(ey < 1e-6, "output: relative difference {ey}");
    assert!(eg < 2e-6, "gradient: relative difference {eg}");
    // Inference (no autodiff): the same values.
    let xi = x.clone().inner();
    let e = rel(fused::gelu(xi.clone()), gelu(xi));
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

#[test]
fn batch_norm_training_matches_burn() {
    let d = autodiff();
    // [B, C, H, W] with maps from one pixel to a cube-sized one; values off-centre per channel.
    for (case, shape) in [[4, 6, 3, 5], [64, 8, 1, 3], [2, 3, 19, 12], [5, 2, 1, 1]]
        .into_iter()
        .enumerate()
    {
        for act in [false, true] {
            let (ours, burns) = norms(shape[1], 0.1, &d);
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.7, 3.0), &d);
            let run = |bn: &BatchNorm, fused: bool| {
                let x = x.clone().detach().require_grad();
                let y = if fused {
                    fused::batch_norm(bn, x.clone(), act)
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
            let at = format!("case {case} {shape:?} relu {act}");
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
                let e = rel(fused::batch_norm(&ours, xi.clone(), act), want);
                assert!(e < 1e-5, "inference: relative difference {e}, {at}");
            }
        }
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
    let y = fused::batch_norm(&bn, x.clone(), false);
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
    let relu_out = fused::batch_norm(&bn, x.detach(), true)
        .inner()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(relu_out[0], 0.0);
    for (g, w) in relu_out.iter().zip(&want).skip(1) {
        assert!((g - w).abs() < 1e-5, "{relu_out:?} vs {want:?}");
    }
}
