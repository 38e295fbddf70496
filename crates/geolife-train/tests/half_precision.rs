//! Mixed precision on the CPU (burn flex runs f16 and bf16 too): a half-precision run learns as
//! the f32 one does, its checkpoint predicts in f32, an f16 step whose gradients overflow is
//! skipped without touching the weights, the loss scale survives a resume, and gradient clipping
//! sees the unscaled gradients.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use geolife_data::Split;
use geolife_metrics::Scores;
use geolife_train::config::Precision;
use geolife_train::predict::{PredictOptions, predict};
use geolife_train::{TrainConfig, TrainOptions, TrainSummary, train};

fn fixture() -> &'static (PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| common::synth_dataset(360, 60, 30, 23))
}

fn tiny(precision: Precision, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::tiny();
    c.train.epochs = epochs;
    c.train.batch_size = 32;
    c.train.mixup_prob = 0.0;
    c.train.precision = precision;
    c
}

fn options(config: TrainConfig, run: &Path) -> TrainOptions {
    common::train_options(config, &fixture().1, run)
}

fn log(run: &Path) -> String {
    std::fs::read_to_string(run.join("train.log")).unwrap()
}

/// The trainable tensors of a run's best checkpoint (BatchNorm's running statistics, which
/// every forward pass updates, left out), by name.
fn parameters(run: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(run.join("best.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.contains("running_") && !n.contains("num_batches"))
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    out.sort();
    out
}

fn best_f1(s: &TrainSummary) -> f64 {
    s.history.iter().map(|h| h.val_f1).fold(0.0, f64::max)
}

#[test]
fn half_precision_learns_as_f32_does_and_its_checkpoint_predicts_in_f32() {
    let _guard = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let mut f1 = Vec::new();
    for p in [Precision::F32, Precision::Bf16, Precision::F16] {
        let run = dir.path().join(<&str>::from(p));
        let s = train(&options(tiny(p, 3), &run)).unwrap();
        assert!(s.finished);
        for h in &s.history {
            assert!(
                h.train_loss.is_finite() && h.val_loss.is_finite(),
                "{p:?}: {h:?}"
            );
        }
        // Training lowered the loss in half precision as well.
        assert!(
            s.history[2].train_loss < s.history[0].train_loss,
            "{p:?}: {:?}",
            s.history
        );
        assert!(
            log(&run).contains(&format!("precision {}", <&str>::from(p))),
            "{}",
            log(&run)
        );
        f1.push(best_f1(&s));
    }
    // The bar: validation F1 within 0.01 of f32's on the tiny recipe.
    for (name, v) in [("bf16", f1[1]), ("f16", f1[2])] {
        assert!((v - f1[0]).abs() <= 0.01, "{name} F1 {v} vs f32 {}", f1[0]);
    }
    // The f16 run's weights are f32: they predict in f32 on flex, close to its own f16
    // products.
    let run = dir.path().join("f16");
    let scores = |precision| {
        let s = predict(&PredictOptions {
            run_dir: Some(run.clone()),
            weights: None,
            config: None,
            cache: fixture().1.clone(),
            split: Split::Test,
            batch_size: 16,
            workers: 1,
            device: None,
            precision,
        })
        .unwrap();
        match s.scores {
            Scores::Dense { data } => data,
            other => panic!("dense scores expected, got {other:?}"),
        }
    };
    let (full, half) = (scores(Some(Precision::F32)), scores(None));
    assert_eq!(full.len(), half.len());
    assert!(!full.is_empty() && full.len() % 60 == 0, "{}", full.len());
    let worst = full
        .iter()
        .zip(&half)
        .map(|(a, b)| {
            assert!(a.is_finite() && b.is_finite());
            (a - b).abs()
        })
        .fold(0.0f32, f32::max);
    // f16 keeps 11 significant bits: probabilities agree to a few thousandths, not exactly.
    assert!(worst > 0.0 && worst < 0.02, "largest difference {worst}");
}

#[test]
fn an_f16_step_whose_gradients_overflow_is_skipped_and_leaves_the_weights() {
    let _guard = common::serial();
    let dir = tempfile::tempdir().unwrap();
    // A scale of 2^40 overflows f16 at the loss's first gradient: every step of this one-batch
    // run is skipped.
    let mut cfg = tiny(Precision::F16, 1);
    cfg.train.max_batches_per_epoch = 1;
    cfg.train.loss_scale = 2f64.powi(40);
    let skipped = dir.path().join("skipped");
    train(&options(cfg, &skipped)).unwrap();
    let text = log(&skipped);
    assert!(
        text.contains("f16 gradients overflowed at loss scale 1099511627776; step skipped, scale now 549755813888"),
        "{text}"
    );
    // The same run in f32 at a learning rate of 1e-30 moves each weight by about 1e-30 (AdamW's
    // first step is about lr in size), and no weight of this net is that small unless it is 0:
    // the skipped run must hold those weights to within 1e-25, where a real step moves them by
    // about 1e-3.
    let mut cfg = tiny(Precision::F32, 1);
    cfg.train.max_batches_per_epoch = 1;
    cfg.optim.lr = 1e-30;
    let still = dir.path().join("still");
    train(&options(cfg, &still)).unwrap();
    let (a, b) = (parameters(&skipped), parameters(&still));
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 10);
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let worst = f32s(ta)
            .zip(f32s(tb))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-25, "{na} changed by {worst} in a skipped step");
    }
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

#[test]
fn an_f16_run_resumes_with_its_loss_scale() {
    let _guard = common::serial();
    let dir = tempfile::tempdir().unwrap();
    // From 2^24 the scale halves on each of the first three steps (these gradients overflow f16
    // above about 2^21): a resumed run that started at 2^24 again would skip two more steps,
    // so the runs agree only if the scale was saved.
    let mut cfg = tiny(Precision::F16, 2);
    cfg.train.loss_scale = 2f64.powi(24);
    cfg.train.max_batches_per_epoch = 4;
    cfg.train.checkpoint_every_steps = 1;
    let whole = dir.path().join("whole");
    let a = train(&options(cfg.clone(), &whole)).unwrap();
    let skips = log(&whole).matches("step skipped").count();
    assert!((3..6).contains(&skips), "{skips} skipped steps");
    let parts = dir.path().join("parts");
    let mut o = options(cfg, &parts);
    o.stop_after_batches = Some(2);
    assert!(!train(&o).unwrap().finished);
    o.resume = true;
    o.stop_after_batches = None;
    let b = train(&o).unwrap();
    assert!(b.finished);
    assert_eq!(log(&parts).matches("step skipped").count(), skips);
    for (x, y) in a.history.iter().zip(&b.history) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-6, "{x:?} vs {y:?}");
        assert!((x.val_f1 - y.val_f1).abs() < 1e-9, "{x:?} vs {y:?}");
    }
    assert_eq!(parameters(&whole), parameters(&parts));
}

/// Mean absolute change of each run's weights from `start`'s, over all trainable tensors.
fn mean_change(run: &Path, start: &Path) -> f64 {
    let (a, b) = (parameters(run), parameters(start));
    let (mut sum, mut n) = (0f64, 0usize);
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        for (x, y) in f32s(ta).zip(f32s(tb)) {
            sum += f64::from((x - y).abs());
            n += 1;
        }
    }
    sum / n as f64
}

/// Gradient clipping in an f16 run clips the true gradients, not the loss-scaled ones. Clipped
/// to a norm of 1e-2, the true gradients of this net are still far above AdamW's epsilon, so
/// the first step moves each weight by about the learning rate, as in f32. Clipping the
/// gradients while still scaled by 2^16 and unscaling afterwards would leave them near 1e-10,
/// below epsilon (1e-8), and the weights would move about ten times less (measured: 0.10 of f32's
/// change, against 1.00 with the true gradients).
#[test]
fn an_f16_run_clips_its_unscaled_gradients() {
    let _guard = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let one_step = |precision: Precision, lr: f64, name: &str| {
        let mut cfg = tiny(precision, 1);
        cfg.train.max_batches_per_epoch = 1;
        cfg.optim.grad_clip_norm = Some(1e-2);
        cfg.optim.lr = lr;
        let run = dir.path().join(name);
        train(&options(cfg, &run)).unwrap();
        assert!(!log(&run).contains("step skipped"), "{}", log(&run));
        run
    };
    let start = one_step(Precision::F32, 1e-30, "start");
    let f32_change = mean_change(&one_step(Precision::F32, 1e-3, "f32"), &start);
    let f16_change = mean_change(&one_step(Precision::F16, 1e-3, "f16"), &start);
    println!("mean weight change of one clipped step: f32 {f32_change:.3e}, f16 {f16_change:.3e}");
    assert!(
        f32_change > 1e-5,
        "the f32 step moved the weights by {f32_change:e}"
    );
    let ratio = f16_change / f32_change;
    assert!(
        (0.8..1.25).contains(&ratio),
        "one clipped step moved the weights by {f16_change:e} in f16 against {f32_change:e} in \
         f32 (ratio {ratio:.3})"
    );
}

/// `bench train` says when f16 steps overflowed (their AdamW update skipped, so its time and
/// memory are not in the figures): at a loss scale of 2^40 every step overflows, halving the
/// scale each time (2^37 after three is still far too large); in f32 none does.
#[test]
fn the_benchmark_counts_the_steps_that_overflowed() {
    let _guard = common::serial();
    let mut cfg = tiny(Precision::F16, 1);
    cfg.train.loss_scale = 2f64.powi(40);
    let r = geolife_train::trainer::bench_steps(&cfg, &fixture().1, 2).unwrap();
    assert_eq!(r.losses.len(), 3, "one warm-up and two timed steps");
    assert_eq!(r.skipped, 3, "{:?}", r.losses);
    let r = geolife_train::trainer::bench_steps(&tiny(Precision::F32, 1), &fixture().1, 2).unwrap();
    assert_eq!(r.skipped, 0);
}

/// Swin V2 pads its last stage (4x4 at 128x128) to its 8x8 window with zero tokens, whose keys
/// are zero. Their normalisation's gradient was 1e12 times the incoming one, which overflows
/// f16 in the `qkv` product's backward: every f16 step was skipped whatever the loss scale, so
/// `paper-swinv2-base` (f16) never trained. Now its steps update the weights, and the losses
/// fall as f32's do from the same start (f32: 0.7023 0.5880 0.3352 0.1369 measured, f16 0.7023
/// 0.5877 0.3350 0.1354).
#[test]
fn a_padded_swin_v2_trains_in_f16() {
    let _guard = common::serial();
    let run = |precision| {
        let mut cfg = TrainConfig::paper(geolife_train::config::BackboneKind::SwinV2T);
        cfg.train.batch_size = 2;
        cfg.train.mixup_prob = 0.0;
        cfg.train.precision = precision;
        geolife_train::trainer::bench_steps(&cfg, &fixture().1, 3).unwrap()
    };
    let (half, full) = (run(Precision::F16), run(Precision::F32));
    println!(
        "swin_v2_t losses: f16 {:?}, f32 {:?}",
        half.losses, full.losses
    );
    assert_eq!(half.skipped, 0, "f16 steps overflowed: {:?}", half.losses);
    for (h, f) in half.losses.iter().zip(&full.losses) {
        assert!(
            (h - f).abs() < 0.02,
            "f16 {:?} against f32 {:?}",
            half.losses,
            full.losses
        );
    }
    assert!(half.losses[3] < half.losses[0] - 0.2, "{:?}", half.losses);
}
