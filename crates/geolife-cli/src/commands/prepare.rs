//! `geolife prepare <DATA> --out <CACHE>`: packs each split into the memory-mapped cache
//! (see `geolife_data::cache`), with a progress bar and a throughput summary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use geolife_data::Split;
use geolife_data::cache::{self, PrepareOptions, PrepareProgress, SplitOutcome, SplitReport};
use geolife_data::dataset::DatasetOptions;
use geolife_data::inspect::id_list;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Dataset root in the official GLC24 layout.
    pub data: PathBuf,
    /// Cache folder to write (`<CACHE>/train/`, `<CACHE>/test/`). A second `prepare` into the
    /// same folder while one runs is refused (`<CACHE>/.prepare.lock`).
    #[arg(long)]
    pub out: PathBuf,
    /// Splits to pack, comma-separated (test copies the train statistics).
    #[arg(long, value_delimiter = ',', default_value = "train,test")]
    pub splits: Vec<String>,
    /// Drop surveys whose files are missing, truncated or corrupt, or whose rows conflict
    /// (listed in the summary and the manifest), instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Refuse a survey without a row in an environmental CSV (by default kept with NaN
    /// features and reported) and rows of surveys not in the metadata (by default ignored
    /// and reported). With --skip-bad, surveys without a row are left out instead.
    #[arg(long)]
    pub strict: bool,
    /// Worker threads for reading and decoding (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Re-pack even if the cache matches the dataset.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let splits = args
        .splits
        .iter()
        .map(|s| s.trim().parse::<Split>())
        .collect::<Result<Vec<_>, _>>()?;
    if splits.is_empty() {
        anyhow::bail!("--splits is empty: give train, test or train,test");
    }
    let mut opts = PrepareOptions::new(DatasetOptions::default());
    opts.splits = splits;
    opts.skip_bad = args.skip_bad;
    opts.strict = args.strict;
    opts.force = args.force;
    let reports = run_prepare(&args.data, &args.out, &opts, args.threads, true)?;
    for r in &reports {
        println!("{}", summary_line(r));
        for line in detail_lines(r, args.strict) {
            println!("  {line}");
        }
    }
    if let Some(peak) = peak_rss_bytes() {
        println!(
            "peak memory (VmHWM): {:.0} MiB",
            peak as f64 / (1 << 20) as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the packer on its own thread pool (`threads`, or rayon's default) with a progress
/// display on stderr when `show_progress`.
pub fn run_prepare(
    data: &Path,
    out: &Path,
    opts: &PrepareOptions,
    threads: Option<usize>,
    show_progress: bool,
) -> anyhow::Result<Vec<SplitReport>> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = threads {
        if t == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        builder = builder.num_threads(t);
    }
    let pool = builder.build().context("cannot start the worker threads")?;
    let progress = CliProgress::new(show_progress);
    let reports = pool
        .install(|| cache::prepare(data, out, opts, &progress))
        .with_context(|| format!("cannot pack {} into {}", data.display(), out.display()))?;
    Ok(reports)
}

/// One human-readable line per split.
pub fn summary_line(r: &SplitReport) -> String {
    let mb = r.bytes as f64 / 1e6;
    match r.outcome {
        SplitOutcome::UpToDate => format!(
            "{}: up to date ({} surveys, {mb:.1} MB, dataset fingerprint unchanged), skipped packing: {}",
            r.split,
            r.n,
            r.dir.display()
        ),
        SplitOutcome::Packed => format!(
            "{}: packed {} surveys ({} skipped as bad) in {:.2} s = {:.0} surveys/s, {mb:.1} MB -> {}",
            r.split,
            r.n,
            r.skipped,
            r.seconds,
            (r.n + r.skipped) as f64 / r.seconds.max(1e-9),
            r.dir.display()
        ),
    }
}

/// Skipped surveys shown in the summary (all are in the manifest).
const MAX_SKIPPED_LINES: usize = 20;

/// What a split's summary says beyond its counts: each skipped survey with its reason, and
/// per environmental CSV the surveys without a row, repeated rows and rows of unknown surveys.
pub fn detail_lines(r: &SplitReport, strict: bool) -> Vec<String> {
    let mut out = Vec::new();
    for s in r.skipped_surveys.iter().take(MAX_SKIPPED_LINES) {
        out.push(format!(
            "skipped survey {} [{}]: {}",
            s.survey_id, s.kind, s.reason
        ));
    }
    if r.skipped_surveys.len() > MAX_SKIPPED_LINES {
        out.push(format!(
            "... and {} more skipped surveys (all listed in {})",
            r.skipped_surveys.len() - MAX_SKIPPED_LINES,
            r.dir.join("manifest.json").display()
        ));
    }
    for c in &r.env_coverage {
        let file = c.path.display();
        if !c.missing_surveys.is_empty() {
            let what = if strict {
                "left out (--strict --skip-bad)"
            } else {
                "kept with NaN features (missing values accepted; --strict refuses them)"
            };
            out.push(format!(
                "{file}: {} surveys of the {} split have no row ({}): {what}",
                c.missing_surveys.len(),
                r.split,
                id_list(&c.missing_surveys)
            ));
        }
        if c.exact_duplicate_rows > 0 {
            out.push(format!(
                "{file}: {} exact duplicate rows (same survey, same values) ignored",
                c.exact_duplicate_rows
            ));
        }
        if c.unknown_survey_rows > 0 {
            let ids: Vec<u64> = c.unknown_survey_examples.iter().map(|x| x.0).collect();
            out.push(format!(
                "{file}: {} rows of surveys not in the {} metadata ignored ({})",
                c.unknown_survey_rows,
                r.split,
                id_list(&ids)
            ));
        }
    }
    if r.metadata_duplicate_rows > 0 {
        out.push(format!(
            "metadata: {} rows repeat a (survey, species) pair (ignored)",
            r.metadata_duplicate_rows
        ));
    }
    out
}

/// Peak resident memory of this process (Linux `VmHWM`), if readable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A progress bar on a terminal; plain lines (about every 10%) otherwise.
struct CliProgress {
    enabled: bool,
    tty: bool,
    state: Mutex<State>,
}

struct State {
    bar: Option<ProgressBar>,
    split: Option<Split>,
    total: usize,
    next_line: usize,
    started: Instant,
}

impl CliProgress {
    fn new(enabled: bool) -> Self {
        CliProgress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                bar: None,
                split: None,
                total: 0,
                next_line: 0,
                started: Instant::now(),
            }),
        }
    }
}

impl PrepareProgress for CliProgress {
    fn start(&self, split: Split, total: usize) {
        if !self.enabled {
            return;
        }
        let Ok(mut s) = self.state.lock() else { return };
        s.split = Some(split);
        s.total = total;
        s.next_line = 0;
        s.started = Instant::now();
        if self.tty {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>6} [{bar:40}] {pos}/{len} surveys {per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(split.to_string());
            s.bar = Some(bar);
        } else {
            eprintln!("{split}: packing {total} surveys");
        }
    }

    fn advance(&self, done: usize) {
        if !self.enabled {
            return;
        }
        let Ok(mut s) = self.state.lock() else { return };
        if let Some(bar) = &s.bar {
            bar.set_position(done as u64);
        } else if done >= s.next_line {
            let rate = done as f64 / s.started.elapsed().as_secs_f64().max(1e-9);
            if let Some(split) = s.split {
                eprintln!("{split}: {done}/{} surveys ({rate:.0}/s)", s.total);
            }
            s.next_line = done + (s.total / 10).max(1);
        }
    }

    fn finish(&self) {
        if let Ok(mut s) = self.state.lock()
            && let Some(bar) = s.bar.take()
        {
            bar.finish_and_clear();
        }
    }
}
