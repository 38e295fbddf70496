//! BatchNorm (+ ReLU) and LayerNorm as cubecl kernels: the GPU build's counterpart of the CPU
//! kernels in `norm.rs`, with the same formulas and the same backend operations.
//!
//! burn runs these norms as chains of reductions, layout copies and broadcasts, and
//! differentiates them through the chain: on llvmpipe a BatchNorm + ReLU took 7 kernels forward
//! and 16 backward, a LayerNorm 5 and 27. Here a training BatchNorm is one kernel forward and
//! one backward (a cube per channel: its statistics as tree sums in shared memory, then the
//! element-wise pass over the same values), a LayerNorm one forward and two backward (a unit
//! per row, then a cube per channel for gamma's and beta's gradients). With operation fusion on
//! they are custom operations in fusion's stream (`Fusion` in the trait's
//! `#[backend_extension]`), so element-wise work around them still fuses.
//!
//! Sums run in f32 (the CPU kernels add in f64). The wgpu tests compare the kernels with burn's
//! own layers on the same device. Every kernel takes its element counts as arguments: a bound
//! buffer can be longer than its tensor.

use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::norm::{NormBackend, channels_plane};

/// Units of a cube in the per-channel kernels (fewer where the device allows fewer).
const BLOCK: usize = 256;

/// Adds up `buf[0..CUBE_DIM]` into `buf[0]`, a tree over the cube's units (a power of two of
/// them, every unit taking part); the caller synchronises before it writes `buf` again.
#[cube]
fn tree_sum<F: Float>(buf: &mut [F]) {
    let unit = UNIT_POS as usize;
    // From the unit count, a run-time value: a step derived from a comptime one is a constant,
    // which the loop could not halve.
    let mut step = CUBE_DIM as usize / 2;
    while step > 0 {
        if unit < step {
            buf[unit] += buf[unit + step];
        }
        sync_cube();
        step /= 2;
    }
}

/// `(a, b)` of the affine map `x * a + b` of a BatchNorm channel: `a = gamma / std`,
/// `b = beta - mean * a`, computed as the CPU kernels do and the same way in every kernel (the
/// backward pass recomputes the forward's output to mask the ReLU).
#[cube]
fn affine<F: Float>(gamma: F, beta: F, mean: F, var: F, eps: f32) -> (F, F) {
    let a = gamma * (F::new(1.0) / F::sqrt(var + F::cast_from(eps)));
    (a, beta - mean * a)
}

/// `count` as a divisor: at least 1 (an empty batch gives zero statistics, as on the CPU).
#[cube]
fn divisor<F: Float>(count: usize) -> F {
    F::cast_from(select(count > 0, count, 1))
}

/// The flat index of the `i`-th value of channel `ch` in `[A, C, P]` values.
#[cube]
fn at(i: usize, ch: usize, channels: usize, plane: usize) -> usize {
    (i / plane) * channels * plane + ch * plane + i % plane
}

/// Training BatchNorm of one channel per cube: its mean and biased variance (written to `mean`
/// and `var`, and moved into the running statistics: `running * keep + batch * take`), then
/// `y = x * a + b` with `a = gamma / std`, `b = beta - mean * a`, ReLU when `relu`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_forward<F: Float>(
    x: &[F],
    gamma: &[F],
    beta: &[F],
    running_mean: &[F],
    running_var: &[F],
    y: &mut [F],
    mean_out: &mut [F],
    var_out: &mut [F],
    running_mean_out: &mut [F],
    running_var_out: &mut [F],
    channels: usize,
    plane: usize,
    count: usize,
    eps: f32,
    keep: f32,
    take: f32,
    #[comptime] relu: bool,
    #[comptime] block: usize,
) {
    let mut shared = Shared::<[F]>::new_slice(block);
    let ch = CUBE_POS_X as usize;
    let unit = UNIT_POS as usize;
    let n = divisor::<F>(count);
    let mut s = F::new(0.0);
    for i in range_stepped(unit, count, block) {
        s += x[at(i, ch, channels, plane)];
    }
    shared[unit] = s;
    sync_cube();
    tree_sum::<F>(&mut shared);
    let mean = shared[0] / n;
    sync_cube();
    let mut q = F::new(0.0);
    for i in range_stepped(unit, count, block) {
        let d = x[at(i, ch, channels, plane)] - mean;
        q += d * d;
    }
    shared[unit] = q;
    sync_cube();
    tree_sum::<F>(&mut shared);
    let var = shared[0] / n;
    let (a, b) = affine::<F>(gamma[ch], beta[ch], mean, var, eps);
    for i in range_stepped(unit, count, block) {
        let k = at(i, ch, channels, plane);
        let v = x[k] * a + b;
        if relu {
            y[k] = F::max(v, F::new(0.0));
        } else {
            y[k] = v;
        }
    }
    if unit == 0 {
        mean_out[ch] = mean;
        var_out[ch] = var;
        running_mean_out[ch] = running_mean[ch] * F::cast_from(keep) + mean * F::cast_from(take);
        running_var_out[ch] = running_var[ch] * F::cast_from(keep) + var * F::cast_from(take);
    }
}

/// The gradient that reaches the norm: `grad`, or zero where the ReLU (when `relu`) cut the
/// output `v` (`v <= 0`, as the CPU kernel has it).
#[cube]
fn through_relu<F: Float>(grad: F, v: F, #[comptime] relu: bool) -> F {
    let mut g = grad;
    if relu {
        g = select(v > F::new(0.0), grad, F::new(0.0));
    }
    g
}

/// Training BatchNorm's gradients, one channel per cube: the sums of `g` (beta's gradient) and
/// of `g * xhat` (gamma's), then `gx = gamma / std * (g - mean(g) - xhat * mean(g * xhat))`,
/// where `g` is the incoming gradient, zero where the ReLU cut the output.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_backward<F: Float>(
    x: &[F],
    grad: &[F],
    gamma: &[F],
    beta: &[F],
    mean: &[F],
    var: &[F],
    gx: &mut [F],
    ggamma: &mut [F],
    gbeta: &mut [F],
    channels: usize,
    plane: usize,
    count: usize,
    eps: f32,
    #[comptime] relu: bool,
    #[comptime] block: usize,
) {
    let mut sums = Shared::<[F]>::new_slice(block);
    let mut sums_x = Shared::<[F]>::new_slice(block);
    let ch = CUBE_POS_X as usize;
    let unit = UNIT_POS as usize;
    let n = divisor::<F>(count);
    let m = mean[ch];
    let inv = F::new(1.0) / F::sqrt(var[ch] + F::cast_from(eps));
    let (a, b) = affine::<F>(gamma[ch], beta[ch], m, var[ch], eps);
    let mut sg = F::new(0.0);
    let mut sgx = F::new(0.0);
    for i in range_stepped(unit, count, block) {
        let k = at(i, ch, channels, plane);
        let xv = x[k];
        let g = through_relu::<F>(grad[k], xv * a + b, relu);
        sg += g;
        sgx += g * (xv - m);
    }
    sums[unit] = sg;
    sums_x[unit] = sgx;
    sync_cube();
    tree_sum::<F>(&mut sums);
    tree_sum::<F>(&mut sums_x);
    let sg = sums[0];
    let sgx = sums_x[0] * inv;
    let mg = sg / n;
    let mgx = sgx / n;
    for i in range_stepped(unit, count, block) {
        let k = at(i, ch, channels, plane);
        let xv = x[k];
        let g = through_relu::<F>(grad[k], xv * a + b, relu);
        gx[k] = a * (g - mg - (xv - m) * inv * mgx);
    }
    if unit == 0 {
        ggamma[ch] = sgx;
        gbeta[ch] = sg;
    }
}

/// BatchNorm with fixed statistics, one unit per value.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_eval<F: Float>(
    x: &[F],
    gamma: &[F],
    beta: &[F],
    mean: &[F],
    var: &[F],
    y: &mut [F],
    len: usize,
    channels: usize,
    plane: usize,
    eps: f32,
    #[comptime] relu: bool,
) {
    let k = ABSOLUTE_POS;
    if k >= len {
        terminate!();
    }
    let ch = (k / plane) % channels;
    let (a, b) = affine::<F>(gamma[ch], beta[ch], mean[ch], var[ch], eps);
    let v = x[k] * a + b;
    if relu {
        y[k] = F::max(v, F::new(0.0));
    } else {
        y[k] = v;
    }
}

/// The mean and `1 / std` of row `r` of `c` values.
#[cube]
fn row_stats<F: Float>(x: &[F], r: usize, c: usize, eps: f32) -> (F, F) {
    let base = r * c;
    let n = F::cast_from(c);
    let mut s = F::new(0.0);
    for k in 0..c {
        s += x[base + k];
    }
    let mean = s / n;
    let mut q = F::new(0.0);
    for k in 0..c {
        let d = x[base + k] - mean;
        q += d * d;
    }
    (mean, F::new(1.0) / F::sqrt(q / n + F::cast_from(eps)))
}

/// LayerNorm, one unit per row of `c` values.
#[cube(launch)]
fn ln_forward<F: Float>(
    x: &[F],
    gamma: &[F],
    beta: &[F],
    y: &mut [F],
    rows: usize,
    c: usize,
    eps: f32,
) {
    let r = ABSOLUTE_POS;
    if r >= rows {
        terminate!();
    }
    let (mean, rstd) = row_stats::<F>(x, r, c, eps);
    let base = r * c;
    for k in 0..c {
        y[base + k] = (x[base + k] - mean) * rstd * gamma[k] + beta[k];
    }
}

/// LayerNorm's input gradient, one unit per row (`c >= 1`):
/// `gx = rstd * (g * gamma - mean(g * gamma) - xhat * mean(g * gamma * xhat))`; each row's mean
/// and `1 / std` go to `stats` for [`ln_backward_params`].
#[cube(launch)]
fn ln_backward_rows<F: Float>(
    x: &[F],
    gamma: &[F],
    grad: &[F],
    gx: &mut [F],
    stats: &mut [F],
    rows: usize,
    c: usize,
    eps: f32,
) {
    let r = ABSOLUTE_POS;
    if r >= rows {
        terminate!();
    }
    let (mean, rstd) = row_stats::<F>(x, r, c, eps);
    let base = r * c;
    let mut s1 = F::new(0.0);
    let mut s2 = F::new(0.0);
    for k in 0..c {
        let d = grad[base + k] * gamma[k];
        s1 += d;
        s2 += d * (x[base + k] - mean) * rstd;
    }
    let n = F::cast_from(c);
    let m1 = s1 / n;
    let m2 = s2 / n;
    for k in 0..c {
        let xhat = (x[base + k] - mean) * rstd;
        gx[base + k] = rstd * (grad[base + k] * gamma[k] - m1 - xhat * m2);
    }
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
}

/// LayerNorm's gradients of gamma (`sum g * xhat`) and beta (`sum g`), one cube per channel
/// over the rows, with the rows' statistics from [`ln_backward_rows`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ln_backward_params<F: Float>(
    x: &[F],
    grad: &[F],
    stats: &[F],
    ggamma: &mut [F],
    gbeta: &mut [F],
    rows: usize,
    c: usize,
    #[comptime] block: usize,
) {
    let mut sums = Shared::<[F]>::new_slice(block);
    let mut sums_x = Shared::<[F]>::new_slice(block);
    let k = CUBE_POS_X as usize;
    let unit = UNIT_POS as usize;
    let mut sg = F::new(0.0);
    let mut sgx = F::new(0.0);
    for r in range_stepped(unit, rows, block) {
        let g = grad[r * c + k];
        sg += g;
        sgx += g * (x[r * c + k] - stats[2 * r]) * stats[2 * r + 1];
    }
    sums[unit] = sg;
    sums_x[unit] = sgx;
    sync_cube();
    tree_sum::<F>(&mut sums);
    tree_sum::<F>(&mut sums_x);
    if unit == 0 {
        ggamma[k] = sums_x[0];
        gbeta[k] = sums[0];
    }
}

// ---------------------------------------------------------------------------------------------
// Launches.

/// `t` contiguous, checked to hold f32 values (the only type these kernels and the finite
/// check's are launched for: the callers route other types to burn's operations).
pub(super) fn f32_contiguous(t: CubeTensor, what: &str) -> CubeTensor {
    assert_eq!(
        t.dtype,
        DType::F32,
        "the GPU norm kernels take f32 values; {what} is {:?}",
        t.dtype
    );
    into_contiguous(t)
}

/// An uninitialised contiguous f32 tensor on `like`'s device.
fn empty(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// The units of a per-channel cube: [`BLOCK`], or the largest power of two the device allows.
fn block(t: &CubeTensor) -> usize {
    let most = t.client.properties().hardware.max_units_per_cube as usize;
    let mut b = BLOCK;
    while b > most.max(1) {
        b /= 2;
    }
    b
}

/// One cube per channel.
fn per_channel(channels: usize, block: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(channels as u32, 1, 1),
        CubeDim::new_1d(block as u32),
    )
}

/// One unit per item, in cubes of [`BLOCK`] units (or fewer, see [`block`]).
pub(super) fn per_item(t: &CubeTensor, items: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(block(t) as u32);
    let count = cubecl::calculate_cube_count_elemwise(&t.client, items.max(1), dim);
    (count, dim)
}

/// `t`'s buffer as a kernel argument.
pub(super) fn arg(t: &CubeTensor) -> BufferArg {
    t.clone().into_buffer_arg()
}

impl NormBackend for CubeBackend {
    fn fused_batch_norm_train(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        running_mean: CubeTensor,
        running_var: CubeTensor,
        epsilon: f64,
        momentum: f64,
        relu: bool,
        nhwc: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        let x = f32_contiguous(x, "the BatchNorm input");
        let [gamma, beta, running_mean, running_var] = [gamma, beta, running_mean, running_var]
            .map(|t| f32_contiguous(t, "a BatchNorm parameter or running statistic"));
        let shape = x.shape();
        let (c, plane) = channels_plane(&shape, nhwc);
        let count = shape.num_elements() / c.max(1);
        let y = empty(&x, shape);
        let [mean, var, new_mean, new_var] = [(); 4].map(|_| empty(&x, Shape::new([c])));
        let b = block(&x);
        let (cubes, dim) = per_channel(c, b);
        bn_forward::launch::<f32>(
            &x.client,
            cubes,
            dim,
            arg(&x),
            arg(&gamma),
            arg(&beta),
            arg(&running_mean),
            arg(&running_var),
            arg(&y),
            arg(&mean),
            arg(&var),
            arg(&new_mean),
            arg(&new_var),
            c,
            plane,
            count,
            epsilon as f32,
            (1.0 - momentum) as f32,
            momentum as f32,
            relu,
            b,
        );
        (y, mean, var, new_mean, new_var)
    }

    fn fused_batch_norm_train_backward(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        mean: CubeTensor,
        variance: CubeTensor,
        grad: CubeTensor,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let x = f32_contiguous(x, "the BatchNorm input");
        let grad = f32_contiguous(grad, "the BatchNorm output's gradient");
        let [gamma, beta, mean, variance] =
            [gamma, beta, mean, variance].map(|t| f32_contiguous(t, "a BatchNorm statistic"));
        let shape = x.shape();
        let (c, plane) = channels_plane(&shape, nhwc);
        let count = shape.num_elements() / c.max(1);
        let gx = empty(&x, shape);
        let ggamma = empty(&x, Shape::new([c]));
        let gbeta = empty(&x, Shape::new([c]));
        let b = block(&x);
        let (cubes, dim) = per_channel(c, b);
        bn_backward::launch::<f32>(
            &x.client,
            cubes,
            dim,
            arg(&x),
            arg(&grad),
            arg(&gamma),
            arg(&beta),
            arg(&mean),
            arg(&variance),
            arg(&gx),
            arg(&ggamma),
            arg(&gbeta),
            c,
            plane,
            count,
            epsilon as f32,
            relu,
            b,
        );
        (gx, ggamma, gbeta)
    }

    fn fused_batch_norm_eval(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        mean: CubeTensor,
        variance: CubeTensor,
        epsilon: f64,
        relu: bool,
        nhwc: bool,
    ) -> CubeTensor {
        let x = f32_contiguous(x, "the BatchNorm input");
        let [gamma, beta, mean, variance] =
            [gamma, beta, mean, variance].map(|t| f32_contiguous(t, "a BatchNorm statistic"));
        let shape = x.shape();
        let (c, plane) = channels_plane(&shape, nhwc);
        let y = empty(&x, shape.clone());
        let (cubes, dim) = per_item(&x, shape.num_elements());
        bn_eval::launch::<f32>(
            &x.client,
            cubes,
            dim,
            arg(&x),
            arg(&gamma),
            arg(&beta),
            arg(&mean),
            arg(&variance),
            arg(&y),
            shape.num_elements(),
            c,
            plane,
            epsilon as f32,
            relu,
        );
        y
    }

    fn fused_layer_norm(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        epsilon: f64,
    ) -> CubeTensor {
        Self::fused_layer_norm_saving(x, gamma, beta, epsilon).0
    }

    fn fused_layer_norm_saving(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        epsilon: f64,
    ) -> (CubeTensor, CubeTensor) {
        let x = f32_contiguous(x, "the LayerNorm input");
        let gamma = f32_contiguous(gamma, "LayerNorm's weight");
        let beta = f32_contiguous(beta, "LayerNorm's bias");
        let shape = x.shape();
        let c = gamma.shape().num_elements();
        let rows = shape.num_elements() / c.max(1);
        let y = empty(&x, shape);
        let (cubes, dim) = per_item(&x, rows);
        ln_forward::launch::<f32>(
            &x.client,
            cubes,
            dim,
            arg(&x),
            arg(&gamma),
            arg(&beta),
            arg(&y),
            rows,
            c,
            epsilon as f32,
        );
        (y, x)
    }

    fn fused_layer_norm_backward(
        x: CubeTensor,
        gamma: CubeTensor,
        grad: CubeTensor,
        epsilon: f64,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let x = f32_contiguous(x, "the LayerNorm input");
        let gamma = f32_contiguous(gamma, "LayerNorm's weight");
        let grad = f32_contiguous(grad, "the LayerNorm output's gradient");
        let shape = x.shape();
        let c = gamma.shape().num_elements();
        let rows = shape.num_elements() / c.max(1);
        let gx = empty(&x, shape);
        let stats = empty(&x, Shape::new([2 * rows]));
        let ggamma = empty(&x, Shape::new([c]));
        let gbeta = empty(&x, Shape::new([c]));
        let (cubes, dim) = per_item(&x, rows);
        ln_backward_rows::launch::<f32>(
            &x.client,
            cubes,
            dim,
            arg(&x),
            arg(&gamma),
            arg(&grad),
            arg(&gx),
            arg(&stats),
            rows,
            c,
            epsilon as f32,
        );
        let b = block(&x);
        let (cubes, dim) = per_channel(c, b);
        ln_backward_params::launch::<f32>(
            &x.client,
            cubes,
            dim,
            arg(&x),
            arg(&grad),
            arg(&stats),
            arg(&ggamma),
            arg(&gbeta),
            rows,
            c,
            b,
        );
        (gx, ggamma, gbeta)
    }
}
