//! AdamW with each parameter's update fused into one pass over its values, for the CPU (flex)
//! device. burn's `AdamW` runs about fifteen tensor operations per parameter, and each one
//! reads and writes a full-size buffer: with the 11,255-way head and two cube ResNet18s that
//! was 13% of a seed-recipe epoch (`profile.json`). Here `geolife_model::fused::adamw_step`
//! reads the parameter, its gradient and both moments once and writes them back in place (a
//! buffer something else still holds is copied first), in a loop compiled for the widest vector
//! instructions the CPU has. The arithmetic is burn's, in the same order and in f32, and the
//! state is burn's `AdamWState`, so `last.ckpt` files are the same whichever of the two wrote
//! them. On other devices (wgpu) the values would have to travel to the host and back, so those
//! use burn's `AdamW`, whose element-wise chain burn's operation fusion runs as at most one
//! kernel per parameter tensor and step (`tests/wgpu_path.rs` checks both the count and that it
//! equals this loop over 5 steps).

use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, Optimizer};
use burn::tensor::{DType, Device, Tensor};

/// AdamW (decoupled weight decay, bias-corrected moments, no AMSGrad) with a fused CPU update.
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
        let f32s = geolife_model::fused::adamw_applies(&param, &grad)
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
        let (p, m, v) = geolife_model::fused::adamw_step(param, grad, moments, h);
        let state = AdamWState::new(AdaptiveMomentumState::new(time, m, v));
        (p, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
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
