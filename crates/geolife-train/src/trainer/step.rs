//! One training step of the recipe: forward, BCE-with-logits on the (mixup) targets, backward,
//! gradient accumulation, and the AdamW update. `train`, `bench train` and the pipeline all
//! run this one step, so the benchmark times the real recipe.

use std::time::Instant;

use burn::module::{ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use geolife_model::fusion::{FusionConfig, FusionModel};
use serde::Serialize;

use super::inputs::{GradUnscale, batch_targets, batch_tensors};
use crate::checkpoint::LossScale;
use crate::config::Precision;
use crate::error::TrainError;
use crate::loader::{self, ReadyBatch};
use geolife_model::kernels::finite::FiniteCheck;

/// The model, its optimiser and the pending accumulated gradients.
pub struct TrainStep {
    /// Always `Some` between steps; the optimiser takes it by value during a step, so no
    /// second handle keeps the parameter buffers alive and AdamW updates them in place (with a
    /// clone held here, every parameter was copied at every step: 0.4 s of a seed-recipe epoch).
    model: Option<FusionModel>,
    pub optim: ModuleOptimizer,
    /// The factor `optim` multiplies gradients by (1 / loss scale in f16 steps).
    unscale: GradUnscale,
    accum: GradientsAccumulator<FusionModel>,
    pending: usize,
    /// Batches per optimiser step.
    accumulate: usize,
    /// Seed of the per-batch dropout streams.
    seed: u64,
    /// What every batch of the run shares: the model's config, patch size, outputs, device.
    shape: StepShape,
    /// Where the step's time went so far.
    pub times: StepTimes,
    /// The dynamic loss scale of an f16 run (`None` otherwise).
    scaler: Option<LossScale>,
}

/// What does not change from one batch of a run to the next.
#[derive(Debug, Clone)]
pub struct StepShape {
    pub fc: FusionConfig,
    /// Sentinel patch `[height, width]`.
    pub patch_hw: [usize; 2],
    /// Model outputs (columns of the targets).
    pub classes: usize,
    pub device: Device,
    /// The type of the forward and backward products (`train.precision`).
    pub precision: Precision,
    /// The first loss scale of an f16 run (`train.loss_scale`).
    pub loss_scale: f32,
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

/// A device error's chain of causes on one line, at most 600 characters, led by the failed
/// allocation when there is one (cubecl lists every kernel the failure skipped before it).
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    const FAILED: &str = "can't allocate buffer of size:";
    let lead = flat.find(FAILED).map(|at| {
        let rest = flat[at + FAILED.len()..].trim_start();
        let bytes: String = rest.chars().take_while(char::is_ascii_digit).collect();
        format!("{FAILED} {bytes}; ")
    });
    let flat = format!("{}{flat}", lead.unwrap_or_default());
    match flat.char_indices().nth(600) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}

/// Why a training step stopped.
#[derive(Debug)]
pub enum StepError {
    /// The loss is NaN or infinite.
    NonFinite(f32),
    /// The device failed to run the step (its message).
    Device(String),
}

impl StepError {
    /// The error of a run: a non-finite loss names the run, epoch and step; a device failure
    /// names the device, the batch size and what to change.
    pub fn into_train_error(
        self,
        run: &std::path::Path,
        epoch: usize,
        step: usize,
        batch_size: usize,
        device: &str,
    ) -> TrainError {
        match self {
            StepError::NonFinite(value) => TrainError::NonFiniteLoss {
                value,
                epoch,
                step,
                run: run.to_path_buf(),
            },
            StepError::Device(message) => TrainError::Invalid(format!(
                "{}: the training step of epoch {epoch}, batch {step} {}",
                run.display(),
                device_failure(
                    &message,
                    device,
                    batch_size,
                    "lower `train.batch_size` and raise `optim.accumulate` to keep the effective \
                     batch"
                )
            )),
        }
    }
}

/// "failed on DEVICE at batch size N: MESSAGE", with the usual cause on a GPU and `advice`.
pub fn device_failure(message: &str, device: &str, batch_size: usize, advice: &str) -> String {
    format!(
        "failed on {device} at batch size {batch_size}: {message}. On a GPU this is most often a \
         buffer larger than the device allows (the wgpu build cannot allocate 2 GiB or more): \
         {advice}"
    )
}

/// What one batch did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// The batch's mean BCE (before any accumulation scaling).
    pub loss: f32,
    /// The optimiser stepped after this batch (or skipped it, see `overflow`).
    pub stepped: bool,
    /// An f16 step whose gradients overflowed at this loss scale: the update was skipped (the
    /// model is unchanged) and the scale halved, as PyTorch's `GradScaler` does.
    pub overflow: Option<f32>,
}

/// The model of a [`TrainStep`] (a field borrow, so other fields stay free to borrow).
fn held(model: &Option<FusionModel>) -> &FusionModel {
    model
        .as_ref()
        .unwrap_or_else(|| unreachable!("the model is only taken inside `TrainStep::run`"))
}

impl TrainStep {
    /// The step for `model` (its lazily initialised parameters are drawn now, see
    /// [`FusionModel::materialize`]), stepping `optim` every `accumulate` batches of `shape`.
    pub fn new(
        model: FusionModel,
        (optim, unscale): (ModuleOptimizer, GradUnscale),
        accumulate: usize,
        seed: u64,
        shape: StepShape,
    ) -> Self {
        model.materialize();
        let scaler =
            (shape.precision == Precision::F16).then(|| LossScale::start(shape.loss_scale));
        Self {
            model: Some(model),
            optim,
            unscale,
            accum: GradientsAccumulator::new(),
            pending: 0,
            accumulate: accumulate.max(1),
            seed,
            shape,
            times: StepTimes::default(),
            scaler,
        }
    }

    /// The loss scale now (f16 runs), to be saved with the training state.
    pub fn loss_scale(&self) -> Option<LossScale> {
        self.scaler
    }

    /// Continues from a saved loss scale (an f16 run resumed from its checkpoint); a checkpoint
    /// without one (another precision before) starts the scale afresh.
    pub fn resume_loss_scale(&mut self, saved: Option<LossScale>) {
        if self.scaler.is_some() {
            self.scaler = Some(saved.unwrap_or_else(|| LossScale::start(self.shape.loss_scale)));
        }
    }

    /// The model as of the last optimiser step.
    pub fn model(&self) -> &FusionModel {
        held(&self.model)
    }

    /// Batches accumulated since the last optimiser step.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Runs batch `b` of `epoch`: the optimiser steps (at learning rate `lr`) when `accumulate`
    /// batches are pending or `force_step` is set (the epoch's last batch). A non-finite loss
    /// is returned as [`StepError::NonFinite`] before any gradient is taken: the model is
    /// unchanged. A device that cannot run the step (a GPU buffer larger than it allows) is
    /// [`StepError::Device`], not a panic.
    pub fn run(
        &mut self,
        b: &ReadyBatch,
        epoch: usize,
        lr: f64,
        force_step: bool,
    ) -> Result<StepOutcome, StepError> {
        let StepShape {
            fc,
            patch_hw,
            classes,
            device,
            precision,
            ..
        } = &self.shape;
        // Dropout randomness per (seed, epoch, batch), so a resumed run draws the same masks.
        device.seed(loader::derive_seed(self.seed ^ 0xD50F, epoch, b.index));
        let t = Instant::now();
        let inputs = batch_tensors(b, fc, *patch_hw, device);
        let logits = {
            let _products = geolife_model::kernels::autocast(precision.half());
            self.model().forward(inputs)
        };
        let loss = geolife_model::loss::bce_with_logits(logits, batch_targets(b, *classes, device));
        let value: f32 = loss
            .clone()
            .try_into_scalar()
            .map_err(|e| StepError::Device(one_line(&format!("{e:?}"))))?;
        self.times.forward_s += t.elapsed().as_secs_f64();
        self.times.batches += 1;
        if !value.is_finite() {
            return Err(StepError::NonFinite(value));
        }
        let t = Instant::now();
        // f16 gradients below 2^-24 vanish: the loss is scaled up (gradients are scaled back
        // before the update).
        let scaled = match self.scaler {
            Some(s) => loss.mul_scalar(s.scale / self.accumulate as f32),
            None if self.accumulate > 1 => loss.div_scalar(self.accumulate as f32),
            None => loss,
        };
        let grads = GradientsParams::from_grads(scaled.backward(), self.model());
        self.accum.accumulate(held(&self.model), grads);
        self.times.backward_s += t.elapsed().as_secs_f64();
        self.pending += 1;
        let stepped = self.pending == self.accumulate || force_step;
        let mut overflow = None;
        if stepped {
            let t = Instant::now();
            let mut grads = self.accum.grads();
            let finite = match &mut self.scaler {
                Some(scaler) => {
                    let inv = 1.0 / scaler.scale;
                    let finite = all_finite(&grads, held(&self.model))?;
                    if !finite {
                        overflow = Some(scaler.scale);
                    } else if self.optim.has_gradient_clipping() {
                        // Clipping runs before the update: it needs the true gradients.
                        unscale(&mut grads, held(&self.model), inv);
                    } else {
                        self.unscale.set(inv);
                    }
                    scaler.update(finite);
                    finite
                }
                None => true,
            };
            if finite {
                let model = self
                    .model
                    .take()
                    .unwrap_or_else(|| unreachable!("taken only here"));
                self.model = Some(self.optim.step(lr, model, grads));
                self.unscale.set(1.0);
            }
            self.times.optimizer_s += t.elapsed().as_secs_f64();
            self.pending = 0;
        }
        Ok(StepOutcome {
            loss: value,
            stepped,
            overflow,
        })
    }
}

/// Whether every gradient of `model` in `grads` is finite (no NaN, no infinity): one flag for
/// the whole model, set by one kernel per gradient on a GPU (`kernels::finite`), one value read
/// back.
fn all_finite(grads: &GradientsParams, model: &FusionModel) -> Result<bool, StepError> {
    struct Check<'a> {
        grads: &'a GradientsParams,
        check: FiniteCheck,
    }
    impl ModuleVisitor for Check<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.check.add(g);
            }
        }
    }
    let mut check = Check {
        grads,
        check: FiniteCheck::default(),
    };
    burn::module::Module::visit(model, &mut check);
    check
        .check
        .finish()
        .map_err(|e| StepError::Device(one_line(&e)))
}

/// Multiplies every gradient of `model` in `grads` by `inv` (1 / loss scale).
fn unscale(grads: &mut GradientsParams, model: &FusionModel, inv: f32) {
    struct Unscale<'a> {
        grads: &'a mut GradientsParams,
        inv: f32,
    }
    impl ModuleVisitor for Unscale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.inv));
            }
        }
    }
    burn::module::Module::visit(model, &mut Unscale { grads, inv });
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_failed_allocation_leads_the_device_error() {
        let text = "Execution(An error happened\n  Caused by: skipped `ReduceKernel`: it needed \
                    memory\n Caused by:\n  can't allocate buffer of size: 2147483648 No backtrace\n)";
        let line = one_line(text);
        assert!(
            line.starts_with("can't allocate buffer of size: 2147483648; Execution("),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let long = "x ".repeat(1000);
        assert_eq!(one_line(&long).chars().count(), 603);
    }
}
