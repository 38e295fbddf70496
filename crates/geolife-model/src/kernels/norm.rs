//! BatchNorm (with an optional ReLU) and LayerNorm on the CPU in one or two parallel passes
//! each, for `[B, C, ...]` and channels-last values: burn flex runs them as chains of separate
//! tensor operations, twice as many backward. Sums run in eight f32 lanes, added up in f64.

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::{DType, FloatDType, Shape, Tensor};
use rayon::prelude::*;

use super::shared::{
    CHUNK, constant, on_cpu_f32, on_gpu_f16, on_gpu_f32, par_filled, register_grads, row_sums,
    slice, task_rows, tensor, untracked, widest,
};

/// BatchNorm and LayerNorm with their own kernels: on the CPU (below) and in the GPU build
/// (`norm_gpu.rs`, cubecl kernels registered in fusion's stream as custom operations).
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Fusion: cfg(feature = "wgpu"), Autodiff)]
pub trait NormBackend: Backend {
    /// BatchNorm over `[B, C, ...]` (channels-last `[..., C]` with `nhwc`) with the batch's
    /// statistics, then ReLU when `relu`: `(output, mean, biased variance, running mean,
    /// running variance)`, the running statistics moved towards the batch's by `momentum` as
    /// burn's `BatchNorm` does (`running * (1 - momentum) + batch * momentum`), in the same
    /// pass; the statistics carry no gradient.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[fusion(meta = |x, gamma, _b, _rm, _rv, _e, _m, _r, _n| (
        x.clone(),
        gamma.clone(),
        gamma.clone(),
        gamma.clone(),
        gamma.clone()
    ))]
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
        momentum: f64,
        relu: bool,
        nhwc: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    /// The gradients of [`fused_batch_norm_train`](NormBackend::fused_batch_norm_train):
    /// `(x, gamma, beta)`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |x, gamma, _b, _m, _v, _g, _e, _r, _n| (x.clone(), gamma.clone(), gamma.clone()))]
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
    #[fusion(dtype = x, shape = x)]
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
    #[fusion(dtype = x, shape = x)]
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// [`fused_layer_norm`](NormBackend::fused_layer_norm), also returning the input as its
    /// backward pass reads it (contiguous): ConvNeXt normalises a permuted view, and the copy
    /// the forward pass makes is then not made again.
    #[fusion(meta = |x, _g, _b, _e| (x.clone(), x.clone()))]
    fn fused_layer_norm_saving(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, gamma, beta, epsilon);
        unreachable!("fused_layer_norm_saving is only called by its autodiff node")
    }

    /// The gradients of [`fused_layer_norm`](NormBackend::fused_layer_norm):
    /// `(x, gamma, beta)`.
    #[fusion(meta = |x, gamma, _g, _e| (x.clone(), gamma.clone(), gamma.clone()))]
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, gamma, grad, epsilon);
        unreachable!("fused_layer_norm_backward is only called by its autodiff node")
    }
}

/// `bn.forward(x)`, then ReLU when `relu`: with the fused kernels on the CPU and in the GPU
/// build (the running statistics updated exactly as burn's `BatchNorm` does), burn's layers
/// elsewhere.
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>, relu: bool) -> Tensor<D> {
    if !fused(&x) || !f32_params(bn) || D < 2 {
        return in_params_type(x, bn.gamma.val().dtype(), |x| bn_relu(bn, x, relu));
    }
    batch_norm_kernel(bn, x, relu, false)
}

/// [`batch_norm`] of channels-last maps `[B, H, W, C]`: the kernels' statistics and affine
/// map run over rows of contiguous channels; elsewhere burn's layer runs between two
/// permutations.
pub fn batch_norm_nhwc(bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
    if !fused(&x) || !f32_params(bn) {
        return in_params_type(x, bn.gamma.val().dtype(), |x| {
            bn_relu(bn, x.permute([0, 3, 1, 2]), relu).permute([0, 2, 3, 1])
        });
    }
    batch_norm_kernel(bn, x, relu, true)
}

/// Whether a network should run on `x` channels-last (`[B, H, W, C]` between layers): where
/// the norm kernels take it (f32 on the CPU; f32 or f16 in the GPU build). They read
/// channels-last values directly, burn's layers only through two permutations; on a GPU the
/// convolutions work channels-last anyway.
pub fn channels_last<const D: usize>(x: &Tensor<D>) -> bool {
    fused(x)
}

/// Whether this module's kernels take `x`: f32 values on the CPU, or f32 or f16 values on the
/// GPU build's device (`norm_gpu.rs`), while the kernels are on ([`super::set_cpu_kernels`]).
fn fused<const D: usize>(x: &Tensor<D>) -> bool {
    on_cpu_f32(x) || on_gpu_f32(x) || on_gpu_f16(x)
}

/// The type in which a layer should hand its output `x`-shaped activations to one of these
/// norms: f16 inside an f16 autocast scope on the GPU build's device, where the kernels read
/// and write f16 activations (statistics, parameters and sums in f32, as PyTorch's autocast
/// runs BatchNorm; its LayerNorm returns f32, which the next product casts to f16 anyway), so
/// that neither the layer's output nor the norm's is cast to f32 and back (four passes over
/// the values per layer and step); `None` elsewhere. `x` is the layer's input.
pub fn half_for_norm<const D: usize>(x: &Tensor<D>) -> Option<FloatDType> {
    let on_gpu = on_gpu_f32(x) || on_gpu_f16(x);
    (on_gpu && super::autocast::half() == Some(FloatDType::F16)).then_some(FloatDType::F16)
}

/// `f(x)` for burn's own norm layers, which take activations of their parameters' type: f16
/// activations handed over for the kernels ([`half_for_norm`]) that reach a branch without
/// them (a frozen BatchNorm, a LayerNorm without bias, the kernels switched off) are cast to
/// the parameters' type and the output back to theirs.
fn in_params_type<const D: usize>(
    x: Tensor<D>,
    params: DType,
    f: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    let dtype = x.dtype();
    if dtype == params || !matches!(params, DType::F32 | DType::F16 | DType::BF16) {
        return f(x);
    }
    f(x.cast(FloatDType::from(params))).cast(FloatDType::from(dtype))
}

/// `grad` in the type of `like` (a norm's input): the output's gradient arrives in the
/// output's type, which is the input's, unless a later operation cast it.
fn like_input<B: Backend>(grad: FloatTensor<B>, like: &FloatTensor<B>) -> FloatTensor<B> {
    match grad.dtype() == like.dtype() {
        true => grad,
        false => B::float_cast(grad, FloatDType::from(like.dtype())),
    }
}

/// Whether `bn`'s scale and shift are f32, as the kernels take them (a model's parameters are).
fn f32_params(bn: &BatchNorm) -> bool {
    bn.gamma.val().dtype() == DType::F32 && bn.beta.val().dtype() == DType::F32
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
        // The running statistics move as in burn's `BatchNorm::forward_train`, inside the
        // kernel's pass (on a GPU, as separate operations, they were about eight launches per
        // layer in f16 steps, where fusion does not merge them).
        let running_mean = bn.running_mean.value_sync().to_device(&device);
        let running_var = bn.running_var.value_sync().to_device(&device);
        let (y, _, _, running_mean, running_var) = Dispatch::fused_batch_norm_train(
            x.into_dispatch(),
            bn.gamma.val().into_dispatch(),
            bn.beta.val().into_dispatch(),
            running_mean.into_dispatch(),
            running_var.into_dispatch(),
            bn.epsilon,
            bn.momentum,
            relu,
            nhwc,
        );
        let (running_mean, running_var): (Tensor<1>, Tensor<1>) = (
            Tensor::from_dispatch(running_mean),
            Tensor::from_dispatch(running_var),
        );
        bn.running_mean.update(running_mean.detach());
        bn.running_var.update(running_var.detach());
        Tensor::from_dispatch(y)
    } else if device.is_autodiff() {
        // A frozen layer on the training device (burn's `Module::freeze` for partial
        // fine-tuning): its input, and gamma and beta when re-enabled, still take gradients,
        // which the inference kernel has none of; burn's layer normalises with the running
        // statistics and differentiates (in f32: f16 activations are cast to f32 and back).
        if !nhwc {
            return in_params_type(x, bn.gamma.val().dtype(), |x| bn_relu(bn, x, relu));
        }
        // Channels-last `[B, ..., C]`: burn's layer takes the channels-first view.
        let first: [isize; D] = std::array::from_fn(|i| match i {
            0 => 0,
            1 => D as isize - 1,
            i => i as isize - 1,
        });
        let last: [isize; D] = std::array::from_fn(|i| match i {
            0 => 0,
            i if i == D - 1 => 1,
            i => i as isize + 1,
        });
        in_params_type(x, bn.gamma.val().dtype(), |x| {
            bn_relu(bn, x.permute(first), relu).permute(last)
        })
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
        Some(beta) if fused(&x) && gamma.dtype() == DType::F32 && beta.dtype() == DType::F32 => {
            beta
        }
        beta => {
            let params = gamma.dtype();
            return in_params_type(x, params, |x| {
                burn::tensor::module::layer_norm(x, gamma, beta, epsilon)
            });
        }
    };
    Tensor::from_dispatch(Dispatch::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

// ---------------------------------------------------------------------------------------------
// The math, on slices.

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

/// A running statistic moved towards the batch's: `running * (1 - momentum) + batch *
/// momentum` in f32, the operations burn's `BatchNorm` runs.
fn moved(running: &[f32], batch: &[f32], momentum: f64) -> Vec<f32> {
    let (keep, take) = ((1.0 - momentum) as f32, momentum as f32);
    running
        .iter()
        .zip(batch)
        .map(|(&r, &b)| r * keep + b * take)
        .collect()
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
    let per = task_rows(c) * c;
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
    let per = task_rows(c) * c;
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

/// Mean and `1 / sqrt(variance + eps)` of one row (biased variance).
fn row_stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = (sum1(x, |v| v) / n) as f32;
    let var = sum1(x, |v| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}

fn layer_norm_forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    let c = gamma.len().max(1);
    let per = task_rows(c) * c;
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
    let per = task_rows(c) * c;
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

// ---------------------------------------------------------------------------------------------
// burn flex.

/// `[B, C, plane]` sizes of a `[B, C, ...]` shape: `(C, plane)`; channels-last `[..., C]`
/// with `nhwc` (planes of one value).
pub(super) fn channels_plane(shape: &Shape, nhwc: bool) -> (usize, usize) {
    if nhwc {
        // `[..., C]`: rows of one value per channel, the layout of `[N, C]` with planes of 1.
        return (shape[shape.num_dims() - 1], 1);
    }
    let c = shape[1];
    (c, shape.num_elements() / (shape[0] * c).max(1))
}

impl NormBackend for Flex {
    fn fused_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        running_mean: FlexTensor,
        running_var: FlexTensor,
        epsilon: f64,
        momentum: f64,
        relu: bool,
        nhwc: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.layout().shape().clone();
        let (c, plane) = channels_plane(&shape, nhwc);
        let [x, gamma, beta, running_mean, running_var] =
            [x, gamma, beta, running_mean, running_var].map(|t| t.to_contiguous());
        let (mean, var) = channel_stats(slice(&x), c, plane);
        let ab = affine(slice(&gamma), slice(&beta), &mean, &var, epsilon);
        let y = apply_affine(slice(&x), &ab, plane, relu);
        let running_mean = moved(slice(&running_mean), &mean, momentum);
        let running_var = moved(slice(&running_var), &var, momentum);
        (
            tensor(y, shape),
            tensor(mean, Shape::new([c])),
            tensor(var, Shape::new([c])),
            tensor(running_mean, Shape::new([c])),
            tensor(running_var, Shape::new([c])),
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
}

// ---------------------------------------------------------------------------------------------
// Autodiff.

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

impl<B: NormBackend> Backward<B, 3> for BatchNormNode {
    type State = BnState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, beta, mean, variance, epsilon, relu, nhwc) = ops.state;
        let grad = like_input::<B>(grad, &x);
        let (gx, gg, gb) = B::fused_batch_norm_train_backward(
            x, gamma, beta, mean, variance, grad, epsilon, relu, nhwc,
        );
        register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gg, gb]);
    }
}

#[derive(Debug)]
struct LayerNormNode;

impl<B: NormBackend> Backward<B, 3> for LayerNormNode {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, epsilon) = ops.state;
        let grad = like_input::<B>(grad, &x);
        let (gx, gg, gb) = B::fused_layer_norm_backward(x, gamma, grad, epsilon);
        register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gg, gb]);
    }
}

impl<B: NormBackend, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
        momentum: f64,
        relu: bool,
        nhwc: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let ((x, nx), (gamma, ng), (beta, nb)) =
            (x.into_parts(), gamma.into_parts(), beta.into_parts());
        let (rm, rv) = (
            constant::<B, C>(running_mean),
            constant::<B, C>(running_var),
        );
        match BatchNormNode
            .prepare::<C>([nx, ng, nb])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mean, var, rm, rv) = B::fused_batch_norm_train(
                    x.clone(),
                    gamma.clone(),
                    beta.clone(),
                    rm,
                    rv,
                    epsilon,
                    momentum,
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
                    untracked::<B, C>(rm),
                    untracked::<B, C>(rv),
                )
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, var, rm, rv) = B::fused_batch_norm_train(
                    x, gamma, beta, rm, rv, epsilon, momentum, relu, nhwc,
                );
                (
                    prep.finish(y),
                    untracked::<B, C>(mean),
                    untracked::<B, C>(var),
                    untracked::<B, C>(rm),
                    untracked::<B, C>(rv),
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
        // Not reached from `batch_norm` (a frozen layer on the autodiff device runs burn's
        // differentiable layer); a direct call takes no gradient.
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
}
