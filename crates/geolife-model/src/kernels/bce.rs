//! Mean binary cross-entropy with logits on the CPU, one parallel pass forward (summed in f64)
//! and one backward, instead of nine element-wise operations and their gradients on the
//! `[B, 11255]` logits.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::shared::{CHUNK, on_cpu_f32, par_filled, register_grads, slice, tensor};

/// The binary cross-entropy loss with its own CPU kernel.
#[backend_extension(Flex, Autodiff)]
pub trait BceBackend: Backend {
    /// Mean binary cross-entropy between logits and soft targets of the same shape (`[1]`).
    fn fused_bce(logits: FloatTensor<Self>, targets: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients of [`fused_bce`](BceBackend::fused_bce) for the loss's gradient `grad`
    /// (`[1]`): `(logits, targets)`.
    fn fused_bce_backward(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (logits, targets, grad);
        unreachable!("fused_bce_backward is only called by its autodiff node")
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

// ---------------------------------------------------------------------------------------------
// The math, on slices.

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

/// The mean of `softplus(x) - x t` (binary cross-entropy with logits), summed in f64 per task;
/// the tasks' sums are added in order, so the result does not depend on the thread count.
fn bce_mean(x: &[f32], t: &[f32]) -> f32 {
    let shares: Vec<f64> = x
        .par_chunks(CHUNK)
        .zip(t.par_chunks(CHUNK))
        .map(|(x, t)| {
            x.iter()
                .zip(t)
                .map(|(&x, &t)| f64::from(softplus(x) - x * t))
                .sum::<f64>()
        })
        .collect();
    let sum: f64 = shares.iter().sum();
    (sum / x.len().max(1) as f64) as f32
}

// ---------------------------------------------------------------------------------------------
// burn flex.

impl BceBackend for Flex {
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
}

// ---------------------------------------------------------------------------------------------
// Autodiff.

#[derive(Debug)]
struct BceNode;

impl<B: BceBackend> Backward<B, 2> for BceNode {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (logits, targets) = ops.state;
        let (gx, gt) = B::fused_bce_backward(logits, targets, grad);
        register_grads::<B, 2>(grads, ops.parents.map(|p| p.map(|n| n.id)), [gx, gt]);
    }
}

impl<B: BceBackend, C: CheckpointStrategy> BceBackend for Autodiff<B, C> {
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
}
