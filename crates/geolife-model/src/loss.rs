//! Losses the training crate needs and burn lacks: binary cross-entropy with logits for soft
//! (mixup) targets, written in the numerically stable form.

use burn::tensor::Tensor;

/// Mean binary cross-entropy between `logits` and soft `targets` in `[0, 1]`, as PyTorch's
/// `BCEWithLogitsLoss()`: `max(x, 0) - x t + log(1 + exp(-|x|))`, stable for any logit. On the
/// CPU through its own kernel (`crate::kernels::bce_with_logits`), elsewhere as burn operations.
///
/// # Shapes
/// - logits, targets: `[B, K]`
/// - output: `[1]`
pub fn bce_with_logits(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    if let Some(loss) = crate::kernels::bce_with_logits(logits.clone(), targets.clone()) {
        return loss;
    }
    let positive = logits.clone().clamp_min(0.0);
    let cross = logits.clone() * targets;
    let softplus_neg_abs = logits.abs().neg().exp().log1p();
    (positive - cross + softplus_neg_abs).mean()
}
