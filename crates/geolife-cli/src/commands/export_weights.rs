//! `geolife export-weights`: writes a geolife checkpoint as a plain safetensors state dict with
//! seed/torchvision names (loadable by PyTorch `load_state_dict`), whole or one branch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use geolife_model::checkpoint;
use geolife_model::state::{StateDict, state_dict};

#[derive(clap::Args)]
pub struct Args {
    /// geolife fusion checkpoint (.safetensors with its config in the metadata).
    #[arg(long)]
    input: PathBuf,
    /// File to write (.safetensors).
    #[arg(long)]
    output: PathBuf,
    /// Export one branch only, with the prefix stripped (e.g. `sentinel_model` gives a
    /// torchvision backbone state dict).
    #[arg(long)]
    branch: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let device = geolife_model::cpu_device();
    let config = checkpoint::read_config(&args.input)?;
    let (model, _) = checkpoint::load_safetensors(&config, &args.input, &device)?;
    let full = state_dict(&model);
    let (dict, meta): (StateDict, HashMap<String, String>) = match &args.branch {
        None => (
            full,
            HashMap::from([(
                checkpoint::CONFIG_KEY.to_string(),
                serde_json::to_string(&config)?,
            )]),
        ),
        Some(branch) => {
            let prefix = format!("{}.", branch.trim_end_matches('.'));
            let dict: StateDict = full
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|s| (s.to_string(), v)))
                .collect();
            if dict.is_empty() {
                bail!(
                    "{}: no parameters under `{prefix}` (branches: tab_model, landsat_model, \
                     bioclim_model, sentinel_model, ...)",
                    args.input.display()
                );
            }
            (dict, HashMap::new())
        }
    };
    let n = dict.len();
    checkpoint::write_state_dict(&dict, meta, &args.output)?;
    println!("wrote {n} tensors to {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}
