//! `geolife bench train`: samples/s of full training steps (data loading included) of the seed
//! network (convnext_tiny Sentinel branch at 128x128 by default) on CPU or GPU, and the
//! extrapolated time of one epoch on a 20,000-survey dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use geolife_data::synth::{SynthConfig, write_dataset};
use geolife_train::TrainConfig;
use geolife_train::config::{BackboneKind, DeviceKind, Precision};
use geolife_train::trainer::memory::{BINDING_LIMIT, GpuMemory, gb};
use strum::VariantNames;

#[derive(clap::Args)]
pub struct Args {
    /// A packed cache or dataset root; default: a fresh synthetic dataset in a temp folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Surveys of the generated synthetic dataset.
    #[arg(long, default_value_t = 160)]
    pub surveys: usize,
    /// Sentinel backbone (of the paper preset; ignored with --config).
    #[arg(long, default_value = "convnext_tiny",
          value_parser = crate::commands::named::<BackboneKind>(BackboneKind::VARIANTS))]
    pub backbone: BackboneKind,
    /// A training config (e.g. configs/paper-maxvit-t.toml) to time instead of the paper
    /// preset; --batch-size and --device override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Timed steps (one more runs first as warm-up on the CPU, two on a GPU).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// `flex` (CPU) or `wgpu`.
    #[arg(long, default_value = "flex",
          value_parser = crate::commands::named::<DeviceKind>(DeviceKind::VARIANTS))]
    pub device: DeviceKind,
    /// Products in `f32`, or `f16` / `bf16` with f32 weights (default: the config's
    /// `train.precision`; the paper preset's is f32).
    #[arg(long, value_parser = crate::commands::named::<Precision>(Precision::VARIANTS))]
    pub precision: Option<Precision>,
    /// On a GPU, bound the memory of this batch size from the measured one (default: the
    /// config's `train.batch_size` when it is larger than --batch-size).
    #[arg(long)]
    pub memory_at: Option<usize>,
    /// Surveys of the epoch whose duration is extrapolated.
    #[arg(long, default_value_t = 20_000)]
    pub epoch_surveys: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
    let tmp = std::env::temp_dir().join(format!("geolife-bench-train-{}", std::process::id()));
    let result = bench(&args, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn bench(args: &Args, tmp: &std::path::Path) -> anyhow::Result<ExitCode> {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => {
            let root = tmp.join("data");
            let cfg = SynthConfig {
                train_surveys: args.surveys.max(args.batch_size),
                test_surveys: 8,
                seed: 666,
                ..SynthConfig::default()
            };
            cfg.validate()?;
            write_dataset(&root, &cfg)?;
            root
        }
    };
    let cache = geolife_train::data::resolve_cache(&data, &tmp.join("cache"))?;
    let mut cfg = match &args.config {
        Some(path) => TrainConfig::load(path)?,
        None => TrainConfig::paper(args.backbone),
    };
    let config_batch = cfg.train.batch_size;
    cfg.train.batch_size = args.batch_size;
    cfg.train.device = args.device;
    if let Some(p) = args.precision {
        cfg.train.precision = p;
    }
    geolife_train::location::resolve_po_file(&mut cfg, &data);
    cfg.validate(std::path::Path::new("<bench>"))?;
    let r = geolife_train::trainer::bench_steps(&cfg, &cache, args.steps)?;
    let epoch_s = args.epoch_surveys as f64 / r.samples_per_s;
    println!(
        "{} ({} Sentinel, {:.1} M parameters), batch {}, device {}, precision {}, {} threads available",
        args.config
            .as_ref()
            .map_or("seed network".to_string(), |p| p.display().to_string()),
        cfg.model.backbone.name(),
        r.num_params as f64 / 1e6,
        r.batch_size,
        <&str>::from(args.device),
        <&str>::from(cfg.train.precision),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:.2} samples/s over {} timed full training steps ({:.2} s/step, data loading and mixup included)",
        r.samples_per_s, r.steps, r.mean_step_s
    );
    let fmt = |v: &[f32]| {
        v.iter()
            .map(|l| format!("{l:.4}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("losses (all finite): {}", fmt(&r.losses));
    if r.skipped > 0 {
        println!(
            "{} of {} steps (warm-up included) overflowed in f16 and skipped their AdamW update \
             (the loss scale halves each time, as PyTorch's GradScaler does): the figures lack \
             that update's time and, before a first update, AdamW's moments; lower \
             `train.loss_scale` in the config or time more steps",
            r.skipped,
            r.losses.len()
        );
    }
    let st = r.step_times;
    let total = r.mean_step_s * r.steps as f64;
    let share = |v: f64| 100.0 * v / total.max(1e-9);
    println!(
        "per step: forward {:.2}s ({:.0}%), backward {:.2}s ({:.0}%), optimizer {:.2}s ({:.0}%), loader wait and other {:.2}s ({:.0}%)",
        st.forward_s / r.steps as f64,
        share(st.forward_s),
        st.backward_s / r.steps as f64,
        share(st.backward_s),
        st.optimizer_s / r.steps as f64,
        share(st.optimizer_s),
        (total - st.forward_s - st.backward_s - st.optimizer_s).max(0.0) / r.steps as f64,
        share((total - st.forward_s - st.backward_s - st.optimizer_s).max(0.0)),
    );
    if let Some(l) = &r.launches {
        println!(
            "kernel launches: {:.0} per step ({} over {} timed steps; hardware-independent: \
             fewer is faster on any GPU)",
            l.total as f64 / r.steps.max(1) as f64,
            l.total,
            r.steps
        );
        let top: Vec<String> = l
            .top(8)
            .into_iter()
            .map(|(k, c)| format!("{:.0} {k}", c as f64 / r.steps.max(1) as f64))
            .collect();
        println!("most launched, per step: {}", top.join(", "));
    }
    if let Some(m) = &r.memory {
        let limit = geolife_train::trainer::device::binding_limit(args.device);
        for line in memory_lines(
            m,
            limit,
            r.batch_size,
            args.memory_at.or(Some(config_batch)),
        ) {
            println!("{line}");
        }
    }
    println!(
        "one epoch of {} surveys: ~{:.1} min (extrapolated from the timed steps)",
        args.epoch_surveys,
        epoch_s / 60.0
    );
    if let Some(d) = args
        .data
        .as_ref()
        .filter(|d| !geolife_train::data::is_cache(d))
    {
        println!(
            "the same network and recipe in PyTorch, reading the dataset root the seed's way (needs torch, torchvision, PIL): \
             python3 crates/geolife-train/benches/torch_seed_bench.py --root {} --steps {} --batch-size {} --workers 2",
            d.display(),
            args.steps + 1,
            args.batch_size
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The allocator's figures after steps at batch `batch` on a device that binds at most `limit`
/// bytes per buffer, and their bounds at batch `at` when it is larger.
fn memory_lines(m: &GpuMemory, limit: Option<u64>, batch: usize, at: Option<usize>) -> Vec<String> {
    let device = match limit {
        Some(l) if l < BINDING_LIMIT => format!(
            "this device binds at most {}, so autotuning dropped any kernel whose workspace \
             needed more; a GPU binds {}",
            gb(l),
            gb(BINDING_LIMIT)
        ),
        _ => format!("a wgpu binding holds at most {}", gb(BINDING_LIMIT)),
    };
    let mut lines = vec![format!(
        "GPU memory: peak {} reserved ({} in use after the step: weights and optimiser state), \
         largest buffer {} ({device})",
        gb(m.peak()),
        gb(m.in_use),
        gb(m.largest_alloc),
    )];
    if let Some(to) = at.filter(|&to| to > batch) {
        let (largest, peak) = m.bounds_at(batch, to);
        lines.push(format!(
            "at batch {to}, bounded from batch {batch} with the same kernels (every buffer \
             scaled by {to}/{batch}, the memory in use after the step kept): largest buffer at \
             most {}{}, peak at most {}; where a device binds more, autotuning may pick kernels \
             with larger workspaces, each within its limit",
            gb(largest),
            match largest <= BINDING_LIMIT {
                true => " (fits a binding)",
                false => {
                    " (over a binding if the same kernels ran; autotuning drops a kernel whose \
                     workspace cannot be allocated, a tensor that large fails: measure closer \
                     to that batch)"
                }
            },
            gb(peak)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 MB of buffers at most and 1.2 GB at peak (0.4 GB of it kept) at batch 8: at batch
    /// 256 (32x) the bounds are 1.28 GB (fits) and 0.4 + 0.8 * 32 = 26 GB; at 512, 2.56 GB
    /// exceeds a binding.
    #[test]
    fn memory_lines_bound_a_larger_batch_only() {
        let m = GpuMemory {
            largest_alloc: 40_000_000,
            dynamic_peak: 1_000_000_000,
            dynamic_now: 300_000_000,
            reserved: 500_000_000,
            in_use: 400_000_000,
        };
        let at = |to| memory_lines(&m, None, 8, to);
        assert_eq!(at(None).len(), 1);
        assert_eq!(at(Some(8)).len(), 1);
        assert!(at(None)[0].contains("peak 1.20 GB"), "{:?}", at(None));
        assert!(
            at(None)[0].contains("largest buffer 40.0 MB"),
            "{:?}",
            at(None)
        );
        let l = at(Some(256));
        assert!(l[1].contains("at most 1.28 GB (fits a binding)"), "{l:?}");
        assert!(l[1].contains("peak at most 26.00 GB"), "{l:?}");
        assert!(at(Some(512))[1].contains("over a binding if the same kernels ran"));
        // llvmpipe binds 128 MiB per buffer: the line says so.
        let llvmpipe = memory_lines(&m, Some(1 << 27), 8, None);
        assert!(
            llvmpipe[0].contains("binds at most 134.2 MB"),
            "{llvmpipe:?}"
        );
        assert!(!at(None)[0].contains("this device binds"), "{:?}", at(None));
    }
}
