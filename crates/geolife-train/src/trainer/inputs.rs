//! What enters the model: the fusion config for a training config and a dataset, batch shapes
//! and tensors, the AdamW of the recipe, and batched scoring of a set of surveys.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor, TensorData};
use geolife_data::cache::Manifest;
use geolife_model::fusion::{FusionConfig, FusionInput, FusionModel, PriorInput};

use crate::config::{DeviceKind, ModelSize, OptimSection, TrainConfig};
use crate::error::TrainError;
use crate::loader::{self, BatchPlan, ReadyBatch, SampleSource};
use crate::vocab::Vocabulary;

/// The fusion network config for a training config and a dataset.
pub fn fusion_config(
    cfg: &TrainConfig,
    manifest: &Manifest,
    num_classes: usize,
) -> Result<FusionConfig, TrainError> {
    let m = &cfg.model;
    let base = match m.size {
        ModelSize::Tiny => {
            let mut c = FusionConfig::tiny(num_classes);
            c.sentinel_backbone = m.backbone;
            c
        }
        ModelSize::Paper => FusionConfig::paper(num_classes, m.backbone),
    };
    let fc = base
        .with_num_features(manifest.feature_names.len())
        .with_dropout(m.dropout)
        .with_hidden(m.hidden)
        .with_use_tabular(m.use_tabular)
        .with_use_landsat(m.use_landsat)
        .with_use_bioclim(m.use_bioclim)
        .with_use_sentinel(m.use_sentinel)
        .with_landsat_shape(manifest.landsat_shape)
        .with_bioclim_shape(manifest.bioclim_shape)
        .with_sentinel_channels(manifest.patch_shape[0])
        .with_sentinel_input(m.sentinel_input)
        .with_prior_input(cfg.location.input)
        .with_prior_rank(cfg.location.rank);
    let fc = match manifest.patch_shape {
        [_, h, w] if h == w => fc.with_sentinel_size(h),
        [_, h, w] if m.use_sentinel => {
            return Err(TrainError::Invalid(format!(
                "model: the cache holds {h}x{w} Sentinel patches; the image backbones take square patches"
            )));
        }
        _ => fc,
    };
    fc.validate()?;
    Ok(fc)
}

/// Shapes of a batch of `n` surveys (tabular, Landsat, bioclim, Sentinel), as
/// [`batch_tensors`] builds them; disabled branches get a `[n, 1, 1, 1]` placeholder.
pub fn batch_shapes(
    fc: &FusionConfig,
    patch_hw: [usize; 2],
    n: usize,
) -> ([usize; 2], [usize; 4], [usize; 4], [usize; 4]) {
    let on = |on: bool, shape: [usize; 4]| if on { shape } else { [n, 1, 1, 1] };
    let [lc, lh, lw] = fc.landsat_shape;
    let [bc, bh, bw] = fc.bioclim_shape;
    (
        if fc.use_tabular {
            [n, fc.num_features]
        } else {
            [n, 1]
        },
        on(fc.use_landsat, [n, lc, lh, lw]),
        on(fc.use_bioclim, [n, bc, bh, bw]),
        on(
            fc.use_sentinel,
            [n, fc.sentinel_channels, patch_hw[0], patch_hw[1]],
        ),
    )
}

/// Checks that batches of `patch_hw` patches and `fc`'s shapes fit `model`, before the first
/// batch: a wrong size is an error naming the branch and both shapes, not a panic mid-epoch.
pub fn check_model_input(
    model: &FusionModel,
    fc: &FusionConfig,
    patch_hw: [usize; 2],
) -> Result<(), TrainError> {
    let (t, l, b, s) = batch_shapes(fc, patch_hw, 1);
    Ok(model.check_shapes(t, l, b, s)?)
}

/// AdamW as the config says. burn's defaults differ from PyTorch's (eps 1e-5, weight decay
/// 1e-4), so every field is set; as `torch.optim.AdamW`, the decoupled weight decay applies to
/// every parameter, norms and biases included (the seed passes `model.parameters()`).
pub fn adamw(o: &OptimSection) -> AdamWConfig {
    let c = AdamWConfig::new()
        .with_beta_1(o.beta1 as f32)
        .with_beta_2(o.beta2 as f32)
        .with_epsilon(o.epsilon as f32)
        .with_weight_decay(o.weight_decay as f32);
    match o.grad_clip_norm {
        Some(n) => c.with_grad_clipping(Some(GradientClippingConfig::Norm(n as f32))),
        None => c,
    }
}

/// The optimiser of a run: the recipe's AdamW, fused into one pass per parameter on the CPU
/// (see [`geolife_model::kernels::adamw`]), burn's own on other devices; gradient clipping as
/// configured. The returned handle divides each gradient by the loss scale of a mixed-precision
/// step right before that parameter's update (see [`GradUnscale`]).
pub fn optimizer(o: &OptimSection, device: DeviceKind) -> (ModuleOptimizer, GradUnscale) {
    let unscale = GradUnscale::new();
    let optim = match device {
        DeviceKind::Flex => ModuleOptimizer::from(Unscaled {
            inner: geolife_model::kernels::FusedAdamW::new(
                o.beta1 as f32,
                o.beta2 as f32,
                o.epsilon as f32,
                o.weight_decay as f32,
            ),
            unscale: unscale.clone(),
        }),
        DeviceKind::Wgpu => ModuleOptimizer::from(Unscaled {
            inner: adamw(o).build(),
            unscale: unscale.clone(),
        }),
    };
    let optim = match o.grad_clip_norm {
        Some(n) => optim.with_grad_clipping(GradientClippingConfig::Norm(n as f32).init()),
        None => optim,
    };
    (optim, unscale)
}

/// The factor (1 / loss scale) by which [`optimizer`]'s updates multiply their gradients; 1
/// outside f16 steps, where nothing is multiplied.
///
/// Dividing inside the update rather than as a pass of its own lets a GPU's operation fusion
/// run the division in the same kernel as that parameter's AdamW chain: one kernel per
/// parameter tensor instead of two. Gradient clipping, which burn applies before the update,
/// needs unscaled gradients: with clipping, the step divides them itself and leaves this at 1.
///
/// Only [`optimizer`] makes one, so a handle is always the one its optimiser reads: a handle
/// that no optimiser reads would leave f16 gradients scaled by 2^16 going into AdamW.
#[derive(Clone, Debug)]
pub struct GradUnscale(Arc<AtomicU32>);

impl GradUnscale {
    fn new() -> Self {
        Self(Arc::new(AtomicU32::new(1f32.to_bits())))
    }

    /// Sets the factor for the following updates.
    pub fn set(&self, factor: f32) {
        self.0.store(factor.to_bits(), Ordering::Relaxed);
    }

    /// The factor now.
    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// An optimiser whose gradients are first multiplied by a [`GradUnscale`] factor. Its state is
/// the inner optimiser's, so checkpoints are the same as without the wrapper.
#[derive(Clone)]
struct Unscaled<O> {
    inner: O,
    unscale: GradUnscale,
}

impl<O: Optimizer> Optimizer for Unscaled<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let factor = self.unscale.get();
        let grad = if factor == 1.0 {
            grad
        } else {
            grad.mul_scalar(factor)
        };
        self.inner.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        O::to_device(state, device)
    }
}

/// Tensors of one batch on `device`. Disabled branches get a `[B, 1, 1, 1]` placeholder.
pub fn batch_tensors(
    b: &ReadyBatch,
    fc: &FusionConfig,
    patch_hw: [usize; 2],
    device: &Device,
) -> FusionInput {
    let (ts, ls, bs, ss) = batch_shapes(fc, patch_hw, b.inputs.n);
    let t4 = |on: bool, data: &[f32], shape: [usize; 4]| {
        if on {
            Tensor::<4>::from_data(TensorData::new(data.to_vec(), shape), device)
        } else {
            Tensor::<4>::zeros(shape, device)
        }
    };
    FusionInput {
        tabular: if fc.use_tabular {
            Tensor::<2>::from_data(TensorData::new(b.inputs.tabular.clone(), ts), device)
        } else {
            Tensor::<2>::zeros(ts, device)
        },
        landsat: t4(fc.use_landsat, &b.inputs.landsat, ls),
        bioclim: t4(fc.use_bioclim, &b.inputs.bioclim, bs),
        sentinel: t4(fc.use_sentinel, &b.inputs.sentinel, ss),
        prior: (fc.prior_input != PriorInput::Off).then(|| {
            Tensor::<2>::from_data(
                TensorData::new(b.inputs.prior.clone(), [b.inputs.n, fc.num_classes]),
                device,
            )
        }),
    }
}

/// The batch's (soft) multi-hot targets, `[n, classes]`.
pub fn batch_targets(b: &ReadyBatch, classes: usize, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(
        TensorData::new(b.targets.clone(), [b.inputs.n, classes]),
        device,
    )
}

/// Scores of a set of surveys.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Probabilities, row-major `[n, classes]`.
    pub probs: Vec<f32>,
    pub survey_ids: Vec<u64>,
    /// Label sets (real species ids); empty sets for an unlabelled split.
    pub labels: Vec<Vec<u32>>,
    /// Mean BCE against the multi-hot labels.
    pub loss: f64,
}

/// Scores of the surveys `indices` of `source`, in batches of `batch_size`.
#[allow(clippy::too_many_arguments)]
pub fn score_surveys<S: SampleSource + ?Sized>(
    model: &FusionModel,
    fc: &FusionConfig,
    source: &S,
    indices: &[usize],
    plan: &BatchPlan,
    vocab: &Vocabulary,
    batch_size: usize,
    workers: usize,
    device: &Device,
) -> Result<Scored, TrainError> {
    let [_, h, w] = source.patch_shape();
    check_model_input(model, fc, [h, w])?;
    let batches = loader::batches_of(indices, batch_size);
    let mut out = Scored {
        probs: Vec::with_capacity(indices.len() * vocab.len()),
        survey_ids: Vec::with_capacity(indices.len()),
        labels: Vec::with_capacity(indices.len()),
        loss: 0.0,
    };
    let mut loss_sum = 0.0f64;
    // Never stops early: the flow is always `Continue`.
    let _ = loader::for_each_batch(source, &batches, 0, plan, vocab, workers, 2, |b| {
        let n = b.inputs.n;
        let logits = model.forward(batch_tensors(&b, fc, [h, w], device));
        let targets = batch_targets(&b, vocab.len(), device);
        let loss = geolife_model::loss::bce_with_logits(logits.clone(), targets);
        // Both are queued before either is read: on a GPU the first read waits for the batch
        // once, and the second finds its value computed.
        let p = burn::tensor::activation::sigmoid(logits)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Invalid(format!("reading scores: {e:?}")))?;
        let loss: f32 = loss.into_scalar();
        loss_sum += f64::from(loss) * n as f64;
        out.probs.extend(p);
        out.survey_ids.extend_from_slice(&b.survey_ids);
        out.labels.extend(b.labels);
        Ok::<_, TrainError>(ControlFlow::Continue(()))
    })?;
    if !out.survey_ids.is_empty() {
        out.loss = loss_sum / out.survey_ids.len() as f64;
    }
    Ok(out)
}
