//! Fused, parallel CPU kernels for the layers of the seed network other than convolutions:
//! GELU, BatchNorm (with an optional ReLU), LayerNorm, linear layers and the AdamW update.
//! Registered for burn flex through burn's backend-extension API, like the convolutions of
//! [`crate::conv`]; every other device and dtype runs burn's own operations.
//!
//! Why (issue 12, `perf` profile of a seed-recipe epoch split by thread): burn flex runs GELU as
//! a serial loop over libm's `erff`, BatchNorm and LayerNorm as chains of separate tensor
//! operations (and twice as many backward), copies a transposed weight before each backward
//! product, and the optimiser copied every parameter out and back. Those ran on the main thread
//! while the two rayon workers waited: 15.5 s of a 39.2 s epoch. Here each layer is one or two
//! parallel passes, the hot loops are compiled for the widest vector instructions the CPU has
//! (`widest`), and GELU's `erf` is a rational approximation the compiler vectorises (absolute
//! error below 4e-7 against the exact `erf`).

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::{BatchNorm, Linear};
use burn::tensor::{DType, Device, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv::{matmul, matmul_new, par_filled, slice, tensor};

/// Values per parallel task of the element-wise loops.
const CHUNK: usize = 1 << 14;

/// Element-wise layers with their own CPU kernels.
#[backend_extension(Flex, Autodiff)]
pub trait FusedBackend: Backend {
    /// `x * Phi(x)` (GELU with the exact normal CDF, as PyTorch's default).
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The input gradient of [`fused_gelu`](FusedBackend::fused_gelu).
    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let _ = (x, grad);
        unreachable!("fused_gelu_backward is only called by its autodiff node")
    }

    /// BatchNorm over `[B, C, ...]` (channels-last `[..., C]` with `nhwc`) with the batch's
    /// statistics, then ReLU when `relu`: `(output, mean, biased variance)`; the statistics
    /// carry no gradient.
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of [`fused_batch_norm_train`](FusedBackend::fused_batch_norm_train):
    /// `(x, gamma, beta)`.
    #[allow(clippy::too_many_arguments)]
    fn fused_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, gamma, beta, mean, variance, grad, epsilon, relu, nhwc);
        unreachable!("fused_batch_norm_train_backward is only called by its autodiff node")
    }

    /// BatchNorm with fixed statistics (inference), then ReLU when `relu`.
    #[allow(clippy::too_many_arguments)]
    fn fused_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> FloatTensor<Self>;

    /// LayerNorm over the last axis of `x` (rows of `gamma.len()` values), then `* gamma + beta`.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// [`fused_layer_norm`](FusedBackend::fused_layer_norm), also returning the input as its
    /// backward pass reads it (contiguous): ConvNeXt normalises a permuted view, and the copy
    /// the forward pass makes is then not made again.
    fn fused_layer_norm_saving(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, gamma, beta, epsilon);
        unreachable!("fused_layer_norm_saving is only called by its autodiff node")
    }

    /// The gradients of [`fused_layer_norm`](FusedBackend::fused_layer_norm):
    /// `(x, gamma, beta)`.
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, gamma, grad, epsilon);
        unreachable!("fused_layer_norm_backward is only called by its autodiff node")
    }

    /// Mean binary cross-entropy between logits and soft targets of the same shape (`[1]`).
    fn fused_bce(logits: FloatTensor<Self>, targets: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients of [`fused_bce`](FusedBackend::fused_bce) for the loss's gradient `grad`
    /// (`[1]`): `(logits, targets)`.
    fn fused_bce_backward(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (logits, targets, grad);
        unreachable!("fused_bce_backward is only called by its autodiff node")
    }

    /// `x W + b` for `x` `[M, K]`, `W` `[K, N]` and `b` `[N]` (a linear layer).
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The gradients of [`fused_linear`](FusedBackend::fused_linear): `(x, weight, bias)`.
    fn fused_linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, weight, grad);
        unreachable!("fused_linear_backward is only called by its autodiff node")
    }

    /// One AdamW update of a parameter, in place where the buffers are not shared:
    /// `(parameter, first moment, second moment)`. `h` holds `[lr, beta_1, beta_2, epsilon,
    /// decay factor (1 - lr * weight_decay), bias correction 1, bias correction 2]`; `first`
    /// starts the moments from the gradient alone (burn's first step).
    fn fused_adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        h: [f32; 7],
        first: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether `t` lives on burn flex (with or without autodiff) and holds f32 values: the tensors
/// these kernels take.
pub(crate) fn on_cpu_f32<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && t.device().without_autodiff() == Device::flex()
}

/// GELU with the exact normal CDF (`burn::tensor::activation::gelu`), one parallel pass on the
/// CPU.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !on_cpu_f32(&x) {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(Dispatch::fused_gelu(x.into_dispatch()))
}

/// `bn.forward(x)`, then ReLU when `relu`: with the fused kernels on the CPU (the running
/// statistics updated exactly as burn's `BatchNorm` does), burn's layers elsewhere.
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>, relu: bool) -> Tensor<D> {
    if !on_cpu_f32(&x) || D < 2 {
        return bn_relu(bn, x, relu);
    }
    batch_norm_kernel(bn, x, relu, false)
}

/// [`batch_norm`] of channels-last maps `[B, H, W, C]`: on the CPU the statistics and the
/// affine map run over rows of contiguous channels (vectorised across them); elsewhere burn's
/// layer runs between two permutations.
pub fn batch_norm_nhwc(bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
    if !on_cpu_f32(&x) {
        return bn_relu(bn, x.permute([0, 3, 1, 2]), relu).permute([0, 2, 3, 1]);
    }
    batch_norm_kernel(bn, x, relu, true)
}

/// burn's `BatchNorm`, then ReLU when `relu`.
fn bn_relu<const D: usize>(bn: &BatchNorm, x: Tensor<D>, relu: bool) -> Tensor<D> {
    let y = bn.forward(x);
    if relu {
        burn::tensor::activation::relu(y)
    } else {
        y
    }
}

/// The fused BatchNorm (+ ReLU) kernels, with the running statistics updated as burn's
/// `BatchNorm` does; `nhwc` for channels-last values.
fn batch_norm_kernel<const D: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    relu: bool,
    nhwc: bool,
) -> Tensor<D> {
    let device = x.device();
    if device.is_autodiff() && bn.training.is_enabled() {
        let (y, mean, variance) = Dispatch::fused_batch_norm_train(
            x.into_dispatch(),
            bn.gamma.val().into_dispatch(),
            bn.beta.val().into_dispatch(),
            bn.epsilon,
            relu,
            nhwc,
        );
        let (mean, variance): (Tensor<1>, Tensor<1>) =
            (Tensor::from_dispatch(mean), Tensor::from_dispatch(variance));
        // As burn's `BatchNorm::forward_train`.
        let running_mean = bn.running_mean.value_sync().to_device(&device);
        let running_var = bn.running_var.value_sync().to_device(&device);
        let running_mean = running_mean
            .mul_scalar(1.0 - bn.momentum)
            .add(mean.detach().mul_scalar(bn.momentum));
        let running_var = running_var
            .mul_scalar(1.0 - bn.momentum)
            .add(variance.detach().mul_scalar(bn.momentum));
        bn.running_mean.update(running_mean.detach());
        bn.running_var.update(running_var.detach());
        Tensor::from_dispatch(y)
    } else {
        let mean = bn.running_mean.value().to_device(&device);
        let variance = bn.running_var.value().to_device(&device);
        Tensor::from_dispatch(Dispatch::fused_batch_norm_eval(
            x.into_dispatch(),
            bn.gamma.val().into_dispatch(),
            bn.beta.val().into_dispatch(),
            mean.into_dispatch(),
            variance.into_dispatch(),
            bn.epsilon,
            relu,
            nhwc,
        ))
    }
}

/// Mean binary cross-entropy with logits ([`crate::loss::bce_with_logits`]): on the CPU one
/// parallel pass forward (summed in f64) and one backward, `(sigmoid(x) - t) / n`, instead of
/// nine element-wise operations and their gradients on the `[B, 11255]` logits.
pub fn bce_with_logits(logits: Tensor<2>, targets: Tensor<2>) -> Option<Tensor<1>> {
    if !on_cpu_f32(&logits) || !on_cpu_f32(&targets) {
        return None;
    }
    Some(Tensor::from_dispatch(Dispatch::fused_bce(
        logits.into_dispatch(),
        targets.into_dispatch(),
    )))
}

/// LayerNorm over the last axis (`burn::tensor::module::layer_norm`): on the CPU one parallel
/// pass over the rows forward and two backward, instead of burn's chain of reductions and
/// element-wise operations (and their gradients).
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    let beta = match beta {
        Some(beta) if on_cpu_f32(&x) && gamma.dtype() == DType::F32 => beta,
        beta => return burn::tensor::module::layer_norm(x, gamma, beta, epsilon),
    };
    Tensor::from_dispatch(Dispatch::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// `linear.forward(x)`: on the CPU, the products of the forward and backward passes read the
/// weight and the input in place, transposed through strides (burn flex copies a transposed
/// operand first: 46 MB per step for the 11,255-way head's weight).
pub fn linear<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear_with(
        x,
        linear.weight.val(),
        linear.bias.as_ref().map(|b| b.val()),
    )
}

/// `x W + b` over the last axis (`burn::tensor::module::linear`) for a weight `[d_in, d_out]`
/// and bias `[d_out]` given as tensors (a layer whose weight is computed, such as ConvNeXt's
/// projection with its layer scale folded in), through the kernel of [`linear`] on the CPU.
pub fn linear_with<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let off_cpu = !on_cpu_f32(&x) || weight.dtype() != DType::F32;
    if D < 2 || (D == 2 && off_cpu) {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let dims = x.dims();
    let [_, d_out] = weight.dims();
    let x2: Tensor<2> = x.reshape([-1, dims[D - 1] as i32]);
    let mut out = dims;
    out[D - 1] = d_out;
    if off_cpu {
        // Off the CPU, burn's linear may keep the leading axes as a batched product against
        // the broadcast weight; its backward then builds one weight gradient per leading
        // index ([B, H, d_in, d_out]: 2 GiB for ConvNeXt-B's stage-2 projection at batch 128,
        // more than a GPU binding takes) before summing them. As rows of one 2-D product the
        // weight gradient is a single [d_in, d_out] product.
        return burn::tensor::module::linear(x2, weight, bias).reshape(out);
    }
    // The bias is added by the product itself (a layer without one adds zeros, which take no
    // gradient).
    let bias = bias.unwrap_or_else(|| Tensor::zeros([d_out], &x2.device()));
    let y: Tensor<2> = Tensor::from_dispatch(Dispatch::fused_linear(
        x2.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ));
    y.reshape(out)
}

/// One AdamW update of an f32 parameter on the CPU (see
/// [`FusedBackend::fused_adamw_step`]): `(parameter, first moment, second moment)`. `None`
/// when a tensor is not an f32 CPU tensor (the caller runs burn's optimiser then).
pub fn adamw_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
    h: [f32; 7],
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let first = moments.is_none();
    let (m, v) = moments.unwrap_or_else(|| {
        let zeros = Tensor::zeros(param.shape(), &param.device());
        (zeros.clone(), zeros)
    });
    let (p, m, v) = Dispatch::fused_adamw_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        h,
        first,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

/// Whether an AdamW update of these tensors can run [`adamw_step`].
pub fn adamw_applies<const D: usize>(param: &Tensor<D>, grad: &Tensor<D>) -> bool {
    on_cpu_f32(param) && on_cpu_f32(grad)
}

// ---------------------------------------------------------------------------------------------
// The math, on slices.

/// `erf(x)` as a ratio of two polynomials in `x^2` on `[-4, 4]` (`+-1` in f32 beyond):
/// absolute error below 4e-7, and no branch or call, so loops over it vectorise.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906e-4;
    p = p * x2 - 2.954_600_2e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// `e^v` for `v <= 0` (values below -87 give `e^-87`): `2^n * e^r` with `|r| <= ln2 / 2` and a
/// degree-6 polynomial for `e^r` (relative error about 2e-7); branch-free like [`erf`].
#[inline(always)]
fn exp_nonpositive(v: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let v = v.clamp(-87.0, 0.0);
    let n = (v * std::f32::consts::LOG2_E + SHIFTER) - SHIFTER;
    let r = v - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

fn gelu_forward(x: &[f32]) -> Vec<f32> {
    par_filled(x.len(), CHUNK, |i, y| {
        widest(
            #[inline(always)]
            || {
                for (y, &x) in y.iter_mut().zip(&x[i * CHUNK..]) {
                    y.write(0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)));
                }
            },
        )
    })
}

fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    // d/dx x Phi(x) = Phi(x) + x phi(x)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    par_filled(x.len(), CHUNK, |i, out| {
        let (x, g) = (&x[i * CHUNK..], &grad[i * CHUNK..]);
        widest(
            #[inline(always)]
            || {
                for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
                    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                    let pdf = INV_SQRT_2PI * exp_nonpositive(-0.5 * x * x);
                    o.write(g * (cdf + x * pdf));
                }
            },
        )
    })
}

/// Lanes of the partial sums below: independent accumulators let the loops vectorise (a single
/// running sum is one long chain of dependent additions).
const LANES: usize = 8;

/// The sums of `f(a, b, c)`'s two terms over equal-length slices: f32 lanes over the slice (at
/// most a plane or a row of values each), added up in f64.
#[inline(always)]
fn sums3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut s, mut t) = ([0f32; LANES], [0f32; LANES]);
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((a, b), c) in ca.zip(cb).zip(cc) {
        for l in 0..LANES {
            let (u, v) = f(a[l], b[l], c[l]);
            s[l] += u;
            t[l] += v;
        }
    }
    let (mut s64, mut t64) = (0f64, 0f64);
    for l in 0..LANES {
        s64 += f64::from(s[l]);
        t64 += f64::from(t[l]);
    }
    for ((&a, &b), &c) in ra.iter().zip(rb).zip(rc) {
        let (u, v) = f(a, b, c);
        s64 += f64::from(u);
        t64 += f64::from(v);
    }
    (s64, t64)
}

/// [`sums3`] over two slices.
#[inline(always)]
fn sums2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    sums3(a, b, b, |a, b, _| f(a, b))
}

/// The sum of `f(x)` over a slice (see [`sums2`]).
#[inline(always)]
fn sum1(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    sums2(x, x, |a, _| (f(a), 0.0)).0
}

/// Per-channel statistics of `[B, C, plane]` values: `(mean, biased variance)`.
fn channel_stats(x: &[f32], c: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    if plane == 1 {
        return channel_stats_rows(x, c);
    }
    let b = x.len() / (c * plane).max(1);
    let n = (b * plane).max(1) as f64;
    let stats: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(|i| &x[(i * c + ch) * plane..][..plane]);
            widest(
                #[inline(always)]
                || {
                    let mean = (planes().map(|p| sum1(p, |v| v)).sum::<f64>() / n) as f32;
                    let sq: f64 = planes().map(|p| sum1(p, |v| (v - mean) * (v - mean))).sum();
                    (mean, (sq / n) as f32)
                },
            )
        })
        .collect();
    stats.into_iter().unzip()
}

/// Per channel: `(scale, shift)` with `y = x * scale + shift`.
fn affine(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f64) -> Vec<(f32, f32)> {
    let inv = inv_std(var, eps);
    (0..gamma.len())
        .map(|ch| {
            let scale = gamma[ch] * inv[ch];
            (scale, beta[ch] - mean[ch] * scale)
        })
        .collect()
}

/// Per channel `1 / sqrt(variance + eps)`, computed in f64.
fn inv_std(var: &[f32], eps: f64) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
        .collect()
}

/// `y = x * scale + shift` per channel plane of `[B, C, plane]`, then ReLU when `relu`.
fn apply_affine(x: &[f32], ab: &[(f32, f32)], plane: usize, relu: bool) -> Vec<f32> {
    let c = ab.len();
    if plane <= 1 {
        return apply_affine_rows(x, ab, relu);
    }
    let per = (CHUNK / plane).max(1) * plane;
    par_filled(x.len(), per, |k, y| {
        let x = &x[k * per..][..y.len()];
        let first = k * per / plane;
        for (i, (y, x)) in y.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
            let (a, b) = ab[(first + i) % c];
            for (y, &x) in y.iter_mut().zip(x) {
                let v = x * a + b;
                y.write(if relu { v.max(0.0) } else { v });
            }
        }
    })
}

/// Training BatchNorm's gradients `(x, gamma, beta)` for `[B, C, plane]` values.
#[allow(clippy::too_many_arguments)]
fn batch_norm_backward(
    x: &[f32],
    grad: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    relu: bool,
    plane: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    if plane <= 1 {
        return batch_norm_backward_rows(x, grad, gamma, beta, mean, var, eps, relu);
    }
    let b = x.len() / (c * plane).max(1);
    let n = (b * plane).max(1) as f64;
    let ab = affine(gamma, beta, mean, var, eps);
    let inv = inv_std(var, eps);
    // The gradient that reaches the norm: zero where the ReLU cut the output.
    let g = |xv: f32, gv: f32, ch: usize| -> f32 {
        if relu && xv * ab[ch].0 + ab[ch].1 <= 0.0 {
            0.0
        } else {
            gv
        }
    };
    // Per channel: sum of g (beta's gradient) and of g * xhat (gamma's gradient).
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (sg, sgx) = widest(
                #[inline(always)]
                || {
                    let (mut sg, mut sgx) = (0f64, 0f64);
                    for i in 0..b {
                        let at = (i * c + ch) * plane;
                        let (a, t) = sums2(&x[at..at + plane], &grad[at..at + plane], |xv, gv| {
                            let gv = g(xv, gv, ch);
                            (gv, gv * (xv - mean[ch]))
                        });
                        sg += a;
                        sgx += t;
                    }
                    (sg, sgx)
                },
            );
            (sg, sgx * f64::from(inv[ch]))
        })
        .collect();
    let per = (CHUNK / plane).max(1) * plane;
    let grad_x = par_filled(x.len(), per, |k, gx| {
        let (x, gy) = (&x[k * per..][..gx.len()], &grad[k * per..][..gx.len()]);
        let first = k * per / plane;
        for (i, ((gx, x), gy)) in gx
            .chunks_mut(plane)
            .zip(x.chunks(plane))
            .zip(gy.chunks(plane))
            .enumerate()
        {
            let ch = (first + i) % c;
            let (sg, sgx) = sums[ch];
            let (mg, mgx) = ((sg / n) as f32, (sgx / n) as f32);
            let scale = gamma[ch] * inv[ch];
            for ((o, &xv), &gv) in gx.iter_mut().zip(x).zip(gy) {
                let xhat = (xv - mean[ch]) * inv[ch];
                o.write(scale * (g(xv, gv, ch) - mg - xhat * mgx));
            }
        }
    });
    let grad_gamma = sums.iter().map(|s| s.1 as f32).collect();
    let grad_beta = sums.iter().map(|s| s.0 as f32).collect();
    (grad_x, grad_gamma, grad_beta)
}

/// Per-channel sums over rows of `c` values (channels-last): each task adds its rows' terms
/// `f(x row, y row, acc1, acc2)` into two f32 accumulators of `c` lanes (vectorised over the
/// channels, a few hundred rows each), and the tasks' shares are added in f64 in order.
fn row_sums(
    x: &[f32],
    y: &[f32],
    c: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let c = c.max(1);
    let per = ln_rows(c) * c;
    let shares: Vec<Vec<f32>> = x
        .par_chunks(per)
        .zip(y.par_chunks(per))
        .map(|(x, y)| {
            widest(
                #[inline(always)]
                || {
                    let mut acc = vec![0f32; 2 * c];
                    let (a1, a2) = acc.split_at_mut(c);
                    for (x, y) in x.chunks_exact(c).zip(y.chunks_exact(c)) {
                        f(x, y, a1, a2);
                    }
                    acc
                },
            )
        })
        .collect();
    let mut total = add_shares(&shares, 2 * c);
    let second = total.split_off(c);
    (total, second)
}

/// The element-wise sum of parallel tasks' f32 partial sums (each `len` long), added in f64 in
/// task order: the last step of every per-task reduction here (a task sums a few hundred rows
/// in f32 lanes, vectorised; the tasks' shares are few).
pub(crate) fn add_shares(shares: &[Vec<f32>], len: usize) -> Vec<f64> {
    let mut total = vec![0f64; len];
    for share in shares {
        for (t, v) in total.iter_mut().zip(share) {
            *t += f64::from(*v);
        }
    }
    total
}

/// [`channel_stats`] of channels-last values `[N, C]`.
fn channel_stats_rows(x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / c.max(1)).max(1) as f64;
    let (sum, _) = row_sums(
        x,
        x,
        c,
        #[inline(always)]
        |x, _, a, _| {
            for (a, v) in a.iter_mut().zip(x) {
                *a += v;
            }
        },
    );
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let (sq, _) = row_sums(
        x,
        x,
        c,
        #[inline(always)]
        |x, _, a, _| {
            for ((a, v), m) in a.iter_mut().zip(x).zip(&mean) {
                *a += (v - m) * (v - m);
            }
        },
    );
    (mean, sq.iter().map(|s| (s / n) as f32).collect())
}

/// [`apply_affine`] of channels-last values `[N, C]`.
fn apply_affine_rows(x: &[f32], ab: &[(f32, f32)], relu: bool) -> Vec<f32> {
    let c = ab.len().max(1);
    let (scale, shift): (Vec<f32>, Vec<f32>) = ab.iter().copied().unzip();
    let per = ln_rows(c) * c;
    par_filled(x.len(), per, |k, y| {
        let x = &x[k * per..][..y.len()];
        widest(
            #[inline(always)]
            || {
                for (y, x) in y.chunks_mut(c).zip(x.chunks(c)) {
                    for (((y, &x), &a), &b) in y.iter_mut().zip(x).zip(&scale).zip(&shift) {
                        let v = x * a + b;
                        y.write(if relu { v.max(0.0) } else { v });
                    }
                }
            },
        )
    })
}

/// [`batch_norm_backward`] of channels-last values `[N, C]`.
#[allow(clippy::too_many_arguments)]
fn batch_norm_backward_rows(
    x: &[f32],
    grad: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len().max(1);
    let n = (x.len() / c).max(1) as f64;
    let (scale, shift): (Vec<f32>, Vec<f32>) =
        affine(gamma, beta, mean, var, eps).into_iter().unzip();
    let inv = inv_std(var, eps);
    // Per channel: sum of g (beta's gradient) and of g * (x - mean), where g is zero where
    // the ReLU cut the output.
    let (sg, sgx) = row_sums(
        x,
        grad,
        c,
        #[inline(always)]
        |x, gy, a1, a2| {
            let per_channel = scale.iter().zip(&shift).zip(mean);
            for ((((x, g), a1), a2), ((a, b), m)) in x
                .iter()
                .zip(gy)
                .zip(a1.iter_mut())
                .zip(a2.iter_mut())
                .zip(per_channel)
            {
                let g = if !relu || x * a + b > 0.0 { *g } else { 0.0 };
                *a1 += g;
                *a2 += g * (x - m);
            }
        },
    );
    let sgx: Vec<f64> = sgx
        .iter()
        .zip(&inv)
        .map(|(s, &i)| s * f64::from(i))
        .collect();
    // dx = gamma * inv * (g - mean(g) - xhat * mean(g * xhat)), per channel constants folded.
    let k1: Vec<f32> = gamma.iter().zip(&inv).map(|(g, i)| g * i).collect();
    let mg: Vec<f32> = sg.iter().map(|s| (s / n) as f32).collect();
    let mgx: Vec<f32> = sgx
        .iter()
        .zip(&inv)
        .map(|(s, &i)| (s / n) as f32 * i)
        .collect();
    let per = ln_rows(c) * c;
    let grad_x = par_filled(x.len(), per, |k, gx| {
        let (x, gy) = (&x[k * per..][..gx.len()], &grad[k * per..][..gx.len()]);
        widest(
            #[inline(always)]
            || {
                for ((gx, x), gy) in gx.chunks_mut(c).zip(x.chunks(c)).zip(gy.chunks(c)) {
                    let per_channel = scale
                        .iter()
                        .zip(&shift)
                        .zip(mean)
                        .zip(&k1)
                        .zip(&mg)
                        .zip(&mgx);
                    for (((o, x), g), (((((a, b), m), k1), mg), mgx)) in
                        gx.iter_mut().zip(x).zip(gy).zip(per_channel)
                    {
                        let g = if !relu || x * a + b > 0.0 { *g } else { 0.0 };
                        o.write(k1 * (g - mg - (x - m) * mgx));
                    }
                }
            },
        )
    });
    let grad_gamma = sgx.iter().map(|&s| s as f32).collect();
    let grad_beta = sg.iter().map(|&s| s as f32).collect();
    (grad_x, grad_gamma, grad_beta)
}

/// Rows per parallel task of the LayerNorm loops (at least one).
fn ln_rows(c: usize) -> usize {
    (CHUNK / c.max(1)).max(1)
}

/// Mean and `1 / sqrt(variance + eps)` of one row (biased variance).
fn row_stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = (sum1(x, |v| v) / n) as f32;
    let var = sum1(x, |v| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}

fn layer_norm_forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    let c = gamma.len().max(1);
    let per = ln_rows(c) * c;
    par_filled(x.len(), per, |k, y| {
        let x = &x[k * per..][..y.len()];
        for (y, x) in y.chunks_mut(c).zip(x.chunks(c)) {
            let (mean, rstd) = row_stats(x, eps);
            for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                y.write((x - mean) * rstd * g + b);
            }
        }
    })
}

/// LayerNorm's gradients `(x, gamma, beta)` for rows of `gamma.len()` values.
fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len().max(1);
    let per = ln_rows(c) * c;
    let mut gx = vec![0f32; x.len()];
    // Each task: its rows' input gradient, and its share of gamma's and beta's gradients.
    let shares: Vec<(Vec<f64>, Vec<f64>)> = gx
        .par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .zip(grad.par_chunks(per))
        .map(|((gx, x), gy)| {
            widest(
                #[inline(always)]
                || {
                    let (mut gg, mut gb) = (vec![0f64; c], vec![0f64; c]);
                    for ((gx, x), gy) in gx.chunks_mut(c).zip(x.chunks(c)).zip(gy.chunks(c)) {
                        let (mean, rstd) = row_stats(x, eps);
                        // dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                        let (s1, s2) = sums3(x, gy, gamma, |xv, g, w| {
                            let d = g * w;
                            (d, d * (xv - mean) * rstd)
                        });
                        for i in 0..c {
                            let xhat = (x[i] - mean) * rstd;
                            gg[i] += f64::from(gy[i] * xhat);
                            gb[i] += f64::from(gy[i]);
                        }
                        let (m1, m2) = ((s1 / c as f64) as f32, (s2 / c as f64) as f32);
                        for i in 0..c {
                            let xhat = (x[i] - mean) * rstd;
                            gx[i] = rstd * (gy[i] * gamma[i] - m1 - xhat * m2);
                        }
                    }
                    (gg, gb)
                },
            )
        })
        .collect();
    let (mut gg, mut gb) = (vec![0f64; c], vec![0f64; c]);
    for (sg, sb) in &shares {
        for i in 0..c {
            gg[i] += sg[i];
            gb[i] += sb[i];
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (gx, to32(gg), to32(gb))
}

/// The AdamW update of one chunk (see [`FusedBackend::fused_adamw_step`]), compiled for the
/// widest vector instructions the CPU has: the build targets baseline x86-64 (4-wide SSE2),
/// and the update's two divisions and square root are its cost once the values are in cache.
/// Every operation is IEEE-exact per lane (no fused multiply-add), so all paths give the same
/// bits.
fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: [f32; 7], first: bool) {
    widest(
        #[inline(always)]
        || adamw_body(p, g, m, v, h, first),
    )
}

/// Runs `f` compiled for AVX-512F or AVX2 when the CPU has them (the loops `f` inlines are
/// vectorised that wide), else for baseline x86-64. The arithmetic is the same either way.
#[inline(always)]
pub(crate) fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { run_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// burn's AdamW arithmetic, in its order, over one chunk.
#[inline(always)]
fn adamw_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: [f32; 7], first: bool) {
    let [lr, b1, b2, eps, decay, c1, c2] = h;
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    for (((p, &gi), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        // As burn: the first step starts the moments from the gradient alone.
        let (mi, vi) = if first {
            (gi * f1, (gi * gi) * f2)
        } else {
            (*m * b1 + gi * f1, *v * b2 + (gi * gi) * f2)
        };
        *m = mi;
        *v = vi;
        let delta = (mi / c1) / ((vi / c2).sqrt() + eps);
        *p = *p * decay - delta * lr;
    }
}

/// `log(1 + e^v)` without overflow.
#[inline(always)]
fn softplus(v: f32) -> f32 {
    v.max(0.0) + (-v.abs()).exp().ln_1p()
}

/// `1 / (1 + e^-v)` without overflow.
#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    let e = (-v.abs()).exp();
    if v >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// The mean of `softplus(x) - x t` (binary cross-entropy with logits), summed in f64 per task.
fn bce_mean(x: &[f32], t: &[f32]) -> f32 {
    let sum: f64 = x
        .par_chunks(CHUNK)
        .zip(t.par_chunks(CHUNK))
        .map(|(x, t)| {
            x.iter()
                .zip(t)
                .map(|(&x, &t)| f64::from(softplus(x) - x * t))
                .sum::<f64>()
        })
        .sum();
    (sum / x.len().max(1) as f64) as f32
}

/// The sums of the columns of a row-major `[M, n]` matrix (a bias's gradient): a wide matrix
/// (the 11,255-way head) in f64 over column blocks in parallel, a narrow one (ConvNeXt's
/// pointwise layers: 16 to 512 columns of 65,536 rows) over blocks of rows in parallel
/// ([`row_sums`]), where one column block would be a single serial task.
fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    const COLS: usize = 1024;
    let n = n.max(1);
    if n < COLS {
        let sums = row_sums(
            g,
            g,
            n,
            #[inline(always)]
            |x, _, a, _| {
                for (a, v) in a.iter_mut().zip(x) {
                    *a += v;
                }
            },
        );
        return sums.0.into_iter().map(|v| v as f32).collect();
    }
    par_filled(n, COLS, |ci, out| {
        let j0 = ci * COLS;
        let mut acc = vec![0f64; out.len()];
        for row in g.chunks(n) {
            for (a, &v) in acc.iter_mut().zip(&row[j0..j0 + out.len()]) {
                *a += f64::from(v);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            o.write(a as f32);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// burn flex.

/// `t` with contiguous f32 values filling its whole buffer, ready to be written in place (a
/// copy when `t` is a view).
fn whole(t: FlexTensor) -> FlexTensor {
    let n = t.layout().shape().num_elements();
    if t.layout().contiguous_offsets() == Some((0, n)) && t.storage::<f32>().len() == n {
        t
    } else {
        tensor(
            slice(&t.to_contiguous()).to_vec(),
            t.layout().shape().clone(),
        )
    }
}

/// `[B, C, plane]` sizes of a `[B, C, ...]` shape: `(C, plane)`; channels-last `[..., C]`
/// with `nhwc` (planes of one value).
fn channels_plane(shape: &Shape, nhwc: bool) -> (usize, usize) {
    if nhwc {
        // `[..., C]`: rows of one value per channel, the layout of `[N, C]` with planes of 1.
        return (shape[shape.num_dims() - 1], 1);
    }
    let c = shape[1];
    (c, shape.num_elements() / (shape[0] * c).max(1))
}

impl FusedBackend for Flex {
    fn fused_gelu(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return Flex::gelu(x);
        }
        let x = x.to_contiguous();
        let y = gelu_forward(slice(&x));
        tensor(y, x.layout().shape().clone())
    }

    fn fused_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return Flex::gelu_backward(x, grad);
        }
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let out = gelu_backward(slice(&x), slice(&grad));
        tensor(out, x.layout().shape().clone())
    }

    fn fused_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.layout().shape().clone();
        let (c, plane) = channels_plane(&shape, nhwc);
        let (x, gamma, beta) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
        );
        let (mean, var) = channel_stats(slice(&x), c, plane);
        let ab = affine(slice(&gamma), slice(&beta), &mean, &var, epsilon);
        let y = apply_affine(slice(&x), &ab, plane, relu);
        (
            tensor(y, shape),
            tensor(mean, Shape::new([c])),
            tensor(var, Shape::new([c])),
        )
    }

    fn fused_batch_norm_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        grad: FlexTensor,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.layout().shape().clone();
        let (c, plane) = channels_plane(&shape, nhwc);
        let [x, gamma, beta, mean, variance, grad] =
            [x, gamma, beta, mean, variance, grad].map(|t| t.to_contiguous());
        let (gx, gg, gb) = batch_norm_backward(
            slice(&x),
            slice(&grad),
            slice(&gamma),
            slice(&beta),
            slice(&mean),
            slice(&variance),
            epsilon,
            relu,
            plane,
        );
        (
            tensor(gx, shape),
            tensor(gg, Shape::new([c])),
            tensor(gb, Shape::new([c])),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn fused_batch_norm_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> FlexTensor {
        let shape = x.layout().shape().clone();
        let (_, plane) = channels_plane(&shape, nhwc);
        let [x, gamma, beta, mean, variance] =
            [x, gamma, beta, mean, variance].map(|t| t.to_contiguous());
        let ab = affine(
            slice(&gamma),
            slice(&beta),
            slice(&mean),
            slice(&variance),
            epsilon,
        );
        let y = apply_affine(slice(&x), &ab, plane, relu);
        tensor(y, shape)
    }

    fn fused_bce(logits: FlexTensor, targets: FlexTensor) -> FlexTensor {
        let (x, t) = (logits.to_contiguous(), targets.to_contiguous());
        tensor(vec![bce_mean(slice(&x), slice(&t))], Shape::new([1]))
    }

    fn fused_bce_backward(
        logits: FlexTensor,
        targets: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let shape = logits.layout().shape().clone();
        let [x, t, g] = [logits, targets, grad].map(|v| v.to_contiguous());
        let (x, t) = (slice(&x), slice(&t));
        let scale = slice(&g)[0] / x.len().max(1) as f32;
        let gx = par_filled(x.len(), CHUNK, |i, out| {
            let (x, t) = (&x[i * CHUNK..], &t[i * CHUNK..]);
            for ((o, &x), &t) in out.iter_mut().zip(x).zip(t) {
                o.write((sigmoid(x) - t) * scale);
            }
        });
        let gt = par_filled(x.len(), CHUNK, |i, out| {
            for (o, &x) in out.iter_mut().zip(&x[i * CHUNK..]) {
                o.write(-x * scale);
            }
        });
        (tensor(gx, shape.clone()), tensor(gt, shape))
    }

    fn fused_layer_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        Self::fused_layer_norm_saving(x, gamma, beta, epsilon).0
    }

    fn fused_layer_norm_saving(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor) {
        if [x.dtype(), gamma.dtype(), beta.dtype()] != [DType::F32; 3] {
            return (Flex::layer_norm(x.clone(), gamma, Some(beta), epsilon), x);
        }
        let [x, gamma, beta] = [x, gamma, beta].map(|t| t.to_contiguous());
        let y = layer_norm_forward(slice(&x), slice(&gamma), slice(&beta), epsilon);
        (tensor(y, x.layout().shape().clone()), x)
    }

    fn fused_layer_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        grad: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.layout().shape().clone();
        let [x, gamma, grad] = [x, gamma, grad].map(|t| t.to_contiguous());
        let c = slice(&gamma).len();
        let (gx, gg, gb) = layer_norm_backward(slice(&x), slice(&gamma), slice(&grad), epsilon);
        (
            tensor(gx, shape),
            tensor(gg, Shape::new([c])),
            tensor(gb, Shape::new([c])),
        )
    }

    fn fused_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        if [x.dtype(), weight.dtype(), bias.dtype()] != [DType::F32; 3] {
            let n = bias.layout().shape()[0];
            let b = bias.reshape(Shape::new([1, n]));
            return Flex::float_add(Flex::float_matmul(x, weight), b);
        }
        let [x, w, b] = [x, weight, bias].map(|t| t.to_contiguous());
        let (m, k, n) = (
            x.layout().shape()[0],
            x.layout().shape()[1],
            w.layout().shape()[1],
        );
        // Rows of the bias, then y [M, N] += x [M, K] W [K, N]
        let b = slice(&b);
        let mut y = par_filled(m * n, n.max(1), |_, row| {
            row.write_copy_of_slice(b);
        });
        matmul(
            m,
            n,
            k,
            &mut y,
            [n as isize, 1],
            slice(&x),
            [k as isize, 1],
            slice(&w),
            [n as isize, 1],
            Parallelism::Rayon(0),
            true,
        );
        tensor(y, Shape::new([m, n]))
    }

    fn fused_linear_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if [x.dtype(), weight.dtype(), grad.dtype()] != [DType::F32; 3] {
            let gx = Flex::float_matmul(grad.clone(), weight.clone().transpose(0, 1));
            let gb = Flex::float_sum_dim(grad.clone(), 0);
            let n = gb.layout().shape()[1];
            let gb = gb.reshape(Shape::new([n]));
            return (gx, Flex::float_matmul(x.transpose(0, 1), grad), gb);
        }
        let (x, w, g) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            grad.to_contiguous(),
        );
        let (m, k, n) = (
            x.layout().shape()[0],
            x.layout().shape()[1],
            w.layout().shape()[1],
        );
        // dx [M, K] = dy [M, N] W^T [N, K]
        let gx = matmul_new(
            m,
            k,
            n,
            slice(&g),
            [n as isize, 1],
            slice(&w),
            [1, n as isize],
            Parallelism::Rayon(0),
        );
        // dW [K, N] = x^T [K, M] dy [M, N]
        let gw = matmul_new(
            k,
            n,
            m,
            slice(&x),
            [1, k as isize],
            slice(&g),
            [n as isize, 1],
            Parallelism::Rayon(0),
        );
        let gb = column_sums(slice(&g), n);
        (
            tensor(gx, Shape::new([m, k])),
            tensor(gw, Shape::new([k, n])),
            tensor(gb, Shape::new([n])),
        )
    }

    fn fused_adamw_step(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        h: [f32; 7],
        first: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let grad = grad.to_contiguous();
        let (mut p, mut m, mut v) = (whole(param), whole(moment_1), whole(moment_2));
        // Copy-on-write: a buffer that something else still holds is copied once.
        let (ps, ms, vs) = (
            p.storage_mut::<f32>(),
            m.storage_mut::<f32>(),
            v.storage_mut::<f32>(),
        );
        ps.par_chunks_mut(CHUNK)
            .zip(slice(&grad).par_chunks(CHUNK))
            .zip(ms.par_chunks_mut(CHUNK))
            .zip(vs.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, h, first));
        (p, m, v)
    }
}

// ---------------------------------------------------------------------------------------------
// Autodiff.

#[derive(Debug)]
struct GeluNode;

impl<B: FusedBackend> Backward<B, 1> for GeluNode {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [node] = ops.parents;
        if let Some(node) = node {
            grads.register::<B>(node.id, B::fused_gelu_backward(ops.state, grad));
        }
    }
}

/// What a BatchNorm node keeps: `x, gamma, beta, mean, variance, epsilon, relu`.
type BnState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    f64,
    bool,
    bool,
);

#[derive(Debug)]
struct BatchNormNode;

impl<B: FusedBackend> Backward<B, 3> for BatchNormNode {
    type State = BnState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, beta, mean, variance, epsilon, relu, nhwc) = ops.state;
        let (gx, gg, gb) = B::fused_batch_norm_train_backward(
            x, gamma, beta, mean, variance, grad, epsilon, relu, nhwc,
        );
        register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gg, gb]);
    }
}

#[derive(Debug)]
struct BceNode;

impl<B: FusedBackend> Backward<B, 2> for BceNode {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (logits, targets) = ops.state;
        let (gx, gt) = B::fused_bce_backward(logits, targets, grad);
        register_grads::<B, 2>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gt]);
    }
}

#[derive(Debug)]
struct LayerNormNode;

impl<B: FusedBackend> Backward<B, 3> for LayerNormNode {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, epsilon) = ops.state;
        let (gx, gg, gb) = B::fused_layer_norm_backward(x, gamma, grad, epsilon);
        register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gg, gb]);
    }
}

#[derive(Debug)]
struct LinearNode;

impl<B: FusedBackend> Backward<B, 3> for LinearNode {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        let (gx, gw, gb) = B::fused_linear_backward(x, weight, grad);
        register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gw, gb]);
    }
}

/// Registers each gradient for its parent node, skipping parents that track none.
pub(crate) fn register_grads<B: Backend, const N: usize>(
    grads: &mut Gradients,
    parents: [Option<NodeId>; N],
    values: [FloatTensor<B>; N],
) {
    for (id, g) in parents.into_iter().zip(values) {
        if let Some(id) = id {
            grads.register::<B>(id, g);
        }
    }
}

/// The inner primitive of an autodiff tensor, as a constant (no gradient flows through it).
fn constant<B: Backend, C: CheckpointStrategy>(t: FloatTensor<Autodiff<B, C>>) -> FloatTensor<B> {
    t.into_primitive()
}

/// An autodiff tensor that tracks no gradient (the module of `AutodiffTensor` is private, so it
/// is named through the backend's primitive type).
fn untracked<B: Backend, C: CheckpointStrategy>(t: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    FloatTensor::<Autodiff<B, C>>::new(t)
}

impl<B: FusedBackend, C: CheckpointStrategy> FusedBackend for Autodiff<B, C> {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, node) = x.into_parts();
        match GeluNode.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::fused_gelu(x.clone());
                prep.finish(x, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x)),
        }
    }

    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let ((x, nx), (gamma, ng), (beta, nb)) =
            (x.into_parts(), gamma.into_parts(), beta.into_parts());
        match BatchNormNode
            .prepare::<C>([nx, ng, nb])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mean, var) = B::fused_batch_norm_train(
                    x.clone(),
                    gamma.clone(),
                    beta.clone(),
                    epsilon,
                    relu,
                    nhwc,
                );
                let state = (
                    x,
                    gamma,
                    beta,
                    mean.clone(),
                    var.clone(),
                    epsilon,
                    relu,
                    nhwc,
                );
                (
                    prep.finish(state, y),
                    untracked::<B, C>(mean),
                    untracked::<B, C>(var),
                )
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, var) = B::fused_batch_norm_train(x, gamma, beta, epsilon, relu, nhwc);
                (
                    prep.finish(y),
                    untracked::<B, C>(mean),
                    untracked::<B, C>(var),
                )
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fused_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> FloatTensor<Self> {
        // Reached only for a frozen layer on the autodiff device: no gradient is taken.
        untracked::<B, C>(B::fused_batch_norm_eval(
            constant::<B, C>(x),
            constant::<B, C>(gamma),
            constant::<B, C>(beta),
            constant::<B, C>(mean),
            constant::<B, C>(variance),
            epsilon,
            relu,
            nhwc,
        ))
    }

    fn fused_bce(logits: FloatTensor<Self>, targets: FloatTensor<Self>) -> FloatTensor<Self> {
        let ((x, nx), (t, nt)) = (logits.into_parts(), targets.into_parts());
        match BceNode.prepare::<C>([nx, nt]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let loss = B::fused_bce(x.clone(), t.clone());
                prep.finish((x, t), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bce(x, t)),
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let ((x, nx), (gamma, ng), (beta, nb)) =
            (x.into_parts(), gamma.into_parts(), beta.into_parts());
        match LayerNormNode
            .prepare::<C>([nx, ng, nb])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, x) = B::fused_layer_norm_saving(x, gamma.clone(), beta, epsilon);
                prep.finish((x, gamma, epsilon), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(x, gamma, beta, epsilon)),
        }
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let ((x, nx), (weight, nw), (bias, nb)) =
            (x.into_parts(), weight.into_parts(), bias.into_parts());
        match LinearNode
            .prepare::<C>([nx, nw, nb])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::fused_linear(x.clone(), weight.clone(), bias);
                prep.finish((x, weight), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_linear(x, weight, bias)),
        }
    }

    fn fused_adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        h: [f32; 7],
        first: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (p, m, v) = B::fused_adamw_step(
            constant::<B, C>(param),
            constant::<B, C>(grad),
            constant::<B, C>(moment_1),
            constant::<B, C>(moment_2),
            h,
            first,
        );
        (
            untracked::<B, C>(p),
            untracked::<B, C>(m),
            untracked::<B, C>(v),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The approximations against independent values: `erf` against the tabulated erf
    /// (Abramowitz and Stegun, table 7.1) and `exp` against the standard library's `f32::exp`.
    #[test]
    fn erf_and_exp_approximations_are_close() {
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (1.5, 0.966_105_146),
            (2.0, 0.995_322_265),
            (3.0, 0.999_977_910),
            (-1.0, -0.842_700_793),
            (10.0, 1.0),
        ] {
            assert!((f64::from(erf(x)) - want).abs() < 5e-7, "erf({x})");
        }
        let mut v = -90.0f32;
        while v <= 0.0 {
            let (got, want) = (exp_nonpositive(v), v.max(-87.0).exp());
            assert!(
                ((got - want) / want).abs() < 5e-7,
                "exp({v}) {got} vs {want}"
            );
            v += 0.173;
        }
    }
}
