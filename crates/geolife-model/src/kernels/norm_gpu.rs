//! BatchNorm (+ ReLU) and LayerNorm as cubecl kernels: the GPU build's counterpart of the CPU
//! kernels in `norm.rs`, with the same formulas and the same backend operations.
//!
//! burn runs these norms as chains of reductions, layout copies and broadcasts, and
//! differentiates them through the chain: on llvmpipe a BatchNorm + ReLU took 7 kernels forward
//! and 16 backward, a LayerNorm 5 and 27. Here a training BatchNorm whose channels fit one cube
//! each is one kernel forward and one backward (the statistics as tree sums in shared memory,
//! then the element-wise pass over the same values); a channel with more values is split over
//! several cubes, whose partial sums a second kernel merges per channel before an element-wise
//! third (see `Walk`). A LayerNorm is one kernel forward (a row per 32 lanes) and two or three
//! backward (the rows, then gamma's and beta's gradients over row chunks, merged when split).
//! Neighbouring units read neighbouring values (coalesced on a GPU). With operation fusion on
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

/// Units of a cube in the per-channel and per-row kernels (fewer where the device allows fewer).
const BLOCK: usize = 256;
/// Lanes of a LayerNorm row cube, reading a row's consecutive values side by side (a warp).
const ROW_LANES: usize = 32;
/// Channels of a channels-last cube, read side by side: 8 f32 values are one 32-byte memory
/// sector, and the cube keeps 32 walkers per channel for small maps.
const CHANNEL_LANES: usize = 8;
/// A channel's values are split over several cubes only when one cube's walkers would each
/// take more than this many; the split aims at this many per walker (rounding up the chunk
/// can leave about half as many). Small maps (the seed's cube ResNets) keep one cube per
/// channel group and one kernel.
const MIN_PER_WALKER: usize = 64;
/// Cubes to aim at when a reduction is split: a few per multiprocessor of a large GPU.
const TARGET_CUBES: usize = 512;
/// At most this many cubes add up one channel (their partial results are merged by a second
/// kernel, one unit per channel).
const MAX_PARTS: usize = 64;
/// The most cubes along one axis of a launch (WebGPU's limit).
const MAX_CUBES_PER_AXIS: usize = 65_535;

/// The totals of `v` and `w` over a group of the cube's units, returned to every unit of the
/// group (one tree for both: half the synchronisations of two): unit `UNIT_POS` is member
/// `member` of the group at `base`, its slot `base + member * stride`. The buffers may be
/// written again after the call.
#[cube]
#[allow(clippy::too_many_arguments)]
fn group_totals<F: Float>(
    buf: &mut [F],
    buf2: &mut [F],
    v: F,
    w: F,
    base: usize,
    member: usize,
    members: usize,
    stride: usize,
) -> (F, F) {
    buf[base + member * stride] = v;
    buf2[base + member * stride] = w;
    sync_cube();
    // `members` is a run-time value: a step derived from a comptime one is a constant, which
    // the loop could not halve.
    let mut step = members / 2;
    while step > 0 {
        if member < step {
            buf[base + member * stride] += buf[base + (member + step) * stride];
            buf2[base + member * stride] += buf2[base + (member + step) * stride];
        }
        sync_cube();
        step /= 2;
    }
    let totals = (buf[base], buf2[base]);
    sync_cube();
    totals
}

/// The per-channel kernels' walk over `[A, C, P]` values: the cube's walkers step through the
/// values of their channel, and the cubes along `y` each take one chunk of those values.
/// Channels-last values (`walkers_on_x` false) put 8 channels on the lanes `x` and the walkers
/// on `y`, so neighbouring units read neighbouring channels; channels-first values
/// (`walkers_on_x`) put the walkers on `x` and one channel per cube, so neighbouring units read
/// neighbouring values of one plane. Returns the channel, the walker and the number of walkers.
#[cube]
fn channel_walk(#[comptime] walkers_on_x: bool) -> (usize, usize, usize) {
    if walkers_on_x {
        (
            CUBE_POS_X as usize * CUBE_DIM_Y as usize + UNIT_POS_Y as usize,
            UNIT_POS_X as usize,
            CUBE_DIM_X as usize,
        )
    } else {
        (
            CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize,
            UNIT_POS_Y as usize,
            CUBE_DIM_Y as usize,
        )
    }
}

/// The totals of `v` and `w` over the walkers of this unit's channel (see [`channel_walk`]).
#[cube]
fn walkers_totals<F: Float>(
    buf: &mut [F],
    buf2: &mut [F],
    v: F,
    w: F,
    #[comptime] walkers_on_x: bool,
) -> (F, F) {
    if walkers_on_x {
        lanes_totals::<F>(buf, buf2, v, w)
    } else {
        let lanes = CUBE_DIM_X as usize;
        group_totals::<F>(
            buf,
            buf2,
            v,
            w,
            UNIT_POS_X as usize,
            UNIT_POS_Y as usize,
            CUBE_DIM_Y as usize,
            lanes,
        )
    }
}

/// The totals of `v` and `w` over the lanes of this unit's row (the LayerNorm row kernels: a
/// row per `y`, its values over the lanes `x`).
#[cube]
fn lanes_totals<F: Float>(buf: &mut [F], buf2: &mut [F], v: F, w: F) -> (F, F) {
    let lanes = CUBE_DIM_X as usize;
    group_totals::<F>(
        buf,
        buf2,
        v,
        w,
        UNIT_POS_Y as usize * lanes,
        UNIT_POS_X as usize,
        lanes,
        1,
    )
}

/// The smaller of two counts.
#[cube]
fn least(a: usize, b: usize) -> usize {
    select(a < b, a, b)
}

/// `(a, b)` of the affine map `x * a + b` of a BatchNorm channel: `a = gamma / std`,
/// `b = beta - mean * a`, computed as the CPU kernels do and the same way in every kernel (the
/// backward pass recomputes the forward's output to mask the ReLU).
#[cube]
fn affine<F: Float>(gamma: F, beta: F, mean: F, var: F, eps: f32) -> (F, F) {
    let a = gamma * inv_std::<F>(var, eps);
    (a, beta - mean * a)
}

/// `1 / sqrt(var + eps)`.
#[cube]
fn inv_std<F: Float>(var: F, eps: f32) -> F {
    F::new(1.0) / F::sqrt(var + F::cast_from(eps))
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

/// This cube's chunk of a channel's `count` values, `chunk` per cube along `y` (all of them
/// when there is one part): `(part, begin, end)`, empty for a lane without a channel.
#[cube]
fn chunk_of(count: usize, chunk: usize, live: bool) -> (usize, usize, usize) {
    let part = CUBE_POS_Y as usize;
    let begin = part * chunk;
    (
        part,
        begin,
        select(live, least(count, begin + chunk), begin),
    )
}

/// The mean of values `begin..end` of channel `c` and the sum of their squared deviations
/// from it (two passes over the walkers' values, totals for every unit).
#[cube]
#[allow(clippy::too_many_arguments)]
fn chunk_stats<F: Float, E: Float>(
    buf: &mut [F],
    buf2: &mut [F],
    x: &[E],
    c: usize,
    channels: usize,
    plane: usize,
    begin: usize,
    end: usize,
    #[comptime] walkers_on_x: bool,
) -> (F, F) {
    let (_, walker, walkers) = channel_walk(walkers_on_x);
    let mut s = F::new(0.0);
    for i in range_stepped(begin + walker, end, walkers) {
        s += F::cast_from(x[at(i, c, channels, plane)]);
    }
    let n = divisor::<F>(end - begin);
    let mean = walkers_totals::<F>(buf, buf2, s, F::new(0.0), walkers_on_x).0 / n;
    let mut q = F::new(0.0);
    for i in range_stepped(begin + walker, end, walkers) {
        let d = F::cast_from(x[at(i, c, channels, plane)]) - mean;
        q += d * d;
    }
    let m2 = walkers_totals::<F>(buf, buf2, q, F::new(0.0), walkers_on_x).0;
    (mean, m2)
}

/// The sums of `g` and of `g * (x - m)` over values `begin..end` of channel `c`, where `g` is
/// the incoming gradient, zero where the ReLU cut the output `x * a + b` (totals for every
/// unit).
#[cube]
#[allow(clippy::too_many_arguments)]
fn grad_sums<F: Float, E: Float>(
    buf: &mut [F],
    buf2: &mut [F],
    x: &[E],
    grad: &[E],
    c: usize,
    channels: usize,
    plane: usize,
    begin: usize,
    end: usize,
    m: F,
    a: F,
    b: F,
    #[comptime] relu: bool,
    #[comptime] walkers_on_x: bool,
) -> (F, F) {
    let (_, walker, walkers) = channel_walk(walkers_on_x);
    let mut sg = F::new(0.0);
    let mut sgx = F::new(0.0);
    for i in range_stepped(begin + walker, end, walkers) {
        let k = at(i, c, channels, plane);
        let xv = F::cast_from(x[k]);
        let g = through_relu::<F>(F::cast_from(grad[k]), xv * a + b, relu);
        sg += g;
        sgx += g * (xv - m);
    }
    walkers_totals::<F>(buf, buf2, sg, sgx, walkers_on_x)
}

/// `v`, through a ReLU when `relu`.
#[cube]
fn activated<F: Float>(v: F, #[comptime] relu: bool) -> F {
    let mut y = v;
    if relu {
        y = F::max(v, F::new(0.0));
    }
    y
}

/// A running statistic moved towards the batch's: `running * keep + batch * take`, the f32
/// operations burn's layer runs.
#[cube]
fn moved<F: Float>(running: F, batch: F, keep: f32, take: f32) -> F {
    running * F::cast_from(keep) + batch * F::cast_from(take)
}

/// Training BatchNorm, each channel's values in one cube (one or 8 channels per cube, see
/// [`channel_walk`]): its mean and
/// biased variance (written to `mean` and `var`, and moved into the running statistics:
/// `running * keep + batch * take`), then `y = x * a + b` with `a = gamma / std`,
/// `b = beta - mean * a`, ReLU when `relu`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_forward<F: Float, E: Float>(
    x: &[E],
    gamma: &[F],
    beta: &[F],
    running_mean: &[F],
    running_var: &[F],
    y: &mut [E],
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
    #[comptime] walkers_on_x: bool,
    #[comptime] block: usize,
) {
    let mut shared = Shared::<[F]>::new_slice(block);
    let mut shared2 = Shared::<[F]>::new_slice(block);
    let (ch, walker, walkers) = channel_walk(walkers_on_x);
    let live = ch < channels;
    let c = select(live, ch, 0);
    let (_, begin, end) = chunk_of(count, count, live);
    let (mean, m2) = chunk_stats::<F, E>(
        &mut shared,
        &mut shared2,
        x,
        c,
        channels,
        plane,
        begin,
        end,
        walkers_on_x,
    );
    let var = m2 / divisor::<F>(count);
    let (a, b) = affine::<F>(gamma[c], beta[c], mean, var, eps);
    for i in range_stepped(walker, end, walkers) {
        let k = at(i, c, channels, plane);
        y[k] = E::cast_from(activated::<F>(F::cast_from(x[k]) * a + b, relu));
    }
    if live && walker == 0 {
        mean_out[c] = mean;
        var_out[c] = var;
        running_mean_out[c] = moved::<F>(running_mean[c], mean, keep, take);
        running_var_out[c] = moved::<F>(running_var[c], var, keep, take);
    }
}

/// The first pass of a training BatchNorm whose channels are split over `CUBE_COUNT_Y` cubes:
/// the mean and the sum of squared deviations from it (`m2`) of this cube's chunk of `chunk`
/// values of the channel, at `[part, channel]`; [`bn_merge_stats`] merges them.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_partial_stats<F: Float, E: Float>(
    x: &[E],
    part_mean: &mut [F],
    part_m2: &mut [F],
    channels: usize,
    plane: usize,
    count: usize,
    chunk: usize,
    #[comptime] walkers_on_x: bool,
    #[comptime] block: usize,
) {
    let mut shared = Shared::<[F]>::new_slice(block);
    let mut shared2 = Shared::<[F]>::new_slice(block);
    let (ch, walker, _) = channel_walk(walkers_on_x);
    let live = ch < channels;
    let c = select(live, ch, 0);
    let (part, begin, end) = chunk_of(count, chunk, live);
    let (mean, m2) = chunk_stats::<F, E>(
        &mut shared,
        &mut shared2,
        x,
        c,
        channels,
        plane,
        begin,
        end,
        walkers_on_x,
    );
    if live && walker == 0 {
        part_mean[part * channels + c] = mean;
        part_m2[part * channels + c] = m2;
    }
}

/// Merges [`bn_partial_stats`]'s chunks, one unit per channel (Chan et al.'s pairwise update,
/// stable where the chunks' means differ), into the batch mean and biased variance, moves them
/// into the running statistics as [`bn_forward`] does, and writes the channel's affine map
/// (`scale`, `shift`) for [`bn_apply`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_merge_stats<F: Float>(
    part_mean: &[F],
    part_m2: &[F],
    gamma: &[F],
    beta: &[F],
    running_mean: &[F],
    running_var: &[F],
    mean_out: &mut [F],
    var_out: &mut [F],
    running_mean_out: &mut [F],
    running_var_out: &mut [F],
    scale: &mut [F],
    shift: &mut [F],
    channels: usize,
    count: usize,
    chunk: usize,
    parts: usize,
    eps: f32,
    keep: f32,
    take: f32,
) {
    let c = ABSOLUTE_POS;
    if c >= channels {
        terminate!();
    }
    let mut n = F::new(0.0);
    let mut mean = F::new(0.0);
    let mut m2 = F::new(0.0);
    for part in 0..parts {
        let begin = part * chunk;
        let nb = F::cast_from(least(count, begin + chunk) - begin);
        let total = n + nb;
        let delta = part_mean[part * channels + c] - mean;
        mean += delta * nb / total;
        m2 += part_m2[part * channels + c] + delta * delta * n * nb / total;
        n = total;
    }
    let var = m2 / divisor::<F>(count);
    mean_out[c] = mean;
    var_out[c] = var;
    running_mean_out[c] = moved::<F>(running_mean[c], mean, keep, take);
    running_var_out[c] = moved::<F>(running_var[c], var, keep, take);
    let (a, b) = affine::<F>(gamma[c], beta[c], mean, var, eps);
    scale[c] = a;
    shift[c] = b;
}

/// `y = x * scale + shift` per channel, ReLU when `relu`, one unit per value: the second pass
/// of a split training BatchNorm.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_apply<F: Float, E: Float>(
    x: &[E],
    scale: &[F],
    shift: &[F],
    y: &mut [E],
    len: usize,
    channels: usize,
    plane: usize,
    #[comptime] relu: bool,
) {
    let k = ABSOLUTE_POS;
    if k >= len {
        terminate!();
    }
    let c = (k / plane) % channels;
    y[k] = E::cast_from(activated::<F>(
        F::cast_from(x[k]) * scale[c] + shift[c],
        relu,
    ));
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

/// Training BatchNorm's gradients, each channel's values in one cube (see [`channel_walk`]):
/// the sums of `g` (beta's
/// gradient) and of `g * xhat` (gamma's), then
/// `gx = gamma / std * (g - mean(g) - xhat * mean(g * xhat))`, where `g` is the incoming
/// gradient, zero where the ReLU cut the output.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_backward<F: Float, E: Float>(
    x: &[E],
    grad: &[E],
    gamma: &[F],
    beta: &[F],
    mean: &[F],
    var: &[F],
    gx: &mut [E],
    ggamma: &mut [F],
    gbeta: &mut [F],
    channels: usize,
    plane: usize,
    count: usize,
    eps: f32,
    #[comptime] relu: bool,
    #[comptime] walkers_on_x: bool,
    #[comptime] block: usize,
) {
    let mut shared = Shared::<[F]>::new_slice(block);
    let mut shared2 = Shared::<[F]>::new_slice(block);
    let (ch, walker, walkers) = channel_walk(walkers_on_x);
    let live = ch < channels;
    let c = select(live, ch, 0);
    let (_, begin, end) = chunk_of(count, count, live);
    let n = divisor::<F>(count);
    let m = mean[c];
    let inv = inv_std::<F>(var[c], eps);
    let (a, b) = affine::<F>(gamma[c], beta[c], m, var[c], eps);
    let (sg, sgx) = grad_sums::<F, E>(
        &mut shared,
        &mut shared2,
        x,
        grad,
        c,
        channels,
        plane,
        begin,
        end,
        m,
        a,
        b,
        relu,
        walkers_on_x,
    );
    let sgx = sgx * inv;
    let mg = sg / n;
    let mgx = sgx / n;
    for i in range_stepped(walker, end, walkers) {
        let k = at(i, c, channels, plane);
        let xv = F::cast_from(x[k]);
        let g = through_relu::<F>(F::cast_from(grad[k]), xv * a + b, relu);
        gx[k] = E::cast_from(a * (g - mg - (xv - m) * inv * mgx));
    }
    if live && walker == 0 {
        ggamma[c] = sgx;
        gbeta[c] = sg;
    }
}

/// The first pass of a split training BatchNorm's gradients: this cube's chunk of the sums of
/// `g * xhat` and of `g` (see [`bn_backward`]) at `[part, channel]`, for [`bn_merge_grads`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_partial_grads<F: Float, E: Float>(
    x: &[E],
    grad: &[E],
    gamma: &[F],
    beta: &[F],
    mean: &[F],
    var: &[F],
    part_gx: &mut [F],
    part_g: &mut [F],
    channels: usize,
    plane: usize,
    count: usize,
    chunk: usize,
    eps: f32,
    #[comptime] relu: bool,
    #[comptime] walkers_on_x: bool,
    #[comptime] block: usize,
) {
    let mut shared = Shared::<[F]>::new_slice(block);
    let mut shared2 = Shared::<[F]>::new_slice(block);
    let (ch, walker, _) = channel_walk(walkers_on_x);
    let live = ch < channels;
    let c = select(live, ch, 0);
    let (part, begin, end) = chunk_of(count, chunk, live);
    let m = mean[c];
    let (a, b) = affine::<F>(gamma[c], beta[c], m, var[c], eps);
    let (sg, sgx) = grad_sums::<F, E>(
        &mut shared,
        &mut shared2,
        x,
        grad,
        c,
        channels,
        plane,
        begin,
        end,
        m,
        a,
        b,
        relu,
        walkers_on_x,
    );
    let sgx = sgx * inv_std::<F>(var[c], eps);
    if live && walker == 0 {
        part_gx[part * channels + c] = sgx;
        part_g[part * channels + c] = sg;
    }
}

/// Adds up `[parts, c]` partial sums over the parts, one unit per column, for two sums at once
/// (LayerNorm's parameter gradients).
#[cube(launch)]
fn sum_parts<F: Float>(
    first_parts: &[F],
    second_parts: &[F],
    first: &mut [F],
    second: &mut [F],
    parts: usize,
    c: usize,
) {
    let k = ABSOLUTE_POS;
    if k >= c {
        terminate!();
    }
    let mut a = F::new(0.0);
    let mut b = F::new(0.0);
    for part in 0..parts {
        a += first_parts[part * c + k];
        b += second_parts[part * c + k];
    }
    first[k] = a;
    second[k] = b;
}

/// Adds up [`bn_partial_grads`]'s chunks, one unit per channel, into gamma's and beta's
/// gradients, and writes the channel's coefficients for [`bn_backward_apply`]: the affine map
/// (`scale`, `shift`, to mask the ReLU), `slope = -a * mean(g * xhat) / std` and
/// `offset = -a * mean(g)`, so that `gx = a * g + (x - mean) * slope + offset` is
/// [`bn_backward`]'s formula.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_merge_grads<F: Float>(
    part_gx: &[F],
    part_g: &[F],
    gamma: &[F],
    beta: &[F],
    mean: &[F],
    var: &[F],
    ggamma: &mut [F],
    gbeta: &mut [F],
    scale: &mut [F],
    shift: &mut [F],
    slope: &mut [F],
    offset: &mut [F],
    channels: usize,
    count: usize,
    parts: usize,
    eps: f32,
) {
    let c = ABSOLUTE_POS;
    if c >= channels {
        terminate!();
    }
    let mut sgx = F::new(0.0);
    let mut sg = F::new(0.0);
    for part in 0..parts {
        sgx += part_gx[part * channels + c];
        sg += part_g[part * channels + c];
    }
    ggamma[c] = sgx;
    gbeta[c] = sg;
    let n = divisor::<F>(count);
    let inv = inv_std::<F>(var[c], eps);
    let (a, b) = affine::<F>(gamma[c], beta[c], mean[c], var[c], eps);
    scale[c] = a;
    shift[c] = b;
    slope[c] = F::new(0.0) - a * inv * (sgx / n);
    offset[c] = F::new(0.0) - a * (sg / n);
}

/// A split training BatchNorm's input gradient, one unit per value, with the coefficients of
/// [`bn_merge_grads`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_backward_apply<F: Float, E: Float>(
    x: &[E],
    grad: &[E],
    mean: &[F],
    scale: &[F],
    shift: &[F],
    slope: &[F],
    offset: &[F],
    gx: &mut [E],
    len: usize,
    channels: usize,
    plane: usize,
    #[comptime] relu: bool,
) {
    let k = ABSOLUTE_POS;
    if k >= len {
        terminate!();
    }
    let c = (k / plane) % channels;
    let xv = F::cast_from(x[k]);
    let a = scale[c];
    let g = through_relu::<F>(F::cast_from(grad[k]), xv * a + shift[c], relu);
    gx[k] = E::cast_from(a * g + (xv - mean[c]) * slope[c] + offset[c]);
}

/// BatchNorm with fixed statistics, one unit per value.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bn_eval<F: Float, E: Float>(
    x: &[E],
    gamma: &[F],
    beta: &[F],
    mean: &[F],
    var: &[F],
    y: &mut [E],
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
    y[k] = E::cast_from(activated::<F>(F::cast_from(x[k]) * a + b, relu));
}

/// The LayerNorm row of this unit (a row per `y` of the cube, its values over the lanes `x`),
/// whether it is a row at all, and where it starts.
#[cube]
fn ln_row(rows: usize, c: usize) -> (bool, usize, usize) {
    let r = CUBE_POS * CUBE_DIM_Y as usize + UNIT_POS_Y as usize;
    let live = r < rows;
    (live, select(live, r, 0), select(live, c, 0))
}

/// The mean and `1 / std` of the row of `end` values at `base` (see [`ln_row`]), for every
/// lane of the row.
#[cube]
fn ln_stats<F: Float, E: Float>(
    buf: &mut [F],
    buf2: &mut [F],
    x: &[E],
    base: usize,
    end: usize,
    c: usize,
    eps: f32,
) -> (F, F) {
    let lane = UNIT_POS_X as usize;
    let lanes = CUBE_DIM_X as usize;
    let n = divisor::<F>(c);
    let mut s = F::new(0.0);
    for k in range_stepped(lane, end, lanes) {
        s += F::cast_from(x[base + k]);
    }
    let mean = lanes_totals::<F>(buf, buf2, s, F::new(0.0)).0 / n;
    let mut q = F::new(0.0);
    for k in range_stepped(lane, end, lanes) {
        let d = F::cast_from(x[base + k]) - mean;
        q += d * d;
    }
    let var = lanes_totals::<F>(buf, buf2, q, F::new(0.0)).0 / n;
    (mean, inv_std::<F>(var, eps))
}

/// LayerNorm over rows of `c` values, a row per `y` of a cube and its values over the lanes,
/// so that a warp reads consecutive values.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ln_forward<F: Float, E: Float>(
    x: &[E],
    gamma: &[F],
    beta: &[F],
    y: &mut [E],
    rows: usize,
    c: usize,
    eps: f32,
    #[comptime] block: usize,
) {
    let mut shared = Shared::<[F]>::new_slice(block);
    let mut shared2 = Shared::<[F]>::new_slice(block);
    let (_live, r, end) = ln_row(rows, c);
    let base = r * c;
    let (mean, rstd) = ln_stats::<F, E>(&mut shared, &mut shared2, x, base, end, c, eps);
    for k in range_stepped(UNIT_POS_X as usize, end, CUBE_DIM_X as usize) {
        let xv = F::cast_from(x[base + k]);
        y[base + k] = E::cast_from((xv - mean) * rstd * gamma[k] + beta[k]);
    }
}

/// LayerNorm's input gradient, rows as in [`ln_forward`]:
/// `gx = rstd * (g * gamma - mean(g * gamma) - xhat * mean(g * gamma * xhat))`; each row's mean
/// and `1 / std` go to `stats` for [`ln_backward_params`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ln_backward_rows<F: Float, E: Float>(
    x: &[E],
    gamma: &[F],
    grad: &[E],
    gx: &mut [E],
    stats: &mut [F],
    rows: usize,
    c: usize,
    eps: f32,
    #[comptime] block: usize,
) {
    let mut shared = Shared::<[F]>::new_slice(block);
    let mut shared2 = Shared::<[F]>::new_slice(block);
    let (live, r, end) = ln_row(rows, c);
    let base = r * c;
    let lane = UNIT_POS_X as usize;
    let lanes = CUBE_DIM_X as usize;
    let (mean, rstd) = ln_stats::<F, E>(&mut shared, &mut shared2, x, base, end, c, eps);
    let mut s1 = F::new(0.0);
    let mut s2 = F::new(0.0);
    for k in range_stepped(lane, end, lanes) {
        let d = F::cast_from(grad[base + k]) * gamma[k];
        s1 += d;
        s2 += d * (F::cast_from(x[base + k]) - mean) * rstd;
    }
    let n = divisor::<F>(c);
    let (s1, s2) = lanes_totals::<F>(&mut shared, &mut shared2, s1, s2);
    let (m1, m2) = (s1 / n, s2 / n);
    for k in range_stepped(lane, end, lanes) {
        let xhat = (F::cast_from(x[base + k]) - mean) * rstd;
        let g = F::cast_from(grad[base + k]);
        gx[base + k] = E::cast_from(rstd * (g * gamma[k] - m1 - xhat * m2));
    }
    if live && lane == 0 {
        stats[2 * r] = mean;
        stats[2 * r + 1] = rstd;
    }
}

/// LayerNorm's gradients of gamma (`sum g * xhat`) and beta (`sum g`) over the rows, with the
/// rows' statistics from [`ln_backward_rows`]: channels over the lanes, rows over the walkers
/// (see [`channel_walk`]), this cube's chunk of `chunk` rows to `[part, channel]` (the gradients
/// themselves when there is one part, else summed by [`sum_parts`]).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ln_backward_params<F: Float, E: Float>(
    x: &[E],
    grad: &[E],
    stats: &[F],
    part_gx: &mut [F],
    part_g: &mut [F],
    rows: usize,
    c: usize,
    chunk: usize,
    #[comptime] walkers_on_x: bool,
    #[comptime] block: usize,
) {
    let mut shared = Shared::<[F]>::new_slice(block);
    let mut shared2 = Shared::<[F]>::new_slice(block);
    let (ch, walker, walkers) = channel_walk(walkers_on_x);
    let live = ch < c;
    let k = select(live, ch, 0);
    let (part, begin, end) = chunk_of(rows, chunk, live);
    let mut sg = F::new(0.0);
    let mut sgx = F::new(0.0);
    for r in range_stepped(begin + walker, end, walkers) {
        let g = F::cast_from(grad[r * c + k]);
        sg += g;
        sgx += g * (F::cast_from(x[r * c + k]) - stats[2 * r]) * stats[2 * r + 1];
    }
    let (sg, sgx) = walkers_totals::<F>(&mut shared, &mut shared2, sg, sgx, walkers_on_x);
    if live && walker == 0 {
        part_gx[part * c + k] = sgx;
        part_g[part * c + k] = sg;
    }
}

// ---------------------------------------------------------------------------------------------
// Launches.

/// `t` contiguous, checked to hold f32 values: parameters and statistics here, and the finite
/// check's tensors (the activations may also be f16, see `float_contiguous`).
pub(super) fn f32_contiguous(t: CubeTensor, what: &str) -> CubeTensor {
    assert_eq!(
        t.dtype,
        DType::F32,
        "the GPU norm kernels take f32 values; {what} is {:?}",
        t.dtype
    );
    into_contiguous(t)
}

/// `t` contiguous, checked to hold values of the activations' type `E` (f32, or f16 inside an
/// f16 autocast scope; see `norm::half_for_norm`).
fn float_contiguous<E: burn::tensor::Element>(t: CubeTensor, what: &str) -> CubeTensor {
    assert_eq!(
        t.dtype,
        E::dtype(),
        "the GPU norm kernels take one type of activations; {what} is {:?}",
        t.dtype
    );
    into_contiguous(t)
}

/// An uninitialised contiguous tensor of `like`'s type on its device.
fn empty_as(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, like.dtype)
}

/// An uninitialised contiguous f32 tensor on `like`'s device.
pub(super) fn empty(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// The units of a cube: [`BLOCK`], or the largest power of two the device allows.
pub(super) fn block(t: &CubeTensor) -> usize {
    let most = t.client.properties().hardware.max_units_per_cube as usize;
    let mut b = BLOCK;
    while b > most.max(1) {
        b /= 2;
    }
    b
}

/// How a per-channel reduction over `count` values of each of `channels` channels is launched
/// (see `channel_walk` in the kernels): the cube's lanes and walkers, and the chunks that the
/// channel's values are split into, one cube each along `y`.
struct Walk {
    cubes: CubeCount,
    dim: CubeDim,
    block: usize,
    /// The walkers are the cube's `x` (channels-first values, one channel per cube), else its
    /// `y` (channels-last: the lanes `x` take neighbouring channels).
    walkers_on_x: bool,
    /// Values of a channel per cube (all of them when `parts == 1`).
    chunk: usize,
    parts: usize,
}

impl Walk {
    /// `channels_last`: a channel's neighbour is the next value in memory, so the lanes take
    /// neighbouring channels; else one channel per cube, its walkers reading neighbouring
    /// values. A channel is split when one cube's walkers would each take more than
    /// [`MIN_PER_WALKER`] values and the channels alone would not fill [`TARGET_CUBES`].
    fn new(t: &CubeTensor, channels: usize, count: usize, channels_last: bool) -> Walk {
        let block = block(t);
        let lanes = match channels_last {
            true => CHANNEL_LANES.min(block),
            false => 1,
        };
        let walkers = block / lanes;
        let channel_cubes = channels.div_ceil(lanes).max(1);
        assert!(
            channel_cubes <= MAX_CUBES_PER_AXIS,
            "{channels} channels need {channel_cubes} cubes along one axis, more than the \
             {MAX_CUBES_PER_AXIS} a launch may have"
        );
        let by_work = count.div_ceil(MIN_PER_WALKER * walkers);
        let by_cubes = TARGET_CUBES.div_ceil(channel_cubes);
        let parts = by_work.min(by_cubes).clamp(1, MAX_PARTS);
        let chunk = count.div_ceil(parts).max(1);
        // No empty chunk: the merge divides by each chunk's count.
        let parts = count.div_ceil(chunk).max(1);
        let dim = match channels_last {
            true => CubeDim::new_2d(lanes as u32, walkers as u32),
            false => CubeDim::new_2d(walkers as u32, 1),
        };
        Walk {
            cubes: CubeCount::Static(channel_cubes as u32, parts as u32, 1),
            dim,
            block,
            walkers_on_x: !channels_last,
            chunk,
            parts,
        }
    }
}

/// The LayerNorm row kernels' launch: a row per `y` of a cube, its values over [`ROW_LANES`]
/// lanes.
fn rows_launch(t: &CubeTensor, rows: usize) -> (CubeCount, CubeDim, usize) {
    let block = block(t);
    let lanes = ROW_LANES.min(block);
    let dim = CubeDim::new_2d(lanes as u32, (block / lanes) as u32);
    // The kernels number the cubes linearly (`CUBE_POS`), so a count spread over two axes
    // for more than 65,535 cubes is fine.
    let cubes = cubecl::calculate_cube_count_elemwise(&t.client, rows.max(1) * lanes, dim);
    (cubes, dim, block)
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
        f32_or_f16!(
            x.dtype,
            "the GPU norm kernels' activations",
            bn_train(
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                epsilon,
                momentum,
                relu,
                nhwc
            )
        )
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
        f32_or_f16!(
            x.dtype,
            "the GPU norm kernels' activations",
            bn_train_backward(x, gamma, beta, mean, variance, grad, epsilon, relu, nhwc)
        )
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
        f32_or_f16!(
            x.dtype,
            "the GPU norm kernels' activations",
            bn_eval_launch(x, gamma, beta, mean, variance, epsilon, relu, nhwc)
        )
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
        f32_or_f16!(
            x.dtype,
            "the GPU norm kernels' activations",
            ln_forward_launch(x, gamma, beta, epsilon)
        )
    }

    fn fused_layer_norm_backward(
        x: CubeTensor,
        gamma: CubeTensor,
        grad: CubeTensor,
        epsilon: f64,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        f32_or_f16!(
            x.dtype,
            "the GPU norm kernels' activations",
            ln_backward_launch(x, gamma, grad, epsilon)
        )
    }
}

/// [`NormBackend::fused_batch_norm_train`] for activations of type `E`.
#[allow(clippy::too_many_arguments)]
fn bn_train<E: Float + CubeElement + burn::tensor::Element>(
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
    let x = float_contiguous::<E>(x, "the BatchNorm input");
    let [gamma, beta, running_mean, running_var] = [gamma, beta, running_mean, running_var]
        .map(|t| f32_contiguous(t, "a BatchNorm parameter or running statistic"));
    let shape = x.shape();
    let len = shape.num_elements();
    let (c, plane) = channels_plane(&shape, nhwc);
    let count = len / c.max(1);
    let y = empty_as(&x, shape);
    let [mean, var, new_mean, new_var] = [(); 4].map(|_| empty(&x, Shape::new([c])));
    let (eps, keep, take) = (epsilon as f32, (1.0 - momentum) as f32, momentum as f32);
    let walk = Walk::new(&x, c, count, plane == 1);
    if walk.parts == 1 {
        bn_forward::launch::<f32, E>(
            &x.client,
            walk.cubes,
            walk.dim,
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
            eps,
            keep,
            take,
            relu,
            walk.walkers_on_x,
            walk.block,
        );
        return (y, mean, var, new_mean, new_var);
    }
    // Large channels: partial statistics over chunks, merged per channel, then the
    // element-wise pass with them.
    let [part_mean, part_m2] = [(); 2].map(|_| empty(&x, Shape::new([walk.parts * c])));
    bn_partial_stats::launch::<f32, E>(
        &x.client,
        walk.cubes,
        walk.dim,
        arg(&x),
        arg(&part_mean),
        arg(&part_m2),
        c,
        plane,
        count,
        walk.chunk,
        walk.walkers_on_x,
        walk.block,
    );
    let [scale, shift] = [(); 2].map(|_| empty(&x, Shape::new([c])));
    let (cubes, dim) = per_item(&x, c);
    bn_merge_stats::launch::<f32>(
        &x.client,
        cubes,
        dim,
        arg(&part_mean),
        arg(&part_m2),
        arg(&gamma),
        arg(&beta),
        arg(&running_mean),
        arg(&running_var),
        arg(&mean),
        arg(&var),
        arg(&new_mean),
        arg(&new_var),
        arg(&scale),
        arg(&shift),
        c,
        count,
        walk.chunk,
        walk.parts,
        eps,
        keep,
        take,
    );
    let (cubes, dim) = per_item(&x, len);
    bn_apply::launch::<f32, E>(
        &x.client,
        cubes,
        dim,
        arg(&x),
        arg(&scale),
        arg(&shift),
        arg(&y),
        len,
        c,
        plane,
        relu,
    );
    (y, mean, var, new_mean, new_var)
}

/// [`NormBackend::fused_batch_norm_train_backward`] for activations of type `E`.
#[allow(clippy::too_many_arguments)]
fn bn_train_backward<E: Float + CubeElement + burn::tensor::Element>(
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
    let x = float_contiguous::<E>(x, "the BatchNorm input");
    let grad = float_contiguous::<E>(grad, "the BatchNorm output's gradient");
    let [gamma, beta, mean, variance] =
        [gamma, beta, mean, variance].map(|t| f32_contiguous(t, "a BatchNorm statistic"));
    let shape = x.shape();
    let len = shape.num_elements();
    let (c, plane) = channels_plane(&shape, nhwc);
    let count = len / c.max(1);
    let gx = empty_as(&x, shape);
    let ggamma = empty(&x, Shape::new([c]));
    let gbeta = empty(&x, Shape::new([c]));
    let eps = epsilon as f32;
    let walk = Walk::new(&x, c, count, plane == 1);
    if walk.parts == 1 {
        bn_backward::launch::<f32, E>(
            &x.client,
            walk.cubes,
            walk.dim,
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
            eps,
            relu,
            walk.walkers_on_x,
            walk.block,
        );
        return (gx, ggamma, gbeta);
    }
    let [part_gx, part_g] = [(); 2].map(|_| empty(&x, Shape::new([walk.parts * c])));
    bn_partial_grads::launch::<f32, E>(
        &x.client,
        walk.cubes,
        walk.dim,
        arg(&x),
        arg(&grad),
        arg(&gamma),
        arg(&beta),
        arg(&mean),
        arg(&variance),
        arg(&part_gx),
        arg(&part_g),
        c,
        plane,
        count,
        walk.chunk,
        eps,
        relu,
        walk.walkers_on_x,
        walk.block,
    );
    let [scale, shift, slope, offset] = [(); 4].map(|_| empty(&x, Shape::new([c])));
    let (cubes, dim) = per_item(&x, c);
    bn_merge_grads::launch::<f32>(
        &x.client,
        cubes,
        dim,
        arg(&part_gx),
        arg(&part_g),
        arg(&gamma),
        arg(&beta),
        arg(&mean),
        arg(&variance),
        arg(&ggamma),
        arg(&gbeta),
        arg(&scale),
        arg(&shift),
        arg(&slope),
        arg(&offset),
        c,
        count,
        walk.parts,
        eps,
    );
    let (cubes, dim) = per_item(&x, len);
    bn_backward_apply::launch::<f32, E>(
        &x.client,
        cubes,
        dim,
        arg(&x),
        arg(&grad),
        arg(&mean),
        arg(&scale),
        arg(&shift),
        arg(&slope),
        arg(&offset),
        arg(&gx),
        len,
        c,
        plane,
        relu,
    );
    (gx, ggamma, gbeta)
}

/// [`NormBackend::fused_batch_norm_eval`] for activations of type `E`.
#[allow(clippy::too_many_arguments)]
fn bn_eval_launch<E: Float + CubeElement + burn::tensor::Element>(
    x: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    mean: CubeTensor,
    variance: CubeTensor,
    epsilon: f64,
    relu: bool,
    nhwc: bool,
) -> CubeTensor {
    let x = float_contiguous::<E>(x, "the BatchNorm input");
    let [gamma, beta, mean, variance] =
        [gamma, beta, mean, variance].map(|t| f32_contiguous(t, "a BatchNorm statistic"));
    let shape = x.shape();
    let (c, plane) = channels_plane(&shape, nhwc);
    let y = empty_as(&x, shape.clone());
    let (cubes, dim) = per_item(&x, shape.num_elements());
    bn_eval::launch::<f32, E>(
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

/// [`NormBackend::fused_layer_norm_saving`] for activations of type `E`.
#[allow(clippy::too_many_arguments)]
fn ln_forward_launch<E: Float + CubeElement + burn::tensor::Element>(
    x: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    epsilon: f64,
) -> (CubeTensor, CubeTensor) {
    let x = float_contiguous::<E>(x, "the LayerNorm input");
    let gamma = f32_contiguous(gamma, "LayerNorm's weight");
    let beta = f32_contiguous(beta, "LayerNorm's bias");
    let shape = x.shape();
    let c = gamma.shape().num_elements();
    let rows = shape.num_elements() / c.max(1);
    let y = empty_as(&x, shape);
    let (cubes, dim, block) = rows_launch(&x, rows);
    ln_forward::launch::<f32, E>(
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
        block,
    );
    (y, x)
}

/// [`NormBackend::fused_layer_norm_backward`] for activations of type `E`.
#[allow(clippy::too_many_arguments)]
fn ln_backward_launch<E: Float + CubeElement + burn::tensor::Element>(
    x: CubeTensor,
    gamma: CubeTensor,
    grad: CubeTensor,
    epsilon: f64,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let x = float_contiguous::<E>(x, "the LayerNorm input");
    let gamma = f32_contiguous(gamma, "LayerNorm's weight");
    let grad = float_contiguous::<E>(grad, "the LayerNorm output's gradient");
    let shape = x.shape();
    let c = gamma.shape().num_elements();
    let rows = shape.num_elements() / c.max(1);
    let gx = empty_as(&x, shape);
    let stats = empty(&x, Shape::new([2 * rows]));
    let ggamma = empty(&x, Shape::new([c]));
    let gbeta = empty(&x, Shape::new([c]));
    let (cubes, dim, block) = rows_launch(&x, rows);
    ln_backward_rows::launch::<f32, E>(
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
        block,
    );
    // The parameters' gradients: channels over the lanes, rows split over cubes when many.
    let walk = Walk::new(&x, c, rows, true);
    let parts = match walk.parts {
        1 => None,
        p => Some([(); 2].map(|_| empty(&x, Shape::new([p * c])))),
    };
    let (first, second) = match &parts {
        Some([a, b]) => (a, b),
        None => (&ggamma, &gbeta),
    };
    ln_backward_params::launch::<f32, E>(
        &x.client,
        walk.cubes,
        walk.dim,
        arg(&x),
        arg(&grad),
        arg(&stats),
        arg(first),
        arg(second),
        rows,
        c,
        walk.chunk,
        walk.walkers_on_x,
        walk.block,
    );
    if parts.is_some() {
        launch_sum_parts(first, second, &ggamma, &gbeta, walk.parts, c);
    }
    (gx, ggamma, gbeta)
}

/// [`sum_parts`] of two `[parts, c]` partial sums into `first` and `second`.
fn launch_sum_parts(
    first_parts: &CubeTensor,
    second_parts: &CubeTensor,
    first: &CubeTensor,
    second: &CubeTensor,
    parts: usize,
    c: usize,
) {
    let (cubes, dim) = per_item(first, c);
    sum_parts::launch::<f32>(
        &first.client,
        cubes,
        dim,
        arg(first_parts),
        arg(second_parts),
        arg(first),
        arg(second),
        parts,
        c,
    );
}
