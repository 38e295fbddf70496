//! `geolife import-weights`: converts a PyTorch `.pth` or safetensors state dict (the seed's
//! `MultimodalEnsemble`, a geolife fusion model, or a torchvision backbone) into a geolife
//! checkpoint, printing the missing / unexpected / reshaped / adapted keys.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use geolife_model::backbones::BackboneKind;
use geolife_model::checkpoint;
use geolife_model::fusion::{BranchOutput, FusionConfig};
use geolife_model::import::{import_into, read_state_dict};
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
    #[arg(long, default_value = "convnext_large")]
    backbone: String,
    /// Input channels of a backbone target (a 3-channel stem is adapted to it).
    #[arg(long, default_value_t = 4)]
    in_channels: usize,
    /// Classifier outputs of a backbone target (0: features only).
    #[arg(long, default_value_t = 1000)]
    num_classes: usize,
    /// Write the checkpoint even if model parameters are missing from the file.
    #[arg(long)]
    allow_missing: bool,
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
    let dict = read_state_dict(&args.input)?;
    let backbone = BackboneKind::from_name(&args.backbone)?;
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
            check(&report, args.allow_missing)?;
            checkpoint::save_safetensors(&model, &config, &args.output)?;
            report
        }
        Target::Backbone => {
            let classes = (args.num_classes > 0).then_some(args.num_classes);
            let model = backbone
                .config(args.in_channels, classes)
                .try_init(&device)?;
            let (model, report) = import_into(model, &dict, "");
            check(&report, args.allow_missing)?;
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

fn check(report: &geolife_model::state::LoadReport, allow_missing: bool) -> anyhow::Result<()> {
    if !report.mismatched.is_empty() || (!allow_missing && !report.missing.is_empty()) {
        eprint!("{}", report.summary());
        bail!(
            "{} parameter(s) missing and {} with mismatched shapes; nothing written \
             (--allow-missing keeps missing ones at their initial values)",
            report.missing.len(),
            report.mismatched.len()
        );
    }
    Ok(())
}
