//! Linear layers on the CPU whose products read the weight and the input transposed through
//! strides and add the bias inside the product: burn flex copies a transposed operand first
//! (46 MB per step for the 11,255-way head's weight).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::Linear;
use burn::tensor::{DType, Shape, Tensor};
use gemm::Parallelism;

use super::autocast;
use super::shared::{
    matmul, matmul_new, on_cpu_f32, par_filled, register_grads, row_sums, slice, tensor,
};

/// Linear layers with their own CPU kernel.
#[backend_extension(Flex, Autodiff)]
pub trait LinearBackend: Backend {
    /// `x W + b` for `x` `[M, K]`, `W` `[K, N]` and `b` `[N]` (a linear layer).
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The gradients of [`fused_linear`](LinearBackend::fused_linear): `(x, weight, bias)`.
    fn fused_linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (x, weight, grad);
        unreachable!("fused_linear_backward is only called by its autodiff node")
    }
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
    if let Some(h) = autocast::half() {
        return autocast::to_f32(half_linear(x, weight, bias, h));
    }
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

/// `gelu(linear(x))`, the first half of a transformer or ConvNeXt MLP. Inside an autocast
/// scope off the CPU the product's output stays in the half type through the GELU (PyTorch's
/// autocast also leaves it half; its GELU computes inside in f32, burn's in the half type),
/// so the MLP's widest activation, `4 * d` wide, is not cast to f32 and back before the second
/// layer, which takes the half values as they are. On the CPU the output is f32, for the GELU
/// kernel.
pub fn linear_gelu<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    // On the CPU the GELU kernel takes f32 only (flex's own half GELU is a serial loop).
    match autocast::half_off_cpu(&x) {
        Some(h) => super::gelu(half_linear(
            x,
            layer.weight.val(),
            layer.bias.as_ref().map(|b| b.val()),
            h,
        )),
        None => super::gelu(linear(layer, x)),
    }
}

/// [`linear`] whose output a half product reads next (attention's queries, keys and values):
/// inside an autocast scope off the CPU the output stays in the half type, so the products
/// cast nothing; elsewhere as [`linear`].
pub fn linear_half<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    match autocast::half_off_cpu(&x) {
        Some(h) => half_linear(
            x,
            layer.weight.val(),
            layer.bias.as_ref().map(|b| b.val()),
            h,
        ),
        None => linear(layer, x),
    }
}

/// [`linear_with`] inside an autocast scope: rows of one 2-D product (as off the CPU), input,
/// weight and bias in `half`, the output left in `half`.
fn half_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    half: burn::tensor::FloatDType,
) -> Tensor<D> {
    let dims = x.dims();
    let [_, d_out] = weight.dims();
    let mut out = dims;
    out[D - 1] = d_out;
    let y = burn::tensor::module::linear(
        autocast::to(x.reshape::<2, _>([-1, dims[D - 1] as i32]), half),
        autocast::to(weight, half),
        bias.map(|b| autocast::to(b, half)),
    );
    y.reshape(out)
}

// ---------------------------------------------------------------------------------------------
// The math, on slices.

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

impl LinearBackend for Flex {
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
}

// ---------------------------------------------------------------------------------------------
// Autodiff.

#[derive(Debug)]
struct LinearNode;

impl<B: LinearBackend> Backward<B, 3> for LinearNode {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        let (gx, gw, gb) = B::fused_linear_backward(x, weight, grad);
        register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gw, gb]);
    }
}

impl<B: LinearBackend, C: CheckpointStrategy> LinearBackend for Autodiff<B, C> {
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
}
