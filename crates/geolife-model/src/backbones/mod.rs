//! Image backbones (ResNet, ConvNeXt, Swin V2, MaxViT) with `forward_features`/`forward_head`,
//! named presets and a registry enum ([`BackboneKind`]) carrying pretrained metadata.

pub mod convnext;
pub mod maxvit;
pub mod resnet;
pub mod swin_v2;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
pub use strum::{IntoEnumIterator, VariantNames};

use crate::error::ModelError;
use convnext::{ConvNext, ConvNextConfig};
use maxvit::{MaxVit, MaxVitConfig};
use resnet::{ResNet, ResNetConfig};
use swin_v2::{SwinV2, SwinV2Config};

/// ImageNet normalisation used by every torchvision classification weight.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation (see [`IMAGENET_MEAN`]).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Every backbone the Sentinel branch can use, by its serde/CLI name (torchvision's builder
/// name). `strum` gives the names (`name`, `FromStr`, [`VariantNames::VARIANTS`]) and the
/// variant list (`BackboneKind::iter()`); serde uses the same names.
#[derive(
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::EnumIter,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BackboneKind {
    /// torchvision `resnet18`.
    Resnet18,
    /// torchvision `resnet34`.
    Resnet34,
    /// torchvision `resnet50`.
    Resnet50,
    /// torchvision `convnext_tiny`.
    ConvnextTiny,
    /// torchvision `convnext_small`.
    ConvnextSmall,
    /// torchvision `convnext_base`.
    ConvnextBase,
    /// torchvision `convnext_large`.
    ConvnextLarge,
    /// torchvision `swin_v2_t`.
    #[strum(serialize = "swin_v2_t")]
    SwinV2T,
    /// torchvision `swin_v2_s`.
    #[strum(serialize = "swin_v2_s")]
    SwinV2S,
    /// torchvision `swin_v2_b`.
    #[strum(serialize = "swin_v2_b")]
    SwinV2B,
    /// torchvision `maxvit_t`; how 128x128 patches reach it is [`SentinelInput`].
    MaxvitT,
    /// Tiny ConvNeXt (dims 16..128, depths 1) for CPU smoke runs; no pretrained weights.
    SmokeConvnext,
    /// Tiny ResNet (widths 8..64, one block per stage) for CPU smoke runs; no pretrained weights.
    SmokeResnet,
}

/// How Sentinel patches (128x128 in the official data) reach the image backbone.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SentinelInput {
    /// The backbone's pretrained-compatible choice: [`SentinelInput::Resize224`] for MaxViT
    /// (torchvision builds it for 224x224 only), [`SentinelInput::Native`] for every other
    /// backbone (convolutions and Swin's padded windows take any size).
    #[default]
    Auto,
    /// Patches enter at their stored size. MaxViT is then built for that size, with the
    /// largest partition size of at most 7 that divides every stage grid (4 at 128x128; its
    /// relative-position tables then differ from the pretrained 13x13 ones).
    Native,
    /// Bilinear resize to 224x224 (PyTorch `F.interpolate`, `align_corners=False`) before the
    /// backbone: pretrained-compatible, about 3x the compute of 128x128.
    #[serde(rename = "resize_224")]
    Resize224,
}

impl SentinelInput {
    /// Side the patches are resized to before `kind`, or `None` when they enter as stored.
    pub fn resize_to(self, kind: BackboneKind, side: usize) -> Option<usize> {
        let target = match (self, kind) {
            (Self::Native, _) => return None,
            (Self::Auto, BackboneKind::MaxvitT) | (Self::Resize224, _) => 224,
            (Self::Auto, _) => return None,
        };
        (target != side).then_some(target)
    }
}

/// Bilinear resize of `[B, C, H, W]` to `[B, C, side, side]`, as PyTorch's
/// `F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)`; identity when
/// the input already has that size.
pub fn resize_bilinear(x: Tensor<4>, side: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if h == side && w == side {
        return x;
    }
    burn::tensor::module::interpolate(
        x,
        burn::tensor::ops::InterpolateOptions::new(burn::tensor::ops::InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size([side, side]),
    )
}

/// Pretrained-weight facts of a backbone (timm's `default_cfg`).
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainedMeta {
    /// torchvision builder name.
    pub torchvision_name: &'static str,
    /// Input normalisation mean (RGB).
    pub mean: [f32; 3],
    /// Input normalisation std (RGB).
    pub std: [f32; 3],
    /// State-dict key of the first convolution's weight (the stem adapted to 4 channels).
    pub first_conv: &'static str,
    /// State-dict key prefix of the classifier.
    pub classifier: &'static str,
    /// Trainable parameter count of the 1000-class ImageNet model (torchvision's docs).
    pub num_params: Option<usize>,
}

impl BackboneKind {
    /// The serde/CLI name (`"convnext_tiny"`).
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Parse a registry name; the error lists every known name.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        name.parse().map_err(|_| ModelError::UnknownBackbone {
            name: name.to_string(),
            known: Self::VARIANTS.join(", "),
        })
    }

    /// Pretrained metadata of the variant.
    pub fn meta(self) -> PretrainedMeta {
        let (tv, first, cls, n) = match self {
            Self::Resnet18 => ("resnet18", "conv1.weight", "fc", Some(11_689_512)),
            Self::Resnet34 => ("resnet34", "conv1.weight", "fc", Some(21_797_672)),
            Self::Resnet50 => ("resnet50", "conv1.weight", "fc", Some(25_557_032)),
            Self::ConvnextTiny => (
                "convnext_tiny",
                "features.0.0.weight",
                "classifier.2",
                Some(28_589_128),
            ),
            Self::ConvnextSmall => (
                "convnext_small",
                "features.0.0.weight",
                "classifier.2",
                Some(50_223_688),
            ),
            Self::ConvnextBase => (
                "convnext_base",
                "features.0.0.weight",
                "classifier.2",
                Some(88_591_464),
            ),
            Self::ConvnextLarge => (
                "convnext_large",
                "features.0.0.weight",
                "classifier.2",
                Some(197_767_336),
            ),
            Self::SwinV2T => ("swin_v2_t", "features.0.0.weight", "head", Some(28_351_570)),
            Self::SwinV2S => ("swin_v2_s", "features.0.0.weight", "head", Some(49_737_442)),
            Self::SwinV2B => ("swin_v2_b", "features.0.0.weight", "head", Some(87_930_848)),
            Self::MaxvitT => (
                "maxvit_t",
                "stem.0.0.weight",
                "classifier.5",
                Some(30_919_624),
            ),
            Self::SmokeConvnext => ("", "features.0.0.weight", "classifier.2", None),
            Self::SmokeResnet => ("", "conv1.weight", "fc", None),
        };
        PretrainedMeta {
            torchvision_name: tv,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            first_conv: first,
            classifier: cls,
            num_params: n,
        }
    }

    /// The backbone's config for square `side x side` inputs (after any resize): only MaxViT
    /// depends on the input size, and fails when no partition size in 2..=7 divides its grids.
    pub fn config_for_size(
        self,
        in_channels: usize,
        num_classes: Option<usize>,
        side: usize,
    ) -> Result<BackboneConfig, ModelError> {
        let mut c = self.config(in_channels, num_classes);
        if let BackboneConfig::MaxVit(m, _) = &mut c
            && side != m.input_size
        {
            m.input_size = side;
            let grids = m.block_grid_sizes();
            m.partition_size = (2..=7)
                .rev()
                .find(|p| grids.iter().all(|g| g.is_multiple_of(*p)))
                .ok_or_else(|| {
                    ModelError::InvalidConfig(format!(
                        "maxvit_t at {side}x{side} input: its stage grids {grids:?} have no common \
                         partition size in 2..=7; use sentinel_input = \"resize_224\""
                    ))
                })?;
        }
        Ok(c)
    }

    /// The backbone's config for `in_channels` inputs and an optional classifier (MaxViT at
    /// torchvision's 224x224; see [`BackboneKind::config_for_size`]).
    pub fn config(self, in_channels: usize, num_classes: Option<usize>) -> BackboneConfig {
        let resnet = |c: ResNetConfig| {
            BackboneConfig::ResNet(
                c.with_in_channels(in_channels)
                    .with_num_classes(num_classes),
            )
        };
        let convnext = |c: ConvNextConfig| {
            BackboneConfig::ConvNext(
                c.with_in_channels(in_channels)
                    .with_num_classes(num_classes),
            )
        };
        match self {
            Self::Resnet18 => resnet(ResNetConfig::resnet18()),
            Self::Resnet34 => resnet(ResNetConfig::resnet34()),
            Self::Resnet50 => resnet(ResNetConfig::resnet50()),
            Self::SmokeResnet => {
                resnet(ResNetConfig::new([1, 1, 1, 1]).with_widths([8, 16, 32, 64]))
            }
            Self::ConvnextTiny => convnext(ConvNextConfig::tiny()),
            Self::ConvnextSmall => convnext(ConvNextConfig::small()),
            Self::ConvnextBase => convnext(ConvNextConfig::base()),
            Self::ConvnextLarge => convnext(ConvNextConfig::large()),
            Self::SmokeConvnext => convnext(ConvNextConfig::smoke()),
            // The transformers always carry a head; `None` only selects pre-logits output.
            Self::SwinV2T | Self::SwinV2S | Self::SwinV2B => {
                let c = match self {
                    Self::SwinV2T => SwinV2Config::swin_v2_t(),
                    Self::SwinV2S => SwinV2Config::swin_v2_s(),
                    _ => SwinV2Config::swin_v2_b(),
                };
                BackboneConfig::SwinV2(
                    c.with_in_channels(in_channels)
                        .with_num_classes(num_classes.unwrap_or(1000)),
                    num_classes.is_none(),
                )
            }
            Self::MaxvitT => BackboneConfig::MaxVit(
                MaxVitConfig::maxvit_t()
                    .with_in_channels(in_channels)
                    .with_num_classes(num_classes.unwrap_or(1000)),
                num_classes.is_none(),
            ),
        }
    }
}

/// A resolved backbone configuration.
#[derive(Debug, Clone)]
pub enum BackboneConfig {
    /// ResNet family.
    ResNet(ResNetConfig),
    /// ConvNeXt family.
    ConvNext(ConvNextConfig),
    /// Swin V2 family; the flag selects pre-logits output.
    SwinV2(SwinV2Config, bool),
    /// MaxViT; the flag selects pre-logits output.
    MaxVit(MaxVitConfig, bool),
}

impl BackboneConfig {
    /// Output width of [`Backbone::forward_out`] with [`Self::pre_logits`].
    pub fn out_dim(&self) -> usize {
        match self {
            Self::ResNet(c) => c.out_dim(),
            Self::ConvNext(c) => c.out_dim(),
            Self::SwinV2(c, pre) => {
                if *pre {
                    c.num_features()
                } else {
                    c.num_classes
                }
            }
            Self::MaxVit(c, pre) => {
                if *pre {
                    c.num_features()
                } else {
                    c.num_classes
                }
            }
        }
    }

    /// Whether the fusion branch takes pre-logits features from this backbone.
    pub fn pre_logits(&self) -> bool {
        match self {
            Self::ResNet(c) => c.num_classes.is_none(),
            Self::ConvNext(c) => c.num_classes.is_none(),
            Self::SwinV2(_, pre) | Self::MaxVit(_, pre) => *pre,
        }
    }

    /// Build the backbone; an inconsistent transformer config is an error.
    pub fn try_init(&self, device: &Device) -> Result<Backbone, ModelError> {
        let invalid = |e: String| ModelError::InvalidConfig(e);
        Ok(match self {
            Self::ResNet(c) => Backbone::ResNet(c.init(device)),
            Self::ConvNext(c) => Backbone::ConvNext(c.init(device)),
            Self::SwinV2(c, _) => {
                Backbone::SwinV2(c.init(device).map_err(|e| invalid(e.to_string()))?)
            }
            Self::MaxVit(c, _) => {
                Backbone::MaxVit(c.init(device).map_err(|e| invalid(e.to_string()))?)
            }
        })
    }
}

/// Any registered backbone, as one module (the Sentinel branch of the fusion network).
// One backbone per model: the variant size difference costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    /// ResNet family.
    ResNet(ResNet),
    /// ConvNeXt family.
    ConvNext(ConvNext),
    /// Swin V2 family.
    SwinV2(SwinV2),
    /// MaxViT.
    MaxVit(MaxVit),
}

impl Backbone {
    /// Classifier output, or pooled pre-logits features when `pre_logits`.
    ///
    /// # Shapes
    /// - input `[B, C, H, W]` -> `[B, classes]` or `[B, features]`
    pub fn forward_out(&self, x: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        match self {
            Self::ResNet(m) => m.forward_with(x, pre_logits),
            Self::ConvNext(m) => m.forward_with(x, pre_logits),
            Self::SwinV2(m) => m.forward_head(m.forward_features(x), pre_logits),
            Self::MaxVit(m) => m.forward_head(m.forward_features(x), pre_logits),
        }
    }

    /// Checks a `[B, C, H, W]` input shape before a forward pass, so a wrong size is an error
    /// naming both shapes instead of a panic deep inside a reshape.
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), ModelError> {
        let bad = |expected: String| ModelError::BadInput {
            branch: "sentinel",
            expected,
            got: dims.to_vec(),
        };
        match self {
            Self::ResNet(m) => {
                let c = m.conv1.weight.lazy_shape().to_vec()[1];
                if dims[0] == 0 || dims[1] != c || dims[2] == 0 || dims[3] == 0 {
                    return Err(bad(format!("[batch >= 1, {c}, H >= 1, W >= 1]")));
                }
            }
            Self::ConvNext(m) => {
                let c = m.stem.conv.weight.lazy_shape().to_vec()[1];
                if dims[0] == 0 || dims[1] != c || dims[2] < 32 || dims[3] < 32 {
                    return Err(bad(format!("[batch >= 1, {c}, H >= 32, W >= 32]")));
                }
            }
            Self::SwinV2(m) => m.check_input(dims).map_err(|e| bad(e.to_string()))?,
            Self::MaxVit(m) => m.check_input(dims).map_err(|e| bad(e.to_string()))?,
        }
        Ok(())
    }

    /// Classifier output.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_out(x, false)
    }

    /// torchvision key of a burn path inside this backbone, the enum variant segment included
    /// (`"ConvNext.stem.conv.weight"` -> `"features.0.0.weight"`).
    pub fn torch_key(path: &str) -> String {
        match path.split_once('.') {
            Some(("ResNet", rest)) => resnet::torch_key(rest),
            Some(("ConvNext", rest)) => convnext::torch_key(rest),
            Some(("SwinV2" | "MaxVit", rest)) => rest.to_string(),
            _ => path.to_string(),
        }
    }
}

#[cfg(test)]
mod names {
    use super::*;

    /// The registry names are torchvision's builder names (torchvision.models docs), parse
    /// back, and serde writes the same names into configs and checkpoints.
    #[test]
    fn names_are_torchvision_builders_and_serde_agrees() {
        let expected = [
            "resnet18",
            "resnet34",
            "resnet50",
            "convnext_tiny",
            "convnext_small",
            "convnext_base",
            "convnext_large",
            "swin_v2_t",
            "swin_v2_s",
            "swin_v2_b",
            "maxvit_t",
            "smoke_convnext",
            "smoke_resnet",
        ];
        assert_eq!(BackboneKind::VARIANTS, expected);
        for kind in BackboneKind::iter() {
            assert_eq!(BackboneKind::from_name(kind.name()).unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            if !kind.name().starts_with("smoke") {
                assert_eq!(kind.meta().torchvision_name, kind.name());
            }
        }
        let e = BackboneKind::from_name("swinv2_b").unwrap_err().to_string();
        assert!(e.contains("swin_v2_b") && e.contains("maxvit_t"), "{e}");
    }
}
