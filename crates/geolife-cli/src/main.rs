//! The `geolife` binary: parses flags, dispatches to one subcommand module, maps the
//! result to an exit code. All work lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// Species prediction for GeoLifeCLEF 2024: data, models, training, scoring, submissions.
#[derive(Parser)]
#[command(name = "geolife", version, about, propagate_version = true)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic dataset in the official GLC24 layout.
    Synth(commands::synth::Args),
    /// Validate a dataset root and report what it holds; or print one survey as JSON.
    Inspect(commands::inspect::Args),
    /// Pack a dataset into memory-mappable binary files for training.
    Prepare(commands::prepare::Args),
    /// Score predictions against a solution file (samples-F1, F1@K, thresholds).
    Evaluate(commands::evaluate::Args),
    /// Fit species-selection policies (top-K, threshold, per-survey K) on validation labels.
    Calibrate(commands::calibrate::Args),
    /// Blend several score files (weighted mean or rank average), optionally fitting weights.
    Ensemble(commands::ensemble::Args),
    /// Write a Kaggle submission CSV from a score file.
    Submit(commands::submit::Args),
    /// Per-species scores of a split's surveys from their location: PA neighbours and
    /// presence-only density (honest on validation).
    Prior(commands::prior::Args),
    /// Throughput benchmarks.
    Bench(commands::bench::Args),
    /// Draw a map of surveys over Europe: a run's split, per-survey F1, richness, one
    /// species' scores, or presence-only density.
    Map(commands::map::Args),
    /// Train the fusion network.
    #[cfg(feature = "dl")]
    Train(commands::train::Args),
    /// Predict scores (and optionally a submission) with a trained run or imported weights.
    #[cfg(feature = "dl")]
    Predict(commands::predict::Args),
    /// The paper's system end to end, resumable: train every member, ensemble, fit the
    /// selection policy, submit, report.
    #[cfg(feature = "dl")]
    Pipeline(commands::pipeline::Args),
    /// End-to-end demo on a small synthetic dataset. Exits 3 when the fusion model does not
    /// beat every single-modality model and the species-frequency baseline.
    #[cfg(feature = "dl")]
    Demo(commands::demo::Args),
    /// Convert PyTorch / torchvision / safetensors weights into a geolife checkpoint.
    #[cfg(feature = "dl")]
    ImportWeights(commands::import_weights::Args),
    /// Export a geolife checkpoint as safetensors with torchvision-compatible names.
    #[cfg(feature = "dl")]
    ExportWeights(commands::export_weights::Args),
}

/// glibc's allocator hands every buffer over its (adaptive) mmap threshold to a fresh `mmap`
/// and unmaps it on free, and it returns the heap's free top to the system: training allocates
/// and frees activation and gradient buffers of megabytes on every op, so each one came back
/// as new zeroed pages. Keeping buffers up to 32 MiB on the heap and not trimming it took a
/// seed-recipe CPU epoch from 71.2 s to 65.9 s (peak RSS +9%; README, speed section).
/// mimalloc was measured too and gained nothing on the epoch (71.6 s).
/// Makes the main thread one of the workers of rayon's global pool (`use_current_thread`; the
/// pool keeps its usual size, `RAYON_NUM_THREADS` or one thread per core). A training step runs
/// hundreds of parallel kernels: from a thread outside the pool each one is handed to the
/// workers while the caller sleeps until a worker wakes it, and from a worker the caller takes
/// its share of the work and continues as soon as the last share is done (seed-recipe CPU
/// epoch 17.7 -> 17.0 s, seven interleaved A/B runs). With a single thread the pool keeps a
/// spawned worker of its own: the loader and checkpoint threads hand it work while the main
/// thread waits for them.
fn join_thread_pool() {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads < 2 {
        return;
    }
    // An error means a global pool exists already (nothing has built one this early); the
    // kernels then run on that pool as before.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .build_global();
}

fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once, before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    join_thread_pool();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}`: the error and its causes, each saying only its own part.
            eprintln!("error: {err:#}");
            exit_code(&err)
        }
    }
}

/// 128 + the signal for training stopped by SIGTERM or SIGINT (as a shell reports a process
/// the signal ended; Slurm and the pipeline's parent read it), else 1.
fn exit_code(err: &anyhow::Error) -> ExitCode {
    #[cfg(feature = "dl")]
    if let Some(geolife_train::TrainError::Interrupted { signal, .. }) = err.downcast_ref() {
        return ExitCode::from((128 + signal).clamp(1, 255) as u8);
    }
    let _ = err;
    ExitCode::FAILURE
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Synth(a) => commands::synth::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Prepare(a) => commands::prepare::run(a),
        Command::Evaluate(a) => commands::evaluate::run(a),
        Command::Calibrate(a) => commands::calibrate::run(a),
        Command::Ensemble(a) => commands::ensemble::run(a),
        Command::Submit(a) => commands::submit::run(a),
        Command::Prior(a) => commands::prior::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Map(a) => commands::map::run(a),
        #[cfg(feature = "dl")]
        Command::Train(a) => commands::train::run(a),
        #[cfg(feature = "dl")]
        Command::Predict(a) => commands::predict::run(a),
        #[cfg(feature = "dl")]
        Command::Pipeline(a) => commands::pipeline::run(a),
        #[cfg(feature = "dl")]
        Command::Demo(a) => commands::demo::run(a),
        #[cfg(feature = "dl")]
        Command::ImportWeights(a) => commands::import_weights::run(a),
        #[cfg(feature = "dl")]
        Command::ExportWeights(a) => commands::export_weights::run(a),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, prelude::*};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter)
        .with_filter(filter_fn(|m| m.target() != geolife_io::PROGRESS));
    // The library's progress lines (members, epochs without a bar), bare on stdout.
    let progress = fmt::layer()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_filter(filter_fn(|m| m.target() == geolife_io::PROGRESS));
    tracing_subscriber::registry()
        .with(logs)
        .with(progress)
        .init();
}
