//! `geolife bench data`: packs a (synthetic) dataset and compares batches per second gathered
//! from the cache with the seed's raw-file path (table scan, two `.pt` reads, two JPEG decodes).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use geolife_data::Split;
use geolife_data::cache::{Batch, PackedSplit, PrepareOptions};
use geolife_data::dataset::{Dataset, DatasetOptions};
use geolife_data::synth::{SynthConfig, write_dataset};

use crate::commands::prepare::{peak_rss_bytes, run_prepare, summary_line};

#[derive(clap::Args)]
pub struct Args {
    /// Train surveys of the synthetic dataset (test gets 5% more on top).
    #[arg(long, default_value_t = 20_000)]
    pub surveys: usize,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Use this dataset root instead of synthesizing one (it is not modified).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Work folder for the synthetic dataset and the cache (default: the system temp dir;
    /// removed afterwards unless --keep).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Keep the synthetic dataset and cache.
    #[arg(long)]
    pub keep: bool,
    /// Worker threads of `prepare` (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Samples read the raw-file way for the baseline.
    #[arg(long, default_value_t = 512)]
    pub baseline_samples: usize,
    /// Seconds spent gathering batches from the cache.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Seed of the synthetic dataset and the random batch indices.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.batch == 0 || args.baseline_samples == 0 || args.surveys == 0 {
        anyhow::bail!("--batch, --baseline-samples and --surveys must be at least 1");
    }
    let work = args.work.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("geolife-bench-data-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let result = bench(&args, &work);
    if !args.keep {
        let data = work.join("data");
        let _ = std::fs::remove_dir_all(work.join("cache"));
        if args.dir.is_none() {
            let _ = std::fs::remove_dir_all(&data);
        }
        let _ = std::fs::remove_dir(&work);
    }
    result
}

fn bench(args: &Args, work: &Path) -> anyhow::Result<ExitCode> {
    let data = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let root = work.join("data");
            let cfg = SynthConfig {
                train_surveys: args.surveys,
                test_surveys: (args.surveys / 20).max(1),
                seed: args.seed,
                ..SynthConfig::default()
            };
            eprintln!(
                "synthesizing {} + {} surveys into {} ...",
                cfg.train_surveys,
                cfg.test_surveys,
                root.display()
            );
            let s = write_dataset(&root, &cfg).context("cannot synthesize the dataset")?;
            println!(
                "synth: {} files, {:.1} MB in {:.1} s",
                s.files,
                s.bytes as f64 / 1e6,
                s.seconds
            );
            root
        }
    };
    let cache_dir = work.join("cache");

    // 1. prepare throughput and its peak memory (VmHWM reset first where the kernel allows).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = peak_rss_bytes();
    let mut opts = PrepareOptions::new(DatasetOptions::default());
    opts.force = true;
    let t0 = Instant::now();
    let reports = run_prepare(&data, &cache_dir, &opts, args.threads, true)?;
    let prep_s = t0.elapsed().as_secs_f64();
    let peak = peak_rss_bytes();
    let packed: usize = reports.iter().map(|r| r.n + r.skipped).sum();
    for r in &reports {
        println!("{}", summary_line(r));
    }
    println!(
        "prepare: {packed} surveys in {prep_s:.2} s = {:.0} surveys/s ({} threads)",
        packed as f64 / prep_s.max(1e-9),
        args.threads.unwrap_or_else(rayon::current_num_threads)
    );
    if let Some(p) = peak {
        let note = if reset {
            ""
        } else {
            " (could not reset VmHWM: includes earlier phases)"
        };
        println!(
            "prepare peak memory (VmHWM): {:.0} MiB{note}{}",
            p as f64 / (1 << 20) as f64,
            before.map_or(String::new(), |b| format!(
                "; process before prepare: {:.0} MiB",
                b as f64 / (1 << 20) as f64
            ))
        );
    }

    // 2. batches/s from the cache: random indices, gather into a reused batch.
    let split = PackedSplit::open(&cache_dir, Split::Train)?;
    let n = split.len();
    if n == 0 {
        anyhow::bail!("the packed train split is empty");
    }
    let mut rng = SplitMix(args.seed);
    let mut batch = Batch::default();
    // Cold: pages of the fresh mapping are faulted in on first touch (the first epoch).
    let (cold_wall, cold_cpu) = time_gather(&split, args, &mut rng, &mut batch, false);
    // Warm: after one sequential pass over every row (the steady state of later epochs).
    let all: Vec<usize> = (0..n).collect();
    for rows in all.chunks(args.batch) {
        split.gather(rows, &mut batch);
        black_box(&batch);
    }
    let (cache_bps, cache_cpu_bps) = time_gather(&split, args, &mut rng, &mut batch, false);
    let (par_bps, _) = time_gather(&split, args, &mut rng, &mut batch, true);
    for (what, wall, cpu) in [
        ("cold (first touch)", cold_wall, cold_cpu),
        ("warm (after 1 pass)", cache_bps, cache_cpu_bps),
    ] {
        println!(
            "cache {what}: {wall:.1} batches/s of {} wall ({:.0} samples/s), {} per CPU-second; 1 thread, random indices",
            args.batch,
            wall * args.batch as f64,
            fmt_rate(cpu)
        );
    }
    println!(
        "cache warm, gather_par on {} threads: {par_bps:.1} batches/s of {} wall",
        rayon::current_num_threads(),
        args.batch
    );

    // 3. the seed's path: per sample, scan the tabular table for the survey, read two .pt
    //    files and decode two JPEGs.
    let ds = Dataset::open(&data, DatasetOptions::default())?;
    let table = ds.tabular(Split::Train)?;
    let ids: Vec<u64> = ds
        .surveys(Split::Train)?
        .iter()
        .map(|s| s.survey_id)
        .collect();
    let nf = table.n_features();
    let t0 = Instant::now();
    let c0 = thread_cpu_s();
    for _ in 0..args.baseline_samples {
        let id = ids[rng.below(ids.len())];
        // A full-column scan, as the seed's `df[df.surveyId == id]` boolean mask does.
        let hits: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|&(_, &s)| s == id)
            .map(|(r, _)| r)
            .collect();
        let row = hits.first().map(|&r| &table.values[r * nf..(r + 1) * nf]);
        black_box(row);
        black_box(ds.read_landsat(Split::Train, id)?);
        black_box(ds.read_bioclim(Split::Train, id)?);
        black_box(ds.read_patch(Split::Train, id)?);
    }
    let raw_sps = args.baseline_samples as f64 / t0.elapsed().as_secs_f64();
    let raw_bps = raw_sps / args.batch as f64;
    let raw_cpu_bps = c0.and_then(|c| {
        Some(args.baseline_samples as f64 / args.batch as f64 / (thread_cpu_s()? - c))
    });
    println!(
        "raw files (seed's path): {raw_bps:.2} batches/s of {} wall ({raw_sps:.0} samples/s), {} per CPU-second; 1 thread, {} samples",
        args.batch,
        fmt_rate(raw_cpu_bps),
        args.baseline_samples
    );
    let ratio = cache_bps / raw_bps;
    let verdict = |r: f64| if r >= 50.0 { "met" } else { "NOT met" };
    println!(
        "speed-up warm cache / raw (wall): {ratio:.0}x (target >= 50x: {})",
        verdict(ratio)
    );
    if let (Some(c), Some(r)) = (cache_cpu_bps, raw_cpu_bps) {
        println!(
            "speed-up warm cache / raw (CPU time, insensitive to other load): {:.0}x (target >= 50x: {})",
            c / r,
            verdict(c / r)
        );
    }
    if args.dir.is_some() || args.keep {
        println!(
            "the seed's own Python loader on the same data (needs torch and PIL): python3 crates/geolife-train/benches/torch_seed_bench.py --root {} --loader-only {} --batch-size {}",
            data.display(),
            args.baseline_samples,
            args.batch
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Gathers random batches (`gather` or `gather_par`) for `args.seconds`; returns batches/s (wall, per CPU-second).
fn time_gather(
    split: &PackedSplit,
    args: &Args,
    rng: &mut SplitMix,
    batch: &mut Batch,
    parallel: bool,
) -> (f64, Option<f64>) {
    let n = split.len();
    let mut idx = vec![0usize; args.batch];
    let t0 = Instant::now();
    let c0 = thread_cpu_s();
    let mut batches = 0usize;
    while t0.elapsed().as_secs_f64() < args.seconds || batches < 3 {
        for i in idx.iter_mut() {
            *i = rng.below(n);
        }
        if parallel {
            split.gather_par(&idx, batch);
        } else {
            split.gather(&idx, batch);
        }
        black_box(&*batch);
        batches += 1;
    }
    let wall = batches as f64 / t0.elapsed().as_secs_f64();
    let cpu = c0.and_then(|c| Some(batches as f64 / (thread_cpu_s()? - c)));
    (wall, cpu)
}

/// CPU time of the calling thread in seconds (Linux `schedstat`), if readable.
fn thread_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 * 1e-9)
}

fn fmt_rate(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.2} batches"))
}

/// SplitMix64: a tiny seeded generator for batch indices (no dependency needed here).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
