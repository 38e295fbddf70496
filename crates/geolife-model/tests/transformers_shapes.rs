//! Presets of Swin V2 and MaxViT: parameter counts against torchvision's totals, output shapes
//! on 4x128x128 Sentinel patches, config validation and training-only stochastic depth.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use geolife_model::backbones::maxvit::MaxVitConfig;
use geolife_model::backbones::swin_v2::SwinV2Config;

/// torchvision parameter totals (3 channels, 1000 classes), printed by gen_transformers.py.
const SWIN_V2_T: usize = 28_351_570;
const SWIN_V2_S: usize = 49_737_442;
const SWIN_V2_B: usize = 87_930_848;
const MAXVIT_T: usize = 30_919_624;
/// MaxViT-T BatchNorm running mean + var elements: burn counts them in `num_params`.
const MAXVIT_T_BN_STATS: usize = 47_616;

fn patch(device: &Device) -> Tensor<4> {
    Tensor::random([1, 4, 128, 128], Distribution::Normal(0.0, 1.0), device)
}

fn finite(t: &Tensor<2>) -> bool {
    t.to_data()
        .try_to_vec::<f32>()
        .expect("f32")
        .iter()
        .all(|v| v.is_finite())
}

#[test]
fn swin_v2_presets_have_torchvision_parameter_counts() {
    let device = Device::flex();
    for (cfg, want, embed) in [
        (SwinV2Config::swin_v2_t(), SWIN_V2_T, 96),
        (SwinV2Config::swin_v2_s(), SWIN_V2_S, 96),
        (SwinV2Config::swin_v2_b(), SWIN_V2_B, 128),
    ] {
        let m = cfg.init(&device).expect("preset is valid");
        assert_eq!(m.num_params(), want, "{cfg:?}");
        // A fourth input channel adds one 4x4 filter plane per embedding channel.
        let m4 = cfg.with_in_channels(4).init(&device).expect("valid");
        assert_eq!(m4.num_params(), want + embed * 16);
    }
}

#[test]
fn maxvit_t_has_torchvision_parameter_count() {
    let device = Device::flex();
    let m = MaxVitConfig::maxvit_t()
        .init(&device)
        .expect("preset is valid");
    assert_eq!(m.num_params(), MAXVIT_T + MAXVIT_T_BN_STATS);
    // Native 128 with partition 4: bias tables shrink from 13x13 to 7x7 offsets per head.
    // Heads x (window + grid) over all layers: 2 * (2*2 + 2*4 + 5*8 + 2*16) = 168 tables.
    let heads = 2 * (2 * 2 + 2 * 4 + 5 * 8 + 2 * 16);
    let native = MaxVitConfig::maxvit_t_native_128()
        .init(&device)
        .expect("valid");
    assert_eq!(
        native.num_params(),
        MAXVIT_T + MAXVIT_T_BN_STATS - heads * (169 - 49)
    );
}

#[test]
fn swin_v2_presets_forward_on_4x128x128() {
    let device = Device::flex();
    for (name, cfg, width) in [
        ("swin_v2_t", SwinV2Config::swin_v2_t(), 768),
        ("swin_v2_s", SwinV2Config::swin_v2_s(), 768),
        ("swin_v2_b", SwinV2Config::swin_v2_b(), 1024),
    ] {
        let m = cfg.with_in_channels(4).init(&device).expect("valid");
        let x = patch(&device);
        m.check_input(x.dims()).expect("valid input");
        let t = Instant::now();
        let f = m.forward_features(x);
        assert_eq!(f.dims(), [1, width]);
        let y = m.forward_head(f.clone(), false);
        assert_eq!(y.dims(), [1, 1000]);
        let pre = m.forward_head(f.clone(), true);
        assert_eq!(
            pre.into_data(),
            f.clone().into_data(),
            "pre_logits = pooled features"
        );
        assert!(finite(&f) && finite(&y));
        eprintln!("{name} 1x4x128x128 forward: {:?}", t.elapsed());
    }
}

#[test]
fn maxvit_t_forward_on_4x128x128_native_and_resized() {
    let device = Device::flex();
    for cfg in [
        MaxVitConfig::maxvit_t_native_128(),
        MaxVitConfig::maxvit_t_resize_224(),
    ] {
        let m = cfg
            .clone()
            .with_in_channels(4)
            .init(&device)
            .expect("valid");
        let x = patch(&device);
        m.check_input(x.dims()).expect("128 accepted");
        let t = Instant::now();
        let f = m.forward_features(x);
        assert_eq!(f.dims(), [1, 512]);
        let y = m.forward_head(f.clone(), false);
        assert_eq!(y.dims(), [1, 1000]);
        let pre = m.forward_head(f.clone(), true);
        assert_eq!(
            pre.into_data(),
            f.clone().into_data(),
            "pre_logits = pooled features"
        );
        assert!(finite(&f) && finite(&y));
        eprintln!(
            "maxvit_t (input {}) 1x4x128x128 forward: {:?}",
            cfg.input_size,
            t.elapsed()
        );
    }
}

#[test]
fn maxvit_grid_sizes_and_partition_validation() {
    assert_eq!(
        MaxVitConfig::maxvit_t().block_grid_sizes(),
        vec![56, 28, 14, 7]
    );
    assert_eq!(
        MaxVitConfig::maxvit_t_native_128().block_grid_sizes(),
        vec![32, 16, 8, 4]
    );
    // torchvision's partition 7 cannot run at 128 (grids 32, 16, 8, 4).
    let err = MaxVitConfig::maxvit_t()
        .with_input_size(128)
        .validate()
        .expect_err("7 does not divide 32");
    assert!(err.to_string().contains("partition 7"), "{err}");
    // The unchanged 224 model refuses a 128 input unless it resizes.
    let device = Device::flex();
    let m = MaxVitConfig::maxvit_t().with_block_layers(vec![1, 1, 1, 1]);
    let m = m.init(&device).expect("valid");
    assert!(m.check_input([1, 3, 128, 128]).is_err());
    assert!(m.check_input([1, 3, 224, 224]).is_ok());
}

#[test]
fn swin_v2_config_validation() {
    let bad_stages = SwinV2Config::swin_v2_t().with_depths(vec![2, 2, 6]);
    assert!(bad_stages.validate().is_err());
    let bad_heads = SwinV2Config::swin_v2_t().with_num_heads(vec![5, 6, 12, 24]);
    let err = bad_heads.validate().expect_err("96 is not divisible by 5");
    assert!(err.to_string().contains("stage 0"), "{err}");
    let device = Device::flex();
    let m = SwinV2Config::swin_v2_t()
        .with_embed_dim(8)
        .with_num_heads(vec![1, 1, 1, 1])
        .init(&device)
        .expect("valid");
    assert!(
        m.check_input([1, 4, 64, 64]).is_err(),
        "3-channel model, 4-channel input"
    );
}

#[test]
fn stochastic_depth_only_in_training_on_autodiff() {
    let small = SwinV2Config::swin_v2_t()
        .with_in_channels(4)
        .with_embed_dim(8)
        .with_depths(vec![2, 2, 2, 2])
        .with_num_heads(vec![1, 1, 2, 2])
        .with_stochastic_depth_prob(0.9);
    let same = |device: &Device, m: &geolife_model::backbones::swin_v2::SwinV2| {
        let x = Tensor::<4>::random([4, 4, 32, 32], Distribution::Normal(0.0, 1.0), device);
        let a = m
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        let b = m.forward(x).into_data().try_to_vec::<f32>().expect("f32");
        a == b
    };
    let flex = Device::flex();
    let m = small.init(&flex).expect("valid");
    assert!(same(&flex, &m), "inference device: deterministic");
    let ad = Device::flex().autodiff();
    let m = small.init(&ad).expect("valid");
    assert!(
        !same(&ad, &m),
        "training on autodiff: branches dropped at random"
    );
    let m = m.valid();
    assert!(same(&ad, &m), "valid(): deterministic");
}
