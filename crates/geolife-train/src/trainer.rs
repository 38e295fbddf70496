//! The training loop: AdamW on BCE-with-logits over soft (mixup) targets, a validation pass
//! with F1@K and the best global threshold every epoch, a run folder with the resolved config,
//! metrics, log, checkpoints and validation scores, and exact resume.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams};
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use geolife_data::Split;
use geolife_data::cache::{Manifest, PackedSplit};
use geolife_metrics::{ScoreFile, Scores};
use geolife_model::fusion::{FusionConfig, FusionInput, FusionModel};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, EpochMetrics, TrainState};
use crate::config::{SplitKind, TrainConfig};
use crate::error::TrainError;
use crate::loader::{self, BatchPlan, ReadyBatch, SampleSource};
use crate::schedule::lr_at;
use crate::source::stats_from_manifest;
use crate::split::{random_split, spatial_split};
use crate::transform::InputStats;
use crate::vocab::Vocabulary;

/// File names inside a run folder.
pub mod files {
    pub const CONFIG: &str = "config.toml";
    pub const RUN: &str = "run.json";
    pub const METRICS: &str = "metrics.csv";
    pub const LOG: &str = "train.log";
    pub const LAST: &str = "last.ckpt";
    pub const BEST: &str = "best.safetensors";
    pub const VAL_SCORES: &str = "val_scores.safetensors";
    pub const CURVES: &str = "curves.png";
    pub const F1_AT_K: &str = "val_f1_at_k.png";
}

/// What prediction needs besides the weights: vocabulary, normalisation, model config and the
/// identity of the data the run was trained on. Saved as `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub geolife_version: String,
    pub dataset_fingerprint: String,
    pub feature_names: Vec<String>,
    /// Real species id of every output column.
    pub species: Vec<u32>,
    pub stats: InputStats,
    pub fusion: FusionConfig,
    /// Validation surveys (ids), for calibrating policies on the same split.
    pub val_survey_ids: Vec<u64>,
}

impl RunInfo {
    pub fn load(run_dir: &Path) -> Result<Self, TrainError> {
        let path = run_dir.join(files::RUN);
        let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path,
            message: format!("unreadable run description: {e}"),
        })
    }

    fn save(&self, run_dir: &Path) -> Result<(), TrainError> {
        let path = run_dir.join(files::RUN);
        let text = serde_json::to_vec_pretty(self).map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &text)
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Only the log file.
    Quiet,
}

/// Everything `train` needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub config: TrainConfig,
    /// A packed cache folder (with `train/`).
    pub cache: PathBuf,
    pub run_dir: PathBuf,
    pub resume: bool,
    pub progress: Progress,
    /// Stop (as if killed) after this many training batches in this process; for tests.
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

/// Atomic write through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    geolife_model::checkpoint::atomic_write(path, bytes).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The wgpu device and its adapter, brought up once per process by [`make_device`].
#[cfg(feature = "wgpu")]
static WGPU: std::sync::OnceLock<Result<(Device, String), String>> = std::sync::OnceLock::new();

/// What a device name runs on, for run logs: `CPU` for flex, the adapter for wgpu.
pub fn device_description(name: &str) -> String {
    #[cfg(feature = "wgpu")]
    if name == "wgpu"
        && let Some(Ok((_, adapter))) = WGPU.get()
    {
        return format!("adapter {adapter}");
    }
    match name {
        "flex" => "CPU".into(),
        other => other.into(),
    }
}

/// The device named in the config.
///
/// `wgpu` brings burn's wgpu runtime up on the default adapter (a GPU if there is one, else a
/// software Vulkan device such as Mesa's llvmpipe) the first time it is asked for, logs the
/// adapter (`tracing` info: name, graphics API, kind, driver) on every call, and fails with a
/// clear error, instead of a panic at the first tensor, when no adapter exists.
pub fn make_device(name: &str) -> Result<Device, TrainError> {
    match name {
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            use burn::tensor::wgpu::WgpuInitError;
            let (device, adapter) = WGPU
                .get_or_init(|| match Device::wgpu_options().init_with_setup() {
                    Ok((device, setup)) => {
                        let i = setup.adapter.get_info();
                        let adapter = format!(
                            "{} ({:?}, {:?}, driver {} {})",
                            i.name, i.backend, i.device_type, i.driver, i.driver_info
                        );
                        Ok((device, adapter))
                    }
                    // Already brought up lazily (a tensor made on `Device::wgpu` before the
                    // first call): reuse it; its identity still names the adapter.
                    Err(WgpuInitError::Registration { .. }) => {
                        let device = Device::wgpu(Default::default());
                        let adapter = device
                            .identity()
                            .map(|i| i.name)
                            .unwrap_or_else(|| "unknown adapter".into());
                        Ok((device, adapter))
                    }
                    Err(e) => Err(format!(
                        "device `wgpu`: no usable adapter: {e}. Without a GPU, install a \
                         software Vulkan driver (Debian/Ubuntu: `apt-get install \
                         mesa-vulkan-drivers`, llvmpipe) or use `--device flex`"
                    )),
                })
                .clone()
                .map_err(TrainError::Invalid)?;
            tracing::info!("device wgpu: adapter {adapter}");
            Ok(device)
        }
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => Err(TrainError::Invalid(
            "device `wgpu` needs a build with `--features wgpu`".into(),
        )),
        other => Err(TrainError::Invalid(format!(
            "unknown device `{other}`: expected `flex` or `wgpu`"
        ))),
    }
}

/// The fusion network config for a training config and a dataset.
pub fn fusion_config(
    cfg: &TrainConfig,
    manifest: &Manifest,
    num_classes: usize,
) -> Result<FusionConfig, TrainError> {
    let m = &cfg.model;
    let kind = geolife_model::backbones::BackboneKind::from_name(&m.backbone).map_err(|e| {
        TrainError::Config {
            path: PathBuf::from("<config>"),
            key: "model.backbone".into(),
            message: e.to_string(),
        }
    })?;
    let base = if m.size == "tiny" {
        let mut c = FusionConfig::tiny(num_classes);
        c.sentinel_backbone = kind;
        c
    } else {
        FusionConfig::paper(num_classes, kind)
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
        .with_sentinel_input(m.sentinel_input);
    let fc = match manifest.patch_shape {
        [_, h, w] if h == w => fc.with_sentinel_size(h),
        [_, h, w] if m.use_sentinel => {
            return Err(TrainError::Invalid(format!(
                "model: the cache holds {h}x{w} Sentinel patches; the image backbones take square patches"
            )));
        }
        _ => fc,
    };
    fc.validate()
        .map_err(|e| TrainError::Invalid(format!("model config: {e}")))?;
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
    model
        .check_shapes(t, l, b, s)
        .map_err(|e| TrainError::Invalid(format!("model input: {e}")))
}

/// AdamW as the config says. burn's defaults differ from PyTorch's (eps 1e-5, weight decay
/// 1e-4), so every field is set; as `torch.optim.AdamW`, the decoupled weight decay applies to
/// every parameter, norms and biases included (the seed passes `model.parameters()`).
pub fn adamw(o: &crate::config::OptimSection) -> AdamWConfig {
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
    }
}

/// (probabilities row-major `[n, classes]`, survey ids, label sets, mean BCE loss).
pub type Scored = (Vec<f32>, Vec<u64>, Vec<Vec<u32>>, f64);

/// Scores of a set of surveys: (probabilities row-major `[n, classes]`, survey ids, label sets,
/// mean BCE loss against the multi-hot labels).
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
    let mut probs = Vec::with_capacity(indices.len() * vocab.len());
    let mut ids = Vec::with_capacity(indices.len());
    let mut labels = Vec::with_capacity(indices.len());
    let mut loss_sum = 0.0f64;
    loader::for_each_batch(source, &batches, 0, plan, vocab, workers, 2, |b| {
        let n = b.inputs.n;
        let input = batch_tensors(&b, fc, [h, w], device);
        let logits = model.forward(input);
        let targets =
            Tensor::<2>::from_data(TensorData::new(b.targets.clone(), [n, vocab.len()]), device);
        let loss: f32 = geolife_model::loss::bce_with_logits(logits.clone(), targets).into_scalar();
        loss_sum += f64::from(loss) * n as f64;
        let p = burn::tensor::activation::sigmoid(logits)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Invalid(format!("reading scores: {e:?}")))?;
        probs.extend(p);
        ids.extend_from_slice(&b.survey_ids);
        labels.extend(b.labels);
        Ok::<_, TrainError>(())
    })?;
    let loss = if ids.is_empty() {
        0.0
    } else {
        loss_sum / ids.len() as f64
    };
    Ok((probs, ids, labels, loss))
}

/// Line logger: `train.log` plus stdout (plain lines when not on a terminal).
struct Log {
    file: std::fs::File,
    echo: bool,
}

impl Log {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.file, "{text}");
        let _ = self.file.flush();
        if self.echo {
            println!("{text}");
        }
    }
}

fn open_split(cache: &Path, split: Split) -> Result<PackedSplit, TrainError> {
    PackedSplit::open(cache, split).map_err(|e| TrainError::Invalid(e.to_string()))
}

/// Train (or resume) a run. The resolved config is written first; then `run.json`; every epoch
/// appends to `metrics.csv`, and writes `last.ckpt` (and `best.safetensors` + validation scores
/// when validation F1 improves).
pub fn train(opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let cfg = &opts.config;
    cfg.validate(Path::new("<resolved config>"))?;
    let run = &opts.run_dir;
    std::fs::create_dir_all(run).map_err(|source| TrainError::Io {
        path: run.clone(),
        source,
    })?;
    let config_path = run.join(files::CONFIG);
    let last_path = run.join(files::LAST);
    if opts.resume {
        if !config_path.is_file() {
            return Err(TrainError::Invalid(format!(
                "--resume: {} holds no run to resume (no {}); drop --resume to start a new run there",
                run.display(),
                files::CONFIG
            )));
        }
        let saved = TrainConfig::load(&config_path)?;
        if &saved != cfg {
            return Err(TrainError::Invalid(format!(
                "--resume: the config differs from the run's {}; resume with that config (omit --config) or start a new run",
                config_path.display()
            )));
        }
        if !last_path.is_file() {
            return Err(TrainError::Checkpoint {
                path: last_path,
                message: "no checkpoint to resume from".into(),
            });
        }
    } else {
        if last_path.exists() {
            return Err(TrainError::Invalid(format!(
                "{} already holds a run (last.ckpt exists): use --resume or another --out",
                run.display()
            )));
        }
        write_atomic(&config_path, cfg.to_toml_string()?.as_bytes())?;
    }

    let mut log = Log {
        file: OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join(files::LOG))
            .map_err(|source| TrainError::Io {
                path: run.join(files::LOG),
                source,
            })?,
        echo: opts.progress == Progress::Auto && !std::io::stdout().is_terminal(),
    };
    let bar_on = opts.progress == Progress::Auto && std::io::stdout().is_terminal();

    let data = open_split(&opts.cache, Split::Train)?;
    if !data.has_labels() {
        return Err(TrainError::Invalid(format!(
            "{}: the train split has no labels",
            opts.cache.display()
        )));
    }
    let manifest = data.manifest().clone();
    let vocab = Vocabulary::new(cfg.data.vocabulary, &manifest.species, cfg.data.full_size);
    let stats = stats_from_manifest(&manifest);
    let fc = fusion_config(cfg, &manifest, vocab.len())?;

    // Validation split.
    let coords: Vec<(f64, f64)> = (0..data.len()).map(|i| data.lon_lat(i)).collect();
    let v = &cfg.validation;
    let split = match v.split {
        SplitKind::Spatial => spatial_split(&coords, v.fraction, v.block_arcmin, v.seed),
        SplitKind::Random => random_split(data.len(), v.fraction, v.seed),
    };
    if split.train.is_empty() || split.val.is_empty() {
        return Err(TrainError::Invalid(format!(
            "validation split left {} train and {} validation surveys: use more data or change validation.fraction",
            split.train.len(),
            split.val.len()
        )));
    }

    let info = RunInfo {
        geolife_version: env!("CARGO_PKG_VERSION").into(),
        dataset_fingerprint: manifest.dataset_fingerprint.clone(),
        feature_names: manifest.feature_names.clone(),
        species: vocab.species().to_vec(),
        stats: stats.clone(),
        fusion: fc.clone(),
        val_survey_ids: split.val.iter().map(|&i| data.survey_ids()[i]).collect(),
    };
    if opts.resume {
        let old = RunInfo::load(run)?;
        if old.dataset_fingerprint != info.dataset_fingerprint || old.species != info.species {
            return Err(TrainError::Invalid(format!(
                "--resume: the cache {} was built from another dataset than the run (fingerprint {} vs {})",
                opts.cache.display(),
                info.dataset_fingerprint,
                old.dataset_fingerprint
            )));
        }
    } else {
        info.save(run)?;
    }

    let device = make_device(&cfg.train.device)?.autodiff();
    device.seed(cfg.train.seed);
    let mut model = fc
        .try_init(&device)
        .map_err(|e| TrainError::Invalid(format!("model: {e}")))?;
    if let Some(w) = &cfg.model.weights {
        let (m, _) = geolife_model::checkpoint::load_safetensors(&fc, w, &device).map_err(|e| {
            TrainError::Checkpoint {
                path: w.clone(),
                message: e.to_string(),
            }
        })?;
        model = m;
    }
    {
        let [_, ph, pw] = manifest.patch_shape;
        check_model_input(&model, &fc, [ph, pw])?;
    }
    let o = &cfg.optim;
    let mut optim = adamw(o).init();

    let mut state = TrainState::start();
    if opts.resume {
        let (s, model_bytes, optim_bytes, weights) = checkpoint::load(&last_path)?;
        // Full state dict first (BatchNorm running statistics), then the burn record on top
        // (same values, plus the parameter ids the optimiser state is keyed by).
        let tmp = run.join(format!(
            ".resume-weights-{}.safetensors",
            std::process::id()
        ));
        write_atomic(&tmp, &weights)?;
        let loaded = geolife_model::checkpoint::load_safetensors(&fc, &tmp, &device);
        let _ = std::fs::remove_file(&tmp);
        model = loaded
            .map_err(|e| TrainError::Checkpoint {
                path: last_path.clone(),
                message: format!("weights: {e}"),
            })?
            .0;
        let record = burn::store::ModuleRecord::from_bytes(Bytes::from_bytes_vec(model_bytes))
            .map_err(|e| TrainError::Checkpoint {
                path: last_path.clone(),
                message: format!("model record: {e}"),
            })?;
        model = model
            .try_load_record(record)
            .map_err(|e| TrainError::Checkpoint {
                path: last_path.clone(),
                message: format!("model record does not fit the config: {e}"),
            })?;
        optim = optim
            .from_bytes(Bytes::from_bytes_vec(optim_bytes))
            .map_err(|e| TrainError::Checkpoint {
                path: last_path.clone(),
                message: format!("optimizer record: {e}"),
            })?;
        state = s;
        log.line(&format!(
            "resumed from {} at epoch {}, batch {}",
            last_path.display(),
            state.epoch + 1,
            state.batch
        ));
    } else {
        log.line(&format!(
            "run {}: {} train / {} validation surveys ({:?} split), {} classes, backbone {}, device {} ({})",
            run.display(),
            split.train.len(),
            split.val.len(),
            v.split,
            vocab.len(),
            cfg.model.backbone,
            cfg.train.device,
            device_description(&cfg.train.device)
        ));
    }

    let t = &cfg.train;
    let [_, ph, pw] = manifest.patch_shape;
    let batches_per_epoch = {
        let full = split.train.len().div_ceil(t.batch_size);
        if t.max_batches_per_epoch > 0 {
            full.min(t.max_batches_per_epoch)
        } else {
            full
        }
    };
    let steps_per_epoch = batches_per_epoch.div_ceil(o.accumulate);
    let total_steps = steps_per_epoch * t.epochs;
    let mut batches_this_process = 0usize;

    for epoch in state.epoch..t.epochs {
        let started = Instant::now();
        let mut order = split.train.clone();
        order.shuffle(&mut StdRng::seed_from_u64(loader::derive_seed(
            t.seed,
            epoch,
            usize::MAX,
        )));
        let mut batches = loader::batches_of(&order, t.batch_size);
        batches.truncate(batches_per_epoch);
        let first = state.batch;
        let plan = BatchPlan::training(cfg, stats.clone(), epoch);
        let bar = bar_on.then(|| {
            let b = ProgressBar::new(batches_per_epoch as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "epoch {msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_message(format!("{}/{}", epoch + 1, t.epochs));
            b.set_position(first as u64);
            b
        });
        let mut accum = GradientsAccumulator::<FusionModel>::new();
        let mut pending = 0usize;
        let mut lr = lr_at(&cfg.schedule, o.lr, state.optimizer_steps, total_steps);
        let mut stopped = false;
        let result = loader::for_each_batch(
            &data,
            &batches,
            first,
            &plan,
            &vocab,
            t.workers,
            t.prefetch,
            |b| {
                let index = b.index;
                // Dropout randomness per (seed, epoch, batch) so a resumed run draws the same masks.
                device.seed(loader::derive_seed(t.seed ^ 0xD50F, epoch, index));
                let n = b.inputs.n;
                let input = batch_tensors(&b, &fc, [ph, pw], &device);
                let targets = Tensor::<2>::from_data(
                    TensorData::new(b.targets.clone(), [n, vocab.len()]),
                    &device,
                );
                let logits = model.forward(input);
                let loss = geolife_model::loss::bce_with_logits(logits, targets);
                let value: f32 = loss.clone().into_scalar();
                if !value.is_finite() {
                    return Err(TrainError::NonFiniteLoss {
                        value,
                        epoch: epoch + 1,
                        step: index,
                        run: run.clone(),
                    });
                }
                let scaled = if o.accumulate > 1 {
                    loss.div_scalar(o.accumulate as f32)
                } else {
                    loss
                };
                let grads = GradientsParams::from_grads(scaled.backward(), &model);
                accum.accumulate(&model, grads);
                pending += 1;
                state.loss_sum += f64::from(value);
                state.loss_count += 1;
                let last_of_epoch = index + 1 == batches_per_epoch;
                if pending == o.accumulate || last_of_epoch {
                    lr = lr_at(&cfg.schedule, o.lr, state.optimizer_steps, total_steps);
                    model = optim.step(lr, model.clone(), accum.grads());
                    pending = 0;
                    state.optimizer_steps += 1;
                    state.batch = index + 1;
                    if t.checkpoint_every_steps > 0
                        && state
                            .optimizer_steps
                            .is_multiple_of(t.checkpoint_every_steps)
                        && !last_of_epoch
                    {
                        save_last(&last_path, &state, &model, &fc, &optim)?;
                    }
                }
                if let Some(bar) = &bar {
                    bar.inc(1);
                } else if opts.progress == Progress::Auto
                    && (index + 1) % (batches_per_epoch / 5).max(1) == 0
                {
                    log.line(&format!(
                        "epoch {}/{} batch {}/{} loss {:.5} lr {:.2e}",
                        epoch + 1,
                        t.epochs,
                        index + 1,
                        batches_per_epoch,
                        state.loss_sum / state.loss_count.max(1) as f64,
                        lr
                    ));
                }
                batches_this_process += 1;
                if opts
                    .stop_after_batches
                    .is_some_and(|s| batches_this_process >= s)
                    && pending == 0
                {
                    stopped = true;
                    return Err(TrainError::Invalid("stopped".into()));
                }
                Ok(())
            },
        );
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        match result {
            Ok(()) => {}
            Err(_) if stopped => {
                save_last(&last_path, &state, &model, &fc, &optim)?;
                return Ok(TrainSummary {
                    run_dir: run.clone(),
                    history: state.history.clone(),
                    best_epoch: state.best_epoch,
                    best_f1: state.best_f1,
                    finished: false,
                });
            }
            Err(e) => {
                log.line(&format!("error: {e}"));
                return Err(e);
            }
        }

        // Validation.
        let valid = model.valid();
        let val_plan = BatchPlan::inference(plan.mode, plan.stats.clone());
        let inner = device.clone().inner();
        let (probs, ids, labels, val_loss) = score_surveys(
            &valid,
            &fc,
            &data,
            &split.val,
            &val_plan,
            &vocab,
            t.batch_size,
            t.workers,
            &inner,
        )?;
        if !val_loss.is_finite() || probs.iter().any(|p| !p.is_finite()) {
            let e = TrainError::NonFiniteLoss {
                value: val_loss as f32,
                epoch: epoch + 1,
                step: batches_per_epoch,
                run: run.clone(),
            };
            log.line(&format!("error: {e} (validation)"));
            return Err(e);
        }
        let scores = ScoreFile {
            model: format!("geolife-fusion-{}", cfg.model.backbone),
            split: "val".into(),
            survey_ids: ids,
            species: vocab.species().to_vec(),
            scores: Scores::Dense { data: probs },
        };
        let curve = geolife_metrics::f1_at_k_curve(&scores, &labels, v.k_max);
        let (best_k, val_f1) =
            curve
                .iter()
                .enumerate()
                .fold(
                    (1, f64::NEG_INFINITY),
                    |b, (j, &f)| if f > b.1 { (j + 1, f) } else { b },
                );
        let (threshold, threshold_f1) = geolife_metrics::best_global_threshold(&scores, &labels);
        let row = EpochMetrics {
            epoch: epoch + 1,
            train_loss: state.loss_sum / state.loss_count.max(1) as f64,
            val_loss,
            best_k,
            val_f1,
            threshold,
            threshold_f1,
            lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        log.line(&format!(
            "epoch {}/{}: train loss {:.5}, val loss {:.5}, val F1 {:.4} @K={}, threshold {:.3} -> F1 {:.4} ({:.1}s)",
            row.epoch, t.epochs, row.train_loss, row.val_loss, row.val_f1, row.best_k, row.threshold,
            row.threshold_f1, row.seconds
        ));
        if val_f1 > state.best_f1 {
            state.best_f1 = val_f1;
            state.best_epoch = Some(epoch + 1);
            geolife_model::checkpoint::save_safetensors_with(
                &valid,
                &fc,
                Some(&cfg.transforms.to_json()),
                &run.join(files::BEST),
            )
            .map_err(|e| TrainError::Checkpoint {
                path: run.join(files::BEST),
                message: e.to_string(),
            })?;
            scores
                .write(&run.join(files::VAL_SCORES))
                .map_err(|e| TrainError::Metrics(e.to_string()))?;
            let _ = geolife_metrics::plot::plot_f1_at_k(
                &run.join(files::F1_AT_K),
                &curve,
                &format!("validation F1@K, epoch {}", epoch + 1),
            );
        }
        state.history.push(row);
        state.epoch = epoch + 1;
        state.batch = 0;
        state.loss_sum = 0.0;
        state.loss_count = 0;
        write_metrics(&run.join(files::METRICS), &state.history)?;
        save_last(&last_path, &state, &model, &fc, &optim)?;
    }
    if let Err(e) = crate::plot::plot_curves(&run.join(files::CURVES), &state.history) {
        log.line(&format!("warning: no curves plot: {e}"));
    }
    log.line(&format!(
        "done: best validation F1 {:.4} at epoch {}",
        state.best_f1,
        state.best_epoch.unwrap_or(0)
    ));
    Ok(TrainSummary {
        run_dir: run.clone(),
        history: state.history.clone(),
        best_epoch: state.best_epoch,
        best_f1: state.best_f1,
        finished: true,
    })
}

fn save_last(
    path: &Path,
    state: &TrainState,
    model: &FusionModel,
    fc: &FusionConfig,
    optim: &burn::optim::ModuleOptimizer,
) -> Result<(), TrainError> {
    let ck = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    // burn's `RunningState` (BatchNorm running mean/var) keeps the newest update pending per
    // thread and exposes the value one update behind; records read that stale value. `valid()`
    // folds pending updates into the shared value (no change to the maths: the next forward
    // would fold them the same way), so the checkpoint holds the statistics as of this step and
    // a resumed run validates exactly like an uninterrupted one.
    drop(model.valid());
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| ck(format!("model record: {e}")))?;
    let optim_bytes = optim
        .into_bytes()
        .map_err(|e| ck(format!("optimizer record: {e}")))?;
    let tmp = path.with_file_name(format!(".last-weights-{}.safetensors", std::process::id()));
    geolife_model::checkpoint::save_safetensors(model, fc, &tmp)
        .map_err(|e| ck(format!("weights: {e}")))?;
    let weights = std::fs::read(&tmp).map_err(|source| TrainError::Io {
        path: tmp.clone(),
        source,
    });
    let _ = std::fs::remove_file(&tmp);
    checkpoint::save(path, state, &model_bytes, &optim_bytes, &weights?)
}

/// Rewrite `metrics.csv` from the history (atomic).
fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<(), TrainError> {
    let mut text = String::from(
        "epoch,train_loss,val_loss,best_k,val_f1_at_best_k,threshold,threshold_f1,lr,seconds\n",
    );
    for r in history {
        text.push_str(&format!(
            "{},{:.6},{:.6},{},{:.6},{:.6},{:.6},{:.6e},{:.2}\n",
            r.epoch,
            r.train_loss,
            r.val_loss,
            r.best_k,
            r.val_f1,
            r.threshold,
            r.threshold_f1,
            r.lr,
            r.seconds
        ));
    }
    write_atomic(path, text.as_bytes())
}

/// Throughput of full training steps (loader, forward, backward, AdamW step).
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Timed steps (the first step is excluded as warm-up).
    pub steps: usize,
    pub batch_size: usize,
    pub samples_per_s: f64,
    pub mean_step_s: f64,
    pub num_params: usize,
    /// Training loss of every step, warm-up included (all finite: a non-finite one is an error).
    pub losses: Vec<f32>,
}

/// Run `steps + 1` training steps on the train split of `cache` with the model and recipe of
/// `cfg` (mixup included) and time all but the first.
pub fn bench_steps(
    cfg: &TrainConfig,
    cache: &Path,
    steps: usize,
) -> Result<BenchResult, TrainError> {
    cfg.validate(Path::new("<bench config>"))?;
    let data = open_split(cache, Split::Train)?;
    let m = data.manifest().clone();
    let vocab = Vocabulary::new(cfg.data.vocabulary, &m.species, cfg.data.full_size);
    let fc = fusion_config(cfg, &m, vocab.len())?;
    let device = make_device(&cfg.train.device)?.autodiff();
    device.seed(cfg.train.seed);
    let mut model = fc
        .try_init(&device)
        .map_err(|e| TrainError::Invalid(format!("model: {e}")))?;
    check_model_input(&model, &fc, [m.patch_shape[1], m.patch_shape[2]])?;
    let num_params = model.num_params();
    let mut optim = adamw(&cfg.optim).init();
    let t = &cfg.train;
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(t.seed));
    let mut batches = Vec::with_capacity(steps + 1);
    let mut pos = 0;
    while batches.len() < steps + 1 {
        if pos + t.batch_size > order.len() {
            pos = 0;
            if t.batch_size > order.len() {
                return Err(TrainError::Invalid(format!(
                    "{} train surveys cannot fill a batch of {}",
                    order.len(),
                    t.batch_size
                )));
            }
        }
        batches.push(order[pos..pos + t.batch_size].to_vec());
        pos += t.batch_size;
    }
    let plan = BatchPlan::training(cfg, stats_from_manifest(&m), 0);
    let [_, ph, pw] = m.patch_shape;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let mut last = Instant::now();
    loader::for_each_batch(
        &data,
        &batches,
        0,
        &plan,
        &vocab,
        t.workers,
        t.prefetch,
        |b| {
            let n = b.inputs.n;
            let input = batch_tensors(&b, &fc, [ph, pw], &device);
            let targets = Tensor::<2>::from_data(
                TensorData::new(b.targets.clone(), [n, vocab.len()]),
                &device,
            );
            let loss = geolife_model::loss::bce_with_logits(model.forward(input), targets);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.optim.lr, model.clone(), grads);
            // Read the loss back so the step has really run before the clock stops.
            let value: f32 = loss.into_scalar();
            if !value.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "bench: loss is {value} at step {} ({} Sentinel backbone)",
                    b.index + 1,
                    cfg.model.backbone
                )));
            }
            losses.push(value);
            let now = Instant::now();
            if b.index > 0 {
                times.push(now.duration_since(last).as_secs_f64());
            }
            last = now;
            Ok::<_, TrainError>(())
        },
    )?;
    let total: f64 = times.iter().sum();
    Ok(BenchResult {
        losses,
        steps: times.len(),
        batch_size: t.batch_size,
        samples_per_s: (times.len() * t.batch_size) as f64 / total.max(1e-9),
        mean_step_s: total / times.len().max(1) as f64,
        num_params,
    })
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
