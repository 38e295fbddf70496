//! Dense and depthwise 2-D convolutions on the CPU, channels-first and channels-last: a dense one
//! as a few large matrix products over cache-sized pieces of the batch (burn flex runs one small
//! product per sample and tile), a depthwise one as direct loops (burn's loop over the groups).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, FloatDType, Shape, Tensor};
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::autocast;
use super::shared::{
    add_shares, matmul, matmul_into, matmul_new, on_cpu_f32, on_gpu_f16, on_gpu_f32, par_filled,
    register_grads, slice, tensor, widest,
};

/// Patch-matrix values per piece of the batch (4 MiB): small enough to stay in cache between
/// being built and multiplied, large enough for full-speed products.
const PIECE_VALUES: usize = 1 << 20;

/// Largest patch matrix (values) of one sample the dense kernel builds; bigger ones run burn's
/// tiled convolution, which needs less memory.
const MAX_PATCH_VALUES: usize = 1 << 25;

/// Convolutions with their own CPU kernels. Padding is symmetric: `[rows, columns]`.
#[backend_extension(Flex, Autodiff)]
pub trait ConvBackend: Backend {
    /// A dense convolution (one group, no dilation, no bias). With `nhwc` the input and the
    /// output are channels-last (`[B, H, W, C]`), else `[B, C, H, W]`; the weight is burn's
    /// `[Co, C, kh, kw]` either way.
    fn dense_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        nhwc: bool,
    ) -> FloatTensor<Self>;

    /// [`dense_conv2d`](ConvBackend::dense_conv2d), also returning the input and the weight in
    /// the layouts its backward pass reads (for f32: channels-last `[B, H, W, C]` and
    /// `[Co, kh, kw, C]`), so the backward pass does not convert them again.
    fn dense_conv2d_saving(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        nhwc: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, weight, stride, padding, nhwc);
        unreachable!("dense_conv2d_saving is only called by its autodiff node")
    }

    /// The gradients of [`dense_conv2d`](ConvBackend::dense_conv2d): `(x, weight)`, from the
    /// input and weight as [`dense_conv2d_saving`](ConvBackend::dense_conv2d_saving) returned
    /// them. Without `input_grad` (the input tracks no gradient: a network's first layer reads
    /// the data) the input's gradient is not computed, and the first value is an empty tensor.
    /// `grad` and the input's gradient are in the layout `nhwc` names.
    fn dense_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        input_grad: bool,
        nhwc: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, weight, grad, stride, padding, input_grad, nhwc);
        unreachable!("dense_conv2d_backward is only called by its autodiff node")
    }

    /// A depthwise convolution (one channel per group, stride 1, no dilation, no bias).
    fn depthwise_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        padding: [usize; 2],
    ) -> FloatTensor<Self>;

    /// The gradients of [`depthwise_conv2d`](ConvBackend::depthwise_conv2d): `(x, weight)`.
    fn depthwise_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        padding: [usize; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, weight, grad, padding);
        unreachable!("depthwise_conv2d_backward is only called by its autodiff node")
    }

    /// A depthwise convolution (stride 1, no dilation) plus its bias on channels-last maps:
    /// `x` `[B, H, W, C]`, `weight` `[C, 1, kh, kw]`, `bias` `[C]` -> `[B, Ho, Wo, C]`.
    /// Padding is at most the kernel size minus one.
    fn depthwise_conv2d_nhwc(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: [usize; 2],
    ) -> FloatTensor<Self>;

    /// The gradients of [`depthwise_conv2d_nhwc`](ConvBackend::depthwise_conv2d_nhwc):
    /// `(x, weight, bias)`.
    fn depthwise_conv2d_nhwc_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        padding: [usize; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, weight, grad, padding);
        unreachable!("depthwise_conv2d_nhwc_backward is only called by its autodiff node")
    }
}

/// `conv.forward(x)`, through this module's kernels where they apply (CPU device, a dense or
/// depthwise convolution of the supported shape), burn's convolution otherwise.
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if let Some(half) = autocast::half() {
        if let Some(y) = autocast::conv_forward(conv, x.clone(), half) {
            return y;
        }
        // A `Same`-padded layer stays f32, whatever type a norm kernel handed over.
        return conv.forward(autocast::to_f32(x));
    }
    let [_, c, h, w] = x.dims();
    let Some(kind) = kernel_for(conv, &x, [c, h, w]) else {
        return conv.forward(x);
    };
    let weight = conv.weight.val();
    let y = match kind {
        Kernel::Dense(padding) => dense_conv2d(x, weight, conv.stride, padding),
        Kernel::Depthwise(padding) => depthwise_conv2d(x, weight, padding),
    };
    match &conv.bias {
        Some(bias) => y + bias.val().reshape([1, -1, 1, 1]),
        None => y,
    }
}

/// `conv.forward` on channels-last maps: `[B, H, W, C]` -> `[B, Ho, Wo, Co]`. On the CPU the
/// dense and depthwise kernels read and write that layout directly (a network kept
/// channels-last converts nothing between its layers; a depthwise convolution's bias is added
/// inside its kernel); elsewhere burn's convolution runs between two permutations.
pub fn forward_nhwc(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if let Some(half) = autocast::half() {
        return autocast::to_f32(half_nhwc(conv, x, half));
    }
    let [_, h, w, c] = x.dims();
    let same_types = x.dtype() == conv.weight.val().dtype();
    if let Some(padding) = gpu_dense(conv, &x).filter(|_| same_types) {
        let y = super::conv_gpu::conv2d_nhwc_gpu(x, conv.weight.val(), conv.stride, padding);
        return match &conv.bias {
            Some(bias) => y + bias.val().reshape([1, 1, 1, -1]),
            None => y,
        };
    }
    let kind = kernel_for(conv, &x, [c, h, w]);
    let [_, _, kh, kw] = conv.weight.dims();
    let weight = conv.weight.val();
    let y = match kind {
        Some(Kernel::Dense(padding)) => dense_conv2d_nhwc(x, weight, conv.stride, padding),
        Some(Kernel::Depthwise(padding)) if padding[0] < kh && padding[1] < kw => {
            let bias = match &conv.bias {
                Some(bias) => bias.val(),
                None => Tensor::zeros([c], &x.device()),
            };
            return depthwise_conv2d_nhwc(x, weight, bias, padding);
        }
        _ => return conv.forward(x.permute([0, 3, 1, 2])).permute([0, 2, 3, 1]),
    };
    match &conv.bias {
        Some(bias) => y + bias.val().reshape([1, 1, 1, -1]),
        None => y,
    }
}

/// [`forward`] for a layer whose output a norm reads next: inside an f16 autocast scope on the
/// GPU the output stays f16 (see [`super::norm::half_for_norm`]), else as [`forward`].
pub fn forward_for_norm(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if let Some(half) = super::norm::half_for_norm(&x)
        && let Some(y) = autocast::conv_forward_half(conv, x.clone(), half)
    {
        return y;
    }
    forward(conv, x)
}

/// [`forward_nhwc`] for a layer whose output a norm reads next (see [`forward_for_norm`]).
pub fn forward_nhwc_for_norm(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match super::norm::half_for_norm(&x) {
        Some(half) => half_nhwc(conv, x, half),
        None => forward_nhwc(conv, x),
    }
}

/// [`forward_nhwc`] inside an autocast scope: input, weight and bias in `half`, the output
/// left in `half` (f32 for a `Same`-padded layer, which stays f32). Dense GPU convolutions of
/// f16 values take `conv_gpu`'s weight gradient, the others burn's convolution between two
/// permutations.
fn half_nhwc(conv: &Conv2d, x: Tensor<4>, half: FloatDType) -> Tensor<4> {
    if let Some(padding) = gpu_dense(conv, &x).filter(|_| half == FloatDType::F16) {
        let y = super::conv_gpu::conv2d_nhwc_gpu(
            autocast::to(x, half),
            autocast::to(conv.weight.val(), half),
            conv.stride,
            padding,
        );
        return match &conv.bias {
            Some(bias) => y + autocast::to(bias.val(), half).reshape([1, 1, 1, -1]),
            None => y,
        };
    }
    let x = x.permute([0, 3, 1, 2]);
    match autocast::conv_forward_half(conv, x.clone(), half) {
        Some(y) => y.permute([0, 2, 3, 1]),
        None => conv.forward(autocast::to_f32(x)).permute([0, 2, 3, 1]),
    }
}

/// A dense convolution as a few large matrix products over cache-sized pieces of the batch
/// (CPU device only).
///
/// # Shapes
/// - `x` `[B, C, H, W]`, `weight` `[Co, C, kh, kw]` -> `[B, Co, Ho, Wo]`
pub fn dense_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::dense_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        padding,
        false,
    ))
}

/// [`dense_conv2d`] on channels-last maps (CPU device only).
///
/// # Shapes
/// - `x` `[B, H, W, C]`, `weight` `[Co, C, kh, kw]` -> `[B, Ho, Wo, Co]`
pub fn dense_conv2d_nhwc(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::dense_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        padding,
        true,
    ))
}

/// A depthwise stride-1 convolution with a direct backward pass (CPU device only).
///
/// # Shapes
/// - `x` `[B, C, H, W]`, `weight` `[C, 1, kh, kw]` -> `[B, C, Ho, Wo]`
pub fn depthwise_conv2d(x: Tensor<4>, weight: Tensor<4>, padding: [usize; 2]) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::depthwise_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        padding,
    ))
}

/// A depthwise stride-1 convolution plus its bias on channels-last maps, forward and backward
/// as direct loops vectorised over the channels (CPU device only; padding below the kernel
/// size).
///
/// # Shapes
/// - `x` `[B, H, W, C]`, `weight` `[C, 1, kh, kw]`, `bias` `[C]` -> `[B, Ho, Wo, C]`
pub fn depthwise_conv2d_nhwc(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    padding: [usize; 2],
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::depthwise_conv2d_nhwc(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        padding,
    ))
}

enum Kernel {
    Dense([usize; 2]),
    Depthwise([usize; 2]),
}

/// `conv`'s padding `[rows, columns]` when it is undilated, symmetrically padded and its kernel
/// fits the padded `h x w` map: the convolutions this module's kernels take.
fn plain_padding(conv: &Conv2d, [h, w]: [usize; 2]) -> Option<[usize; 2]> {
    if conv.dilation != [1, 1] {
        return None;
    }
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    let [_, _, kh, kw] = conv.weight.dims();
    (h + 2 * padding[0] >= kh && w + 2 * padding[1] >= kw).then_some(padding)
}

/// Largest patch matrix (values) of a whole batch that the GPU build's channels-last
/// convolution builds for its weight gradient (64 MiB in f32): the small maps of the seed's
/// cube ResNets, where launches cost more than bytes. Larger ones (a ResNet-50 on Sentinel
/// patches at batch 256 needs 151 M values) keep burn's autotuned weight gradient, whose
/// implicit-GEMM candidates build no patch matrix on a GPU.
const MAX_GPU_PATCH_VALUES: usize = 1 << 24;

/// The padding of `conv` on channels-last `x` when the GPU build's dense convolution
/// (`conv_gpu.rs`, its own weight gradient) takes it: f32 or f16 on that device, one group, a patch
/// matrix of at most [`MAX_GPU_PATCH_VALUES`].
fn gpu_dense(conv: &Conv2d, x: &Tensor<4>) -> Option<[usize; 2]> {
    let [b, h, w, c] = x.dims();
    if conv.groups != 1 || !(on_gpu_f32(x) || on_gpu_f16(x)) {
        return None;
    }
    let padding = plain_padding(conv, [h, w])?;
    let [_, _, kh, kw] = conv.weight.dims();
    let ho = (h + 2 * padding[0] - kh) / conv.stride[0] + 1;
    let wo = (w + 2 * padding[1] - kw) / conv.stride[1] + 1;
    (b * ho * wo * kh * kw * c <= MAX_GPU_PATCH_VALUES).then_some(padding)
}

/// Which of this module's kernels runs `conv` on `x`, if any; `[c, h, w]` are the input's
/// channels and map size (whatever its layout).
fn kernel_for(conv: &Conv2d, x: &Tensor<4>, [c, h, w]: [usize; 3]) -> Option<Kernel> {
    if !on_cpu_f32(x) {
        return None;
    }
    let padding = plain_padding(conv, [h, w])?;
    let [co, _, kh, kw] = conv.weight.dims();
    if conv.groups == 1 {
        let ho = (h + 2 * padding[0] - kh) / conv.stride[0] + 1;
        let wo = (w + 2 * padding[1] - kw) / conv.stride[1] + 1;
        // One sample's patch matrix is the least a piece of the batch holds.
        (ho * wo * c * kh * kw <= MAX_PATCH_VALUES).then_some(Kernel::Dense(padding))
    } else if conv.groups == c && co == c && conv.stride == [1, 1] {
        Some(Kernel::Depthwise(padding))
    } else {
        None
    }
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &Shape, weight: &Shape, stride: [usize; 2], padding: [usize; 2]) -> Self {
        let (b, c, h, w) = (x[0], x[1], x[2], x[3]);
        let (co, kh, kw) = (weight[0], weight[2], weight[3]);
        let ho = (h + 2 * padding[0] - kh) / stride[0] + 1;
        let wo = (w + 2 * padding[1] - kw) / stride[1] + 1;
        Self {
            b,
            c,
            h,
            w,
            co,
            kh,
            kw,
            stride,
            padding,
            ho,
            wo,
        }
    }
    /// Columns of a patch row: `(kernel row, kernel column, channel)`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output pixels per map.
    fn s(&self) -> usize {
        self.ho * self.wo
    }
    /// Input row `ih` of output row `oh` and kernel row `i`, if inside the map.
    fn in_row(&self, oh: usize, i: usize) -> Option<usize> {
        (oh * self.stride[0] + i)
            .checked_sub(self.padding[0])
            .filter(|&r| r < self.h)
    }
}

/// The sum of the pieces' equal-length weight-gradient shares, added in piece order (the first
/// share is the accumulator), in parallel over stretches of the gradient.
fn sum_shares(shares: Vec<Vec<f32>>) -> Vec<f32> {
    const STRETCH: usize = 1 << 14;
    let mut shares = shares.into_iter();
    let mut total = shares.next().unwrap_or_default();
    let rest: Vec<Vec<f32>> = shares.collect();
    if !rest.is_empty() {
        total
            .par_chunks_mut(STRETCH)
            .enumerate()
            .for_each(|(i, t)| {
                for share in &rest {
                    for (t, v) in t.iter_mut().zip(&share[i * STRETCH..]) {
                        *t += v;
                    }
                }
            });
    }
    total
}

/// `rows x cols` blocks transposed: `dst[j * rows + i] = src[i * cols + j]` for each of the
/// consecutive `[rows, cols]` matrices of `src`. A matrix that fits in cache is written in
/// order (its reads stay in cache); a larger one in tiles.
fn transpose_blocks(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    const IN_CACHE: usize = 1 << 15; // values: 128 KiB
    let size = (rows * cols).max(1);
    par_filled(src.len(), size, |m, dst| {
        let src = &src[m * size..][..dst.len()];
        if size <= IN_CACHE {
            for (j, out) in dst.chunks_mut(rows.max(1)).enumerate() {
                for (i, d) in out.iter_mut().enumerate() {
                    d.write(src[i * cols + j]);
                }
            }
            return;
        }
        for i0 in (0..rows).step_by(TILE) {
            for j0 in (0..cols).step_by(TILE) {
                for i in i0..(i0 + TILE).min(rows) {
                    for j in j0..(j0 + TILE).min(cols) {
                        dst[j * rows + i].write(src[i * cols + j]);
                    }
                }
            }
        }
    })
}

/// `[B, C, H, W]` to channels-last `[B, H, W, C]`, or back (`to_last` false).
fn channels_last(x: &[f32], c: usize, plane: usize, to_last: bool) -> Vec<f32> {
    if to_last {
        transpose_blocks(x, c, plane)
    } else {
        transpose_blocks(x, plane, c)
    }
}

/// For output column `ow`: the kernel columns `j0..j1` that fall inside the map, and the input
/// column of `j0`.
fn valid_taps(g: &Geometry, ow: usize) -> (usize, usize, usize) {
    let start = ow * g.stride[1];
    let j0 = g.padding[1].saturating_sub(start);
    let j1 = (g.w + g.padding[1]).saturating_sub(start).min(g.kw);
    (j0, j1.max(j0), (start + j0).saturating_sub(g.padding[1]))
}

/// The patch matrix `[n*Ho*Wo, kh*kw*C]` of `n` channels-last samples `x` (zeros where the
/// kernel covers padding). Within a kernel row the `kw` pixels of `C` channels are contiguous in
/// both, so each is one copy.
fn im2col(x: &[f32], n: usize, g: &Geometry) -> Vec<f32> {
    let (k, s, c) = (g.k(), g.s(), g.c);
    let mut patches = vec![0f32; n * s * k];
    for (rows, xb) in patches.chunks_mut(s * k).zip(x.chunks(g.h * g.w * c)) {
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                let row = &mut rows[(oh * g.wo + ow) * k..][..k];
                let (j0, j1, iw) = valid_taps(g, ow);
                if j0 == j1 {
                    continue;
                }
                for i in 0..g.kh {
                    let Some(ih) = g.in_row(oh, i) else { continue };
                    let len = (j1 - j0) * c;
                    let src = &xb[(ih * g.w + iw) * c..][..len];
                    row[(i * g.kw + j0) * c..][..len].copy_from_slice(src);
                }
            }
        }
    }
    patches
}

/// Adds the patch gradient of `n` samples back onto their channels-last input gradient `x`
/// (each patch value to the input pixel it was read from).
fn col2im(patches: &[f32], x: &mut [f32], n: usize, g: &Geometry) {
    let (k, s, c) = (g.k(), g.s(), g.c);
    for (xb, rows) in x
        .chunks_mut(g.h * g.w * c)
        .zip(patches.chunks(s * k))
        .take(n)
    {
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                let row = &rows[(oh * g.wo + ow) * k..][..k];
                let (j0, j1, iw) = valid_taps(g, ow);
                if j0 == j1 {
                    continue;
                }
                for i in 0..g.kh {
                    let Some(ih) = g.in_row(oh, i) else { continue };
                    let len = (j1 - j0) * c;
                    let dst = &mut xb[(ih * g.w + iw) * c..][..len];
                    let src = &row[(i * g.kw + j0) * c..][..len];
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// Samples per piece of the batch: the patch matrix of one piece stays at most near
/// [`PIECE_VALUES`] (cache-sized), so it is built, multiplied and (backward) scattered while
/// still in cache. When the batch takes several pieces, their number is a multiple of
/// [`PIECE_GROUP`] and their sizes are even: pieces of 21, 21, 21 and 1 samples on two threads
/// left one thread idle for a third of the layer. The pieces never depend on the thread count,
/// so neither do the sums over them: a run gives the same bits on 1 thread or 16 (the members
/// of `pipeline --jobs` divide the cores).
fn piece_samples(g: &Geometry) -> usize {
    let b = g.b.max(1);
    let most = (PIECE_VALUES / (g.s() * g.k()).max(1)).clamp(1, b);
    let pieces = match b.div_ceil(most) {
        1 => 1,
        n => n.next_multiple_of(PIECE_GROUP).min(b),
    };
    b.div_ceil(pieces)
}

/// Pieces of a batch come in multiples of this (even work on 1, 2, 4 or 8 threads).
const PIECE_GROUP: usize = 8;

/// The matrix products run on all threads when the batch is one piece, else one per piece.
fn piece_parallelism(g: &Geometry, samples: usize) -> gemm::Parallelism {
    if samples >= g.b {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// `[Co, C, kh, kw]` to `[Co, kh, kw, C]` (the patch columns' order), or back.
fn weight_taps_first(w: &[f32], g: &Geometry, to_taps: bool) -> Vec<f32> {
    let taps = g.kh * g.kw;
    if to_taps {
        transpose_blocks(w, g.c, taps)
    } else {
        transpose_blocks(w, taps, g.c)
    }
}

/// Output rows `[Co, n*S]` of `n` samples to their maps `[n, Co, S]` (every value written).
fn rows_to_maps(rows: &[f32], maps: &mut [MaybeUninit<f32>], n: usize, g: &Geometry) {
    let s = g.s();
    for (i, m) in maps.chunks_mut(s).enumerate() {
        let (b, o) = (i / g.co, i % g.co);
        m.write_copy_of_slice(&rows[(o * n + b) * s..][..s]);
    }
}

/// Maps `[n, Co, S]` of `n` samples to output rows `[Co, n*S]`.
fn maps_to_rows(maps: &[f32], rows: &mut [f32], n: usize, g: &Geometry) {
    let s = g.s();
    for (i, m) in maps.chunks(s).enumerate() {
        let (b, o) = (i / g.co, i % g.co);
        rows[(o * n + b) * s..][..s].copy_from_slice(m);
    }
}

fn options(stride: [usize; 2], padding: [usize; 2], groups: usize) -> ConvOptions<2> {
    ConvOptions::new(stride, padding, [1, 1], groups)
}

/// The shape `[B, C, H, W]` of a channels-last `[B, H, W, C]` shape.
fn nchw_of(nhwc: &Shape) -> Shape {
    Shape::from(vec![nhwc[0], nhwc[3], nhwc[1], nhwc[2]])
}

/// A flex tensor's axes permuted (for the non-f32 fallbacks of the channels-last kernels).
fn permuted(x: FlexTensor, axes: [usize; 4]) -> FlexTensor {
    Flex::float_permute(x, &axes)
}

/// The f32 dense forward pass: `(output, channels-last input, weight in patch-column order)`.
/// With `nhwc` the input is channels-last already (kept as it is) and the output is written
/// channels-last, straight from the products.
fn dense_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
    nhwc: bool,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let xs = x.layout().shape();
    let xs = if nhwc { nchw_of(xs) } else { xs.clone() };
    let g = Geometry::new(&xs, weight.layout().shape(), stride, padding);
    let x = match nhwc {
        true => x.to_contiguous(),
        false => tensor(
            channels_last(slice(&x.to_contiguous()), g.c, g.h * g.w, true),
            [g.b, g.h, g.w, g.c],
        ),
    };
    let weight = weight_taps_first(slice(&weight.to_contiguous()), &g, true);
    let (k, s, per) = (g.k(), g.s(), piece_samples(&g));
    let parallelism = piece_parallelism(&g, per);
    let xv = slice(&x);
    let out = par_filled(g.b * g.co * s, per * g.co * s, |i, out| {
        let n = out.len() / (g.co * s);
        let xs = &xv[i * per * g.h * g.w * g.c..][..n * g.h * g.w * g.c];
        let patches = im2col(xs, n, &g);
        if nhwc {
            // [Co, n*S] = W [Co, K] x patches^T [K, n*S], written transposed: the output
            // `[n*S, Co]` (this orientation keeps the patches the right-hand side, which the
            // product reads in place; the other packs them first).
            matmul_into(
                g.co,
                n * s,
                k,
                out,
                [1, g.co as isize],
                &weight,
                [k as isize, 1],
                &patches,
                [1, k as isize],
                parallelism,
            );
            return;
        }
        // [Co, n*S] = W [Co, K] x patches^T [K, n*S]
        let rows = matmul_new(
            g.co,
            n * s,
            k,
            &weight,
            [k as isize, 1],
            &patches,
            [1, k as isize],
            parallelism,
        );
        rows_to_maps(&rows, out, n, &g);
    });
    let out_shape = match nhwc {
        true => [g.b, g.ho, g.wo, g.co],
        false => [g.b, g.co, g.ho, g.wo],
    };
    (
        tensor(out, out_shape),
        x,
        tensor(weight, [g.co, g.kh, g.kw, g.c]),
    )
}

impl ConvBackend for Flex {
    fn dense_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
        nhwc: bool,
    ) -> FlexTensor {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            let o = options(stride, padding, 1);
            return match nhwc {
                true => permuted(
                    Flex::conv2d(permuted(x, [0, 3, 1, 2]), weight, None, o),
                    [0, 2, 3, 1],
                ),
                false => Flex::conv2d(x, weight, None, o),
            };
        }
        dense_forward(&x, &weight, stride, padding, nhwc).0
    }

    fn dense_conv2d_saving(
        x: FlexTensor,
        weight: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
        nhwc: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            let y = Flex::dense_conv2d(x.clone(), weight.clone(), stride, padding, nhwc);
            return (y, x, weight);
        }
        dense_forward(&x, &weight, stride, padding, nhwc)
    }

    fn dense_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
        input_grad: bool,
        nhwc: bool,
    ) -> (FlexTensor, FlexTensor) {
        if [x.dtype(), weight.dtype(), grad.dtype()] != [DType::F32; 3] {
            // `dense_conv2d_saving` kept these in burn's layouts (the caller's, for `x`).
            let o = options(stride, padding, 1);
            let (x, grad) = match nhwc {
                true => (permuted(x, [0, 3, 1, 2]), permuted(grad, [0, 3, 1, 2])),
                false => (x, grad),
            };
            let grad_x = match input_grad {
                true => {
                    let gx =
                        Flex::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), o.clone());
                    if nhwc { permuted(gx, [0, 2, 3, 1]) } else { gx }
                }
                false => tensor(Vec::new(), [0]),
            };
            return (grad_x, Flex::conv2d_weight_backward(x, weight, grad, o));
        }
        // Channels-last `[B, H, W, C]` input and `[Co, kh, kw, C]` weight.
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        let g = Geometry::new(&nchw_of(xs), &nchw_of(ws), stride, padding);
        let (x, weight, grad) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            grad.to_contiguous(),
        );
        let (x, weight) = (slice(&x), slice(&weight));
        let (k, s, per) = (g.k(), g.s(), piece_samples(&g));
        let parallelism = piece_parallelism(&g, per);
        let plane = g.h * g.w * g.c;
        // Zeroed piece by piece on the workers (a serial memset of the whole gradient cost
        // the calling thread as much as the pieces' scatter).
        let mut grad_x = Vec::with_capacity(if input_grad { g.b * plane } else { 0 });
        // Without an input gradient, each piece gets an empty slice to write.
        let gx_pieces: Vec<&mut [MaybeUninit<f32>]> = match input_grad {
            true => grad_x.spare_capacity_mut()[..g.b * plane]
                .chunks_mut(per * plane)
                .collect(),
            false => (0..g.b.div_ceil(per)).map(|_| Default::default()).collect(),
        };
        // Each piece: its samples' input gradient, and its share of the weight gradient.
        let shares: Vec<Vec<f32>> = gx_pieces
            .into_par_iter()
            .zip(x.par_chunks(per * plane))
            .zip(slice(&grad).par_chunks(per * g.co * s))
            .map(|((gx, xs), gy)| {
                for v in gx.iter_mut() {
                    v.write(0.0);
                }
                // SAFETY: every value of the chunk was just written.
                let gx = unsafe { &mut *(gx as *mut [MaybeUninit<f32>] as *mut [f32]) };
                let n = xs.len() / plane;
                let patches = im2col(xs, n, &g);
                // The output gradient as `[Co, n*S]` through strides: channels-last it is
                // `[n*S, Co]` in place, else the maps are copied into rows.
                let ns = n * s;
                let rows;
                let (dy, dy_strides): (&[f32], [isize; 2]) = match nhwc {
                    true => (gy, [1, g.co as isize]),
                    false => {
                        let mut r = vec![0f32; g.co * ns];
                        maps_to_rows(gy, &mut r, n, &g);
                        rows = r;
                        (&rows, [ns as isize, 1])
                    }
                };
                // dW [Co, K] = dY [Co, n*S] x patches [n*S, K]
                let grad_w = matmul_new(
                    g.co,
                    k,
                    ns,
                    dy,
                    dy_strides,
                    &patches,
                    [k as isize, 1],
                    parallelism,
                );
                if !input_grad {
                    return grad_w;
                }
                // dPatches [n*S, K] = dY^T [n*S, Co] x W [Co, K]. Channels-last, dY^T is
                // `[n*S, Co]` row-major, which the product would pack first; its transpose
                // dPatches^T [K, n*S] = W^T [K, Co] x dY [Co, n*S] reads it in place.
                let mut grad_patches = patches;
                match nhwc {
                    true => matmul(
                        k,
                        ns,
                        g.co,
                        &mut grad_patches,
                        [1, k as isize],
                        weight,
                        [1, k as isize],
                        dy,
                        dy_strides,
                        parallelism,
                        false,
                    ),
                    false => matmul(
                        ns,
                        k,
                        g.co,
                        &mut grad_patches,
                        [k as isize, 1],
                        dy,
                        [dy_strides[1], dy_strides[0]],
                        weight,
                        [k as isize, 1],
                        parallelism,
                        false,
                    ),
                }
                col2im(&grad_patches, gx, n, &g);
                grad_w
            })
            .collect();
        let grad_w = sum_shares(shares);
        let grad_w = tensor(
            weight_taps_first(&grad_w, &g, false),
            [g.co, g.c, g.kh, g.kw],
        );
        if !input_grad {
            return (tensor(Vec::new(), [0]), grad_w);
        }
        // SAFETY: the pieces cover all `g.b * plane` values, and each zeroed its own first.
        unsafe { grad_x.set_len(g.b * plane) };
        let grad_x = match nhwc {
            true => tensor(grad_x, [g.b, g.h, g.w, g.c]),
            false => tensor(
                channels_last(&grad_x, g.c, g.h * g.w, false),
                [g.b, g.c, g.h, g.w],
            ),
        };
        (grad_x, grad_w)
    }

    fn depthwise_conv2d(x: FlexTensor, weight: FlexTensor, padding: [usize; 2]) -> FlexTensor {
        // flex's forward already has a direct depthwise path.
        let groups = x.layout().shape()[1];
        Flex::conv2d(x, weight, None, options([1, 1], padding, groups))
    }

    fn depthwise_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        padding: [usize; 2],
    ) -> (FlexTensor, FlexTensor) {
        if [x.dtype(), weight.dtype(), grad.dtype()] != [DType::F32; 3] {
            let o = options([1, 1], padding, x.layout().shape()[1]);
            return (
                Flex::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), o.clone()),
                Flex::conv2d_weight_backward(x, weight, grad, o),
            );
        }
        let g = Geometry::new(x.layout().shape(), weight.layout().shape(), [1, 1], padding);
        let (x, weight, grad) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            grad.to_contiguous(),
        );
        let (xs, ws, gs) = (slice(&x), slice(&weight), slice(&grad));
        let (plane, out_plane, taps) = (g.h * g.w, g.s(), g.kh * g.kw);
        // For kernel tap (i, j): the output rows and columns whose input pixel is inside the map.
        // (Empty, as `(out, out)`, when the tap never lands inside the map.)
        let range = |i: usize, pad: usize, size: usize, out: usize| {
            let lo = pad.saturating_sub(i).min(out);
            let hi = (size + pad).saturating_sub(i).min(out);
            (lo, hi.max(lo))
        };
        // dX: each (sample, channel) plane on its own; dX[ih, iw] += dY[oh, ow] * w[i, j].
        let mut grad_x = vec![0f32; g.b * g.c * plane];
        grad_x
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(p, gx)| {
                widest(
                    #[inline(always)]
                    || {
                        let (c, gy) = (p % g.c, &gs[p * out_plane..][..out_plane]);
                        let wc = &ws[c * taps..][..taps];
                        for i in 0..g.kh {
                            let (oh0, oh1) = range(i, g.padding[0], g.h, g.ho);
                            for j in 0..g.kw {
                                let (ow0, ow1) = range(j, g.padding[1], g.w, g.wo);
                                if ow0 == ow1 {
                                    continue;
                                }
                                let wv = wc[i * g.kw + j];
                                for oh in oh0..oh1 {
                                    let ih = oh + i - g.padding[0];
                                    let src = &gy[oh * g.wo + ow0..oh * g.wo + ow1];
                                    let start = ih * g.w + ow0 + j - g.padding[1];
                                    let dst = &mut gx[start..start + (ow1 - ow0)];
                                    for (d, s) in dst.iter_mut().zip(src) {
                                        *d += s * wv;
                                    }
                                }
                            }
                        }
                    },
                )
            });
        // dW[c, i, j] = sum over samples and output pixels of dY[oh, ow] * X[ih, iw].
        let mut grad_w = vec![0f32; g.c * taps];
        grad_w.par_chunks_mut(taps).enumerate().for_each(|(c, gw)| {
            widest(
                #[inline(always)]
                || {
                    for b in 0..g.b {
                        let p = b * g.c + c;
                        let (xp, gy) =
                            (&xs[p * plane..][..plane], &gs[p * out_plane..][..out_plane]);
                        for i in 0..g.kh {
                            let (oh0, oh1) = range(i, g.padding[0], g.h, g.ho);
                            for j in 0..g.kw {
                                let (ow0, ow1) = range(j, g.padding[1], g.w, g.wo);
                                if ow0 == ow1 {
                                    continue;
                                }
                                let mut acc = 0f32;
                                for oh in oh0..oh1 {
                                    let ih = oh + i - g.padding[0];
                                    let src = &gy[oh * g.wo + ow0..oh * g.wo + ow1];
                                    let start = ih * g.w + ow0 + j - g.padding[1];
                                    let xv = &xp[start..start + (ow1 - ow0)];
                                    acc += src.iter().zip(xv).map(|(a, b)| a * b).sum::<f32>();
                                }
                                gw[i * g.kw + j] += acc;
                            }
                        }
                    }
                },
            )
        });
        (
            tensor(grad_x, [g.b, g.c, g.h, g.w]),
            tensor(grad_w, [g.c, 1, g.kh, g.kw]),
        )
    }

    fn depthwise_conv2d_nhwc(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        padding: [usize; 2],
    ) -> FlexTensor {
        if [x.dtype(), weight.dtype(), bias.dtype()] != [DType::F32; 3] {
            let groups = x.layout().shape()[3];
            let o = options([1, 1], padding, groups);
            let x = permuted(x, [0, 3, 1, 2]);
            return permuted(Flex::conv2d(x, weight, Some(bias), o), [0, 2, 3, 1]);
        }
        let g = Geometry::new(
            &nchw_of(x.layout().shape()),
            weight.layout().shape(),
            [1, 1],
            padding,
        );
        let (x, weight, bias) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            bias.to_contiguous(),
        );
        let taps = transpose_blocks(slice(&weight), g.c, g.kh * g.kw);
        let y = depthwise_nhwc(slice(&x), &taps, Some(slice(&bias)), &g);
        tensor(y, [g.b, g.ho, g.wo, g.c])
    }

    fn depthwise_conv2d_nhwc_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        padding: [usize; 2],
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if [x.dtype(), weight.dtype(), grad.dtype()] != [DType::F32; 3] {
            let groups = x.layout().shape()[3];
            let o = options([1, 1], padding, groups);
            let (x, grad) = (permuted(x, [0, 3, 1, 2]), permuted(grad, [0, 3, 1, 2]));
            let gx = Flex::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), o.clone());
            let gb = Flex::float_sum_dim(Flex::float_sum_dim(grad.clone(), 3), 2);
            let gb = Flex::float_reshape(Flex::float_sum_dim(gb, 0), Shape::from(vec![groups]));
            return (
                permuted(gx, [0, 2, 3, 1]),
                Flex::conv2d_weight_backward(x, weight, grad, o),
                gb,
            );
        }
        let g = Geometry::new(
            &nchw_of(x.layout().shape()),
            weight.layout().shape(),
            [1, 1],
            padding,
        );
        let (x, weight, grad) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            grad.to_contiguous(),
        );
        let (xs, gs) = (slice(&x), slice(&grad));
        let taps = g.kh * g.kw;
        // dX is the output gradient convolved with the flipped kernel, padded by `k - 1 - p`
        // (stride 1): the forward kernel on the output's map.
        let wt = transpose_blocks(slice(&weight), g.c, taps);
        let mut flipped = vec![0f32; wt.len()];
        for (t, row) in wt.chunks(g.c).enumerate() {
            flipped[(taps - 1 - t) * g.c..][..g.c].copy_from_slice(row);
        }
        let back = Geometry {
            h: g.ho,
            w: g.wo,
            ho: g.h,
            wo: g.w,
            padding: [g.kh - 1 - g.padding[0], g.kw - 1 - g.padding[1]],
            ..g
        };
        let grad_x = depthwise_nhwc(gs, &flipped, None, &back);
        let (grad_w, grad_b) = depthwise_nhwc_weight_grad(xs, gs, &g);
        (
            tensor(grad_x, [g.b, g.h, g.w, g.c]),
            tensor(transpose_blocks(&grad_w, taps, g.c), [g.c, 1, g.kh, g.kw]),
            tensor(grad_b, [g.c]),
        )
    }
}

/// Output rows per parallel task of the channels-last depthwise loops (about [`PIECE_VALUES`]
/// / 64 values each).
fn dw_rows(g: &Geometry) -> usize {
    ((PIECE_VALUES / 64) / (g.wo * g.c).max(1)).max(1)
}

/// For kernel column `j`: the output columns `ow0..ow1` whose input column `ow + j - pad` lies
/// inside the map (stride 1).
fn dw_cols(j: usize, g: &Geometry) -> (usize, usize) {
    let lo = g.padding[1].saturating_sub(j).min(g.wo);
    let hi = (g.w + g.padding[1]).saturating_sub(j).min(g.wo);
    (lo, hi.max(lo))
}

/// A stride-1 depthwise convolution of channels-last maps `x` `[B, H, W, C]` with taps-first
/// weights `[kh, kw, C]`, plus `bias` when given: `[B, Ho, Wo, C]`. Each output row is
/// `bias + sum over taps of (input row segment) * (tap's C weights)`, vectorised over the
/// channels, and the rows run in parallel.
fn depthwise_nhwc(x: &[f32], taps: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    let (c, row) = (g.c, g.wo * g.c);
    let rows = dw_rows(g);
    par_filled(g.b * g.ho * row, rows * row, |t, out| {
        for (r, out) in out.chunks_mut(row).enumerate() {
            let (b, oh) = ((t * rows + r) / g.ho, (t * rows + r) % g.ho);
            for px in out.chunks_mut(c) {
                match bias {
                    Some(bias) => {
                        px.write_copy_of_slice(bias);
                    }
                    None => px.iter_mut().for_each(|v| {
                        v.write(0.0);
                    }),
                }
            }
            // SAFETY: every value of the row was just written.
            let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for i in 0..g.kh {
                let Some(ih) = g.in_row(oh, i) else { continue };
                let xrow = &x[(b * g.h + ih) * g.w * c..][..g.w * c];
                for j in 0..g.kw {
                    let (ow0, ow1) = dw_cols(j, g);
                    if ow0 == ow1 {
                        continue;
                    }
                    let wt = &taps[(i * g.kw + j) * c..][..c];
                    let iw0 = ow0 + j - g.padding[1];
                    let src = &xrow[iw0 * c..(iw0 + ow1 - ow0) * c];
                    let dst = &mut out[ow0 * c..ow1 * c];
                    for (d, s) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
                        for ((d, s), w) in d.iter_mut().zip(s).zip(wt) {
                            *d += s * w;
                        }
                    }
                }
            }
        }
    })
}

/// The weight gradient (taps-first `[kh, kw, C]`) and bias gradient `[C]` of
/// [`depthwise_nhwc`] from the input `x` and the output gradient `grad`: each task sums its
/// samples' products in f32 (vectorised over the channels), and the tasks' shares are added
/// in f64 in task order.
fn depthwise_nhwc_weight_grad(x: &[f32], grad: &[f32], g: &Geometry) -> (Vec<f32>, Vec<f32>) {
    let (c, taps) = (g.c, g.kh * g.kw);
    // A fixed number of tasks (not one per thread): the sum does not depend on the threads.
    let pieces = 16.min(g.b.max(1));
    let per = g.b.div_ceil(pieces.max(1)).max(1);
    let shares: Vec<Vec<f32>> = (0..g.b.div_ceil(per))
        .into_par_iter()
        .map(|p| {
            widest(
                #[inline(always)]
                || {
                    // `taps` rows of weight gradient, then the bias's row.
                    let mut acc = vec![0f32; (taps + 1) * c];
                    for b in p * per..((p + 1) * per).min(g.b) {
                        for oh in 0..g.ho {
                            let gy = &grad[(b * g.ho + oh) * g.wo * c..][..g.wo * c];
                            let (wacc, bacc) = acc.split_at_mut(taps * c);
                            for px in gy.chunks_exact(c) {
                                for (a, v) in bacc.iter_mut().zip(px) {
                                    *a += v;
                                }
                            }
                            for i in 0..g.kh {
                                let Some(ih) = g.in_row(oh, i) else { continue };
                                let xrow = &x[(b * g.h + ih) * g.w * c..][..g.w * c];
                                for j in 0..g.kw {
                                    let (ow0, ow1) = dw_cols(j, g);
                                    if ow0 == ow1 {
                                        continue;
                                    }
                                    let iw0 = ow0 + j - g.padding[1];
                                    let a = &mut wacc[(i * g.kw + j) * c..][..c];
                                    let src = &xrow[iw0 * c..(iw0 + ow1 - ow0) * c];
                                    let dy = &gy[ow0 * c..ow1 * c];
                                    for (s, d) in src.chunks_exact(c).zip(dy.chunks_exact(c)) {
                                        for ((a, s), d) in a.iter_mut().zip(s).zip(d) {
                                            *a += s * d;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    acc
                },
            )
        })
        .collect();
    let total = add_shares(&shares, (taps + 1) * c);
    let mut w: Vec<f32> = total.into_iter().map(|v| v as f32).collect();
    let bias = w.split_off(taps * c);
    (w, bias)
}

/// Which kernel a convolution node ran.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Dense { stride: [usize; 2], nhwc: bool },
    Depthwise,
}

/// What a convolution node keeps for its backward pass.
#[derive(Clone, Debug)]
struct ConvState<B: Backend> {
    /// The input, as `dense_conv2d_saving` returned it for the dense kernel.
    x: FloatTensor<B>,
    /// The weight, likewise.
    weight: FloatTensor<B>,
    kind: Kind,
    padding: [usize; 2],
}

impl<B: ConvBackend> ConvState<B> {
    /// The node's forward pass on the inner backend.
    fn forward(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        kind: Kind,
        padding: [usize; 2],
    ) -> FloatTensor<B> {
        match kind {
            Kind::Dense { stride, nhwc } => B::dense_conv2d(x, weight, stride, padding, nhwc),
            Kind::Depthwise => B::depthwise_conv2d(x, weight, padding),
        }
    }
}

#[derive(Debug)]
struct ConvNode;

impl<B: ConvBackend> Backward<B, 2> for ConvNode {
    type State = ConvState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let ConvState {
            x,
            weight,
            kind,
            padding,
        } = ops.state;
        let (grad_x, grad_w) = match kind {
            Kind::Dense { stride, nhwc } => {
                let input_grad = ops.parents[0].is_some();
                B::dense_conv2d_backward(x, weight, grad, stride, padding, input_grad, nhwc)
            }
            Kind::Depthwise => B::depthwise_conv2d_backward(x, weight, grad, padding),
        };
        register_grads::<B, 2>(
            grads,
            ops.parents.map(|p| p.map(|n| n.id)),
            [grad_x, grad_w],
        );
    }
}

/// Runs `kind` on the inner backend and, when an input tracks gradients, records the node.
fn record<B: ConvBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    kind: Kind,
    padding: [usize; 2],
) -> FloatTensor<Autodiff<B, C>> {
    let ((x, x_node), (weight, w_node)) = (x.into_parts(), weight.into_parts());
    match ConvNode
        .prepare::<C>([x_node, w_node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // The dense kernel hands back its input and weight in the layouts its backward
            // pass reads, so they are converted once per step instead of twice.
            let (y, x, weight) = match kind {
                Kind::Dense { stride, nhwc } => {
                    B::dense_conv2d_saving(x, weight, stride, padding, nhwc)
                }
                Kind::Depthwise => {
                    let y = B::depthwise_conv2d(x.clone(), weight.clone(), padding);
                    (y, x, weight)
                }
            };
            let state = ConvState {
                x,
                weight,
                kind,
                padding,
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(ConvState::<B>::forward(x, weight, kind, padding)),
    }
}

/// The channels-last depthwise convolution's node: input, weight and bias.
#[derive(Debug)]
struct DepthwiseNhwcNode;

impl<B: ConvBackend> Backward<B, 3> for DepthwiseNhwcNode {
    /// The input, the weight and the padding.
    type State = (FloatTensor<B>, FloatTensor<B>, [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, padding) = ops.state;
        let (gx, gw, gb) = B::depthwise_conv2d_nhwc_backward(x, weight, grad, padding);
        register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gw, gb]);
    }
}

impl<B: ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn dense_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        nhwc: bool,
    ) -> FloatTensor<Self> {
        record::<B, C>(x, weight, Kind::Dense { stride, nhwc }, padding)
    }

    fn depthwise_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        record::<B, C>(x, weight, Kind::Depthwise, padding)
    }

    fn depthwise_conv2d_nhwc(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let ((x, xn), (w, wn), (b, bn)) = (x.into_parts(), weight.into_parts(), bias.into_parts());
        match DepthwiseNhwcNode
            .prepare::<C>([xn, wn, bn])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::depthwise_conv2d_nhwc(x.clone(), w.clone(), b, padding);
                prep.finish((x, w, padding), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::depthwise_conv2d_nhwc(x, w, b, padding)),
        }
    }
}
