//! Mixed precision as PyTorch's autocast does it: inside an [`autocast`] scope, convolutions,
//! linear layers and attention products cast their inputs and weights to the half type, run
//! there, and hand f32 back; the parameters, their gradients, the optimiser state and the
//! loss stay f32. The cast's autodiff node turns each half gradient back into f32 on its way
//! to the f32 weights, so the backward pass runs the same products in half precision without
//! a copy of the model. Two exceptions keep activations half between layers, where PyTorch's
//! autocast leaves them half too: off the CPU, a linear layer followed by GELU
//! (`linear::linear_gelu`), and on the GPU, a convolution whose output a BatchNorm or
//! LayerNorm kernel reads (`norm::half_for_norm`; the kernels compute in f32 inside).
//!
//! The scope is per thread (a training step records its forward pass on one thread), so a
//! test or a second run on another thread is not affected.

use std::cell::Cell;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Tensor};

thread_local! {
    static HALF: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// Restores the previous precision of this thread when dropped.
#[must_use = "the precision holds only while the guard lives"]
pub struct AutocastGuard {
    previous: Option<FloatDType>,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        HALF.with(|h| h.set(self.previous));
    }
}

/// Runs the products recorded on this thread in `half` (`F16` or `BF16`) until the guard is
/// dropped; `None` or `Some(F32)` is full precision (the default).
pub fn autocast(half: Option<FloatDType>) -> AutocastGuard {
    let half = half.filter(|d| matches!(d, FloatDType::F16 | FloatDType::BF16));
    AutocastGuard {
        previous: HALF.with(|h| h.replace(half)),
    }
}

/// The half type of this thread's products, if a scope is open.
pub fn half() -> Option<FloatDType> {
    HALF.with(Cell::get)
}

/// [`half`] where a product's output may stay in the half type for the next layer: off the
/// CPU (the CPU's GELU and norm kernels take f32 only).
pub(crate) fn half_off_cpu<const D: usize>(x: &Tensor<D>) -> Option<FloatDType> {
    half().filter(|_| x.device().without_autodiff() != burn::tensor::Device::flex())
}

/// `t` in `half` (no operation when it already is: a norm kernel may have handed over half
/// activations, see `norm::half_for_norm`).
pub(crate) fn to<const D: usize>(t: Tensor<D>, half: FloatDType) -> Tensor<D> {
    if t.dtype() == DType::from(half) {
        return t;
    }
    t.cast(half)
}

/// `t` back in f32 (a no-op for an f32 tensor).
pub fn to_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

/// `conv.forward(x)` in `half`, returned in f32; `None` for a `Same`-padded layer (none of the
/// backbones has one; burn keeps its padding arithmetic private), which stays f32.
pub(crate) fn conv_forward(conv: &Conv2d, x: Tensor<4>, half: FloatDType) -> Option<Tensor<4>> {
    conv_forward_half(conv, x, half).map(to_f32)
}

/// [`conv_forward`], its output left in `half` (for a norm kernel that reads it so).
pub(crate) fn conv_forward_half(
    conv: &Conv2d,
    x: Tensor<4>,
    half: FloatDType,
) -> Option<Tensor<4>> {
    let pads = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => return None,
    };
    let options = ConvOptions::new_with_padding(conv.stride, pads, conv.dilation, conv.groups);
    Some(conv2d(
        to(x, half),
        to(conv.weight.val(), half),
        conv.bias.as_ref().map(|b| to(b.val(), half)),
        options,
    ))
}

/// `a.matmul(b)`: in the half type inside an [`autocast`] scope (returned in f32), in f32
/// otherwise. The attention products of Swin V2 and MaxViT go through it.
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    match half() {
        Some(h) => to_f32(to(a, h).matmul(to(b, h))),
        None => a.matmul(b),
    }
}

/// [`matmul`] whose output a linear layer reads next (attention's weighted values before
/// the output projection): inside an autocast scope off the CPU it stays in the half type,
/// as PyTorch's autocast leaves it.
pub fn matmul_half<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    match half_off_cpu(&a) {
        Some(h) => to(a, h).matmul(to(b, h)),
        None => matmul(a, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(half(), None);
        {
            let _a = autocast(Some(FloatDType::F16));
            assert_eq!(half(), Some(FloatDType::F16));
            {
                let _b = autocast(Some(FloatDType::F32));
                assert_eq!(half(), None);
            }
            assert_eq!(half(), Some(FloatDType::F16));
            // Another thread is not in the scope.
            assert_eq!(std::thread::spawn(half).join().unwrap(), None);
        }
        assert_eq!(half(), None);
    }
}
