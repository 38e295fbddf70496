//! Dense convolutions of channels-last maps (the ResNets' on a GPU) with a weight gradient of
//! their own on the GPU build's device: one im2col kernel writes the patch matrix
//! `[(n, oy, ox), (ky, kx, c)]` and one matrix product contracts it with the output's gradient.
//!
//! burn-cubecl's im2col weight gradient, which its autotuning picked on llvmpipe, assembles the
//! same patch matrix from one slice assignment per kernel tap (nine for a 3 x 3 kernel, plus a
//! gather per tap when strided): 261 + 63 of the 1,192 kernel launches of a seed step. The
//! bytes written are the same; the launches are two instead of nine to eighteen. On a GPU
//! burn's autotuning also has implicit-GEMM candidates that build no patch matrix, so
//! `conv.rs` routes here only convolutions whose patch matrix is small (the seed's cube
//! ResNets; `MAX_GPU_PATCH_VALUES`), where launches cost more than bytes. The forward pass and
//! the input's gradient stay burn's (`conv2d`, `conv2d_x_backward`, autotuned). The CPU runs
//! its own convolution kernels (`conv.rs`); this module's flex implementation is burn's, for
//! completeness.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::shared::{constant, register_grads, untracked};

/// `[B, H, W, C]` -> `[B, C, H, W]` (a view).
const TO_FIRST: [usize; 4] = [0, 3, 1, 2];
/// `[B, C, H, W]` -> `[B, H, W, C]` (a view).
const TO_LAST: [usize; 4] = [0, 2, 3, 1];

/// A dense (one group, undilated) convolution of channels-last maps whose weight gradient is
/// [`conv2d_nhwc_weight_grad`](GpuConvBackend::conv2d_nhwc_weight_grad).
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Fusion: cfg(feature = "wgpu"), Autodiff)]
pub trait GpuConvBackend: Backend {
    /// `x` `[B, H, W, C]`, `weight` `[Co, C, kh, kw]`, symmetric `padding` `[rows, columns]`
    /// -> `[B, Ho, Wo, Co]` (burn's convolution, no bias; the autodiff node keeps its own).
    #[fusion(dtype = x, shape = burn::tensor::Shape::new([
        x[0],
        (x[1] + 2 * padding[0] - weight[2]) / stride[0] + 1,
        (x[2] + 2 * padding[1] - weight[3]) / stride[1] + 1,
        weight[0],
    ]))]
    fn conv2d_nhwc_gpu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        burn_conv::<Self>(x, weight, stride, padding)
    }

    /// The gradient of that convolution's weight (shaped as `weight`, `[Co, C, kh, kw]`) from
    /// its input `x` and its output's gradient `grad` `[B, Ho, Wo, Co]`.
    #[fusion(dtype = x, shape = weight)]
    fn conv2d_nhwc_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;
}

/// burn's options of a dense undilated convolution.
fn options(stride: [usize; 2], padding: [usize; 2]) -> ConvOptions<2> {
    ConvOptions::new(stride, padding, [1, 1], 1)
}

/// A dense convolution of channels-last maps with this module's weight gradient.
///
/// # Shapes
/// - `x` `[B, H, W, C]`, `weight` `[Co, C, kh, kw]` -> `[B, Ho, Wo, Co]`
pub fn conv2d_nhwc_gpu(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::conv2d_nhwc_gpu(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        padding,
    ))
}

/// The weight gradient of [`conv2d_nhwc_gpu`] on its own (tests and benches).
pub fn weight_grad(
    x: Tensor<4>,
    weight: Tensor<4>,
    grad: Tensor<4>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::conv2d_nhwc_weight_grad(
        x.into_dispatch(),
        weight.into_dispatch(),
        grad.into_dispatch(),
        stride,
        padding,
    ))
}

/// burn's convolution of channels-last maps, through their channels-first views.
fn burn_conv<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> FloatTensor<B> {
    let y = B::conv2d(
        B::float_permute(x, &TO_FIRST),
        weight,
        None,
        options(stride, padding),
    );
    B::float_permute(y, &TO_LAST)
}

impl GpuConvBackend for Flex {
    fn conv2d_nhwc_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FlexTensor {
        <Flex as ModuleOps<Flex>>::conv2d_weight_backward(
            Flex::float_permute(x, &TO_FIRST),
            weight,
            Flex::float_permute(grad, &TO_FIRST),
            options(stride, padding),
        )
    }
}

#[derive(Debug)]
struct ConvNode;

impl<B: GpuConvBackend> Backward<B, 2> for ConvNode {
    type State = (FloatTensor<B>, FloatTensor<B>, [usize; 2], [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, stride, padding) = ops.state;
        let [x_node, w_node] = ops.parents;
        if let Some(node) = w_node {
            let gw = B::conv2d_nhwc_weight_grad(
                x.clone(),
                weight.clone(),
                grad.clone(),
                stride,
                padding,
            );
            register_grads::<B, 1>(grads, [Some(node.id)], [gw]);
        }
        if let Some(node) = x_node {
            let gx = B::conv2d_x_backward(
                B::float_permute(x, &TO_FIRST),
                weight,
                B::float_permute(grad, &TO_FIRST),
                options(stride, padding),
            );
            register_grads::<B, 1>(grads, [Some(node.id)], [B::float_permute(gx, &TO_LAST)]);
        }
    }
}

impl<B: GpuConvBackend, C: CheckpointStrategy> GpuConvBackend for Autodiff<B, C> {
    fn conv2d_nhwc_gpu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let ((x, nx), (weight, nw)) = (x.into_parts(), weight.into_parts());
        match ConvNode.prepare::<C>([nx, nw]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::conv2d_nhwc_gpu(x.clone(), weight.clone(), stride, padding);
                prep.finish((x, weight, stride, padding), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_nhwc_gpu(x, weight, stride, padding)),
        }
    }

    fn conv2d_nhwc_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        untracked::<B, C>(B::conv2d_nhwc_weight_grad(
            constant::<B, C>(x),
            constant::<B, C>(weight),
            constant::<B, C>(grad),
            stride,
            padding,
        ))
    }
}

#[cfg(feature = "wgpu")]
mod gpu {
    use burn::backend::TensorMetadata;
    use burn::backend::ops::FloatTensorOps;
    use burn::tensor::Shape;
    use burn_cubecl::CubeBackend;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;

    use super::super::norm_gpu::{arg, per_item};
    use super::GpuConvBackend;

    /// The shape of a `[rows, columns]` matrix.
    fn matrix(rows: usize, columns: usize) -> Shape {
        Shape::new([rows, columns])
    }

    /// Whether the weight gradient of `weight` needs no patch matrix: a 1 x 1 kernel at stride 1
    /// without padding reads the input itself.
    fn plain(weight: &Shape, stride: [usize; 2], padding: [usize; 2]) -> bool {
        weight[2] == 1 && weight[3] == 1 && stride == [1, 1] && padding == [0, 0]
    }

    /// The patch matrix of a channels-last convolution: `cols[(n, oy, ox), (ky, kx, c)]` is the
    /// input at `(n, oy * sh + ky - ph, ox * sw + kx - pw, c)`, zero in the padding; one unit
    /// per value (neighbouring units read neighbouring channels). A copy: any float type.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn im2col_nhwc_kernel<F: Float>(
        x: &[F],
        cols: &mut [F],
        len: usize,
        h: usize,
        w: usize,
        c: usize,
        ho: usize,
        wo: usize,
        kw: usize,
        sh: usize,
        sw: usize,
        ph: usize,
        pw: usize,
        width: usize,
    ) {
        let k = ABSOLUTE_POS;
        if k >= len {
            terminate!();
        }
        let (row, col) = (k / width, k % width);
        let (tap, ci) = (col / c, col % c);
        let (ky, kx) = (tap / kw, tap % kw);
        let (rest, ox) = (row / wo, row % wo);
        let (n, oy) = (rest / ho, rest % ho);
        // Row and column in the padded map: inside the map when in [pad, pad + size).
        let (iy, ix) = (oy * sh + ky, ox * sw + kx);
        let inside = iy >= ph && iy < h + ph && ix >= pw && ix < w + pw;
        let at = select(inside, ((n * h + iy - ph) * w + ix - pw) * c + ci, 0);
        cols[k] = select(inside, x[at], F::new(0.0));
    }

    /// [`im2col_nhwc_kernel`] for values of type `F`, one unit per value of the patch matrix;
    /// `dims`: `[h, w, c, ho, wo, kw, sh, sw, ph, pw]`.
    fn launch_im2col<F: Float + CubeElement>(
        x: &CubeTensor,
        cols: &CubeTensor,
        len: usize,
        width: usize,
        [h, w, c, ho, wo, kw, sh, sw, ph, pw]: [usize; 10],
    ) {
        let (cubes, dim) = per_item(x, len);
        im2col_nhwc_kernel::launch::<F>(
            &x.client,
            cubes,
            dim,
            arg(x),
            arg(cols),
            len,
            h,
            w,
            c,
            ho,
            wo,
            kw,
            sh,
            sw,
            ph,
            pw,
            width,
        );
    }

    impl GpuConvBackend for CubeBackend {
        fn conv2d_nhwc_weight_grad(
            x: CubeTensor,
            weight: CubeTensor,
            grad: CubeTensor,
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> CubeTensor {
            // f32, or f16 inside an autocast scope.
            let (x, grad) = (into_contiguous(x), into_contiguous(grad));
            let (xs, gs, ws) = (x.shape(), grad.shape(), weight.shape());
            let (b, h, w, c) = (xs[0], xs[1], xs[2], xs[3]);
            let (ho, wo, co) = (gs[1], gs[2], gs[3]);
            let (kh, kw) = (ws[2], ws[3]);
            let rows = b * ho * wo;
            let width = kh * kw * c;
            let cols = match plain(&ws, stride, padding) {
                true => CubeBackend::float_reshape(x, matrix(rows, width)),
                false => {
                    let cols = empty_device_contiguous_dtype(
                        x.client.clone(),
                        x.device.clone(),
                        matrix(rows, width),
                        x.dtype,
                    );
                    let len = rows * width;
                    let dims = [
                        h, w, c, ho, wo, kw, stride[0], stride[1], padding[0], padding[1],
                    ];
                    f32_or_f16!(
                        x.dtype,
                        "the GPU convolution's weight gradient",
                        launch_im2col(&x, &cols, len, width, dims)
                    );
                    cols
                }
            };
            // `[Co, rows] x [rows, (ky, kx, c)]`: the weight in its channels-last layout.
            let grad_t = CubeBackend::float_swap_dims(
                CubeBackend::float_reshape(grad, matrix(rows, co)),
                0,
                1,
            );
            let gw = CubeBackend::float_matmul(grad_t, cols);
            let gw = CubeBackend::float_reshape(gw, Shape::new([co, kh, kw, c]));
            CubeBackend::float_permute(gw, &[0, 3, 1, 2])
        }
    }
}
