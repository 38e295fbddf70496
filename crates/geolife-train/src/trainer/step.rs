//! One training step of the recipe: forward, BCE-with-logits on the (mixup) targets, backward,
//! gradient accumulation, and the AdamW update. `train`, `bench train` and the pipeline all
//! run this one step, so the benchmark times the real recipe.

use std::time::Instant;

use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use geolife_model::fusion::{FusionConfig, FusionModel};
use serde::Serialize;

use super::inputs::{batch_targets, batch_tensors};
use crate::loader::{self, ReadyBatch};

/// The model, its optimiser and the pending accumulated gradients.
pub struct TrainStep {
    pub model: FusionModel,
    pub optim: ModuleOptimizer,
    accum: GradientsAccumulator<FusionModel>,
    pending: usize,
    /// Batches per optimiser step.
    accumulate: usize,
    /// Seed of the per-batch dropout streams.
    seed: u64,
    /// Where the step's time went so far.
    pub times: StepTimes,
}

/// Seconds spent in each part of the training steps run so far (flex executes eagerly, and
/// reading the loss back waits for the forward pass, so each part is measured where it runs).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepTimes {
    pub batches: usize,
    /// Building the input tensors, the forward pass and the loss (read back).
    pub forward_s: f64,
    /// Backward pass and gradient accumulation.
    pub backward_s: f64,
    /// AdamW updates.
    pub optimizer_s: f64,
}

/// What one batch did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// The batch's mean BCE (before any accumulation scaling).
    pub loss: f32,
    /// The optimiser stepped after this batch.
    pub stepped: bool,
}

impl TrainStep {
    pub fn new(model: FusionModel, optim: ModuleOptimizer, accumulate: usize, seed: u64) -> Self {
        Self {
            model,
            optim,
            accum: GradientsAccumulator::new(),
            pending: 0,
            accumulate: accumulate.max(1),
            seed,
            times: StepTimes::default(),
        }
    }

    /// Batches accumulated since the last optimiser step.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Runs batch `b` of `epoch`: the optimiser steps (at learning rate `lr`) when `accumulate`
    /// batches are pending or `force_step` is set (the epoch's last batch). A non-finite loss
    /// is returned as `Err(loss)` before any gradient is taken: the model is unchanged.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        b: &ReadyBatch,
        epoch: usize,
        fc: &FusionConfig,
        patch_hw: [usize; 2],
        classes: usize,
        device: &Device,
        lr: f64,
        force_step: bool,
    ) -> Result<StepOutcome, f32> {
        // Dropout randomness per (seed, epoch, batch), so a resumed run draws the same masks.
        device.seed(loader::derive_seed(self.seed ^ 0xD50F, epoch, b.index));
        let t = Instant::now();
        let logits = self.model.forward(batch_tensors(b, fc, patch_hw, device));
        let loss = geolife_model::loss::bce_with_logits(logits, batch_targets(b, classes, device));
        let value: f32 = loss.clone().into_scalar();
        self.times.forward_s += t.elapsed().as_secs_f64();
        self.times.batches += 1;
        if !value.is_finite() {
            return Err(value);
        }
        let t = Instant::now();
        let scaled = if self.accumulate > 1 {
            loss.div_scalar(self.accumulate as f32)
        } else {
            loss
        };
        let grads = GradientsParams::from_grads(scaled.backward(), &self.model);
        self.accum.accumulate(&self.model, grads);
        self.times.backward_s += t.elapsed().as_secs_f64();
        self.pending += 1;
        let stepped = self.pending == self.accumulate || force_step;
        if stepped {
            let t = Instant::now();
            self.model = self.optim.step(lr, self.model.clone(), self.accum.grads());
            self.times.optimizer_s += t.elapsed().as_secs_f64();
            self.pending = 0;
        }
        Ok(StepOutcome {
            loss: value,
            stepped,
        })
    }
}
