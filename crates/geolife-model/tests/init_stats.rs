//! Fresh weights start where PyTorch's would: each module kind's initial statistics against the
//! distributions PyTorch and torchvision draw from, computed by hand from their init code:
//! - `nn.Linear` / `nn.Conv2d` (the seed's tabular MLP, fusion head, new stems): kaiming-uniform
//!   with a = sqrt(5), i.e. weights and biases uniform in +-1/sqrt(fan_in) (std bound/sqrt(3));
//! - torchvision ResNet convolutions: kaiming-normal, fan_out, ReLU: std sqrt(2 / (out*k*k));
//! - torchvision ConvNeXt, Swin V2, MaxViT linear layers and convolutions (ConvNeXt, MaxViT):
//!   normal with std 0.02 (`trunc_normal_` cuts at +-2, i.e. 100 std), zero bias; ConvNeXt layer
//!   scale 1e-6; Swin V2 logit scale ln(10);
//! - LayerNorm and BatchNorm: weight 1, bias 0.

use burn::tensor::Device;
use geolife_model::backbones::BackboneKind;
use geolife_model::fusion::FusionConfig;
use geolife_model::state::{StateDict, state_dict};

fn stats(dict: &StateDict, key: &str) -> (f64, f64, f64, usize) {
    let t = dict.get(key).unwrap_or_else(|| {
        panic!(
            "no `{key}` in {:?}",
            dict.keys().take(8).collect::<Vec<_>>()
        )
    });
    let n = t.data.len() as f64;
    let mean = t.data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = t
        .data
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let max = t
        .data
        .iter()
        .map(|v| f64::from(v.abs()))
        .fold(0.0, f64::max);
    (mean, var.sqrt(), max, t.data.len())
}

/// Uniform in +-bound: every value inside, std within 5% (or 5 standard errors) of
/// bound/sqrt(3), mean near 0.
fn assert_uniform(dict: &StateDict, key: &str, bound: f64) {
    let (mean, std, max, n) = stats(dict, key);
    assert!(max <= bound * (1.0 + 1e-6), "{key}: max {max} > {bound}");
    let want = bound / 3f64.sqrt();
    // A uniform sample's std has a relative standard error of sqrt(0.2 / n).
    let tolerance = (5.0 * (0.2 / n as f64).sqrt()).max(0.05);
    assert!(
        (std / want - 1.0).abs() < tolerance,
        "{key}: std {std}, want {want} (n {n})"
    );
    assert!(
        mean.abs() < 4.0 * want / (n as f64).sqrt(),
        "{key}: mean {mean}"
    );
}

/// Normal with `want` std (within 5%, or 5 standard errors of a sample std, 1/sqrt(2n) of it,
/// where that is wider: a 1,024-value tensor's std is only known to 2.2%) and mean 0 (4
/// standard errors). The tests of this file draw from one device stream in parallel, so which
/// values a tensor gets varies from run to run: the bounds must hold for any draw.
fn assert_normal(dict: &StateDict, key: &str, want: f64) {
    let (mean, std, max, n) = stats(dict, key);
    let tolerance = (5.0 / (2.0 * n as f64).sqrt()).max(0.05);
    assert!(
        (std / want - 1.0).abs() < tolerance,
        "{key}: std {std}, want {want} (n {n})"
    );
    assert!(
        mean.abs() < 4.0 * want / (n as f64).sqrt(),
        "{key}: mean {mean}"
    );
    assert!(max > 2.0 * want, "{key}: max {max}: not a normal's tails");
}

fn assert_const(dict: &StateDict, key: &str, value: f32) {
    let t = &dict[key];
    assert!(
        t.data
            .iter()
            .all(|&v| (v - value).abs() <= value.abs() * 1e-6),
        "{key}: not all {value}"
    );
}

#[test]
fn seed_fusion_layers_start_as_pytorch_defaults() {
    let device = Device::flex();
    device.seed(1);
    let c = FusionConfig::new(2000, BackboneKind::SmokeConvnext);
    let d = state_dict(&c.init(&device));
    // Tabular MLP, fusion layers: nn.Linear defaults.
    assert_uniform(&d, "tab_model.0.weight", 1.0 / 46f64.sqrt());
    assert_uniform(&d, "tab_model.2.weight", 1.0 / 128f64.sqrt());
    assert_uniform(&d, "fc1.weight", 1.0 / (c.fusion_width() as f64).sqrt());
    assert_uniform(&d, "fc1.bias", 1.0 / (c.fusion_width() as f64).sqrt());
    assert_uniform(&d, "fc2.weight", 1.0 / 1024f64.sqrt());
    assert_uniform(&d, "fc2.bias", 1.0 / 1024f64.sqrt());
    // The seed's cube stems are new nn.Conv2d(C, 64, 3): fan_in = C * 9.
    assert_uniform(&d, "landsat_model.conv1.weight", 1.0 / 54f64.sqrt());
    assert_uniform(&d, "bioclim_model.conv1.weight", 1.0 / 36f64.sqrt());
    // The rest of torchvision's ResNet18: kaiming-normal fan_out.
    for (key, out, k) in [
        ("landsat_model.layer1.0.conv1.weight", 64.0f64, 3.0f64),
        ("landsat_model.layer3.0.conv2.weight", 256.0, 3.0),
        ("bioclim_model.layer4.0.downsample.0.weight", 512.0, 1.0),
    ] {
        assert_normal(&d, key, (2.0 / (out * k * k)).sqrt());
    }
    assert_uniform(&d, "landsat_model.fc.weight", 1.0 / 512f64.sqrt());
    for key in ["tab_norm.weight", "ln3.weight", "landsat_model.bn1.weight"] {
        assert_const(&d, key, 1.0);
    }
    for key in [
        "tab_norm.bias",
        "ln3.bias",
        "landsat_model.layer1.0.bn1.bias",
    ] {
        assert_const(&d, key, 0.0);
    }
}

#[test]
fn convnext_starts_as_torchvision() {
    let device = Device::flex();
    device.seed(2);
    let m = BackboneKind::ConvnextTiny
        .config(4, Some(1000))
        .try_init(&device)
        .unwrap();
    let d = state_dict(&m);
    // The new 4-channel stem: nn.Conv2d defaults (fan_in 4 * 4 * 4).
    assert_uniform(&d, "features.0.0.weight", 1.0 / 64f64.sqrt());
    for key in [
        "features.1.0.block.0.weight",
        "features.1.0.block.3.weight",
        "features.5.8.block.5.weight",
        "features.4.1.weight",
        "classifier.2.weight",
    ] {
        assert_normal(&d, key, 0.02);
    }
    for key in [
        "features.1.0.block.0.bias",
        "features.1.0.block.3.bias",
        "features.4.1.bias",
        "classifier.2.bias",
        "features.1.0.block.2.bias",
    ] {
        assert_const(&d, key, 0.0);
    }
    assert_const(&d, "features.3.2.layer_scale", 1e-6);
    assert_const(&d, "features.1.0.block.2.weight", 1.0);
}

#[test]
fn swin_v2_and_maxvit_start_as_torchvision() {
    let device = Device::flex();
    device.seed(3);
    let swin = BackboneKind::SwinV2T
        .config(4, Some(1000))
        .try_init(&device)
        .unwrap();
    let d = state_dict(&swin);
    for key in [
        "features.1.0.attn.qkv.weight",
        "features.5.3.mlp.0.weight",
        "features.1.1.attn.cpb_mlp.0.weight",
        "features.2.reduction.weight",
        "head.weight",
    ] {
        assert_normal(&d, key, 0.02);
    }
    for key in [
        "features.1.0.attn.qkv.bias",
        "features.5.3.mlp.0.bias",
        "head.bias",
    ] {
        assert_const(&d, key, 0.0);
    }
    assert_const(&d, "features.1.0.attn.logit_scale", 10f32.ln());
    assert_uniform(&d, "features.0.0.weight", 1.0 / 64f64.sqrt());

    let maxvit = BackboneKind::MaxvitT
        .config(4, Some(1000))
        .try_init(&device)
        .unwrap();
    let d = state_dict(&maxvit);
    // The seed's new 4-channel stem: nn.Conv2d defaults (fan_in 4 * 3 * 3).
    assert_uniform(&d, "stem.0.0.weight", 1.0 / 6.0);
    for key in [
        "stem.1.0.weight",
        "blocks.0.layers.0.layers.MBconv.layers.conv_a.0.weight",
        "blocks.2.layers.1.layers.window_attention.attn_layer.1.to_qkv.weight",
        "blocks.2.layers.1.layers.grid_attention.attn_layer.1.relative_position_bias_table",
        "classifier.3.weight",
    ] {
        assert_normal(&d, key, 0.02);
    }
    for key in [
        "stem.1.0.bias",
        "blocks.0.layers.0.layers.MBconv.layers.conv_c.bias",
        "blocks.2.layers.1.layers.window_attention.attn_layer.1.to_qkv.bias",
    ] {
        assert_const(&d, key, 0.0);
    }
    assert_const(
        &d,
        "blocks.0.layers.0.layers.MBconv.layers.pre_norm.weight",
        1.0,
    );
}
