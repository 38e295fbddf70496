//! The trainer: AdamW on BCE-with-logits over soft (mixup) targets, a validation pass with
//! F1@K and the best global threshold every epoch, a run folder with the resolved config,
//! metrics, log, checkpoints and validation outputs, and exact resume. Each concern has its
//! module: [`run_dir`] (the folder and everything written to it), [`checkpointer`]
//! (`last.ckpt`, `best.safetensors`), [`step`] (one training step, shared with `bench train`
//! and the pipeline), [`validate`] (the validation pass), [`inputs`] (model config, batch
//! tensors, optimiser, scoring) and [`device`]; [`train`] is the loop that calls them.

pub mod checkpointer;
pub mod device;
/// The fused CPU AdamW, moved next to its kernel: [`geolife_model::kernels::adamw`].
pub mod fused_adamw {
    pub use geolife_model::kernels::FusedAdamW;
}
pub mod inputs;
pub mod launches;
pub mod memory;
pub mod norm_bench;
pub mod run_dir;
pub mod step;
pub mod validate;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use geolife_data::Split;
use geolife_data::cache::PackedSplit;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::checkpoint::{EpochMetrics, TrainState};
use crate::config::{DeviceKind, SplitKind, TrainConfig};
use crate::error::TrainError;
use crate::loader::{self, BatchPlan};
use crate::schedule::lr_at;
use crate::source::stats_from_manifest;
use crate::split::{fold_split, random_folds, random_split, spatial_folds, spatial_split};
use crate::vocab::Vocabulary;

pub use checkpointer::Checkpointer;
pub use device::{check_precision, device_description, make_device};
pub use inputs::{
    GradUnscale, Scored, adamw, batch_shapes, batch_targets, batch_tensors, check_model_input,
    fusion_config, optimizer, score_surveys,
};
pub use run_dir::{Progress, RunDir, RunInfo, files, write_atomic, write_labels};
pub use step::{StepError, StepOutcome, StepShape, StepTimes, TrainStep, device_failure};
pub use validate::{Validation, Validator};

/// Everything `train` needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub config: TrainConfig,
    /// A packed cache folder (with `train/`).
    pub cache: PathBuf,
    pub run_dir: PathBuf,
    pub resume: bool,
    pub progress: Progress,
    /// Checkpoint and return (`finished: false`) after this many training batches in this
    /// process, at the first optimiser-step boundary: a time-boxed run that `resume`
    /// continues exactly (the in-process kill of the resume tests).
    pub stop_after_batches: Option<usize>,
}

/// The result of a finished (or deliberately stopped) run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub history: Vec<EpochMetrics>,
    pub best_epoch: Option<usize>,
    pub best_f1: f64,
    /// False when `stop_after_batches` interrupted the run.
    pub finished: bool,
}

impl TrainSummary {
    fn of(run_dir: &Path, state: &TrainState, finished: bool) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
            history: state.history.clone(),
            best_epoch: state.best_epoch,
            best_f1: state.best_f1,
            finished,
        }
    }
}

fn open_split(cache: &Path, split: Split) -> Result<PackedSplit, TrainError> {
    Ok(PackedSplit::open(cache, split)?)
}

/// The surveys of `data` (indices) that train and validate, by the config's split.
pub fn train_val_split(
    cfg: &TrainConfig,
    data: &PackedSplit,
) -> Result<crate::split::TrainValSplit, TrainError> {
    let v = &cfg.validation;
    let coords = || -> Vec<(f64, f64)> { (0..data.len()).map(|i| data.lon_lat(i)).collect() };
    let split = match (v.split, v.folds > 1) {
        (SplitKind::Spatial, false) => spatial_split(&coords(), v.fraction, v.block_arcmin, v.seed),
        (SplitKind::Random, false) => random_split(data.len(), v.fraction, v.seed),
        (SplitKind::Spatial, true) => fold_split(
            &spatial_folds(&coords(), v.folds, v.block_arcmin, v.seed),
            v.fold,
        ),
        (SplitKind::Random, true) => fold_split(&random_folds(data.len(), v.folds, v.seed), v.fold),
    };
    if split.train.is_empty() || split.val.is_empty() {
        return Err(TrainError::Invalid(format!(
            "validation split left {} train and {} validation surveys: use more data or change validation.fraction",
            split.train.len(),
            split.val.len()
        )));
    }
    Ok(split)
}

/// The model a run starts from: initialised from the seed (the device's), then the config's
/// `model.weights` when given; its inputs are checked against the cache's patch size.
fn initial_model(
    cfg: &TrainConfig,
    fc: &geolife_model::fusion::FusionConfig,
    device: &burn::tensor::Device,
    patch_hw: [usize; 2],
) -> Result<geolife_model::fusion::FusionModel, TrainError> {
    let mut model = fc.try_init(device)?;
    if let Some(w) = &cfg.model.weights {
        model = geolife_model::checkpoint::load_safetensors(fc, w, device)?.0;
    }
    check_model_input(&model, fc, patch_hw)?;
    Ok(model)
}

/// The tabular feature names the model takes, in its input order, and the cache's columns
/// matched onto them by name when the orders differ: a resumed run's own names (`run.json`),
/// else those the starting checkpoint (`model.weights`) records, else the cache's.
fn model_features(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    run: &RunDir,
    manifest: &geolife_data::cache::Manifest,
) -> Result<(Vec<String>, Option<crate::transform::TabularColumns>), TrainError> {
    let (names, whose) = if opts.resume {
        let path = run.path(files::RUN);
        (RunInfo::load(run.root())?.feature_names, path)
    } else {
        let recorded = match &cfg.model.weights {
            Some(w) => geolife_model::checkpoint::RecordedInputs::read(w)?
                .feature_names
                .map(|n| (n, w.clone())),
            None => None,
        };
        match recorded {
            Some(r) => r,
            None => return Ok((manifest.feature_names.clone(), None)),
        }
    };
    if !cfg.model.use_tabular {
        return Ok((names, None));
    }
    let columns = crate::transform::TabularColumns::between(
        &names,
        &manifest.feature_names,
        &format!("{} against the cache", whose.display()),
    )?;
    Ok((names, columns))
}

/// The batches of `epoch`: the train surveys shuffled by (seed, epoch), cut into batches, the
/// first `count` kept.
fn epoch_batches(
    train: &[usize],
    t: &crate::config::TrainSection,
    epoch: usize,
    count: usize,
) -> Vec<Vec<usize>> {
    let mut order = train.to_vec();
    order.shuffle(&mut StdRng::seed_from_u64(loader::derive_seed(
        t.seed,
        epoch,
        usize::MAX,
    )));
    let mut batches = loader::batches_of(&order, t.batch_size);
    batches.truncate(count);
    batches
}

/// Train (or resume) a run. The resolved config is written first; then `run.json`; every epoch
/// appends to `metrics.csv`, and writes `last.ckpt` (and `best.safetensors` + validation scores
/// and labels when validation F1 improves).
pub fn train(opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let mut session = Session::start(opts)?;
    for epoch in session.state.epoch..opts.config.train.epochs {
        // A signal during validation or the end-of-epoch writes: `last.ckpt` is whole.
        if let Some(signal) = crate::interrupt::requested() {
            return Err(session.interrupted(signal));
        }
        let started = Instant::now();
        match session.train_epoch(epoch)? {
            ControlFlow::Continue(lr) => session.end_epoch(epoch, started, lr)?,
            ControlFlow::Break(()) => {
                let signal = crate::interrupt::requested();
                let summary = session.stop()?;
                return match signal {
                    Some(signal) => Err(TrainError::Interrupted {
                        signal,
                        run: summary.run_dir,
                    }),
                    None => Ok(summary),
                };
            }
        }
    }
    session.finish()
}

/// A run in progress: what its epochs share (set up once by [`Session::start`]) and where it
/// stands.
struct Session<'a> {
    opts: &'a TrainOptions,
    run: RunDir,
    data: PackedSplit,
    vocab: Vocabulary,
    /// Normalisation in the model's column order.
    stats: crate::transform::InputStats,
    fc: geolife_model::fusion::FusionConfig,
    tabular_columns: Option<std::sync::Arc<crate::transform::TabularColumns>>,
    split: crate::split::TrainValSplit,
    prior: Option<std::sync::Arc<crate::location::PriorRows>>,
    device: burn::tensor::Device,
    checkpoints: Checkpointer,
    trainee: TrainStep,
    state: TrainState,
    batches_per_epoch: usize,
    total_steps: usize,
    batches_this_process: usize,
    times: RunTimes,
}

impl<'a> Session<'a> {
    /// Opens the run folder, reads the cache, builds (or resumes) the model and optimiser.
    fn start(opts: &'a TrainOptions) -> Result<Self, TrainError> {
        let cfg = &opts.config;
        cfg.validate(Path::new("<resolved config>"))?;
        crate::location::check_po_file(&cfg.location)?;
        let mut run = RunDir::open(&opts.run_dir, cfg, opts.resume, opts.progress)?;

        let data = open_split(&opts.cache, Split::Train)?;
        if !data.has_labels() {
            return Err(TrainError::Invalid(format!(
                "{}: the train split has no labels",
                opts.cache.display()
            )));
        }
        let manifest = data.manifest().clone();
        let vocab = Vocabulary::new(cfg.data.vocabulary, &manifest.species, cfg.data.full_size);
        let mut stats = stats_from_manifest(&manifest);
        let fc = fusion_config(cfg, &manifest, vocab.len())?;
        let (features, tabular_columns) = model_features(cfg, opts, &run, &manifest)?;
        if let Some(c) = &tabular_columns {
            stats.tabular = c.reorder(&stats.tabular);
            run.log(&format!(
                "tabular features: the cache's {} columns matched by name onto the model's order",
                features.len()
            ));
        }
        let split = train_val_split(cfg, &data)?;
        let val_ids = split.val.iter().map(|&i| data.survey_ids()[i]).collect();
        let info = RunInfo {
            feature_names: features.clone(),
            ..RunInfo::new(&manifest, &vocab, &stats, &fc, val_ids)
        };
        run.record_info(&info, opts.resume, &opts.cache)?;
        let prior = match cfg.location.on() {
            true => {
                let t = Instant::now();
                let rows =
                    crate::location::for_training(cfg, &data, &split.train, &split.val, &vocab)?;
                run.log(&format!(
                    "location prior ({:?} input) of {} surveys in {:.1} s",
                    cfg.location.input,
                    split.train.len() + split.val.len(),
                    t.elapsed().as_secs_f64()
                ));
                Some(rows)
            }
            false => None,
        };

        let t = &cfg.train;
        let o = &cfg.optim;
        let device = make_device(t.device)?.autodiff();
        check_precision(t.device, t.precision)?;
        device.seed(t.seed);
        // Tuning done before this run (an earlier pipeline member's) is not this run's.
        #[cfg(feature = "wgpu")]
        let _ = device::autotune::drain();
        let [_, ph, pw] = manifest.patch_shape;
        let mut model = initial_model(cfg, &fc, &device, [ph, pw])?;
        let checkpoints = Checkpointer::new(
            run.path(files::LAST),
            run.path(files::BEST),
            cfg.transforms.to_json(),
            features,
        )
        .with_location(cfg.location.on().then(|| cfg.location.to_json()))
        .with_species(vocab.species().to_vec());
        let (mut optim, unscale) = optimizer(o, t.device);
        let mut state = TrainState::start();
        if opts.resume {
            (state, model, optim) = checkpoints.load_last(&fc, &device, optim)?;
            run.log(&format!(
                "resumed from {} at epoch {}, batch {}",
                run.path(files::LAST).display(),
                state.epoch + 1,
                state.batch
            ));
        } else {
            run.log(&format!(
                "run {}: {} train / {} validation surveys ({:?} split), {} classes, backbone {}, device {} ({}), precision {}",
                run.root().display(),
                split.train.len(),
                split.val.len(),
                cfg.validation.split,
                vocab.len(),
                cfg.model.backbone.name(),
                <&str>::from(t.device),
                device_description(t.device),
                <&str>::from(t.precision)
            ));
        }
        let shape = StepShape {
            fc: fc.clone(),
            patch_hw: [ph, pw],
            classes: vocab.len(),
            device: device.clone(),
            precision: t.precision,
            loss_scale: t.loss_scale as f32,
        };
        let mut trainee = TrainStep::new(model, (optim, unscale), o.accumulate, t.seed, shape);
        trainee.resume_loss_scale(state.loss_scale);
        let batches_per_epoch = match split.train.len().div_ceil(t.batch_size) {
            full if t.max_batches_per_epoch > 0 => full.min(t.max_batches_per_epoch),
            full => full,
        };
        Ok(Self {
            opts,
            run,
            data,
            vocab,
            stats,
            fc,
            tabular_columns: tabular_columns.map(std::sync::Arc::new),
            split,
            prior,
            device,
            checkpoints,
            trainee,
            state,
            batches_per_epoch,
            total_steps: batches_per_epoch.div_ceil(o.accumulate) * t.epochs,
            batches_this_process: 0,
            times: RunTimes::default(),
        })
    }

    /// The training batches of `epoch` (from where the state stands): `Continue` with the last
    /// learning rate, or `Break` when the run is to stop here (`stop_after_batches`).
    fn train_epoch(&mut self, epoch: usize) -> Result<ControlFlow<(), f64>, TrainError> {
        let Self {
            opts,
            run,
            data,
            vocab,
            stats,
            fc,
            tabular_columns,
            split,
            prior,
            checkpoints,
            trainee,
            state,
            batches_per_epoch,
            total_steps,
            batches_this_process,
            times,
            ..
        } = self;
        let (cfg, batches_per_epoch, total_steps) =
            (&opts.config, *batches_per_epoch, *total_steps);
        let (t, o) = (&cfg.train, &cfg.optim);
        let batches = epoch_batches(&split.train, t, epoch, batches_per_epoch);
        let plan = BatchPlan {
            prior: prior.clone(),
            tabular_columns: tabular_columns.clone(),
            ..BatchPlan::training(cfg, stats.clone(), epoch)
        };
        let bar = run
            .bar
            .then(|| epoch_bar(epoch, t.epochs, batches_per_epoch, state.batch));
        let mut lr = lr_at(&cfg.schedule, o.lr, state.optimizer_steps, total_steps);
        let mut batch_done = Instant::now();
        let flow = loader::for_each_batch(
            data,
            &batches,
            state.batch,
            &plan,
            vocab,
            t.workers,
            t.prefetch,
            |b| {
                // Time the step waited for the loader to deliver this batch.
                times.loader_wait_s += batch_done.elapsed().as_secs_f64();
                let index = b.index;
                let last_of_epoch = index + 1 == batches_per_epoch;
                lr = lr_at(&cfg.schedule, o.lr, state.optimizer_steps, total_steps);
                let out = trainee.run(&b, epoch, lr, last_of_epoch).map_err(|e| {
                    let on = device_description(t.device);
                    e.into_train_error(run.root(), epoch + 1, index, t.batch_size, &on)
                })?;
                state.loss_sum += f64::from(out.loss);
                state.loss_count += 1;
                state.loss_scale = trainee.loss_scale();
                if let Some(scale) = out.overflow {
                    run.log(&format!(
                        "epoch {} batch {}: f16 gradients overflowed at loss scale {scale:.0}; step \
                         skipped, scale now {:.0}",
                        epoch + 1,
                        index + 1,
                        scale / 2.0
                    ));
                }
                if out.stepped {
                    state.optimizer_steps += 1;
                    state.batch = index + 1;
                    if t.checkpoint_every_steps > 0
                        && state
                            .optimizer_steps
                            .is_multiple_of(t.checkpoint_every_steps)
                        && !last_of_epoch
                    {
                        let t = Instant::now();
                        checkpoints.save_last(state, trainee.model(), fc, &trainee.optim, None)?;
                        times.checkpoints_s += t.elapsed().as_secs_f64();
                    }
                }
                if let Some(bar) = &bar {
                    bar.inc(1);
                } else if opts.progress == Progress::Auto
                    && (index + 1) % (batches_per_epoch / 5).max(1) == 0
                {
                    run.log(&format!(
                        "epoch {}/{} batch {}/{} loss {:.5} lr {:.2e}",
                        epoch + 1,
                        t.epochs,
                        index + 1,
                        batches_per_epoch,
                        state.loss_sum / state.loss_count.max(1) as f64,
                        lr
                    ));
                }
                *batches_this_process += 1;
                let stop = (opts
                    .stop_after_batches
                    .is_some_and(|s| *batches_this_process >= s)
                    || crate::interrupt::requested().is_some())
                    && trainee.pending() == 0;
                batch_done = Instant::now();
                Ok(if stop {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        );
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        match flow {
            Ok(ControlFlow::Continue(())) => Ok(ControlFlow::Continue(lr)),
            Ok(ControlFlow::Break(())) => Ok(ControlFlow::Break(())),
            Err(e) => {
                run.log(&format!("error: {}", geolife_io::error_text(&e)));
                Err(e)
            }
        }
    }

    /// After the batches of `epoch` (begun at `started`, last learning rate `lr`): validation,
    /// the metrics row, the best checkpoint and validation files when F1 improved, `last.ckpt`,
    /// the profile.
    fn end_epoch(&mut self, epoch: usize, started: Instant, lr: f64) -> Result<(), TrainError> {
        let cfg = &self.opts.config;
        let t = &cfg.train;
        let t_val = Instant::now();
        let valid = self.trainee.model().valid();
        let validator = Validator {
            data: &self.data,
            indices: &self.split.val,
            plan: BatchPlan {
                prior: self.prior.clone(),
                tabular_columns: self.tabular_columns.clone(),
                ..BatchPlan::inference(cfg.transforms.mode, self.stats.clone())
            },
            vocab: &self.vocab,
            batch_size: t.batch_size,
            workers: t.workers,
            k_max: cfg.validation.k_max,
            model_name: format!("geolife-fusion-{}", cfg.model.backbone.name()),
        };
        let run = &mut self.run;
        let _products = geolife_model::kernels::autocast(t.precision.half());
        let v = validator
            .run(&valid, &self.fc, &self.device.clone().inner(), |loss| {
                TrainError::NonFiniteLoss {
                    value: loss as f32,
                    epoch: epoch + 1,
                    step: self.batches_per_epoch,
                    run: run.root().to_path_buf(),
                }
            })
            .inspect_err(|e| {
                run.log(&format!(
                    "error: {} (validation)",
                    geolife_io::error_text(e)
                ))
            })?;
        let (state, times) = (&mut self.state, &mut self.times);
        times.validation_s += t_val.elapsed().as_secs_f64();
        let row = EpochMetrics {
            epoch: epoch + 1,
            train_loss: state.loss_sum / state.loss_count.max(1) as f64,
            val_loss: v.loss,
            best_k: v.best_k,
            val_f1: v.f1,
            threshold: v.threshold,
            threshold_f1: v.threshold_f1,
            lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        run.log(&format!(
            "epoch {}/{}: train loss {:.5}, val loss {:.5}, val F1 {:.4} @K={}, threshold {:.3} -> F1 {:.4} ({:.1}s)",
            row.epoch, t.epochs, row.train_loss, row.val_loss, row.val_f1, row.best_k, row.threshold,
            row.threshold_f1, row.seconds
        ));
        let mut best_weights = None;
        if v.f1 > state.best_f1 {
            state.best_f1 = v.f1;
            state.best_epoch = Some(epoch + 1);
            let t = Instant::now();
            let weights = self.checkpoints.weights(&valid, &self.fc)?;
            self.checkpoints.save_best(weights.clone())?;
            best_weights = Some(weights);
            times.checkpoints_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            run.write_validation(&v.scores, &v.labels, &v.curve, epoch + 1)?;
            times.outputs_s += t.elapsed().as_secs_f64();
        }
        state.history.push(row);
        state.epoch = epoch + 1;
        state.batch = 0;
        state.loss_sum = 0.0;
        state.loss_count = 0;
        let t = Instant::now();
        run.write_metrics(&state.history)?;
        times.outputs_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (model, optim) = (self.trainee.model(), &self.trainee.optim);
        self.checkpoints
            .save_last(state, model, &self.fc, optim, best_weights)?;
        times.checkpoints_s += t.elapsed().as_secs_f64();
        times.epochs += 1;
        times.step = self.trainee.times;
        times.total_s += started.elapsed().as_secs_f64();
        run.log(&times.line());
        #[cfg(feature = "wgpu")]
        if cfg.train.device == DeviceKind::Wgpu {
            run.record_autotune(&format!("in epoch {}", epoch + 1));
        }
        if let Some(m) = memory::GpuMemory::read(&self.device) {
            run.log(&format!(
                "GPU memory after epoch {}: peak so far {} reserved, largest buffer {} (this \
                 device binds at most {})",
                epoch + 1,
                memory::gb(m.peak()),
                memory::gb(m.largest_alloc),
                memory::gb(
                    device::binding_limit(cfg.train.device).unwrap_or(memory::BINDING_LIMIT)
                )
            ));
        }
        run.write_profile(times)
    }

    /// Between epochs, on a signal: the end-of-epoch `last.ckpt` is written; waits for it.
    fn interrupted(self, signal: i32) -> TrainError {
        let run = self.run.root().to_path_buf();
        if let Err(e) = self.checkpoints.wait() {
            return e;
        }
        TrainError::Interrupted { signal, run }
    }

    /// Stops mid-epoch (`stop_after_batches` or a signal): `last.ckpt` where the run stands.
    fn stop(mut self) -> Result<TrainSummary, TrainError> {
        let (model, optim) = (self.trainee.model(), &self.trainee.optim);
        self.checkpoints
            .save_last(&self.state, model, &self.fc, optim, None)?;
        self.checkpoints.wait()?;
        if let Some(signal) = crate::interrupt::requested() {
            self.run.log(&format!(
                "stopped by {} at epoch {}, batch {}: last.ckpt written",
                crate::interrupt::signal_name(signal),
                self.state.epoch + 1,
                self.state.batch
            ));
        }
        Ok(TrainSummary::of(self.run.root(), &self.state, false))
    }

    /// After the last epoch: the curves, the last checkpoint write, the profile.
    fn finish(mut self) -> Result<TrainSummary, TrainError> {
        let t = Instant::now();
        self.run.plot_curves(&self.state.history);
        self.times.outputs_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        self.checkpoints.wait()?;
        self.times.checkpoints_s += t.elapsed().as_secs_f64();
        if self.times.epochs > 0 {
            self.run.write_profile(&self.times)?;
        }
        self.run.log(&format!(
            "done: best validation F1 {:.4} at epoch {}",
            self.state.best_f1,
            self.state.best_epoch.unwrap_or(0)
        ));
        Ok(TrainSummary::of(self.run.root(), &self.state, true))
    }
}

/// Where the epochs of this process spent their time (`profile.json` in the run folder, and one
/// log line per epoch): the training step's parts, the wait for the loader, validation,
/// checkpoints and the other outputs (metrics, validation files, plots).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RunTimes {
    pub epochs: usize,
    pub total_s: f64,
    pub step: StepTimes,
    pub loader_wait_s: f64,
    pub validation_s: f64,
    pub checkpoints_s: f64,
    pub outputs_s: f64,
}

impl RunTimes {
    /// `time: forward 12.0s (40%), ...` over the epochs so far.
    pub fn line(&self) -> String {
        let total = self.total_s.max(1e-9);
        let parts = [
            ("forward", self.step.forward_s),
            ("backward", self.step.backward_s),
            ("optimizer", self.step.optimizer_s),
            ("loader wait", self.loader_wait_s),
            ("validation", self.validation_s),
            ("checkpoints", self.checkpoints_s),
            ("outputs", self.outputs_s),
        ];
        let known: f64 = parts.iter().map(|p| p.1).sum();
        let mut s = format!("time over {} epoch(s), {:.1}s:", self.epochs, self.total_s);
        for (name, v) in parts.iter().chain([&("other", (total - known).max(0.0))]) {
            s.push_str(&format!(" {name} {v:.1}s ({:.0}%),", 100.0 * v / total));
        }
        s.pop();
        s
    }
}

/// The progress bar of one epoch, starting at batch `first`.
fn epoch_bar(epoch: usize, epochs: usize, batches: usize, first: usize) -> ProgressBar {
    let b = ProgressBar::new(batches as u64);
    b.set_style(
        ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(format!("{}/{epochs}", epoch + 1));
    b.set_position(first as u64);
    b
}

/// Throughput of full training steps (loader, forward, backward, AdamW step).
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Timed steps (the warm-up steps, [`warmup_steps`] of them, are excluded).
    pub steps: usize,
    pub batch_size: usize,
    pub samples_per_s: f64,
    pub mean_step_s: f64,
    pub num_params: usize,
    /// Training loss of every step, warm-up included (all finite: a non-finite one is an error).
    pub losses: Vec<f32>,
    /// Forward, backward and optimizer seconds of the timed steps.
    pub step_times: StepTimes,
    /// Kernels launched during the timed steps, on a cubecl device (wgpu); `None` on flex.
    pub launches: Option<launches::LaunchCounts>,
    /// The GPU allocator after the steps (largest buffer, peak); `None` on flex.
    pub memory: Option<memory::GpuMemory>,
    /// Steps (warm-up included) whose f16 gradients overflowed: their AdamW update was
    /// skipped, so neither its time nor its memory (AdamW's moments before a first update)
    /// is in the figures.
    pub skipped: usize,
}

/// Untimed steps before a benchmark's timed ones: one on the CPU; two on a GPU, where burn's
/// operation fusion settles its execution plans over the first steps and autotuning measures
/// the fused kernels of the second (their launches would otherwise count as the step's).
pub fn warmup_steps(device: DeviceKind) -> usize {
    match device {
        DeviceKind::Flex => 1,
        DeviceKind::Wgpu => 2,
    }
}

/// Run `steps` timed training steps after [`warmup_steps`] untimed ones on the train split of
/// `cache` with the model and recipe of `cfg` (optimiser, schedule, accumulation and mixup
/// included: the [`TrainStep`] of `train`); on a GPU also count the kernels they launch.
pub fn bench_steps(
    cfg: &TrainConfig,
    cache: &Path,
    steps: usize,
) -> Result<BenchResult, TrainError> {
    cfg.validate(Path::new("<bench config>"))?;
    let warmup = warmup_steps(cfg.train.device);
    let data = open_split(cache, Split::Train)?;
    let m = data.manifest().clone();
    let vocab = Vocabulary::new(cfg.data.vocabulary, &m.species, cfg.data.full_size);
    let fc = fusion_config(cfg, &m, vocab.len())?;
    let t = &cfg.train;
    let device = make_device(t.device)?.autodiff();
    check_precision(t.device, t.precision)?;
    device.seed(t.seed);
    let model = fc.try_init(&device)?;
    let [_, ph, pw] = m.patch_shape;
    check_model_input(&model, &fc, [ph, pw])?;
    let num_params = model.num_params();
    let shape = StepShape {
        fc: fc.clone(),
        patch_hw: [ph, pw],
        classes: vocab.len(),
        device: device.clone(),
        precision: t.precision,
        loss_scale: t.loss_scale as f32,
    };
    let mut trainee = TrainStep::new(
        model,
        optimizer(&cfg.optim, t.device),
        cfg.optim.accumulate,
        t.seed,
        shape,
    );
    if t.batch_size > data.len() {
        return Err(TrainError::Invalid(format!(
            "{} train surveys cannot fill a batch of {}",
            data.len(),
            t.batch_size
        )));
    }
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(t.seed));
    let batches: Vec<Vec<usize>> = order
        .chunks_exact(t.batch_size)
        .cycle()
        .take(steps + warmup)
        .map(<[usize]>::to_vec)
        .collect();
    let prior = match cfg.location.on() {
        true => Some(crate::location::for_split(
            &cfg.location,
            &data,
            &data,
            &vocab,
        )?),
        false => None,
    };
    let plan = BatchPlan {
        prior,
        ..BatchPlan::training(cfg, stats_from_manifest(&m), 0)
    };
    let total_steps = (steps + warmup).div_ceil(cfg.optim.accumulate);
    let mut optimizer_steps = 0;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let mut last = Instant::now();
    let mut watch = None;
    let mut skipped = 0;
    // Never stops early: the flow is always `Continue`.
    let _ = loader::for_each_batch(
        &data,
        &batches,
        0,
        &plan,
        &vocab,
        t.workers,
        t.prefetch,
        |b| {
            let lr = lr_at(&cfg.schedule, cfg.optim.lr, optimizer_steps, total_steps);
            let out = trainee
                .run(&b, 0, lr, b.index + 1 == steps + warmup)
                .map_err(|e| match e {
                    StepError::NonFinite(value) => TrainError::Invalid(format!(
                        "bench: loss is {value} at step {} ({} Sentinel backbone)",
                        b.index + 1,
                        cfg.model.backbone.name()
                    )),
                    StepError::Device(message) => TrainError::Invalid(format!(
                        "bench: step {} ({} Sentinel backbone) {}",
                        b.index + 1,
                        cfg.model.backbone.name(),
                        device_failure(
                            &message,
                            &device_description(t.device),
                            t.batch_size,
                            "lower --batch-size"
                        )
                    )),
                })?;
            optimizer_steps += usize::from(out.stepped);
            skipped += usize::from(out.overflow.is_some());
            losses.push(out.loss);
            let now = Instant::now();
            if b.index >= warmup {
                times.push(now.duration_since(last).as_secs_f64());
            } else {
                // The warm-up steps are not timed, and their kernels are not counted: they
                // compile them and (with autotuning) benchmark their variants. Their queued
                // work is finished first, so that the count starts at a step boundary.
                trainee.times = StepTimes::default();
                if t.device == DeviceKind::Wgpu && b.index + 1 == warmup {
                    sync(&device)?;
                    watch = Some(launches::LaunchWatch::start());
                }
            }
            last = if b.index >= warmup {
                now
            } else {
                Instant::now()
            };
            Ok::<_, TrainError>(ControlFlow::Continue(()))
        },
    )?;
    // Everything queued has run (fusion issues its kernels late), the last step's tensors are
    // freed, and the model and the optimiser are held: the launches are all counted and what
    // stays in use is their weights and state.
    sync(&device)?;
    let launches = watch.map(launches::LaunchWatch::finish);
    let memory = memory::GpuMemory::read(&device);
    let step_times = trainee.times;
    let total: f64 = times.iter().sum();
    Ok(BenchResult {
        losses,
        steps: times.len(),
        batch_size: t.batch_size,
        samples_per_s: (times.len() * t.batch_size) as f64 / total.max(1e-9),
        mean_step_s: total / times.len().max(1) as f64,
        num_params,
        step_times,
        launches,
        memory,
        skipped,
    })
}

/// Waits until `device` has run everything queued on it.
fn sync(device: &burn::tensor::Device) -> Result<(), TrainError> {
    device
        .sync()
        .map_err(|e| TrainError::Invalid(format!("bench: the device failed: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AdamW the trainer builds from the default `[optim]` is `torch.optim.AdamW`'s:
    /// betas (0.9, 0.999), eps 1e-8, weight decay 0.01, no AMSGrad (PyTorch documentation).
    #[test]
    fn default_adamw_has_pytorch_hyperparameters() {
        let c = adamw(&crate::config::OptimSection::default());
        let j = serde_json::to_value(&c).unwrap();
        let f = |k: &str| j[k].as_f64().unwrap_or_else(|| panic!("{k} in {j}"));
        assert!((f("beta_1") - 0.9).abs() < 1e-7, "{j}");
        assert!((f("beta_2") - 0.999).abs() < 1e-7, "{j}");
        assert!((f("epsilon") / 1e-8 - 1.0).abs() < 1e-6, "{j}");
        assert!((f("weight_decay") - 0.01).abs() < 1e-9, "{j}");
        assert_eq!(j["amsgrad"], false);
        assert_eq!(j["cautious_weight_decay"], false);
    }
}
