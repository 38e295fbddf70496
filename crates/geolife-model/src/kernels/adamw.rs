//! AdamW with each parameter's update fused into one in-place pass over its values on the CPU:
//! burn's `AdamW` runs about fifteen full-size tensor operations per parameter. The arithmetic,
//! its order and the state (`AdamWState`) are burn's, so checkpoints do not depend on which ran.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, Optimizer};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use super::shared::{CHUNK, constant, on_cpu_f32, slice, tensor, untracked, widest};

/// The AdamW update with its own CPU kernel.
#[backend_extension(Flex, Autodiff)]
pub trait AdamWBackend: Backend {
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

/// AdamW (decoupled weight decay, bias-corrected moments, no AMSGrad) with a fused CPU update.
/// Off the CPU it runs burn's `AdamW`, whose element-wise chain burn's operation fusion runs as
/// at most one kernel per parameter tensor and step (geolife-train's `tests/wgpu_path.rs` checks
/// the count, and that it equals this loop over 5 steps).
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// burn's AdamW with the same settings, for what the loop does not take (values other
    /// than f32).
    fallback: AdamW,
}

impl FusedAdamW {
    /// The optimiser for `beta_1`, `beta_2`, `epsilon` and `weight_decay` (as `AdamWConfig`).
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            fallback: AdamWConfig::new()
                .with_beta_1(beta_1)
                .with_beta_2(beta_2)
                .with_epsilon(epsilon)
                .with_weight_decay(weight_decay)
                .build(),
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let f32s = adamw_applies(&param, &grad)
            && state.as_ref().is_none_or(|s| {
                s.momentum.moment_1.dtype() == DType::F32
                    && s.momentum.moment_2.dtype() == DType::F32
                    && s.momentum.max_moment_2.is_none()
            });
        if !f32s {
            return self.fallback.step(lr, param, grad, state);
        }
        let (moments, time) = match state {
            Some(s) => (
                Some((s.momentum.moment_1, s.momentum.moment_2)),
                s.momentum.time + 1,
            ),
            None => (None, 1),
        };
        let (b1, b2) = (self.beta_1, self.beta_2);
        let h = [
            lr as f32,
            b1,
            b2,
            self.epsilon,
            (1.0 - lr * f64::from(self.weight_decay)) as f32,
            1f32 - b1.powi(time as i32),
            1f32 - b2.powi(time as i32),
        ];
        let (p, m, v) = adamw_step(param, grad, moments, h);
        let state = AdamWState::new(AdaptiveMomentumState::new(time, m, v));
        (p, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
}

/// One AdamW update of an f32 parameter on the CPU (see
/// [`AdamWBackend::fused_adamw_step`]): `(parameter, first moment, second moment)`. Callers
/// check [`adamw_applies`] first, and run burn's optimiser where it does not.
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

/// The AdamW update of one chunk (see [`AdamWBackend::fused_adamw_step`]), compiled for the
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

impl AdamWBackend for Flex {
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

impl<B: AdamWBackend, C: CheckpointStrategy> AdamWBackend for Autodiff<B, C> {
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
    use burn::tensor::Distribution;

    /// burn's AdamW and the fused one, from the same values, over several steps with changing
    /// gradients and learning rates: the same parameters and moments.
    #[test]
    fn fused_steps_equal_burns_adamw() {
        let device = Device::flex();
        let burn = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay(0.01)
            .build();
        let fused = FusedAdamW::new(0.9, 0.999, 1e-8, 0.01);
        let n = 3 * (1 << 14) + 17; // several chunks and a ragged end
        let start = Tensor::<2>::random([n / 17, 17], Distribution::Normal(0.0, 1.0), &device);
        let before = start.to_data();
        let (mut a, mut b) = (start.clone(), start.clone());
        let (mut sa, mut sb) = (None, None);
        for step in 0..5 {
            let g = Tensor::<2>::random([n / 17, 17], Distribution::Normal(0.0, 0.1), &device);
            let lr = 1e-3 * (step + 1) as f64;
            (a, sa) = burn.step(lr, a, g.clone(), sa);
            (b, sb) = fused.step(lr, b, g, sb);
        }
        let diff = |x: Tensor<2>, y: Tensor<2>| -> f32 {
            (x - y).abs().max().into_data().try_to_vec::<f32>().unwrap()[0]
        };
        // The update writes in place only into buffers nothing else holds: `start` shares the
        // first parameter's buffer and must be unchanged.
        assert_eq!(diff(start, Tensor::from_data(before, &device)), 0.0);
        let (sa, sb) = (sa.unwrap().momentum, sb.unwrap().momentum);
        assert_eq!(sa.time, sb.time);
        assert!(diff(a, b) < 1e-6);
        assert!(diff(sa.moment_1, sb.moment_1) < 1e-9);
        assert!(diff(sa.moment_2, sb.moment_2) < 1e-9);
    }
}
