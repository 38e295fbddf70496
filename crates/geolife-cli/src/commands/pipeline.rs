//! `geolife pipeline`: the paper's whole system in one resumable command: prepare the cache,
//! train every member on one validation split, predict test, fit ensemble weights and the
//! selection policy on validation, write the submission and a report (Markdown, JSON, PNG).
//! With `[prior]`, the location prior is one more blend member.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use geolife_metrics::read_solution;
use geolife_train::Progress;
use geolife_train::pipeline::{
    PipelineConfig, PipelineOptions, outputs, parse_override, report_markdown, run_pipeline,
};

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline TOML (configs/pipeline-tiny.toml, configs/pipeline-paper.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// A GLC24 dataset root (packed into <OUT>/cache once) or a packed cache. A `[prior]`
    /// with its presence-only source on reads the root's GLC24_P0_metadata_train.csv (a cache
    /// keeps none: name the file with `po_file` under `[prior]`).
    #[arg(long)]
    pub data: PathBuf,
    /// Pipeline folder: members/, ensemble, policy, submission.csv, report.*; run the same
    /// command again to continue after an interruption.
    #[arg(long)]
    pub out: PathBuf,
    /// Cache folder for a raw --data (default: <OUT>/cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Override a key of every member's training config, e.g. `--set train.epochs=1`
    /// (repeatable; TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Test labels (`surveyId,predictions`), when known (synthetic data): the report gains
    /// test F1.
    #[arg(long)]
    pub test_solution: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let overrides = args
        .set
        .iter()
        .map(|s| parse_override(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut pipeline = PipelineConfig::load(&args.config)?.resolve(&args.config, &overrides)?;
    // A raw root: the prior member (`[prior]`) and members with a location input read its
    // presence-only file; a packed cache keeps none.
    let data_root = (!geolife_train::data::is_cache(&args.data)).then(|| args.data.clone());
    if let Some(root) = &data_root {
        for m in &mut pipeline.members {
            geolife_train::location::resolve_po_file(&mut m.config, root);
        }
    }
    let test_solution = args
        .test_solution
        .as_ref()
        .map(|p| read_solution(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let cache_dir = args.cache.clone().unwrap_or_else(|| args.out.join("cache"));
    let cache = geolife_train::data::resolve_cache(&args.data, &cache_dir)?;
    let report = run_pipeline(&PipelineOptions {
        pipeline,
        cache,
        data_root,
        out: args.out.clone(),
        test_solution,
        progress: Progress::Auto,
    })?;
    print!("\n{}", report_markdown(&report));
    println!(
        "submission: {}",
        args.out.join(outputs::SUBMISSION).display()
    );
    Ok(ExitCode::SUCCESS)
}
