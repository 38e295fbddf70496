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
    DeviceSlot, Executor, LocalJobs, PipelineConfig, PipelineOptions, SLURM_DIR, SlurmJobs,
    map_paths, outputs, parse_override, pipeline_status, report_markdown, run_member, run_pipeline,
    submit_slurm,
};

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline TOML (configs/pipeline-tiny.toml, configs/pipeline-paper.toml).
    #[arg(long, required_unless_present = "status")]
    pub config: Option<PathBuf>,
    /// A GLC24 dataset root (packed into <OUT>/cache once) or a packed cache. A `[prior]`
    /// with its presence-only source on reads the root's GLC24_P0_metadata_train.csv (a cache
    /// keeps none: name the file with `po_file` under `[prior]`).
    #[arg(long, required_unless_present = "status")]
    pub data: Option<PathBuf>,
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
    /// Members trained at once, each in its own process (logs in members/<NAME>/member.log).
    /// On the CPU the cores are divided between them; results are the same bytes as with 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Devices handed to the parallel members in turn: `wgpu:0,wgpu:1,...` (one GPU each;
    /// members need `train.device = "wgpu"`) or `flex`.
    #[arg(long, value_name = "LIST", value_parser = parse_devices)]
    pub devices: Option<Vec<DeviceSlot>>,
    /// Train (or resume) only this member and predict its test split, then stop: what each
    /// process of --jobs (or a cluster task) runs. The blend and report need every member.
    #[arg(long, value_name = "NAME")]
    pub member: Option<String>,
    /// With --member: only this fold (from 0) of a k-fold member (`[validation] folds`).
    #[arg(long, requires = "member")]
    pub fold: Option<usize>,
    /// Where the members run: `local` (this machine: one after another, or --jobs at once) or
    /// `slurm` (an sbatch array task per run not done, then a final job, `afterok`, that
    /// blends and reports; returns once submitted). The cache and --out must be on a
    /// filesystem every node sees.
    #[arg(long, default_value = "local", value_parser = ["local", "slurm"])]
    pub executor: String,
    /// Extra sbatch options for every job of --executor slurm, split on spaces (e.g.
    /// "--partition=gpu --gres=gpu:1 --time=12:00:00 --cpus-per-task=8").
    #[arg(long, value_name = "OPTIONS", allow_hyphen_values = true)]
    pub sbatch_args: Option<String>,
    /// Show where every run of the pipeline in --out stands (done, running or waiting with its
    /// Slurm job, stopped at a checkpoint, failed with the end of its log) and exit.
    #[arg(long, conflicts_with_all = ["member", "config", "data"])]
    pub status: bool,
}

fn parse_devices(s: &str) -> Result<Vec<DeviceSlot>, String> {
    DeviceSlot::parse_list(s)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.status {
        return status(&args.out);
    }
    if args.executor == "slurm" && (args.jobs > 1 || args.member.is_some()) {
        anyhow::bail!("--executor slurm runs each member as its own job: drop --jobs and --member");
    }
    super::stop_on_signals(args.member.is_none())?;
    let (config, data) = (
        args.config.clone().context("--config is required")?,
        args.data.clone().context("--data is required")?,
    );
    let overrides = args
        .set
        .iter()
        .map(|s| parse_override(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut pipeline = PipelineConfig::load(&config)?.resolve(&config, &overrides)?;
    // A raw root: the prior member (`[prior]`) and members with a location input read its
    // presence-only file; a packed cache keeps none.
    let data_root = (!geolife_train::data::is_cache(&data)).then(|| data.clone());
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
    // A member's process (--member) uses the cache its parent has prepared as it is: packing
    // checks take the cache's lock, which parallel members would contend for.
    let cache = if args.member.is_some() && geolife_train::data::is_cache(&cache_dir) {
        cache_dir
    } else {
        geolife_train::data::resolve_cache(&data, &cache_dir)?
    };
    let executor = if args.jobs > 1 && args.member.is_none() {
        Executor::Local(LocalJobs {
            jobs: usize::from(args.jobs),
            devices: args.devices.clone().unwrap_or_default(),
            program: std::env::current_exe().context("locating the geolife binary")?,
            args: member_args(&args)?,
        })
    } else {
        Executor::InProcess
    };
    let opts = PipelineOptions {
        pipeline,
        cache,
        data_root,
        out: args.out.clone(),
        test_solution,
        progress: Progress::Auto,
        executor,
    };
    if args.executor == "slurm" {
        let jobs = SlurmJobs {
            program: std::env::current_exe().context("locating the geolife binary")?,
            args: member_args(&args)?,
            cwd: std::env::current_dir().context("reading the working directory")?,
            sbatch_args: (args.sbatch_args.as_deref().unwrap_or_default())
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        };
        let sub = submit_slurm(&opts, &jobs)?;
        match &sub.array_job {
            Some(id) => println!(
                "submitted array job {id}: {} run(s): {}",
                sub.tasks.len(),
                sub.tasks.join(", ")
            ),
            None => println!("every run is done or queued already: no new array job"),
        }
        println!(
            "submitted final job {} (blend, policy, submission, report; afterok on the arrays)",
            sub.final_job
        );
        println!(
            "scripts, job ids and output: {}; progress: geolife pipeline --status --out {}",
            args.out.join(SLURM_DIR).display(),
            args.out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(name) = &args.member {
        let record = run_member(&opts, name, args.fold)?;
        println!(
            "member `{name}`{}: best validation F1 {:.4} at epoch {}",
            args.fold.map_or(String::new(), |f| format!(" fold {f}")),
            record.best_val_f1,
            record.best_epoch.unwrap_or(0)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let report = run_pipeline(&opts)?;
    print!("\n{}", report_markdown(&report));
    for map in map_paths(&args.out) {
        println!("map: {}", map.display());
    }
    println!(
        "submission: {}",
        args.out.join(outputs::SUBMISSION).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where every run of the pipeline in `out` stands, one line each, then the report's.
fn status(out: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (runs, report) = pipeline_status(out)?;
    let width = runs.iter().map(|r| r.name.len()).max().unwrap_or(4);
    for r in &runs {
        let job = r
            .job
            .as_deref()
            .map_or(String::new(), |j| format!(" (job {j})"));
        let detail = if r.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", r.detail.replace('\n', "\n    "))
        };
        println!("{:<width$}  {}{job}{detail}", r.name, r.state);
    }
    println!("{:<width$}  {report}", "report");
    Ok(ExitCode::SUCCESS)
}

/// The arguments of a member's process or job: this pipeline's own, as given (the processes and
/// jobs start in this working directory); `--member NAME [--fold I]` is appended.
fn member_args(args: &Args) -> anyhow::Result<Vec<std::ffi::OsString>> {
    let mut v: Vec<std::ffi::OsString> = vec!["pipeline".into()];
    let mut flag = |name: &str, value: &std::path::Path| -> anyhow::Result<()> {
        v.push(name.into());
        v.push(value.as_os_str().to_owned());
        Ok(())
    };
    if let Some(c) = &args.config {
        flag("--config", c)?;
    }
    if let Some(d) = &args.data {
        flag("--data", d)?;
    }
    flag("--out", &args.out)?;
    if let Some(c) = &args.cache {
        flag("--cache", c)?;
    }
    if let Some(t) = &args.test_solution {
        flag("--test-solution", t)?;
    }
    for s in &args.set {
        v.push("--set".into());
        v.push(s.into());
    }
    Ok(v)
}
