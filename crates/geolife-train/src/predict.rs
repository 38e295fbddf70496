//! Batched inference to a score file, from a run folder (its best checkpoint, vocabulary and
//! normalisation) or from an imported checkpoint plus a config (e.g. the seed's weights).

use std::path::{Path, PathBuf};

use burn::module::Module;
use geolife_data::Split;
use geolife_data::cache::PackedSplit;
use geolife_metrics::{ScoreFile, Scores};

use crate::config::{DeviceKind, Precision, TrainConfig};
use crate::error::TrainError;
use crate::loader::BatchPlan;
use crate::source::stats_from_manifest;
use crate::trainer::{RunInfo, files, make_device, score_surveys};
use crate::transform::TabularColumns;
use crate::vocab::Vocabulary;

/// What to predict with and on.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// A training run folder (uses `best.safetensors`, `run.json`, `config.toml`).
    pub run_dir: Option<PathBuf>,
    /// A geolife checkpoint to use instead of (or with) the run's best one.
    pub weights: Option<PathBuf>,
    /// Device config for `--weights` without a run (default: the paper preset). Transforms come
    /// from the checkpoint's metadata when it records them, else from this config.
    pub config: Option<PathBuf>,
    /// Packed cache folder.
    pub cache: PathBuf,
    pub split: Split,
    pub batch_size: usize,
    pub workers: usize,
    /// Overrides the config's `train.device` (`predict --device`).
    pub device: Option<DeviceKind>,
    /// Overrides the config's `train.precision` (`predict --precision`): the products' type.
    pub precision: Option<Precision>,
}

/// Scores of every survey of the split, columns = real species ids.
pub fn predict(opts: &PredictOptions) -> Result<ScoreFile, TrainError> {
    let data = PackedSplit::open(&opts.cache, opts.split)?;
    let manifest = data.manifest().clone();
    let (cfg, info, weights) = match &opts.run_dir {
        Some(run) => {
            if !run.join(files::CONFIG).is_file() && opts.config.is_none() {
                return Err(TrainError::Invalid(format!(
                    "{} is not a training run folder (no {}): pass the --out folder of `geolife train`, or --weights with --config",
                    run.display(),
                    files::CONFIG
                )));
            }
            let cfg = match &opts.config {
                Some(c) => TrainConfig::load(c)?,
                None => TrainConfig::load(&run.join(files::CONFIG))?,
            };
            let info = RunInfo::load(run)?;
            if info.dataset_fingerprint != manifest.dataset_fingerprint {
                return Err(TrainError::Invalid(format!(
                    "{}: the cache was built from another dataset than run {} (fingerprint {} vs {}); prepare the run's dataset",
                    opts.cache.display(),
                    run.display(),
                    manifest.dataset_fingerprint,
                    info.dataset_fingerprint
                )));
            }
            let w = opts
                .weights
                .clone()
                .unwrap_or_else(|| run.join(files::BEST));
            (cfg, Some(info), w)
        }
        None => {
            let w = opts
                .weights
                .clone()
                .ok_or_else(|| TrainError::Invalid("predict needs --run or --weights".into()))?;
            let mut cfg = match &opts.config {
                Some(c) => TrainConfig::load(c)?,
                None => TrainConfig::paper(crate::config::BackboneKind::ConvnextBase),
            };
            // The checkpoint's recorded transforms are what its weights were trained with, and
            // a prior-input model's recorded `[location]` is used when no config is given.
            if w.is_file() {
                let recorded = read_recorded(&w)?;
                if let Some(t) = crate::config::TransformSection::from_recorded(&recorded, &w)? {
                    if opts.config.is_some() && t.mode != cfg.transforms.mode {
                        tracing::warn!(
                            "{}: trained with {:?} transforms, but the config asks for {:?}; using the checkpoint's",
                            w.display(),
                            t.mode,
                            cfg.transforms.mode
                        );
                    }
                    cfg.transforms = t;
                }
                if opts.config.is_none()
                    && let Some(l) = crate::config::LocationSection::from_recorded(&recorded, &w)?
                {
                    cfg.location = l;
                }
            }
            (cfg, None, w)
        }
    };
    if !weights.is_file() {
        return Err(TrainError::Checkpoint {
            path: weights,
            message: "no such checkpoint (a run writes best.safetensors after its first epoch)"
                .into(),
        });
    }
    // Model errors name the file; `?` keeps their cause for the chain.
    let fc = geolife_model::checkpoint::read_config(&weights)?;
    let recorded = read_recorded(&weights)?;
    let tabular_columns = match fc.use_tabular {
        true => tabular_columns(
            &weights,
            recorded.feature_names,
            info.as_ref(),
            &fc,
            &manifest,
            &opts.cache,
        )?,
        false => None,
    };
    let (vocab, stats) = match &info {
        // The run's statistics are in the model's order already.
        Some(i) => (Vocabulary::from_species(i.species.clone()), i.stats.clone()),
        None => {
            let mut stats = stats_from_manifest(&manifest);
            if let Some(c) = &tabular_columns {
                stats.tabular = c.reorder(&stats.tabular);
            }
            (
                // The checkpoint's vocabulary; an imported seed checkpoint records none and has
                // max-id + 1 outputs: column = species id.
                Vocabulary::from_species(
                    recorded
                        .species
                        .unwrap_or_else(|| (0..fc.num_classes as u32).collect()),
                ),
                stats,
            )
        }
    };
    if vocab.len() != fc.num_classes {
        return Err(TrainError::Invalid(format!(
            "{}: the model has {} outputs but the vocabulary {} species",
            weights.display(),
            fc.num_classes,
            vocab.len()
        )));
    }
    let kind = opts.device.unwrap_or(cfg.train.device);
    let device = make_device(kind)?;
    crate::trainer::check_precision(kind, opts.precision.unwrap_or(cfg.train.precision))?;
    let (model, _) = geolife_model::checkpoint::load_safetensors(&fc, &weights, &device)?;
    let model = model.valid();
    let prior = match fc.prior_input {
        geolife_model::fusion::PriorInput::Off => None,
        input => {
            if cfg.location.input != input {
                return Err(TrainError::Invalid(format!(
                    "{}: the model takes a location prior ({input:?}) but the config's \
                     location.input is {:?}: pass the run folder (--run) or a --config with the \
                     run's [location] section",
                    weights.display(),
                    cfg.location.input
                )));
            }
            let train = PackedSplit::open(&opts.cache, Split::Train)?;
            Some(crate::location::for_split(
                &cfg.location,
                &train,
                &data,
                &vocab,
            )?)
        }
    };
    let plan = BatchPlan {
        prior,
        tabular_columns: tabular_columns.map(std::sync::Arc::new),
        ..BatchPlan::inference(cfg.transforms.mode, stats)
    };
    let all: Vec<usize> = (0..data.len()).collect();
    let _products =
        geolife_model::kernels::autocast(opts.precision.unwrap_or(cfg.train.precision).half());
    let scored = score_surveys(
        &model,
        &fc,
        &data,
        &all,
        &plan,
        &vocab,
        opts.batch_size.max(1),
        opts.workers.max(1),
        &device,
    )?;
    Ok(ScoreFile {
        model: model_name(opts.run_dir.as_deref(), &weights),
        split: opts.split.to_string(),
        survey_ids: scored.survey_ids,
        species: vocab.species().to_vec(),
        scores: Scores::Dense { data: scored.probs },
    })
}

/// The cache's tabular columns matched by name onto the names the model was trained on: those
/// the checkpoint records, else the run's (`run.json`). A checkpoint that records none (imported
/// or trained before geolife recorded them) takes the cache's columns in the cache's order, with
/// a warning, when their count fits.
fn tabular_columns(
    weights: &Path,
    recorded: Option<Vec<String>>,
    info: Option<&RunInfo>,
    fc: &geolife_model::fusion::FusionConfig,
    manifest: &geolife_data::cache::Manifest,
    cache: &Path,
) -> Result<Option<TabularColumns>, TrainError> {
    let cache_names = &manifest.feature_names;
    let Some(names) = recorded.or_else(|| info.map(|i| i.feature_names.clone())) else {
        if fc.num_features != cache_names.len() {
            return Err(TrainError::Invalid(format!(
                "{}: the model expects {} tabular features, the cache {} has {}",
                weights.display(),
                fc.num_features,
                cache.display(),
                cache_names.len()
            )));
        }
        tracing::warn!(
            "{}: the checkpoint records no tabular feature names, so the cache's {} columns \
             are taken in the cache's order; re-import it with `geolife import-weights \
             --features-from DATASET` to match them by name",
            weights.display(),
            cache_names.len()
        );
        return Ok(None);
    };
    if names.len() != fc.num_features {
        return Err(TrainError::Checkpoint {
            path: weights.to_path_buf(),
            message: format!(
                "records {} tabular feature names for a model with {} tabular inputs",
                names.len(),
                fc.num_features
            ),
        });
    }
    TabularColumns::between(
        &names,
        cache_names,
        &format!(
            "{} against the cache {}",
            weights.display(),
            cache.display()
        ),
    )
}

/// What the checkpoint at `path` records about its inputs; the error names the file.
fn read_recorded(path: &Path) -> Result<geolife_model::checkpoint::RecordedInputs, TrainError> {
    Ok(geolife_model::checkpoint::RecordedInputs::read(path)?)
}

fn model_name(run: Option<&Path>, weights: &Path) -> String {
    let p = run.unwrap_or(weights);
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "geolife".into())
}
