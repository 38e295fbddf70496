//! burn's `wgpu` backend really executes (on a GPU, or in CI on Mesa's software Vulkan device,
//! llvmpipe) and computes what the `flex` CPU backend computes: the fusion forward with the
//! same weights, a short training run from the same initial weights, `predict`'s score files
//! and AdamW over 5 steps (also with f16 gradients unscaled inside it, which adds no kernel).
//! `make_device(DeviceKind::Wgpu)` names the adapter it ran on. Also
//! the GPU build's speed and capacity without a GPU: kernel launches per training step (bounded,
//! so a build without operation fusion fails) and a linear layer whose batched weight gradient
//! would need a 2 GiB buffer. The first run on a machine autotunes its kernels (minutes on
//! llvmpipe); later runs read the choices from cubecl's cache.
//!
//! Run with `cargo test -p geolife-train --features wgpu --test wgpu_path`. Without a Vulkan
//! (or other wgpu) adapter every test FAILS, saying so: CI installs `mesa-vulkan-drivers`.
//!
//! The two backends sum in different orders (tiled matmul and convolution kernels, tree
//! reductions) and the shader `exp` is not bit-identical to Rust's, so float32 results agree
//! to about 1e-6 relative, not bit for bit; the tolerances below are stated with what was
//! measured.
#![cfg(feature = "wgpu")]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{Device, Tensor, TensorData};
use geolife_data::Split;
use geolife_data::cache::PackedSplit;
use geolife_data::synth::{SynthConfig, write_dataset};
use geolife_metrics::{ScoreFile, Scores};
use geolife_model::fusion::{FusionConfig, FusionInput};
use geolife_train::config::SplitKind;
use geolife_train::config::{DeviceKind, Precision};
use geolife_train::predict::{PredictOptions, predict};
use geolife_train::trainer::launches::LaunchWatch;
use geolife_train::trainer::{batch_shapes, files, fusion_config, make_device};
use geolife_train::vocab::Vocabulary;
use geolife_train::{Progress, TrainConfig, TrainOptions, TrainSummary, train};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

// Tolerances. Measured on llvmpipe (Mesa 22.3.6, Vulkan): forward 7.3e-7 relative,
// losses 2e-8 (train) and 4e-8 (validation), scores 1.8e-7 (same checkpoint) and 3.6e-7
// (wgpu- vs flex-trained checkpoints). The bounds leave two to three orders of magnitude for
// GPUs, whose autotuned matmul / convolution kernels sum in yet other orders, while still
// catching a wrong kernel or a misread weight.

/// Fusion forward (inference) logits, wgpu vs flex, same weights and inputs: largest absolute
/// difference over the largest absolute logit.
const FORWARD_REL_TOL: f64 = 1e-4;
/// Per-epoch train and validation BCE loss (about 0.65) of the same 3-step run on both devices.
const LOSS_ABS_TOL: f64 = 1e-4;
/// Sigmoid scores (probabilities) of one checkpoint predicted on both devices.
const SCORE_ABS_TOL: f32 = 1e-4;
/// Sigmoid scores of the two runs' (wgpu-trained vs flex-trained) best checkpoints: three
/// AdamW steps can amplify a difference (a near-zero gradient whose sign differs moves a
/// weight by the full learning rate), hence 10x the single-checkpoint bound.
const TRAINED_SCORE_ABS_TOL: f32 = 1e-3;
/// Losses of the f16 run on wgpu against the f32 run on flex (same weights, three steps).
const HALF_LOSS_ABS_TOL: f64 = 1e-2;
/// Scores of the f16-trained against the f32-trained checkpoint, both predicted in f32.
const HALF_SCORE_ABS_TOL: f32 = 2e-2;
/// Kernel launches per training step of the tiny recipe at batch 8, measured on llvmpipe:
/// 4,267 without burn's operation fusion, 1,336 with it, 645 with the GPU norm kernels
/// (`norm_gpu.rs`) and the ResNets channels-last, 584 with the channels-last convolutions'
/// one-kernel patch matrix (`conv_gpu.rs`; issue 21). The bound leaves room for other
/// autotuned kernel choices and fails a build that has lost fusion or these kernels.
const MAX_LAUNCHES_PER_STEP: f64 = 800.0;
/// The same in f16: 796 measured (1,837 before the norm kernels, 1,396 with them and the
/// overflow check as a sum per gradient, 1,278 before the running statistics moved into the
/// BatchNorm kernel, 1,112 with the overflow check as one kernel per gradient instead of one
/// per 8, 985 before `conv_gpu.rs`, 876 before the norm kernels read and wrote f16
/// activations); the f16 step adds casts and the overflow check. A bound of its own: the f16
/// additions are a fixed cost, so a ratio to the f32 step would tighten whenever the f32 step
/// got cheaper.
const MAX_HALF_LAUNCHES_PER_STEP: f64 = 1000.0;
/// Kernel launches per AdamW step of one parameter tensor: burn's AdamW unfused runs about 15
/// element-wise kernels; fused, 5 steps ran as 2 kernels on llvmpipe.
const MAX_ADAMW_LAUNCHES: usize = 2;

/// Kernel launches of one BatchNorm (+ ReLU) or LayerNorm, forward and backward, with the GPU
/// build's kernels: one forward and one (LayerNorm two) backward, plus the layout copies and
/// the loss (a sum) and its gradient: 8 and 8 measured on llvmpipe, where burn's layers
/// launched 26 (BatchNorm + ReLU) and 30 (LayerNorm).
const MAX_NORM_LAUNCHES: usize = 10;

/// The flex backend keeps one process-wide RNG and llvmpipe is slow: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The wgpu device and the adapter line `make_device` logged for it, or a failure that says
/// why there is none. On Linux the device must be a Vulkan one: without a Vulkan driver wgpu
/// falls back to OpenGL (Mesa's GL llvmpipe), which is not the path CI means to test.
fn wgpu_logged() -> (Device, String) {
    let capture = Capture::default();
    let device =
        tracing::subscriber::with_default(capture.clone(), || make_device(DeviceKind::Wgpu))
            .unwrap_or_else(|e| {
                panic!(
                    "the wgpu backend has no adapter on this machine: {e}\n\
                 These tests must run on a GPU or a software Vulkan device; on Debian/Ubuntu \
                 install one with `apt-get install mesa-vulkan-drivers` (llvmpipe)."
                )
            });
    let lines = capture.0.lock().unwrap().clone();
    let line = lines
        .iter()
        .find(|l| l.contains("device wgpu: adapter"))
        .unwrap_or_else(|| panic!("make_device(\"wgpu\") logged no adapter: {lines:?}"))
        .clone();
    if cfg!(target_os = "linux") {
        assert!(
            line.contains("(Vulkan,"),
            "wgpu did not come up on Vulkan ({line}): this machine has no Vulkan device; on \
             Debian/Ubuntu install one with `apt-get install mesa-vulkan-drivers` (llvmpipe)"
        );
    }
    (device, line)
}

fn wgpu() -> Device {
    wgpu_logged().0
}

/// Packed cache of a synthetic dataset, built once per test binary: tens of surveys.
fn cache() -> &'static PathBuf {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let data = dir.join("data");
        let cfg = SynthConfig {
            train_surveys: 48,
            test_surveys: 16,
            species: 12,
            seed: 5,
            mean_species_per_survey: 3.0,
            surveys_per_cluster: 8,
            ..SynthConfig::default()
        };
        write_dataset(&data, &cfg).unwrap();
        geolife_train::data::resolve_cache(&data, &dir.join("cache")).unwrap()
    })
}

/// The tiny recipe, made deterministic across devices: no dropout (each backend draws its own
/// masks) and no mixup; 1 epoch of 3 batches of 8, random validation split.
fn config() -> TrainConfig {
    let mut c = TrainConfig::tiny();
    c.model.dropout = 0.0;
    c.train.epochs = 1;
    c.train.batch_size = 8;
    c.train.max_batches_per_epoch = 3;
    c.train.mixup_prob = 0.0;
    c.train.workers = 1;
    c.validation.split = SplitKind::Random;
    c.validation.fraction = 0.25;
    c
}

/// The fusion config of [`config`] on the fixture, and a checkpoint of weights initialised on
/// flex: both devices start from these (each backend's RNG would initialise differently).
fn initial() -> &'static (FusionConfig, PathBuf) {
    static I: OnceLock<(FusionConfig, PathBuf)> = OnceLock::new();
    I.get_or_init(|| {
        let data = PackedSplit::open(cache(), Split::Train).unwrap();
        let m = data.manifest();
        let cfg = config();
        let vocab = Vocabulary::new(cfg.data.vocabulary, &m.species, cfg.data.full_size);
        let fc = fusion_config(&cfg, m, vocab.len()).unwrap();
        let device = Device::flex();
        device.seed(3);
        let model = fc.try_init(&device).unwrap();
        let path = cache()
            .parent()
            .unwrap()
            .join("initial_weights.safetensors");
        geolife_model::checkpoint::save_safetensors(&model, &fc, &path).unwrap();
        (fc, path)
    })
}

/// Largest absolute difference of two equally long slices.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn dense(s: &ScoreFile) -> &[f32] {
    match &s.scores {
        Scores::Dense { data } => data,
        other => panic!("dense scores expected, got {other:?}"),
    }
}

/// Records every `tracing` event of this crate (message and fields) while installed.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                let _ = write!(self.0, "{}={v:?} ", f.name());
            }
        }
        if event.metadata().target().starts_with("geolife_train") {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn make_device_wgpu_logs_the_adapter_it_runs_on() {
    let _guard = serial();
    let (device, line) = wgpu_logged();
    println!("wgpu adapter: {line}");
    // The logged name is the one the runtime reports for the device it runs on.
    let name = device
        .identity()
        .expect("a wgpu device reports its identity")
        .name;
    assert!(!name.is_empty());
    assert!(line.contains(&name), "{line} does not name {name}");
    // It really executes: a small computation reads back right.
    let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
    let y: Vec<f32> = (x.clone() * x)
        .sum()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(y, vec![14.0]);
}

#[test]
fn fusion_forward_on_wgpu_equals_flex_with_the_same_weights() {
    let _guard = serial();
    let wgpu = wgpu();
    let (fc, weights) = initial();
    let m = PackedSplit::open(cache(), Split::Train)
        .unwrap()
        .manifest()
        .clone();
    let n = 6;
    let (ts, ls, bs, ss) = batch_shapes(fc, [m.patch_shape[1], m.patch_shape[2]], n);
    let mut rng = StdRng::seed_from_u64(9);
    let mut normal = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect::<Vec<f32>>()
    };
    let (t, l, b, s) = (
        normal(ts.iter().product()),
        normal(ls.iter().product()),
        normal(bs.iter().product()),
        normal(ss.iter().product()),
    );
    let logits = |device: &Device| -> Vec<f32> {
        let (model, _) = geolife_model::checkpoint::load_safetensors(fc, weights, device).unwrap();
        let input = FusionInput {
            tabular: Tensor::<2>::from_data(TensorData::new(t.clone(), ts), device),
            landsat: Tensor::<4>::from_data(TensorData::new(l.clone(), ls), device),
            bioclim: Tensor::<4>::from_data(TensorData::new(b.clone(), bs), device),
            sentinel: Tensor::<4>::from_data(TensorData::new(s.clone(), ss), device),
            prior: None,
        };
        model
            .forward(input)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let on_flex = logits(&Device::flex());
    let on_wgpu = logits(&wgpu);
    assert_eq!(on_flex.len(), n * fc.num_classes);
    assert!(on_wgpu.iter().all(|v| v.is_finite()), "{on_wgpu:?}");
    let scale = on_flex.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let diff = max_abs_diff(&on_flex, &on_wgpu);
    let rel = f64::from(diff) / f64::from(scale.max(1e-12));
    println!(
        "forward: {} logits, max |flex| {scale:.4e}, max |wgpu - flex| {diff:.3e}, relative {rel:.3e}",
        on_flex.len()
    );
    assert!(
        rel <= FORWARD_REL_TOL,
        "wgpu forward differs from flex: max abs diff {diff:e}, relative {rel:e} > {FORWARD_REL_TOL:e}"
    );
}

/// One run of [`config`] from the shared initial weights on `device`.
fn run_on(device: &str, run: &Path) -> TrainSummary {
    run_in(device, Precision::F32, run)
}

/// [`run_on`] with the products in `precision`.
fn run_in(device: &str, precision: Precision, run: &Path) -> TrainSummary {
    let mut cfg = config();
    cfg.train.device = device.parse().unwrap();
    cfg.train.precision = precision;
    cfg.model.weights = Some(initial().1.clone());
    let started = std::time::Instant::now();
    let summary = train(&TrainOptions {
        config: cfg,
        cache: cache().clone(),
        run_dir: run.to_path_buf(),
        resume: false,
        progress: Progress::Quiet,
        stop_after_batches: None,
    })
    .unwrap_or_else(|e| panic!("training on {device} failed: {e}"));
    println!(
        "train on {device}: {:.1}s, {:?}",
        started.elapsed().as_secs_f64(),
        summary.history
    );
    assert!(summary.finished);
    summary
}

/// The same short run on flex and on wgpu (run folders), trained once per test binary.
fn runs() -> &'static (PathBuf, TrainSummary, PathBuf, TrainSummary) {
    static R: OnceLock<(PathBuf, TrainSummary, PathBuf, TrainSummary)> = OnceLock::new();
    R.get_or_init(|| {
        let _ = wgpu();
        let dir = tempfile::tempdir().unwrap().keep();
        let (flex_run, wgpu_run) = (dir.join("flex"), dir.join("wgpu"));
        let a = run_on("flex", &flex_run);
        let b = run_on("wgpu", &wgpu_run);
        (flex_run, a, wgpu_run, b)
    })
}

/// `predict` over the test split of the fixture for `run`, on `device` (the run's config with
/// `train.device` replaced, passed as `--config`).
fn predict_on(run: &Path, device: &str) -> ScoreFile {
    let mut cfg = TrainConfig::load(&run.join(files::CONFIG)).unwrap();
    cfg.train.device = device.parse().unwrap();
    let config = run.join(format!("predict-{device}.toml"));
    std::fs::write(&config, cfg.to_toml_string().unwrap()).unwrap();
    predict(&PredictOptions {
        run_dir: Some(run.to_path_buf()),
        weights: None,
        config: Some(config),
        cache: cache().clone(),
        split: Split::Test,
        batch_size: 8,
        workers: 1,
        device: None,
        precision: None,
    })
    .unwrap_or_else(|e| panic!("predict on {device} failed: {e}"))
}

#[test]
fn training_on_wgpu_matches_flex_step_by_step() {
    let _guard = serial();
    let (flex_run, a, wgpu_run, b) = runs();
    // A GPU run says in its log what autotuning did in each epoch; a CPU run has nothing to say.
    let log = |run: &Path| std::fs::read_to_string(run.join(files::LOG)).unwrap();
    let (wgpu_log, flex_log) = (log(wgpu_run), log(flex_run));
    let line = wgpu_log
        .lines()
        .find(|l| l.starts_with("autotune in epoch 1: "))
        .unwrap_or_else(|| panic!("no autotune line in the wgpu run's log:\n{wgpu_log}"));
    println!("{line}");
    assert!(line.contains("kernel choices tuned"), "{line}");
    assert!(!flex_log.contains("autotune"), "{flex_log}");
    // And what the GPU's allocator held, every epoch; the CPU has no such allocator.
    for e in 1..=b.history.len() {
        let head = format!("GPU memory after epoch {e}: peak so far ");
        assert!(
            wgpu_log
                .lines()
                .any(|l| l.starts_with(&head) && l.contains("largest buffer")),
            "no `{head}` line in the wgpu run's log:\n{wgpu_log}"
        );
    }
    assert!(!flex_log.contains("GPU memory"), "{flex_log}");
    assert_eq!(a.history.len(), b.history.len());
    for (x, y) in a.history.iter().zip(&b.history) {
        let (dt, dv) = (
            (x.train_loss - y.train_loss).abs(),
            (x.val_loss - y.val_loss).abs(),
        );
        println!(
            "epoch {}: train loss flex {:.7} wgpu {:.7} (diff {dt:.2e}), val loss flex {:.7} wgpu {:.7} (diff {dv:.2e}), best K {} / {}",
            x.epoch, x.train_loss, y.train_loss, x.val_loss, y.val_loss, x.best_k, y.best_k
        );
        assert!(dt <= LOSS_ABS_TOL, "train loss: {x:?} vs {y:?}");
        assert!(dv <= LOSS_ABS_TOL, "val loss: {x:?} vs {y:?}");
        assert!((x.lr - y.lr).abs() < 1e-12, "{x:?} vs {y:?}");
    }
    // metrics.csv: same rows, every loss column within tolerance (the time column differs).
    let rows = |run: &Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(run.join(files::METRICS))
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let (ra, rb) = (rows(flex_run), rows(wgpu_run));
    assert_eq!(ra.len(), rb.len());
    assert_eq!(ra[0], rb[0]);
    for (x, y) in ra.iter().zip(&rb).skip(1) {
        for col in [1, 2] {
            let (p, q): (f64, f64) = (x[col].parse().unwrap(), y[col].parse().unwrap());
            assert!(
                (p - q).abs() <= LOSS_ABS_TOL,
                "metrics.csv column {} differs: {x:?} vs {y:?}",
                ra[0][col]
            );
        }
    }
    // The two trained checkpoints predict alike (their weights drifted apart by 3 steps).
    let (sa, sb) = (predict_on(flex_run, "flex"), predict_on(wgpu_run, "flex"));
    assert_eq!(sa.survey_ids, sb.survey_ids);
    let d = max_abs_diff(dense(&sa), dense(&sb));
    println!(
        "test scores of the flex-trained vs the wgpu-trained checkpoint (both on flex): max abs diff {d:.3e}"
    );
    assert!(d <= TRAINED_SCORE_ABS_TOL, "{d:e}");
}

#[test]
fn the_wgpu_runs_checkpoints_load_on_flex_and_predict_the_same_scores() {
    let _guard = serial();
    let (_, _, wgpu_run, _) = runs();
    let on_wgpu = predict_on(wgpu_run, "wgpu");
    let on_flex = predict_on(wgpu_run, "flex");
    assert_eq!(on_wgpu.survey_ids, on_flex.survey_ids);
    assert_eq!(on_wgpu.species, on_flex.species);
    let d = max_abs_diff(dense(&on_wgpu), dense(&on_flex));
    println!("wgpu-trained best checkpoint, test scores wgpu vs flex: max abs diff {d:.3e}");
    assert!(
        d <= SCORE_ABS_TOL,
        "scores differ by {d:e} > {SCORE_ABS_TOL:e}"
    );
    // The resumable checkpoint written on wgpu reads back, and its weights load on flex.
    let last = geolife_train::checkpoint::load(&wgpu_run.join(files::LAST)).unwrap();
    assert_eq!(last.state.epoch, 1);
    let tmp = wgpu_run.join("last-weights.safetensors");
    std::fs::write(&tmp, last.weights).unwrap();
    let fc = geolife_model::checkpoint::read_config(&tmp).unwrap();
    geolife_model::checkpoint::load_safetensors(&fc, &tmp, &Device::flex()).unwrap();
}

#[test]
fn predict_on_wgpu_writes_the_same_score_file_as_flex() {
    let _guard = serial();
    let (flex_run, _, _, _) = runs();
    let out = flex_run.join("scores");
    std::fs::create_dir_all(&out).unwrap();
    let mut files = Vec::new();
    for device in ["flex", "wgpu"] {
        let path = out.join(format!("test_{device}.safetensors"));
        predict_on(flex_run, device).write(&path).unwrap();
        files.push(ScoreFile::read(&path).unwrap());
    }
    let (f, w) = (&files[0], &files[1]);
    assert_eq!(
        (&f.model, &f.split, &f.survey_ids, &f.species),
        (&w.model, &w.split, &w.survey_ids, &w.species)
    );
    assert_eq!(f.survey_ids.len(), fixture_test_len());
    let d = max_abs_diff(dense(f), dense(w));
    println!(
        "predict score files, wgpu vs flex: {} scores, max abs diff {d:.3e}",
        dense(f).len()
    );
    assert!(
        d <= SCORE_ABS_TOL,
        "score files differ by {d:e} > {SCORE_ABS_TOL:e}"
    );
}

fn fixture_test_len() -> usize {
    PackedSplit::open(cache(), Split::Test).unwrap().len()
}

/// Kernel launches per training step of the recipe of [`config`] (the tiny fusion network,
/// `smoke_convnext` Sentinel branch, batch 8, AdamW): the hardware-independent speed figure of
/// the GPU build, printed in CI's log. Every launch costs host and device time whatever it
/// computes, so a build that loses burn's operation fusion (the `burn/fusion` feature) runs
/// several times more kernels per step and fails here. Measured on llvmpipe (issue 21):
/// 4,267 per step without fusion, 645 with it and the norm kernels. The same step in f16 has
/// a bound of its own. (`geolife bench train --device wgpu` prints the same figure for any config; the
/// README has the seed network's.)
#[test]
fn a_training_step_launches_few_kernels() {
    let _guard = serial();
    let _ = wgpu();
    let mut cfg = config();
    cfg.train.device = DeviceKind::Wgpu;
    let r = geolife_train::trainer::bench_steps(&cfg, cache(), 2).unwrap();
    let l = r.launches.expect("a wgpu bench counts launches");
    let per_step = l.total as f64 / r.steps as f64;
    println!(
        "tiny recipe (smoke_convnext), batch 8, wgpu: {per_step:.0} kernel launches per \
         training step ({} over {} steps); most launched: {:?}",
        l.total,
        r.steps,
        l.top(10)
    );
    assert!(r.losses.iter().all(|v| v.is_finite()), "{:?}", r.losses);
    assert!(
        per_step <= MAX_LAUNCHES_PER_STEP,
        "{per_step:.0} kernel launches per training step, more than {MAX_LAUNCHES_PER_STEP}: \
         has the wgpu build lost operation fusion (burn's `fusion` feature)?"
    );
    assert!(
        per_step >= 50.0,
        "{per_step} launches per step: is anything counted?"
    );
    // The allocator's figures (`bench train` prints them): after the steps the model's
    // weights and AdamW's two moments stay in use, f32 each (12 bytes per parameter, counted
    // from the model, not from the allocator); at the peak, inside a step, the gradients were
    // live beside them (4 more). Earlier tests in this process only raise these figures.
    let m = r.memory.expect("a wgpu bench reads the GPU allocator");
    let p = r.num_params as u64;
    println!(
        "tiny recipe, batch 8: {p} parameters; GPU memory in use after the steps {} B, peak \
         {} B, largest buffer {} B",
        m.in_use,
        m.peak(),
        m.largest_alloc
    );
    assert!(m.in_use >= 12 * p, "{m:?} for {p} parameters");
    assert!(
        m.peak() >= 16 * p && m.peak() >= m.in_use,
        "{m:?} for {p} parameters"
    );
    assert!(m.largest_alloc > 0 && m.largest_alloc <= m.peak(), "{m:?}");
    // No buffer is larger than the device binds: Mesa's llvmpipe 2^27 bytes (`vulkaninfo`:
    // maxStorageBufferRange = 134217728), a GPU 2^31 - 1 in the wgpu build.
    let limit = geolife_train::trainer::device::binding_limit(DeviceKind::Wgpu)
        .expect("make_device read the wgpu device's limits");
    assert!(m.largest_alloc <= limit, "{m:?}, limit {limit}");
    assert!((1 << 27..1 << 31).contains(&limit), "binding limit {limit}");
    // Mixed precision adds casts and the overflow check (one reduction per parameter tensor);
    // the division by the loss scale runs inside each tensor's AdamW kernel, adding none.
    cfg.train.precision = Precision::F16;
    let h = geolife_train::trainer::bench_steps(&cfg, cache(), 2).unwrap();
    let lh = h.launches.expect("a wgpu bench counts launches");
    let half_per_step = lh.total as f64 / h.steps as f64;
    println!(
        "tiny recipe, f16: {half_per_step:.0} kernel launches per training step ({:.2}x f32's); \
         most launched: {:?}",
        half_per_step / per_step,
        lh.top(10)
    );
    assert!(h.losses.iter().all(|v| v.is_finite()), "{:?}", h.losses);
    assert!(
        half_per_step <= MAX_HALF_LAUNCHES_PER_STEP,
        "an f16 step launched {half_per_step:.0} kernels, more than \
         {MAX_HALF_LAUNCHES_PER_STEP}: has the f16 step lost operation fusion or the norm \
         kernels?"
    );
}

/// The GPU's AdamW (burn's, with burn's operation fusion merging its element-wise operations
/// into a few kernels per parameter tensor) equals AdamW on flex (the CPU's fused loop) over 5
/// steps from the same parameters and gradients: parameters and both moments, to float32
/// rounding. The state is burn's `AdamWState` on both, so `last.ckpt` resumes on either.
/// (`unscaling_f16_gradients_adds_no_kernels_to_adamw` checks a mixed-precision step's AdamW
/// against this one.)
#[test]
fn adamw_on_wgpu_equals_adamw_on_flex_over_five_steps() {
    use burn::optim::Optimizer;
    let _guard = serial();
    let wgpu = wgpu();
    let o = geolife_train::config::OptimSection::default();
    let shape = [37, 53];
    let n = shape[0] * shape[1];
    let mut rng = StdRng::seed_from_u64(21);
    let mut draw = |scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                scale * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)
            })
            .collect()
    };
    let start = draw(0.1);
    let grads: Vec<Vec<f32>> = (0..5).map(|k| draw(10f32.powi(-k))).collect();
    let run = |device: &Device, fused: bool| {
        let t = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), device);
        let cpu = geolife_model::kernels::FusedAdamW::new(
            o.beta1 as f32,
            o.beta2 as f32,
            o.epsilon as f32,
            o.weight_decay as f32,
        );
        let gpu = geolife_train::trainer::adamw(&o).build();
        let (mut p, mut state) = (t(&start), None);
        let gs: Vec<Tensor<2>> = grads.iter().map(|g| t(g)).collect();
        device.sync().unwrap();
        let watch = LaunchWatch::start();
        for (k, g) in gs.into_iter().enumerate() {
            let lr = 8e-4 * (k + 1) as f64;
            (p, state) = match fused {
                true => cpu.step(lr, p, g, state),
                false => gpu.step(lr, p, g, state),
            };
        }
        device.sync().unwrap();
        let launches = watch.finish();
        if !fused {
            println!(
                "AdamW on wgpu: {} kernel launches over 5 steps of one parameter tensor: {:?}",
                launches.total,
                launches.top(8)
            );
            assert!(
                launches.total <= 5 * MAX_ADAMW_LAUNCHES,
                "{} launches for 5 AdamW steps of one tensor: more than {MAX_ADAMW_LAUNCHES} \
                 per step (burn's AdamW unfused runs about 15): is operation fusion off?",
                launches.total
            );
        }
        let s = state.expect("AdamW keeps a state");
        let v = |x: Tensor<2>| x.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(s.momentum.time, 5);
        [v(p), v(s.momentum.moment_1), v(s.momentum.moment_2)]
    };
    let on_flex = run(&Device::flex(), true);
    let on_wgpu = run(&wgpu, false);
    for (what, (a, b)) in ["parameters", "first moment", "second moment"]
        .iter()
        .zip(on_flex.iter().zip(&on_wgpu))
    {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = max_abs_diff(a, b);
        println!(
            "AdamW, 5 steps, wgpu vs flex: {what}: max abs diff {d:.3e} (max |value| {scale:.3e})"
        );
        assert!(
            d <= 1e-6 * scale.max(1e-12),
            "{what}: {d:e} against {scale:e}"
        );
    }
    // The parameters moved: the comparison is not of two untouched copies.
    assert!(max_abs_diff(&on_flex[0], &start) > 1e-3);
}

/// The division of an f16 step's gradients by the loss scale adds no kernel to AdamW on wgpu:
/// the run's optimiser divides each gradient inside that tensor's update, where fusion merges
/// it into the update's kernel. Three parameter tensors of different shapes, 5 steps, each
/// with the overflow check's read-back between the gradients and the update, as a training
/// step has it: as many launches as the same steps on unscaled gradients. Dividing the
/// gradients before the check (as the first unscaling pass did) makes each division run
/// before the read-back, apart from the update: more launches, the count this test tells
/// apart. The parameters come out the same all three ways.
#[test]
fn unscaling_f16_gradients_adds_no_kernels_to_adamw() {
    use burn::module::{Param, ParamId};
    use burn::optim::GradientsParams;
    let _guard = serial();
    let wgpu = wgpu();
    let train = wgpu.clone().autodiff();
    let o = geolife_train::config::OptimSection::default();
    let shapes = [[37, 53], [11, 7], [64, 3]];
    let mut rng = StdRng::seed_from_u64(22);
    let mut draw = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                scale * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)
            })
            .collect()
    };
    let starts: Vec<Vec<f32>> = shapes.iter().map(|s| draw(s[0] * s[1], 0.1)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..5)
        .map(|k| {
            shapes
                .iter()
                .map(|s| draw(s[0] * s[1], 10f32.powi(-k)))
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Way {
        Unscaled,
        Inside,
        Before,
    }
    // 2^10: scaling by a power of two and dividing again gives the same values exactly.
    let scale = 1024f32;
    let run = |way: Way| {
        let (mut optim, unscale) = geolife_train::trainer::optimizer(&o, DeviceKind::Wgpu);
        let ids: Vec<ParamId> = shapes.iter().map(|_| ParamId::new()).collect();
        let t = |v: &[f32], s: [usize; 2], d: &Device| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), s), d)
        };
        let mut params: Vec<Param<Tensor<2>>> = ids
            .iter()
            .zip(&starts)
            .zip(shapes)
            .map(|((id, v), s)| Param::initialized(*id, t(v, s, &train)))
            .collect();
        let factor = if way == Way::Unscaled { 1.0 } else { scale };
        let gs: Vec<Vec<Tensor<2>>> = grads
            .iter()
            .map(|step| {
                step.iter()
                    .zip(shapes)
                    .map(|(g, s)| t(&g.iter().map(|v| v * factor).collect::<Vec<_>>(), s, &wgpu))
                    .collect()
            })
            .collect();
        wgpu.sync().unwrap();
        let watch = LaunchWatch::start();
        for (k, step) in gs.into_iter().enumerate() {
            let mut gp = GradientsParams::new();
            let mut sums = Vec::new();
            for (id, g) in ids.iter().zip(step) {
                let g = match way {
                    Way::Before => g.mul_scalar(1.0 / scale),
                    _ => g,
                };
                sums.push(g.clone().sum());
                gp.register(*id, g);
            }
            // The overflow check between the gradients and the update: one value read back.
            let total: f32 = Tensor::cat(sums, 0).sum().into_scalar();
            assert!(total.is_finite());
            if way == Way::Inside {
                unscale.set(1.0 / scale);
            }
            params = optim.step(8e-4 * (k + 1) as f64, params, gp);
            unscale.set(1.0);
        }
        wgpu.sync().unwrap();
        let launches = watch.finish();
        println!(
            "AdamW, 3 tensors, 5 steps on wgpu, {way:?}: {} kernel launches: {:?}",
            launches.total,
            launches.top(6)
        );
        let values: Vec<Vec<f32>> = params
            .into_iter()
            .map(|p| p.val().into_data().try_to_vec::<f32>().unwrap())
            .collect();
        (launches.total, values)
    };
    let (plain, reference) = run(Way::Unscaled);
    let (inside, a) = run(Way::Inside);
    let (before, b) = run(Way::Before);
    assert_eq!(
        a, reference,
        "unscaling inside AdamW changed the parameters"
    );
    assert_eq!(
        b, reference,
        "unscaling before AdamW changed the parameters"
    );
    assert!(
        inside <= plain,
        "unscaling inside AdamW launched {inside} kernels against {plain} without unscaling"
    );
    assert!(
        before > inside,
        "unscaling as a pass of its own launched {before} kernels, not more than inside AdamW's \
         {inside}: the premise of unscaling inside the update no longer holds"
    );
}

/// A linear layer over `[2048, 32, 512]` inputs, 512 outputs, trains on wgpu (issue 21, the
/// paper's batch of 256). burn's linear keeps 32-row leading blocks as a batched product
/// against the broadcast weight, whose backward builds one weight gradient per batch index,
/// `[2048, 512, 512]` f32 = 2^31 bytes: one byte more than a wgpu storage binding takes, so it
/// failed with `can't allocate buffer of size: 2147483648`, as ConvNeXt-B's stage-2 projection
/// did at batch 128 on an H200. `kernels::linear_with` runs it as rows of one 2-D product. The
/// gradients of `sum(y)` are hand-computable: d/dW[i][j] is the sum of input column i, and
/// d/db[j] the number of rows.
#[test]
fn a_linear_layer_whose_batched_weight_gradient_needs_2_gib_trains_on_wgpu() {
    let _guard = serial();
    let device = wgpu().autodiff();
    let (b, h, c) = (2048usize, 32usize, 512usize);
    let value = |n: usize, r: usize, i: usize| ((n * 3 + r * 5 + i) % 7) as f32 / 7.0;
    let mut x = Vec::with_capacity(b * h * c);
    let mut colsum = vec![0f64; c];
    for n in 0..b {
        for r in 0..h {
            for (i, s) in colsum.iter_mut().enumerate() {
                let v = value(n, r, i);
                x.push(v);
                *s += f64::from(v);
            }
        }
    }
    let x = Tensor::<3>::from_data(TensorData::new(x, [b, h, c]), &device);
    let w = Tensor::<2>::ones([c, c], &device)
        .mul_scalar(0.01)
        .require_grad();
    let bias = Tensor::<1>::zeros([c], &device).require_grad();
    let y = geolife_model::kernels::linear_with(x, w.clone(), Some(bias.clone()));
    assert_eq!(y.dims(), [b, h, c]);
    let grads = y.sum().backward();
    let gw = w.grad(&grads).expect("the weight gets a gradient");
    let gb = bias.grad(&grads).expect("the bias gets a gradient");
    let gw = gw
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_else(|e| panic!("{e:?}"));
    let gb = gb.into_data().try_to_vec::<f32>().unwrap();
    let mut worst = 0f64;
    for i in 0..c {
        for j in 0..c {
            worst = worst.max((f64::from(gw[i * c + j]) - colsum[i]).abs() / colsum[i]);
        }
    }
    let rows = (b * h) as f64;
    let worst_b = gb
        .iter()
        .map(|v| (f64::from(*v) - rows).abs() / rows)
        .fold(0.0, f64::max);
    println!(
        "linear [2048, 32, 512] -> 512 on wgpu: weight gradient rel. error {worst:.2e}, bias {worst_b:.2e}"
    );
    assert!(worst < 1e-4 && worst_b < 1e-4, "{worst:e} {worst_b:e}");
}

/// Mixed precision on the GPU path: the f16 products run on wgpu (llvmpipe's shaders take
/// f16), train from the shared initial weights to losses close to the f32 flex run's, and the
/// f16-trained checkpoint (f32 weights) predicts on flex in f32 close to the f32-trained one.
/// bf16, which burn's WGSL compiler cannot express, is refused before any step.
#[test]
fn an_f16_run_on_wgpu_tracks_f32_and_its_checkpoint_predicts_on_flex() {
    let _guard = serial();
    let (flex_run, a, _, _) = runs();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("f16");
    let b = run_in("wgpu", Precision::F16, &run);
    let log = std::fs::read_to_string(run.join(files::LOG)).unwrap();
    assert!(log.contains("precision f16"), "{log}");
    for (x, y) in a.history.iter().zip(&b.history) {
        let (dt, dv) = (
            (x.train_loss - y.train_loss).abs(),
            (x.val_loss - y.val_loss).abs(),
        );
        println!(
            "epoch {}: f32 flex train {:.6} val {:.6}; f16 wgpu train {:.6} val {:.6}",
            x.epoch, x.train_loss, x.val_loss, y.train_loss, y.val_loss
        );
        // f16 keeps 11 significant bits; three steps from the same weights stay within 1e-2.
        assert!(
            dt <= HALF_LOSS_ABS_TOL && dv <= HALF_LOSS_ABS_TOL,
            "{x:?} vs {y:?}"
        );
    }
    let (sa, sb) = (predict_on(flex_run, "flex"), predict_on(&run, "flex"));
    let d = max_abs_diff(dense(&sa), dense(&sb));
    println!("test scores, f32 flex-trained vs f16 wgpu-trained checkpoint on flex: {d:.3e}");
    assert!(d <= HALF_SCORE_ABS_TOL, "{d:e}");
    // bf16 is refused by name before the run starts.
    let mut cfg = config();
    cfg.train.device = DeviceKind::Wgpu;
    cfg.train.precision = Precision::Bf16;
    let err = train(&TrainOptions {
        config: cfg,
        cache: cache().clone(),
        run_dir: dir.path().join("bf16"),
        resume: false,
        progress: Progress::Quiet,
        stop_after_batches: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("train.precision") && err.contains("bf16"),
        "{err}"
    );
}

/// Largest difference relative to the largest magnitude of `want` (values read back).
fn rel<const D: usize>(got: Tensor<D>, want: Tensor<D>) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let (got, want) = (
        got.into_data().try_to_vec::<f32>().unwrap(),
        want.into_data().try_to_vec::<f32>().unwrap(),
    );
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    max_abs_diff(&got, &want) / scale
}

/// Random normal values of `shape` on `device`, the same for a given `seed`.
fn normal<const D: usize>(
    shape: [usize; D],
    mean: f32,
    sd: f32,
    seed: u64,
    device: &Device,
) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            mean + sd * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)
        })
        .collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A loss that weights every output differently, so every gradient value is exercised.
fn weighted_sum<const D: usize>(y: Tensor<D>) -> Tensor<1> {
    (y.clone().sin() * y).sum()
}

/// The GPU build's dense channels-last convolution (`conv_gpu.rs`: burn's forward and input
/// gradient, its own im2col weight gradient) against burn's convolution on the same wgpu device
/// through `kernels::conv::forward_nhwc` (bias included): 3 x 3 and 7 x 7 kernels, strided and
/// not, padded and not, a strided 1 x 1 and a plain one (no patch matrix), in f32, and the 3 x 3
/// also in an f16 autocast scope; the weight
/// gradient is at most two launches (the patch matrix and the product).
#[test]
fn gpu_channels_last_convolution_equals_burns_with_a_two_kernel_weight_gradient() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::tensor::FloatDType;
    use geolife_model::kernels;
    let _guard = serial();
    let d = wgpu().autodiff();
    // (Each new shape autotunes burn's convolutions on llvmpipe: a few cases keep this short.)
    for (case, ([b, c, h, w], co, k, stride, pad)) in [
        ([2, 5, 9, 11], 6, 3, 1, 1),
        ([1, 3, 10, 9], 4, 7, 2, 3),
        ([2, 6, 5, 7], 4, 1, 2, 0),
        ([2, 6, 5, 7], 4, 1, 1, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let conv: Conv2d = Conv2dConfig::new([c, co], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init(&d);
        let x = normal([b, h, w, c], 0.2, 1.3, 900 + case as u64, &d);
        // f16 for the first case only: each new shape and type autotunes burn's convolutions
        // on CI's cold cache.
        for half in [false, true]
            .into_iter()
            .take(if case == 0 { 2 } else { 1 })
        {
            let run = |ours: bool| {
                let _scope = kernels::autocast(half.then_some(FloatDType::F16));
                let x = x.clone().require_grad();
                let y = match ours {
                    true => kernels::conv::forward_nhwc(&conv, x.clone()),
                    false => {
                        kernels::set_cpu_kernels(false);
                        let y = kernels::conv::forward_nhwc(&conv, x.clone());
                        kernels::set_cpu_kernels(true);
                        y
                    }
                };
                let g = weighted_sum(y.clone()).backward();
                (
                    y.inner(),
                    x.grad(&g).unwrap(),
                    conv.weight.val().grad(&g).unwrap(),
                    conv.bias.as_ref().unwrap().val().grad(&g).unwrap(),
                )
            };
            let (a, b) = (run(true), run(false));
            let at = format!("case {case}: {k} x {k} stride {stride} padding {pad}, f16 {half}");
            let tol = if half { 5e-3 } else { 2e-5 };
            for (what, e) in [
                ("output", rel(a.0, b.0)),
                ("x grad", rel(a.1, b.1)),
                ("weight grad", rel(a.2, b.2)),
                ("bias grad", rel(a.3, b.3)),
            ] {
                assert!(e < tol, "convolution {what}: relative difference {e}, {at}");
            }
        }
    }
    // The weight gradient's launches (the second of two equal passes).
    let x = normal([2, 12, 12, 16], 0.0, 1.0, 950, &d).inner();
    let wt = normal([8, 16, 3, 3], 0.0, 1.0, 951, &d).inner();
    let g = normal([2, 12, 12, 8], 0.0, 1.0, 952, &d).inner();
    let mut counts = Default::default();
    for _ in 0..2 {
        d.sync().unwrap();
        let watch = LaunchWatch::start();
        let gw = kernels::conv_gpu::weight_grad(x.clone(), wt.clone(), g.clone(), [1, 1], [1, 1]);
        d.sync().unwrap();
        counts = watch.finish();
        drop(gw);
    }
    println!("3 x 3 convolution weight gradient, [2, 12, 12, 16] -> 8 channels: {counts:?}");
    assert!(counts.total <= 2, "the weight gradient launched {counts:?}");
}

/// The GPU build's BatchNorm (+ ReLU) and LayerNorm kernels (`norm_gpu.rs`) against burn's own
/// layers on the same wgpu device (an independent implementation: chains of reductions and
/// broadcasts): outputs, the gradients of the input and of both parameters, the running
/// statistics, and inference with them; channels-first maps, contiguous channels-last maps
/// read in place (as the ResNets run on a GPU), `[B, C]` rows, and LayerNorm over the channels
/// of a permuted (strided) view, with channels split over cubes (equal and unequal chunks) and
/// not. A norm takes one to three kernels per pass, where burn's layers launch many: the launch
/// counts of one BatchNorm + ReLU and one LayerNorm, forward and backward, are bounded.
#[test]
fn gpu_norm_kernels_equal_burns_layers_with_few_launches() {
    use burn::module::{Module, Param};
    use burn::nn::{BatchNorm, BatchNormConfig};
    use burn::tensor::activation::relu;
    use geolife_model::kernels;
    let _guard = serial();
    let d = wgpu().autodiff();
    let norms = |c: usize, seed: u64| {
        let make = || {
            let mut bn = BatchNormConfig::new(c).init(&d);
            bn.gamma = Param::from_tensor(normal([c], 1.0, 0.5, seed, &d));
            bn.beta = Param::from_tensor(normal([c], 0.0, 0.5, seed + 1, &d));
            bn
        };
        (make(), make())
    };
    // The large cases split each channel's values over several cubes (channels-first: one
    // channel per cube, split past 16,384 values; channels-last: 8 channels per cube, split
    // past 2,048; 3 channels leave lanes idle); the last, channels-last, in two unequal chunks
    // of 1,163 and 1,162 values.
    for (case, shape) in [
        [4, 6, 3, 5],
        [2, 3, 19, 12],
        [16, 64, 4, 21],
        [5, 2, 1, 1],
        [8, 3, 64, 64],
        [4, 40, 24, 24],
        [3, 40, 25, 31],
    ]
    .into_iter()
    .enumerate()
    {
        for (act, nhwc) in [(false, false), (true, false), (true, true)] {
            let (ours, burns) = norms(shape[1], 7 * case as u64);
            // Channels-last values are a contiguous `[B, H, W, C]` tensor, which the kernel
            // reads in place; burn's layer takes its channels-first view.
            let [b, c, h, w] = shape;
            let x = match nhwc {
                true => normal([b, h, w, c], 0.7, 3.0, 100 + case as u64, &d),
                false => normal(shape, 0.7, 3.0, 100 + case as u64, &d),
            };
            let burns_layer = |bn: &BatchNorm, x: Tensor<4>| {
                let y = match nhwc {
                    true => bn.forward(x.permute([0, 3, 1, 2])),
                    false => bn.forward(x),
                };
                let y = if act { relu(y) } else { y };
                match nhwc {
                    true => y.permute([0, 2, 3, 1]),
                    false => y,
                }
            };
            let run = |bn: &BatchNorm, kernel: bool| {
                let x = x.clone().detach().require_grad();
                let y = match (kernel, nhwc) {
                    (true, false) => kernels::batch_norm(bn, x.clone(), act),
                    (true, true) => kernels::batch_norm_nhwc(bn, x.clone(), act),
                    (false, _) => burns_layer(bn, x.clone()),
                };
                let g = weighted_sum(y.clone()).backward();
                (
                    y.inner(),
                    x.grad(&g).expect("x gets a gradient"),
                    bn.gamma.val().grad(&g).expect("gamma gets a gradient"),
                    bn.beta.val().grad(&g).expect("beta gets a gradient"),
                )
            };
            let (a, b) = (run(&ours, true), run(&burns, false));
            let at = format!("case {case} {shape:?} relu {act} channels-last {nhwc}");
            for (what, e) in [
                ("output", rel(a.0, b.0)),
                ("x grad", rel(a.1, b.1)),
                ("gamma grad", rel(a.2, b.2)),
                ("beta grad", rel(a.3, b.3)),
            ] {
                assert!(e < 2e-5, "BatchNorm {what}: relative difference {e}, {at}");
            }
            // The running statistics moved the same way.
            let (ours, burns) = (ours.valid(), burns.valid());
            for (what, e) in [
                (
                    "running mean",
                    rel(ours.running_mean.value(), burns.running_mean.value()),
                ),
                (
                    "running var",
                    rel(ours.running_var.value(), burns.running_var.value()),
                ),
            ] {
                assert!(e < 1e-5, "BatchNorm {what}: relative difference {e}, {at}");
            }
            let xi = x.clone().inner();
            let want = burns_layer(&burns, xi.clone());
            let got = match nhwc {
                true => kernels::batch_norm_nhwc(&ours, xi, act),
                false => kernels::batch_norm(&ours, xi, act),
            };
            let e = rel(got, want);
            assert!(
                e < 1e-5,
                "BatchNorm inference: relative difference {e}, {at}"
            );
        }
    }
    // `[B, C]` rows (a BatchNorm1d).
    let (ours, burns) = norms(24, 99);
    let x = normal([40, 24], -2.0, 0.5, 98, &d);
    let y = |bn: &BatchNorm, kernel: bool| {
        let x = x.clone().detach().require_grad();
        let y = match kernel {
            true => kernels::batch_norm(bn, x.clone(), true),
            false => relu(bn.forward(x.clone())),
        };
        let g = weighted_sum(y.clone()).backward();
        (y.inner(), x.grad(&g).expect("x gets a gradient"))
    };
    let (a, b) = (y(&ours, true), y(&burns, false));
    let (ey, eg) = (rel(a.0, b.0), rel(a.1, b.1));
    assert!(
        ey < 2e-5 && eg < 2e-5,
        "BatchNorm [B, C]: output {ey}, x grad {eg}"
    );

    // LayerNorm over the last axis: rows of 1 to 1,000 values, and a permuted (strided) input
    // as `LayerNorm2d` passes.
    // The last case has enough rows to split the parameters' gradients over cubes.
    for (case, shape) in [
        [4, 1, 1, 1000],
        [2, 5, 7, 16],
        [3, 2, 2, 46],
        [2, 1, 1, 1],
        [4, 24, 24, 40],
    ]
    .into_iter()
    .enumerate()
    {
        for permuted in [false, true] {
            let c = shape[3];
            let gamma = normal([c], 1.0, 0.5, 200 + case as u64, &d);
            let beta = normal([c], 0.0, 0.5, 300 + case as u64, &d);
            // The permuted case normalises `[B, C, H, W]` values over C through their
            // `[B, H, W, C]` view, as `LayerNorm2d` does: a strided input.
            let [b, h, w, _] = shape;
            let x = match permuted {
                true => normal([b, c, h, w], 3.0, 2.0, 400 + case as u64, &d),
                false => normal(shape, 3.0, 2.0, 400 + case as u64, &d),
            };
            let run = |kernel: bool| {
                let x = x.clone().detach().require_grad();
                let (g, b) = (gamma.clone().require_grad(), beta.clone().require_grad());
                let input = match permuted {
                    true => x.clone().permute([0, 2, 3, 1]),
                    false => x.clone(),
                };
                let y = match kernel {
                    true => kernels::layer_norm(input, g.clone(), Some(b.clone()), 1e-6),
                    false => {
                        burn::tensor::module::layer_norm(input, g.clone(), Some(b.clone()), 1e-6)
                    }
                };
                let grads = weighted_sum(y.clone()).backward();
                (
                    y.inner(),
                    x.grad(&grads).expect("x grad"),
                    g.grad(&grads).expect("gamma grad"),
                    b.grad(&grads).expect("beta grad"),
                )
            };
            let (a, b) = (run(true), run(false));
            let at = format!("case {case} {shape:?} permuted {permuted}");
            for (what, e) in [
                ("output", rel(a.0, b.0)),
                ("x grad", rel(a.1, b.1)),
                ("gamma grad", rel(a.2, b.2)),
                ("beta grad", rel(a.3, b.3)),
            ] {
                // A row of one value normalises to 0: its x gradient is 0 in both.
                assert!(e < 2e-5, "LayerNorm {what}: relative difference {e}, {at}");
            }
        }
    }
    // Kernel launches of one norm's forward and backward pass: the second of two equal passes
    // (the first compiles and autotunes), the layer's input given, its gradients left queued.
    let launches = |pass: &dyn Fn()| {
        pass();
        d.sync().unwrap();
        let watch = LaunchWatch::start();
        pass();
        d.sync().unwrap();
        watch.finish().total
    };
    let x = normal([16, 21, 4, 64], 0.7, 3.0, 500, &d);
    let (ours, burns) = norms(64, 501);
    let bn_pass = |bn: &BatchNorm, kernel: bool| {
        let x = x.clone().detach().require_grad();
        let y = match kernel {
            true => kernels::batch_norm_nhwc(bn, x.clone(), true),
            false => relu(bn.forward(x.clone().permute([0, 3, 1, 2]))).permute([0, 2, 3, 1]),
        };
        let g = y.sum().backward();
        let _ = (x.grad(&g), bn.gamma.val().grad(&g), bn.beta.val().grad(&g));
    };
    let bn = (
        launches(&|| bn_pass(&ours, true)),
        launches(&|| bn_pass(&burns, false)),
    );
    let (gamma, beta) = (
        normal([96], 1.0, 0.5, 502, &d),
        normal([96], 0.0, 0.5, 503, &d),
    );
    let x = normal([16, 8, 8, 96], 3.0, 2.0, 504, &d);
    let ln_pass = |kernel: bool| {
        let x = x.clone().detach().require_grad();
        let (g, b) = (gamma.clone().require_grad(), beta.clone().require_grad());
        let y = match kernel {
            true => kernels::layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-6),
            false => burn::tensor::module::layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-6),
        };
        let grads = y.sum().backward();
        let _ = (x.grad(&grads), g.grad(&grads), b.grad(&grads));
    };
    let ln = (launches(&|| ln_pass(true)), launches(&|| ln_pass(false)));
    println!(
        "kernel launches of one norm, forward and backward (kernels, burn's layers): \
         BatchNorm + ReLU on [16, 21, 4, 64] channels-last {bn:?}, LayerNorm of [16, 8, 8, 96] {ln:?}"
    );
    for (what, (ours, burns)) in [("BatchNorm + ReLU", bn), ("LayerNorm", ln)] {
        assert!(
            ours <= MAX_NORM_LAUNCHES && ours < burns,
            "{what} launched {ours} kernels forward and backward (burn's layer {burns}): \
             more than {MAX_NORM_LAUNCHES}"
        );
    }
    // `geolife bench norms` on this device: every case runs both ways and counts launches (at
    // batch 1 no channel is split; the split paths are compared with burn's layers above).
    let timings =
        geolife_train::trainer::norm_bench::bench_norms(DeviceKind::Wgpu, 1, 1).expect("bench");
    for t in &timings {
        let (ours, burns) = (t.kernels_launches.unwrap(), t.burn_launches.unwrap());
        assert!(
            ours <= MAX_NORM_LAUNCHES && ours < burns && t.kernels_ms > 0.0 && t.burn_ms > 0.0,
            "bench norms, {}: {t:?}",
            t.case.name
        );
    }
}

/// Inside an f16 autocast scope the GPU norm kernels read and write f16 activations (their
/// statistics, parameters and sums in f32, as PyTorch's autocast runs BatchNorm), so that a
/// convolution's f16 output is not cast to f32 and back around them. Compared with the same
/// kernels on the same values in f32: the output and the input's gradient are f16 and differ
/// by f16 rounding only, gamma's and beta's gradients are f32, and the running statistics
/// (computed in f32 from the same values) are equal. Fused and split BatchNorm, both layouts,
/// LayerNorm on contiguous, strided and split-parameter inputs; a frozen BatchNorm and a
/// LayerNorm without bias (burn's layers, in f32 inside) also take and return f16.
#[test]
fn gpu_norm_kernels_read_and_write_f16_activations() {
    use burn::module::{Module, Param};
    use burn::nn::{BatchNorm, BatchNormConfig};
    use burn::tensor::{DType, FloatDType};
    use geolife_model::kernels;
    let _guard = serial();
    let d = wgpu().autodiff();
    let f32_of = |t: Tensor<4>| t.cast(FloatDType::F32);
    for (case, (shape, nhwc)) in [
        ([4, 6, 3, 5], false),
        ([4, 8, 8, 21], true),
        ([16, 64, 4, 21], true),
        ([8, 3, 64, 64], false),
        ([3, 40, 25, 31], true),
    ]
    .into_iter()
    .enumerate()
    {
        let c = if nhwc { shape[3] } else { shape[1] };
        let make = || {
            let mut bn: BatchNorm = BatchNormConfig::new(c).init(&d);
            bn.gamma = Param::from_tensor(normal([c], 1.0, 0.5, 600 + case as u64, &d));
            bn.beta = Param::from_tensor(normal([c], 0.0, 0.5, 700 + case as u64, &d));
            bn
        };
        // The same values both ways: f16, and those f16 values in f32.
        let half = normal(shape, 0.7, 3.0, 800 + case as u64, &d).cast(FloatDType::F16);
        let full = f32_of(half.clone());
        let run = |bn: &BatchNorm, x: Tensor<4>| {
            let x = x.detach().require_grad();
            let y = match nhwc {
                true => kernels::batch_norm_nhwc(bn, x.clone(), true),
                false => kernels::batch_norm(bn, x.clone(), true),
            };
            let g = weighted_sum(f32_of(y.clone())).backward();
            (
                y.inner(),
                x.grad(&g).expect("x gets a gradient"),
                bn.gamma.val().grad(&g).expect("gamma gets a gradient"),
                bn.beta.val().grad(&g).expect("beta gets a gradient"),
            )
        };
        let (ours, reference) = (make(), make());
        let (h, f) = (run(&ours, half.clone()), run(&reference, full));
        let at = format!("BatchNorm case {case} {shape:?} channels-last {nhwc}");
        assert_eq!(
            [h.0.dtype(), h.1.dtype(), h.2.dtype(), h.3.dtype()],
            [DType::F16, DType::F16, DType::F32, DType::F32],
            "{at}: output, x grad, gamma grad, beta grad types"
        );
        for (what, e, most) in [
            ("output", rel(f32_of(h.0), f.0), 2e-3),
            ("x grad", rel(f32_of(h.1), f.1), 1e-2),
            ("gamma grad", rel(h.2, f.2), 5e-3),
            ("beta grad", rel(h.3, f.3), 5e-3),
        ] {
            assert!(e < most, "{at}, {what}: relative difference {e}");
        }
        let (ours, reference) = (ours.valid(), reference.valid());
        for (what, e) in [
            (
                "running mean",
                rel(ours.running_mean.value(), reference.running_mean.value()),
            ),
            (
                "running var",
                rel(ours.running_var.value(), reference.running_var.value()),
            ),
        ] {
            assert!(e < 1e-6, "{at}, {what}: relative difference {e}");
        }
        // Inference reads and writes f16 too.
        let y = match nhwc {
            true => kernels::batch_norm_nhwc(&ours, half.clone().inner(), false),
            false => kernels::batch_norm(&ours, half.clone().inner(), false),
        };
        let want = match nhwc {
            true => kernels::batch_norm_nhwc(&reference, f32_of(half.inner()), false),
            false => kernels::batch_norm(&reference, f32_of(half.inner()), false),
        };
        assert_eq!(y.dtype(), DType::F16, "{at}: inference output type");
        let e = rel(f32_of(y), want);
        assert!(e < 2e-3, "{at}, inference: relative difference {e}");
    }
    // The branches that run burn's own layers take f16 activations too, in f32 inside: a frozen
    // BatchNorm (partial fine-tuning) and a LayerNorm without bias.
    let mut frozen: BatchNorm = BatchNormConfig::new(6).init(&d);
    frozen.gamma = Param::from_tensor(normal([6], 1.0, 0.5, 1100, &d));
    let frozen = frozen.freeze();
    let half = normal([4, 6, 3, 5], 0.7, 3.0, 1101, &d).cast(FloatDType::F16);
    let run = |x: Tensor<4>| {
        let x = x.detach().require_grad();
        let y = kernels::batch_norm(&frozen, x.clone(), true);
        let g = weighted_sum(f32_of(y.clone())).backward();
        (
            y.inner(),
            x.grad(&g)
                .expect("the frozen layer's input gets a gradient"),
        )
    };
    let (h, f) = (run(half.clone()), run(f32_of(half)));
    assert_eq!(
        [h.0.dtype(), h.1.dtype()],
        [DType::F16, DType::F16],
        "frozen BatchNorm types"
    );
    let (ey, eg) = (rel(f32_of(h.0), f.0), rel(f32_of(h.1), f.1));
    assert!(
        ey < 2e-3 && eg < 1e-2,
        "frozen BatchNorm: output {ey}, x grad {eg}"
    );
    let half = normal([3, 5, 16], 3.0, 2.0, 1102, &d).cast(FloatDType::F16);
    let gamma = normal([16], 1.0, 0.5, 1103, &d);
    let y = kernels::layer_norm(half.clone(), gamma.clone(), None, 1e-6);
    let want = kernels::layer_norm(half.cast(FloatDType::F32), gamma, None, 1e-6);
    assert_eq!(y.dtype(), DType::F16, "LayerNorm without bias: output type");
    let e = rel(y.cast(FloatDType::F32), want);
    assert!(e < 2e-3, "LayerNorm without bias: relative difference {e}");
    for (case, (shape, permuted)) in [
        ([2, 5, 7, 16], false),
        ([2, 5, 7, 16], true),
        ([4, 24, 24, 40], false),
    ]
    .into_iter()
    .enumerate()
    {
        let c = shape[3];
        let gamma = normal([c], 1.0, 0.5, 900 + case as u64, &d);
        let beta = normal([c], 0.0, 0.5, 950 + case as u64, &d);
        let [b, h, w, _] = shape;
        let x = match permuted {
            true => normal([b, c, h, w], 3.0, 2.0, 990 + case as u64, &d),
            false => normal(shape, 3.0, 2.0, 990 + case as u64, &d),
        };
        let half = x.cast(FloatDType::F16);
        let run = |x: Tensor<4>| {
            let x = x.detach().require_grad();
            let (g, bt) = (gamma.clone().require_grad(), beta.clone().require_grad());
            let input = match permuted {
                true => x.clone().permute([0, 2, 3, 1]),
                false => x.clone(),
            };
            let y = kernels::layer_norm(input, g.clone(), Some(bt.clone()), 1e-6);
            let grads = weighted_sum(f32_of(y.clone())).backward();
            (
                y.inner(),
                x.grad(&grads).expect("x grad"),
                g.grad(&grads).expect("gamma grad"),
                bt.grad(&grads).expect("beta grad"),
            )
        };
        let (hv, f) = (run(half.clone()), run(f32_of(half)));
        let at = format!("LayerNorm case {case} {shape:?} permuted {permuted}");
        assert_eq!(
            [hv.0.dtype(), hv.1.dtype(), hv.2.dtype(), hv.3.dtype()],
            [DType::F16, DType::F16, DType::F32, DType::F32],
            "{at}: output, x grad, gamma grad, beta grad types"
        );
        for (what, e, most) in [
            ("output", rel(f32_of(hv.0), f.0), 2e-3),
            ("x grad", rel(f32_of(hv.1), f.1), 1e-2),
            ("gamma grad", rel(hv.2, f.2), 5e-3),
            ("beta grad", rel(hv.3, f.3), 5e-3),
        ] {
            assert!(e < most, "{at}, {what}: relative difference {e}");
        }
    }
}

/// MaxViT on the GPU build: its BatchNorms (channels-first) and LayerNorms run the norm
/// kernels, and a training step's loss and gradients on wgpu equal flex's with the same
/// weights and input; inside an f16 autocast scope its stem and MBConv BatchNorms read and
/// write f16 (the kernels' f16 variants run), and the loss and the gradients track f32's. A
/// small MaxViT (32 x 32 input, partition 4, two blocks of one layer) keeps the test short.
#[test]
fn maxvit_trains_on_wgpu_as_on_flex_and_its_f16_step_tracks_f32() {
    use burn::module::Module;
    use burn::tensor::FloatDType;
    use geolife_model::backbones::maxvit::{MaxVit, MaxVitConfig};
    use geolife_model::kernels;
    let _guard = serial();
    let flex = Device::flex().autodiff();
    let model = MaxVitConfig::maxvit_t()
        .with_in_channels(4)
        .with_num_classes(10)
        .with_input_size(32)
        .with_stem_channels(16)
        .with_partition_size(4)
        .with_block_channels(vec![16, 32])
        .with_block_layers(vec![1, 1])
        .with_head_dim(8)
        .with_stochastic_depth_prob(0.0)
        .init(&flex)
        .expect("a valid MaxViT");
    let x = normal([4, 4, 32, 32], 0.0, 1.0, 1234, &flex);
    // One training step's loss and the gradients of the stem convolution, the stem
    // BatchNorm, the first MBConv's pre-norm and conv_a BatchNorm and the first window
    // attention's LayerNorm, in that order.
    let step = |m: &MaxVit, x: Tensor<4>, half: Option<FloatDType>| {
        let _scope = kernels::autocast(half);
        let loss = weighted_sum(m.forward(x));
        let g = loss.backward();
        let ((conv, bn, _), _) = &m.stem;
        let parts = &m.blocks[0].layers[0].layers;
        let mb = &parts.MBconv.layers;
        let grads = [
            conv.weight
                .val()
                .grad(&g)
                .expect("stem conv grad")
                .flatten::<1>(0, 3),
            bn.gamma.val().grad(&g).expect("stem BatchNorm grad"),
            mb.pre_norm.gamma.val().grad(&g).expect("pre-norm grad"),
            mb.conv_a
                .1
                .gamma
                .val()
                .grad(&g)
                .expect("conv_a BatchNorm grad"),
            parts
                .window_attention
                .attn_layer
                .0
                .gamma
                .val()
                .grad(&g)
                .expect("LayerNorm grad"),
        ];
        let loss = loss.into_data().try_to_vec::<f32>().unwrap()[0];
        (loss, grads.map(|t| t.to_device(&Device::flex())))
    };
    let gpu = wgpu().autodiff();
    let (l_flex, g_flex) = step(&model, x.clone(), None);
    let on_gpu = model.clone().fork(&gpu);
    let (l_gpu, g_gpu) = step(&on_gpu, x.clone().to_device(&gpu), None);
    let watch = LaunchWatch::start();
    let (l_half, g_half) = step(&on_gpu, x.to_device(&gpu), Some(FloatDType::F16));
    gpu.sync().unwrap();
    let launches = watch.finish();
    // Every BatchNorm (the stem's, three per MBConv) and LayerNorm (two per attention, two
    // attentions per layer, the head's) ran its kernel.
    let count = |prefixes: &[&str]| -> usize {
        let named = |k: &String| prefixes.iter().any(|p| k.starts_with(p));
        launches
            .by_kernel
            .iter()
            .filter(|(k, _)| named(k))
            .map(|(_, c)| c)
            .sum()
    };
    let (bn, ln) = (count(&["BnForward", "BnApply"]), count(&["LnForward"]));
    // The stem's BatchNorm and the MBConvs' two after a convolution take f16 activations.
    let half_bn: usize = launches
        .by_type
        .iter()
        .filter(|(k, _)| k.contains("BnForward<") && k.contains("f16"))
        .map(|(_, c)| c)
        .sum();
    assert!(
        bn >= 7 && ln >= 9 && half_bn >= 5,
        "norm kernel launches of the f16 step: BatchNorm {bn} ({half_bn} on f16), LayerNorm \
         {ln}; {:?}",
        launches.by_type
    );
    // Both devices differ by float rounding (about 1e-3 of the largest gradient through this
    // network, as much with burn's own layers on both), f16 by its own rounding.
    assert!(
        (l_gpu - l_flex).abs() <= 1e-5 * l_flex.abs().max(1.0),
        "f32 loss: wgpu {l_gpu}, flex {l_flex}"
    );
    assert!(
        l_half.is_finite() && (l_half - l_flex).abs() <= 1e-2 * l_flex.abs().max(1.0),
        "f16 loss {l_half} against f32 {l_flex}"
    );
    for (i, ((f, g), h)) in g_flex.into_iter().zip(g_gpu).zip(g_half).enumerate() {
        let (eg, eh) = (rel(g, f.clone()), rel(h, f));
        assert!(
            eg < 5e-3,
            "gradient {i}: wgpu f32 against flex, relative difference {eg}"
        );
        assert!(
            eh < 5e-2,
            "gradient {i}: wgpu f16 against flex f32, relative difference {eh}"
        );
    }
}

/// The mixed-precision overflow check (`kernels::finite`) on the GPU build: one NaN or
/// infinity anywhere fails it, large finite values pass (their sum would overflow f32),
/// permuted and sliced views are checked on their own values (read through their strides, no
/// copy), a bad value in any of twenty tensors is found, and a kernel reads 8 tensors (the
/// check before it, a `sum` per gradient and their additions, ran about 2.7 kernels per tensor
/// on llvmpipe).
#[test]
fn the_gpu_finite_check_flags_nan_and_infinity_with_one_kernel_per_eight_tensors() {
    use geolife_model::kernels::finite::FiniteCheck;
    let _guard = serial();
    let d = wgpu();
    let values = |bad: Option<(usize, f32)>| {
        let mut v: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) * 0.25).collect();
        if let Some((at, x)) = bad {
            v[at] = x;
        }
        Tensor::<2>::from_data(TensorData::new(v, [4, 6]), &d)
    };
    let check = |tensors: Vec<Tensor<2>>| {
        let mut c = FiniteCheck::default();
        for t in tensors {
            c.add(t);
        }
        c.finish().expect("the check reads its flag back")
    };
    assert!(check(vec![values(None), values(None)]));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for at in [0, 13, 23] {
            let ts = vec![values(None), values(Some((at, bad))), values(None)];
            assert!(!check(ts), "{bad} at {at} passed on wgpu");
        }
    }
    let big = Tensor::<2>::from_data(TensorData::new(vec![3.0e38f32; 24], [4, 6]), &d);
    assert!(check(vec![big.clone(), big]));
    let t = values(Some((5, f32::NAN)));
    assert!(!check(vec![t.clone().permute([1, 0])]));
    assert!(
        check(vec![t.clone().slice([1..4, 0..6])]),
        "the NaN is in row 0"
    );
    assert!(!check(vec![t.slice([0..2, 4..6])]));
    // Twenty tensors take three kernels: the bad value found in each of them, the first, the
    // last of a full kernel, the first of the next and the last of the partial third kernel.
    for bad_at in [0, 7, 8, 19] {
        let ts: Vec<Tensor<2>> = (0..20)
            .map(|i| values((i == bad_at).then_some((13, f32::NAN))))
            .collect();
        assert!(!check(ts), "NaN in tensor {bad_at} of 20 passed on wgpu");
    }
    // Launches of a check, the second of two equal checks: one kernel per 8 tensors, and the
    // zeroing of the flag and of the unused places' tensor.
    for n in [4usize, 20] {
        let ts: Vec<Tensor<2>> = (0..n).map(|_| values(None)).collect();
        let mut launches = 0;
        for _ in 0..2 {
            d.sync().unwrap();
            let watch = LaunchWatch::start();
            assert!(check(ts.clone()));
            launches = watch.finish().total;
        }
        println!("finite check of {n} tensors on wgpu: {launches} kernel launches");
        assert!(
            launches <= n.div_ceil(8) + 2,
            "the check of {n} tensors launched {launches} kernels: more than one per 8 tensors \
             and two zeroings"
        );
    }
}
