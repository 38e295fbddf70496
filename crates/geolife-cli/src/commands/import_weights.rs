//! `geolife import-weights`: converts a PyTorch `.pth` or safetensors state dict (the seed's
//! `MultimodalEnsemble`, a geolife fusion model, or a torchvision backbone) into a geolife
//! checkpoint, printing the missing / unexpected / reshaped / adapted keys. PyTorch Lightning
//! `.ckpt` files (the seed trains with Lightning) are unwrapped: the weights are taken from
//! `state_dict` and a wrapper prefix (`model.`) is stripped, and both are reported. As PyTorch's
//! `load_state_dict(strict=True)`, keys the model does not have are an error unless allowed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use geolife_model::backbones::{BackboneKind, VariantNames};
use geolife_model::checkpoint;
use geolife_model::fusion::{BranchOutput, FusionConfig};
use geolife_model::import::{import_into, read_state_dict, unwrap_checkpoint};
use geolife_model::state::StateDict;

/// What the input file holds.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A fusion network (the seed's MultimodalEnsemble or a geolife model).
    Fusion,
    /// One torchvision backbone.
    Backbone,
}

#[derive(clap::Args)]
pub struct Args {
    /// Weights to import (.pth / .pt / .bin / .safetensors).
    #[arg(long)]
    input: PathBuf,
    /// geolife checkpoint to write (.safetensors).
    #[arg(long)]
    output: PathBuf,
    /// Kind of network in the file.
    #[arg(long, value_enum, default_value = "fusion")]
    target: Target,
    /// Fusion config JSON (as saved in run folders); inferred from the file when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Sentinel backbone (fusion, when inferring the config) or the backbone (backbone target).
    #[arg(long, default_value = "convnext_large",
          value_parser = crate::commands::named::<BackboneKind>(BackboneKind::VARIANTS))]
    backbone: BackboneKind,
    /// Input channels of a backbone target (a 3-channel stem is adapted to it).
    #[arg(long, default_value_t = 4)]
    in_channels: usize,
    /// Classifier outputs of a backbone target (0: features only).
    #[arg(long, default_value_t = 1000)]
    num_classes: usize,
    /// Write the checkpoint even if model parameters are missing from the file.
    #[arg(long)]
    allow_missing: bool,
    /// Write the checkpoint even if the file has keys the model has no parameter for (they
    /// are dropped). Without it they are an error, e.g. a deeper backbone than `--backbone`.
    #[arg(long)]
    allow_unexpected: bool,
    /// Input transforms recorded in the checkpoint, which `predict` then applies: default
    /// `seed` for PyTorch files (the seed's code trained them), or what a geolife safetensors
    /// input records.
    #[arg(long, value_enum)]
    transforms: Option<Transforms>,
    /// Where the order of the tabular features comes from (fusion target). geolife records the
    /// names in the checkpoint, and `predict` matches a cache's columns to them by name.
    /// Give the model's training data here: a GLC24 dataset root or a cache from `geolife prepare`.
    /// From a dataset root, the seed's rule applies: each train CSV's header order, file after
    /// file (bioclim, elevation, human footprint, soilgrids, landcover, then the monthly table
    /// when the model takes it). From a cache, its recorded names are used.
    /// Without this flag, a geolife safetensors input keeps the names it records, and a
    /// 46-feature seed model gets the official GLC24 files' order. Any other model is refused:
    /// geolife does not guess an order.
    #[arg(long, value_name = "DATASET|CACHE")]
    features_from: Option<PathBuf>,
}

/// Input transforms of a fusion model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transforms {
    /// The seed's: fillna/inf -> -1 tabular, raw cubes, `(x/255 - 0.5)/0.5` patches.
    Seed,
    /// geolife's standardisation with the cache's train statistics.
    Geolife,
}

/// Infer the seed's fusion config from the keys and shapes of its state dict.
fn infer_fusion_config(dict: &StateDict, backbone: BackboneKind) -> anyhow::Result<FusionConfig> {
    let rows = |key: &str| dict.get(key).and_then(|t| t.shape.first().copied());
    let has = |prefix: &str| dict.keys().any(|k| k.starts_with(prefix));
    let num_classes = rows("fc2.weight")
        .context("no `fc2.weight`: not a MultimodalEnsemble / fusion state dict (pass --config or --target backbone)")?;
    let hidden = rows("fc1.weight").context("no `fc1.weight`")?;
    let mut config = FusionConfig::paper(num_classes, backbone)
        .with_hidden(hidden)
        .with_use_tabular(has("tab_model."))
        .with_use_landsat(has("landsat_model."))
        .with_use_bioclim(has("bioclim_model."))
        .with_use_sentinel(has("sentinel_model."));
    if let Some(n) = dict.get("tab_norm.weight") {
        config.num_features = n.shape.iter().product();
    }
    if let Some(t) = dict.get("sentinel_model.features.0.0.weight") {
        config.sentinel_channels = t.shape.get(1).copied().unwrap_or(4);
    }
    if config.use_sentinel
        && !dict.contains_key("sentinel_model.classifier.2.weight")
        && !dict.contains_key("sentinel_model.fc.weight")
    {
        config.sentinel_output = BranchOutput::Features;
    }
    if has("landsat_model.") && !dict.contains_key("landsat_model.fc.weight") {
        config.cube_output = BranchOutput::Features;
    }
    for (key, shape) in [("landsat_norm.weight", 0), ("bioclim_norm.weight", 1)] {
        if let Some(t) = dict.get(key)
            && t.shape.len() == 3
        {
            let s = [t.shape[0], t.shape[1], t.shape[2]];
            if shape == 0 {
                config.landsat_shape = s;
            } else {
                config.bioclim_shape = s;
            }
        }
    }
    Ok(config)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let device = geolife_model::cpu_device();
    let (dict, stripped) = unwrap_checkpoint(read_state_dict(&args.input)?);
    if !stripped.is_empty() {
        println!(
            "{}: weights found under `{}` (stripped from every key)",
            args.input.display(),
            stripped.concat()
        );
    }
    let backbone = args.backbone;
    let report = match args.target {
        Target::Fusion => {
            let config = match &args.config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    serde_json::from_str::<FusionConfig>(&text)
                        .with_context(|| format!("{}: not a fusion config JSON", path.display()))?
                }
                None => infer_fusion_config(&dict, backbone)
                    .with_context(|| format!("{}", args.input.display()))?,
            };
            config.validate()?;
            let (model, report) = import_into(config.try_init(&device)?, &dict, "");
            check(&report, &args)?;
            // What a geolife input records; a PyTorch file records nothing.
            let recorded = match is_safetensors(&args.input) {
                true => checkpoint::RecordedInputs::read(&args.input)?,
                false => checkpoint::RecordedInputs::default(),
            };
            let transforms = transforms_json(&args, &recorded)?;
            println!("recorded input transforms: {transforms}");
            let features = feature_names(&args, &config, recorded.feature_names.clone())?;
            // A geolife file's location-prior settings and vocabulary travel with its weights.
            let inputs = checkpoint::InputsMeta {
                transforms_json: Some(&transforms),
                feature_names: features.as_deref(),
                ..recorded.as_meta()
            };
            checkpoint::save_safetensors_with(&model, &config, inputs, &args.output)?;
            report
        }
        Target::Backbone => {
            let classes = (args.num_classes > 0).then_some(args.num_classes);
            let model = backbone
                .config(args.in_channels, classes)
                .try_init(&device)?;
            let (model, mut report) = import_into(model, &dict, "");
            if classes.is_none() {
                // A features-only import drops the classifier on purpose.
                let head = format!("{}.", backbone.meta().classifier);
                report.unexpected.retain(|k| !k.starts_with(&head));
            }
            check(&report, &args)?;
            let meta = HashMap::from([
                (
                    checkpoint::KIND_KEY.to_string(),
                    backbone.name().to_string(),
                ),
                ("in_channels".to_string(), args.in_channels.to_string()),
                ("num_classes".to_string(), args.num_classes.to_string()),
            ]);
            checkpoint::save_module(&model, meta, &args.output)?;
            report
        }
    };
    print!("{}", report.summary());
    println!("wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// The transforms JSON to record: `--transforms`, else a geolife input's own, else the seed's.
fn transforms_json(args: &Args, recorded: &checkpoint::RecordedInputs) -> anyhow::Result<String> {
    use geolife_train::config::{TransformMode, TransformSection};
    let section = match args.transforms {
        Some(Transforms::Seed) => TransformSection::seed(),
        Some(Transforms::Geolife) => TransformSection {
            mode: TransformMode::Geolife,
            ..TransformSection::default()
        },
        None => TransformSection::from_recorded(recorded, &args.input)?
            .unwrap_or_else(TransformSection::seed),
    };
    Ok(section.to_json())
}

/// The tabular feature names to record, in input order (see `--features-from`); `None` for a
/// model without the tabular branch.
/// `recorded`: the names a geolife input records.
fn feature_names(
    args: &Args,
    config: &FusionConfig,
    recorded: Option<Vec<String>>,
) -> anyhow::Result<Option<Vec<String>>> {
    use geolife_data::Split;
    use geolife_data::env::{EnvGroup, group_columns, official_feature_names};
    if !config.use_tabular {
        return Ok(None);
    }
    let want = config.num_features;
    let (names, source) = match &args.features_from {
        Some(from) if geolife_train::data::is_cache(from) => {
            let split = geolife_data::cache::PackedSplit::open(from, Split::Train)
                .with_context(|| format!("--features-from {}", from.display()))?;
            (
                split.manifest().feature_names.clone(),
                from.display().to_string(),
            )
        }
        Some(root) => {
            let layout = geolife_data::layout::Layout::scan(root)
                .with_context(|| format!("--features-from {}", root.display()))?;
            let mut names = Vec::new();
            for g in EnvGroup::SEED {
                let csv = layout.require_env(g, Split::Train)?;
                names.extend(group_columns(&csv, g)?);
            }
            if names.len() < want
                && let Ok(csv) = layout.require_env(EnvGroup::MonthlyClimate, Split::Train)
            {
                names.extend(group_columns(&csv, EnvGroup::MonthlyClimate)?);
            }
            (
                names,
                format!("the train CSV headers of {}", root.display()),
            )
        }
        None => match recorded {
            Some(names) => (names, format!("{}", args.input.display())),
            None if want == official_feature_names().len() => (
                official_feature_names(),
                "the official GLC24 files' column order (pass --features-from DATASET if \
                     the model was trained on files ordered otherwise)"
                    .to_string(),
            ),
            None => bail!(
                "{}: the model takes {want} tabular features and the file does not say in \
                     which order; pass --features-from with the dataset root or cache it was \
                     trained on",
                args.input.display()
            ),
        },
    };
    if names.len() != want {
        bail!(
            "{source} gives {} tabular features, but the model in {} takes {want}",
            names.len(),
            args.input.display()
        );
    }
    println!(
        "recorded {} tabular feature names from {source}",
        names.len()
    );
    Ok(Some(names))
}

fn is_safetensors(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

fn check(report: &geolife_model::state::LoadReport, args: &Args) -> anyhow::Result<()> {
    let missing = !args.allow_missing && !report.missing.is_empty();
    let unexpected = !args.allow_unexpected && !report.unexpected.is_empty();
    if !report.mismatched.is_empty() || missing || unexpected {
        eprint!("{}", report.summary());
        bail!(
            "{} parameter(s) missing, {} unexpected key(s) and {} with mismatched shapes; \
             nothing written (--allow-missing keeps missing parameters at their initial values, \
             --allow-unexpected drops keys the model does not have: check --backbone first)",
            report.missing.len(),
            report.unexpected.len(),
            report.mismatched.len()
        );
    }
    Ok(())
}
