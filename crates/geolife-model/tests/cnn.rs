//! CNN backbones, fusion network, weight import/export: parity with PyTorch (fixtures from
//! tests/fixtures/gen_cnn.py), shapes, parameter counts, the stem rule, gradients, checkpoints.

mod common;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::{
    fixture, fixtures, formula_dict, grads_by_path, output_and_grads, rel_err, rel_vec, tensor,
};
use geolife_model::backbones::BackboneKind;
use geolife_model::backbones::convnext::ConvNextConfig;
use geolife_model::backbones::resnet::ResNetConfig;
use geolife_model::checkpoint;
use geolife_model::fusion::{BranchOutput, FusionConfig, FusionInput};
use geolife_model::import::{adapt_input_channels, import_into, read_state_dict};
use geolife_model::loss::bce_with_logits;
use geolife_model::state::{NamedTensor, load_state_dict, slots, state_dict};

const TOL: f32 = 1e-4;

fn dev() -> Device {
    Device::flex()
}

#[test]
fn resnet18_cube_matches_pytorch() {
    let d = dev();
    let model = ResNetConfig::cube(6).init(&d);
    let dict = formula_dict(&model);
    let (model, report) = load_state_dict(model, &dict);
    assert!(report.is_exact(), "{}", report.summary());
    let io = fixture("resnet18_cube_io.safetensors");
    let out = model.forward(tensor(&io["input"], &d));
    let err = rel_err(out, &io["output"]);
    assert!(err < TOL, "relative error {err}");
}

#[test]
fn resnet50_4ch_stem7_maxpool_matches_pytorch() {
    let d = dev();
    let model = ResNetConfig::resnet50().with_in_channels(4).init(&d);
    let (model, report) = load_state_dict(model.clone(), &formula_dict(&model));
    assert!(report.is_exact(), "{}", report.summary());
    let io = fixture("resnet50_4ch_io.safetensors");
    let err = rel_err(model.forward(tensor(&io["input"], &d)), &io["output"]);
    assert!(err < TOL, "relative error {err}");
}

#[test]
fn convnext_tiny_4ch_matches_pytorch() {
    let d = dev();
    let model = ConvNextConfig::tiny().with_in_channels(4).init(&d);
    let (model, report) = load_state_dict(model.clone(), &formula_dict(&model));
    assert!(report.is_exact(), "{}", report.summary());
    let io = fixture("convnext_tiny_4ch_io.safetensors");
    let err = rel_err(model.forward(tensor(&io["input"], &d)), &io["output"]);
    assert!(err < TOL, "relative error {err}");
}

#[test]
fn convnext_real_torchvision_state_dict_loads_exactly_and_matches() {
    let d = dev();
    let dict = read_state_dict(&fixtures().join("convnext_smoke_weights.safetensors")).unwrap();
    let model = ConvNextConfig::smoke().with_in_channels(4).init(&d);
    let (model, report) = load_state_dict(model, &dict);
    // Every torchvision key is consumed and every parameter filled: the names are right.
    assert!(report.is_exact(), "{}", report.summary());
    let io = fixture("convnext_smoke_io.safetensors");
    let err = rel_err(model.forward(tensor(&io["input"], &d)), &io["output"]);
    assert!(err < TOL, "relative error {err}");
}

fn seed_config() -> FusionConfig {
    FusionConfig::new(50, BackboneKind::SmokeConvnext)
}

#[test]
fn seed_ensemble_names_and_outputs_match_pytorch() {
    let d = dev();
    let model = seed_config().init(&d);
    // Names and shapes equal the seed's state dict, key for key.
    let keys = std::fs::read_to_string(fixtures().join("seed_ensemble_keys.txt")).unwrap();
    let expected: BTreeMap<String, Vec<usize>> = keys
        .lines()
        .filter(|l| !l.contains("num_batches_tracked"))
        .map(|l| {
            let (k, s) = l.split_once(' ').unwrap();
            (
                k.to_string(),
                s.split('x').map(|v| v.parse().unwrap()).collect(),
            )
        })
        .collect();
    let ours: BTreeMap<String, Vec<usize>> = state_dict(&seed_config().init(&d))
        .into_iter()
        .map(|(k, t)| (k, t.shape))
        .collect();
    assert_eq!(ours, expected);

    let (model, report) = load_state_dict(model.clone(), &formula_dict(&model));
    assert!(report.is_exact(), "{}", report.summary());
    let io = fixture("seed_ensemble_io.safetensors");
    let input = FusionInput {
        tabular: tensor(&io["tabular"], &d),
        landsat: tensor(&io["landsat"], &d),
        bioclim: tensor(&io["bioclim"], &d),
        sentinel: tensor(&io["sentinel"], &d),
        prior: None,
    };
    let err = rel_err(model.forward(input), &io["output"]);
    assert!(err < TOL, "relative error {err}");
}

fn trainable_params(kind: BackboneKind) -> usize {
    let model = kind.config(3, Some(1000)).try_init(&dev()).unwrap();
    slots(&model)
        .iter()
        .filter(|s| !s.torch_key.ends_with("running_mean") && !s.torch_key.ends_with("running_var"))
        .map(|s| s.shape.iter().product::<usize>())
        .sum()
}

#[test]
fn preset_parameter_counts_equal_torchvision() {
    let counts = std::fs::read_to_string(fixtures().join("param_counts.txt")).unwrap();
    for line in counts.lines() {
        let (name, n) = line.split_once(' ').unwrap();
        let kind = BackboneKind::from_name(name).unwrap();
        let n: usize = n.parse().unwrap();
        assert_eq!(trainable_params(kind), n, "{name}");
        assert_eq!(kind.meta().num_params, Some(n), "{name} metadata");
    }
}

#[test]
fn preset_output_shapes_at_128_and_cube_sizes() {
    let d = dev();
    for kind in [
        BackboneKind::Resnet18,
        BackboneKind::Resnet50,
        BackboneKind::ConvnextTiny,
        BackboneKind::SmokeConvnext,
        BackboneKind::SmokeResnet,
    ] {
        let m = kind.config(4, Some(1000)).try_init(&d).unwrap();
        let x = Tensor::<4>::zeros([1, 4, 128, 128], &d);
        let pre = m.forward_out(x.clone(), true);
        let out = m.forward_out(x, false);
        assert_eq!(out.dims(), [1, 1000], "{kind:?}");
        assert_eq!(pre.dims()[1], kind.config(4, None).out_dim(), "{kind:?}");
    }
    for (c, h, w) in [(6, 4, 21), (4, 19, 12)] {
        let m = ResNetConfig::cube(c).init(&d);
        let out = m.forward(Tensor::<4>::zeros([2, c, h, w], &d));
        assert_eq!(out.dims(), [2, 1000]);
    }
}

#[test]
fn stem_adaptation_rule_on_hand_example() {
    // One output filter, 1x2 kernel: R = [1, 2], G = [3, 4], B = [5, 6].
    let w = NamedTensor {
        shape: vec![1, 3, 1, 2],
        data: vec![1., 2., 3., 4., 5., 6.],
    };
    let four = adapt_input_channels(&w, 4);
    assert_eq!(four.shape, vec![1, 4, 1, 2]);
    // RGB copied, NIR = mean(RGB) = [3, 4], all times 3/4.
    assert_eq!(four.data, vec![0.75, 1.5, 2.25, 3.0, 3.75, 4.5, 2.25, 3.0]);
    let one = adapt_input_channels(&w, 1);
    assert_eq!(one.data, vec![9.0, 12.0]);
    let two = adapt_input_channels(&w, 2);
    assert_eq!(two.data, vec![1.5, 3.0, 4.5, 6.0]);
}

#[test]
fn import_adapts_a_three_channel_stem_and_reports_it() {
    let d = dev();
    let src = ConvNextConfig::smoke().with_in_channels(3).init(&d);
    let dict = state_dict(&src);
    let model = seed_config().init(&d);
    let (model, report) = import_into(model, &dict, "sentinel_model.");
    assert!(report.missing.is_empty(), "{}", report.summary());
    assert!(report.unexpected.is_empty(), "{}", report.summary());
    assert_eq!(report.adapted.len(), 1);
    assert_eq!(report.adapted[0].0, "sentinel_model.features.0.0.weight");
    assert_eq!(report.adapted[0].2, vec![16, 4, 4, 4]);
    // The loaded NIR filter is the 3/4-scaled mean of the RGB filters.
    let ours = state_dict(&model);
    let w = &ours["sentinel_model.features.0.0.weight"];
    let rgb = &dict["features.0.0.weight"];
    let (o, j) = (5, 7);
    let mean = (0..3).map(|c| rgb.data[(o * 3 + c) * 16 + j]).sum::<f32>() / 3.0;
    assert!((w.data[(o * 4 + 3) * 16 + j] - mean * 0.75).abs() < 1e-6);
    assert!((w.data[(o * 4) * 16 + j] - rgb.data[(o * 3) * 16 + j] * 0.75).abs() < 1e-6);
}

#[test]
fn bce_with_logits_matches_hand_computation() {
    let d = dev();
    let logits =
        Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 2.0, -3.0, 100.0], [2, 2]), &d);
    let targets = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, 1.0, 0.2, 0.0], [2, 2]), &d);
    // ln 2, ln(1 + e^-2), 0.6 + ln(1 + e^-3), 100 + ln(1 + e^-100): mean 25.3671656.
    let v = bce_with_logits(logits, targets)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(v.len(), 1);
    assert!((v[0] - 25.367_166).abs() < 1e-4, "{}", v[0]);
}

/// (parameters visited, those without a non-zero gradient) of `model` after a backward pass.
fn gradient_check<M: Module>(model: &M, grads: &burn::tensor::Gradients) -> (usize, Vec<String>) {
    let all = grads_by_path(model, grads);
    let zero = all
        .iter()
        .filter(|(_, g)| !g.iter().any(|v| *v != 0.0))
        .map(|(path, _)| path.clone())
        .collect();
    (all.len(), zero)
}

fn tiny_input(b: usize, d: &Device) -> FusionInput {
    let r = |shape: [usize; 4]| {
        Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), d)
    };
    FusionInput {
        tabular: Tensor::random([b, 46], burn::tensor::Distribution::Normal(0.0, 1.0), d),
        landsat: r([b, 6, 4, 21]),
        bioclim: r([b, 4, 19, 12]),
        sentinel: r([b, 4, 64, 64]),
        prior: None,
    }
}

#[test]
fn every_fusion_parameter_gets_a_gradient_and_bn_stats_update() {
    let d = dev().autodiff();
    let config = FusionConfig::tiny(7).with_dropout(0.0);
    let model = config.init(&d);
    let before = state_dict(&model)["landsat_model.bn1.running_mean"].clone();
    let logits = model.forward(tiny_input(3, &d));
    let targets = Tensor::<2>::ones([3, 7], &d).mul_scalar(0.3);
    let grads = bce_with_logits(logits, targets).backward();
    let (checked, zero) = gradient_check(&model, &grads);
    assert!(checked > 50);
    assert!(zero.is_empty(), "no gradient: {zero:?}");
    // BatchNorm running statistics move in training mode ...
    let after = state_dict(&model)["landsat_model.bn1.running_mean"].clone();
    assert_ne!(before.data, after.data);
    // ... and are used, deterministically, in eval mode.
    let eval = model.valid();
    let x = tiny_input(2, &Device::flex());
    let a = eval
        .forward(x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let b = eval.forward(x).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a, b);
}

#[test]
fn disabled_branches_have_no_parameters_and_width_adapts() {
    let d = dev();
    let config = FusionConfig::tiny(5)
        .with_use_landsat(false)
        .with_use_sentinel(false);
    let model = config.init(&d);
    let keys: Vec<String> = state_dict(&model).into_keys().collect();
    assert!(
        keys.iter()
            .all(|k| !k.starts_with("landsat") && !k.starts_with("sentinel"))
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.starts_with("ln1") || k.starts_with("ln3"))
    );
    assert_eq!(config.fusion_width(), 32 + 64);
    let out = model.forward(tiny_input(2, &d));
    assert_eq!(out.dims(), [2, 5]);
    let seed = FusionConfig::paper(11255, BackboneKind::ConvnextBase);
    assert_eq!(seed.fusion_width(), 3032);
    assert!(FusionConfig::tiny(5).with_dropout(1.5).validate().is_err());
}

#[test]
fn checkpoint_round_trip_keeps_config_and_outputs() {
    let d = dev();
    let config = FusionConfig::tiny(6).with_sentinel_output(BranchOutput::Logits1000);
    let model = config.init(&d);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    checkpoint::save_safetensors(&model, &config, &path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left behind");
    let read = checkpoint::read_config(&path).unwrap();
    assert_eq!(
        serde_json::to_string(&read).unwrap(),
        serde_json::to_string(&config).unwrap()
    );
    let (loaded, report) = checkpoint::load_safetensors(&read, &path, &d).unwrap();
    assert!(report.is_exact(), "{}", report.summary());
    // PyTorch shape for the flattened cube norm, BatchNorm counters present.
    let raw = geolife_model::import::read_safetensors(&path).unwrap();
    assert_eq!(raw["landsat_norm.weight"].shape, vec![6, 4, 21]);
    let x = tiny_input(2, &d);
    let a = model.forward(x.clone());
    let b = loaded.forward(x);
    let b = NamedTensor {
        shape: b.dims().to_vec(),
        data: b.into_data().try_to_vec::<f32>().unwrap(),
    };
    // Same weights; only the memory layout of transposed Linear weights may change rounding.
    assert!(rel_err(a, &b) < 1e-5);
    // A wrong config is a typed error naming the file, the key and both shapes.
    let other = FusionConfig::tiny(9);
    let err = checkpoint::load_safetensors(&other, &path, &d).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ckpt.safetensors") && msg.contains("has shape"),
        "{msg}"
    );
}

#[test]
fn bad_weight_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = read_state_dict(&path).unwrap_err();
    assert!(err.to_string().contains("junk.safetensors"), "{err}");
    let err = read_state_dict(&dir.path().join("w.onnx")).unwrap_err();
    assert!(err.to_string().contains("unknown extension"), "{err}");
}

#[test]
fn pth_and_safetensors_state_dicts_are_identical() {
    let pth = read_state_dict(&fixtures().join("convnext_smoke_weights.pth")).unwrap();
    let st = read_state_dict(&fixtures().join("convnext_smoke_weights.safetensors")).unwrap();
    assert_eq!(pth, st);
}

fn with_prior(x: &FusionInput, p: Vec<f32>, d: &Device) -> FusionInput {
    let b = x.tabular.dims()[0];
    let c = p.len() / b;
    FusionInput {
        prior: Some(Tensor::<2>::from_data(TensorData::new(p, [b, c]), d)),
        ..x.clone()
    }
}

#[test]
fn logit_prior_input_adds_the_log_prior_to_the_logits() {
    use geolife_model::fusion::{PRIOR_EPS, PriorInput};
    let d = dev();
    let model = FusionConfig::tiny(3)
        .with_prior_input(PriorInput::Logit)
        .init(&d)
        .valid();
    let x = tiny_input(2, &d);
    let p = vec![0.5, 0.0, 1.0, 0.1, 0.2, 0.0];
    let zero = model
        .forward(with_prior(&x, vec![0.0; 6], &d))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let out = model
        .forward(with_prior(&x, p.clone(), &d))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    // Hand computation: the untrained scale is 1, so the logits move by
    // ln(p + eps) - ln(0 + eps) = ln(1 + p / eps).
    for i in 0..6 {
        let want = (1.0 + f64::from(p[i]) / PRIOR_EPS).ln() as f32;
        assert!(
            (out[i] - zero[i] - want).abs() < 1e-4,
            "column {i}: {} vs {want}",
            out[i] - zero[i]
        );
    }
    // The scale is a parameter with the seed-free name `prior_scale`.
    let keys: Vec<String> = state_dict(&model).into_keys().collect();
    assert!(keys.contains(&"prior_scale".to_string()), "{keys:?}");
    // A model with a prior input refuses a batch without one, naming the branch.
    let err = model.check_input(&x).unwrap_err().to_string();
    assert!(err.contains("prior"), "{err}");
    let wrong = with_prior(&x, vec![0.0; 4], &d);
    assert!(model.check_input(&wrong).is_err());
}

#[test]
fn features_prior_input_widens_fc1_and_gets_gradients() {
    use geolife_model::fusion::PriorInput;
    let d = dev().autodiff();
    let config = FusionConfig::tiny(4)
        .with_dropout(0.0)
        .with_prior_input(PriorInput::Features)
        .with_prior_rank(5);
    assert_eq!(
        config.fusion_width(),
        FusionConfig::tiny(4).fusion_width() + 5
    );
    assert!(config.clone().with_prior_rank(0).validate().is_err());
    let model = config.init(&d);
    let x = with_prior(&tiny_input(3, &d), vec![0.3; 12], &d);
    let grads = bce_with_logits(model.forward(x), Tensor::<2>::ones([3, 4], &d)).backward();
    let (_, zero) = gradient_check(&model, &grads);
    assert!(zero.is_empty(), "no gradient: {zero:?}");
    let keys: Vec<String> = state_dict(&model).into_keys().collect();
    assert!(
        keys.iter().any(|k| k.starts_with("prior_proj.")),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.starts_with("ln4.")), "{keys:?}");
}

/// A model rebuilt from a state dict takes back the parameter ids of the one it was saved from
/// (what resuming a checkpoint needs: the optimiser state is keyed by them), and ids of another
/// parameter count are refused.
#[test]
fn parameter_ids_move_to_a_rebuilt_model() {
    use geolife_model::state::{param_ids, with_param_ids};
    let device = Device::flex();
    let config = FusionConfig::tiny(7);
    let saved = config.init(&device);
    let ids = param_ids(&saved);
    let fresh = config.init(&device);
    assert!(ids.len() > 10);
    assert_ne!(param_ids(&fresh), ids, "fresh parameters get new ids");
    let values = geolife_model::state::state_dict(&fresh);
    let slots = geolife_model::state::slots(&fresh);
    let rebuilt = with_param_ids(fresh, &ids).unwrap();
    // BatchNorm running statistics keep their own ids (burn's `RunningState` takes none from
    // a mapper); they have no gradient, so no optimiser state is keyed by them.
    let trained = |all: Vec<u64>| -> Vec<u64> {
        all.into_iter()
            .zip(&slots)
            .filter(|(_, s)| !s.burn_path.contains(".running_"))
            .map(|(id, _)| id)
            .collect()
    };
    assert_eq!(slots.len(), ids.len());
    assert!(
        trained(ids.clone()).len() < ids.len(),
        "the tiny model has BatchNorm"
    );
    assert_eq!(trained(param_ids(&rebuilt)), trained(ids.clone()));
    assert!(
        geolife_model::state::state_dict(&rebuilt) == values,
        "values unchanged"
    );
    let e = with_param_ids(rebuilt, &ids[1..]).unwrap_err();
    assert!(
        e.contains(&format!("{} parameter ids recorded", ids.len() - 1)),
        "{e}"
    );
}

/// The CPU runs ConvNeXt channels-last (its own depthwise and dense kernels, layer scale folded
/// into the projection); every other device runs it channels-first. Both give the same outputs
/// and the same gradient for every parameter, with a layer scale large enough that the blocks
/// matter.
#[test]
fn convnext_channels_last_equals_channels_first_with_gradients() {
    let d = dev().autodiff();
    let model = ConvNextConfig::smoke()
        .with_in_channels(4)
        .with_layer_scale(0.5)
        .with_num_classes(Some(10))
        .init(&d);
    let x = Tensor::<4>::random(
        [3, 4, 64, 64],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &d,
    );
    let (y1, g1) = output_and_grads(&model, &x, |m, x| m.forward_with(x, false));
    let (y2, g2) = output_and_grads(&model, &x, |m, x| {
        m.forward_head(m.forward_features_nchw(x), false)
    });
    assert!(
        rel_vec(&y1, &y2) < 1e-5,
        "outputs differ by {}",
        rel_vec(&y1, &y2)
    );
    assert_eq!(g1.keys().collect::<Vec<_>>(), g2.keys().collect::<Vec<_>>());
    assert!(g1.len() > 20, "{} parameters", g1.len());
    for (path, want) in &g2 {
        assert!(!want.is_empty(), "{path} has no gradient channels-first");
        let e = rel_vec(&g1[path], want);
        assert!(e < 1e-4, "{path}: gradients differ by {e}");
    }
}
