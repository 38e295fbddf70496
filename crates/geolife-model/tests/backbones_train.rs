//! Every backbone of the registry trains: on a fixed batch of 128x128, 4-channel patches (the
//! cache's size), a few AdamW steps lower the BCE loss, every loss is finite, and every
//! parameter receives a finite gradient that is not identically zero.
//!
//! Paper-size models are too slow for CI on 2 cores, so each kind is built from its own preset
//! with narrower widths only: depths, block kinds, window and partition sizes, padding,
//! shifted windows, layer scale and stochastic depth are the preset's. MaxViT runs both ways a
//! 128x128 patch can reach it (native with partition 4, and resized to 224).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use geolife_model::backbones::{
    Backbone, BackboneConfig, BackboneKind, IntoEnumIterator, SentinelInput, VariantNames,
};
use geolife_model::loss::bce_with_logits;

const CLASSES: usize = 12;
const BATCH: usize = 8;
const SIDE: usize = 128;
const STEPS: usize = 4;

/// `kind`'s preset for `side x side` input (after `input`'s resize), narrowed.
fn reduced(kind: BackboneKind, input: SentinelInput) -> BackboneConfig {
    let side = input.resize_to(kind, SIDE).unwrap_or(SIDE);
    match kind
        .config_for_size(4, Some(CLASSES), side)
        .expect("preset builds for 128x128 patches")
    {
        BackboneConfig::ResNet(c) => BackboneConfig::ResNet(c.with_widths([8, 16, 24, 32])),
        BackboneConfig::ConvNext(mut c) => {
            c.dims = [8, 16, 24, 32];
            BackboneConfig::ConvNext(c)
        }
        BackboneConfig::SwinV2(c, pre) => {
            // Head width 8 at every stage, the preset's head counts.
            let embed = c.num_heads[0] * 8;
            BackboneConfig::SwinV2(c.with_embed_dim(embed).with_num_classes(CLASSES), pre)
        }
        BackboneConfig::MaxVit(c, pre) => BackboneConfig::MaxVit(
            c.with_stem_channels(8)
                .with_block_channels(vec![16, 32, 48, 64])
                .with_head_dim(8)
                .with_resize_input(side != SIDE)
                .with_num_classes(CLASSES),
            pre,
        ),
    }
}

/// Records, per parameter (burn path), whether its gradient was present and finite at every
/// step and not identically zero at some step. (Stochastic depth may drop a block for the
/// whole batch at one step: its parameters then rightly get a zero gradient there.)
#[derive(Default)]
struct GradCheck {
    path: Vec<String>,
    /// path -> (present and finite at every step so far, non-zero at some step)
    seen: std::collections::BTreeMap<String, (bool, bool)>,
}

/// [`GradCheck`] visiting one step's gradients.
struct GradStep<'a> {
    check: &'a mut GradCheck,
    grads: &'a GradientsParams,
}

impl ModuleVisitor for GradStep<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.check.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.check.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.check.path.join(".");
        // BatchNorm running statistics are buffers, updated without gradients.
        if path.ends_with(".running_mean") || path.ends_with(".running_var") {
            return;
        }
        let (finite, nonzero) = match self.grads.get::<D>(param.id) {
            None => (false, false),
            Some(g) => {
                let v = g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                (v.iter().all(|x| x.is_finite()), v.iter().any(|&x| x != 0.0))
            }
        };
        let e = self.check.seen.entry(path).or_insert((true, false));
        *e = (e.0 && finite, e.1 || nonzero);
    }
}

impl GradCheck {
    /// Failures after all steps: absent or non-finite at some step, or zero at every step.
    fn failures(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|(path, &(finite, nonzero))| match (finite, nonzero) {
                (false, _) => Some(format!("{path}: missing or non-finite gradient")),
                (true, false) => Some(format!("{path}: gradient identically zero at every step")),
                (true, true) => None,
            })
            .collect()
    }
}

/// BCE of the batch with stochastic-depth masks drawn from `seed`.
fn loss_of(
    model: &Backbone,
    x: &Tensor<4>,
    y: &Tensor<2>,
    device: &Device,
    seed: u64,
) -> Tensor<1> {
    device.seed(seed);
    bce_with_logits(model.forward(x.clone()), y.clone())
}

/// burn's flex backend has one process-wide RNG (init, stochastic depth): the tests of this
/// file run one at a time so each one's draws do not depend on the others'.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains `kind` for a few steps on a fixed batch and asserts the conditions.
fn assert_trains(kind: BackboneKind, input: SentinelInput) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let label = format!("{} ({input:?})", kind.name());
    let device = Device::flex().autodiff();
    device.seed(7);
    let mut model = reduced(kind, input)
        .try_init(&device)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let x = Tensor::<4>::random(
        [BATCH, 4, SIDE, SIDE],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let targets: Vec<f32> = (0..BATCH * CLASSES)
        .map(|i| {
            if (i * 7 + i / CLASSES).is_multiple_of(5) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let y = Tensor::<2>::from_data(TensorData::new(targets, [BATCH, CLASSES]), &device);
    model
        .check_input([BATCH, 4, SIDE, SIDE])
        .unwrap_or_else(|e| panic!("{label}: {e}"));

    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    // Before and after are compared with the same stochastic-depth masks (seed 1000); each
    // training step draws its own.
    let before: f32 = loss_of(&model, &x, &y, &device, 1000).into_scalar();
    let mut losses = vec![before];
    let mut check = GradCheck::default();
    for step in 0..STEPS {
        let loss = loss_of(&model, &x, &y, &device, 99 + step as u64);
        let value: f32 = loss.clone().into_scalar();
        assert!(value.is_finite(), "{label}: loss {value} at step {step}");
        losses.push(value);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model.visit(&mut GradStep {
            check: &mut check,
            grads: &grads,
        });
        model = optim.step(2e-3, model, grads);
    }
    let failures = check.failures();
    assert!(
        check.seen.len() > 10,
        "{label}: only {} parameters",
        check.seen.len()
    );
    assert!(
        failures.is_empty(),
        "{label}: {} of {} parameters fail:\n{}",
        failures.len(),
        check.seen.len(),
        failures.join("\n")
    );
    let after: f32 = loss_of(&model, &x, &y, &device, 1000).into_scalar();
    assert!(after.is_finite(), "{label}: final loss {after}");
    assert!(
        after < before - 0.01,
        "{label}: loss did not go down: {losses:?} -> {after}"
    );
}

/// Runs every registry kind whose config is of `family`: each family is one test, so a new
/// kind is trained without editing this file.
fn family(pick: fn(&BackboneConfig) -> bool) -> usize {
    let mut n = 0;
    for kind in BackboneKind::iter() {
        if pick(&kind.config(4, Some(CLASSES))) {
            assert_trains(kind, SentinelInput::Auto);
            n += 1;
        }
    }
    n
}

#[test]
fn every_resnet_kind_trains() {
    assert_eq!(family(|c| matches!(c, BackboneConfig::ResNet(_))), 4);
}

#[test]
fn every_convnext_kind_trains() {
    assert_eq!(family(|c| matches!(c, BackboneConfig::ConvNext(_))), 5);
}

#[test]
fn every_swin_v2_kind_trains_with_padded_windows() {
    assert_eq!(family(|c| matches!(c, BackboneConfig::SwinV2(..))), 3);
}

#[test]
fn maxvit_trains_resized_to_224() {
    assert_eq!(family(|c| matches!(c, BackboneConfig::MaxVit(..))), 1);
}

#[test]
fn maxvit_trains_natively_at_128() {
    assert_trains(BackboneKind::MaxvitT, SentinelInput::Native);
}

#[test]
fn every_kind_is_covered() {
    // The families above add up to the whole registry.
    assert_eq!(4 + 5 + 3 + 1, BackboneKind::VARIANTS.len());
}

#[test]
fn maxvit_native_128_uses_partition_4_and_rejects_other_sizes() {
    let c = BackboneKind::MaxvitT
        .config_for_size(4, Some(CLASSES), 128)
        .unwrap();
    let BackboneConfig::MaxVit(m, _) = &c else {
        panic!("not a MaxViT config")
    };
    assert_eq!((m.input_size, m.partition_size), (128, 4));
    assert_eq!(m.block_grid_sizes(), vec![32, 16, 8, 4]);
    // 200 -> grids 50, 25, 13, 7: no common partition size.
    let e = BackboneKind::MaxvitT
        .config_for_size(4, None, 200)
        .unwrap_err()
        .to_string();
    assert!(e.contains("resize_224"), "{e}");
    // A model built for 128 refuses a 96x96 batch with an error, not a panic in a reshape.
    let device = Device::flex();
    let m = reduced(BackboneKind::MaxvitT, SentinelInput::Native)
        .try_init(&device)
        .unwrap();
    let e = m.check_input([2, 4, 96, 96]).unwrap_err().to_string();
    assert!(e.contains("sentinel") && e.contains("96"), "{e}");
    assert!(m.check_input([2, 3, 128, 128]).is_err());
    assert!(m.check_input([2, 4, 128, 128]).is_ok());
}
