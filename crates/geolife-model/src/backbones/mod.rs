//! Image backbones (ResNet, ConvNeXt, Swin V2, MaxViT) with `forward_features`/`forward_head`,
//! named presets and a registry enum ([`BackboneKind`]) carrying pretrained metadata.

pub mod convnext;
pub mod maxvit;
pub mod resnet;
pub mod swin_v2;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use convnext::{ConvNext, ConvNextConfig};
use resnet::{ResNet, ResNetConfig};

/// ImageNet normalisation used by every torchvision classification weight.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation (see [`IMAGENET_MEAN`]).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Every backbone the Sentinel branch can use, by its serde/CLI name.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
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
    /// Tiny ConvNeXt (dims 16..128, depths 1) for CPU smoke runs; no pretrained weights.
    SmokeConvnext,
    /// Tiny ResNet (widths 8..64, one block per stage) for CPU smoke runs; no pretrained weights.
    SmokeResnet,
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
    /// All variants, in registry order.
    pub const ALL: [BackboneKind; 9] = [
        Self::Resnet18,
        Self::Resnet34,
        Self::Resnet50,
        Self::ConvnextTiny,
        Self::ConvnextSmall,
        Self::ConvnextBase,
        Self::ConvnextLarge,
        Self::SmokeConvnext,
        Self::SmokeResnet,
    ];

    /// The serde/CLI name (`"convnext_tiny"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Resnet18 => "resnet18",
            Self::Resnet34 => "resnet34",
            Self::Resnet50 => "resnet50",
            Self::ConvnextTiny => "convnext_tiny",
            Self::ConvnextSmall => "convnext_small",
            Self::ConvnextBase => "convnext_base",
            Self::ConvnextLarge => "convnext_large",
            Self::SmokeConvnext => "smoke_convnext",
            Self::SmokeResnet => "smoke_resnet",
        }
    }

    /// Parse a registry name.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| ModelError::UnknownBackbone {
                name: name.to_string(),
                known: Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
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

    /// The backbone's config for `in_channels` inputs and an optional classifier.
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
            Self::SmokeResnet => resnet(
                ResNetConfig::new([1, 1, 1, 1]).with_widths([8, 16, 32, 64]),
            ),
            Self::ConvnextTiny => convnext(ConvNextConfig::tiny()),
            Self::ConvnextSmall => convnext(ConvNextConfig::small()),
            Self::ConvnextBase => convnext(ConvNextConfig::base()),
            Self::ConvnextLarge => convnext(ConvNextConfig::large()),
            Self::SmokeConvnext => convnext(ConvNextConfig::smoke()),
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
}

impl BackboneConfig {
    /// Output width of `Backbone::forward`.
    pub fn out_dim(&self) -> usize {
        match self {
            Self::ResNet(c) => c.out_dim(),
            Self::ConvNext(c) => c.out_dim(),
        }
    }

    /// Build the backbone.
    pub fn init(&self, device: &Device) -> Backbone {
        match self {
            Self::ResNet(c) => Backbone::ResNet(c.init(device)),
            Self::ConvNext(c) => Backbone::ConvNext(c.init(device)),
        }
    }
}

/// Any registered backbone, as one module (the Sentinel branch of the fusion network).
#[derive(Module, Debug)]
pub enum Backbone {
    /// ResNet family.
    ResNet(ResNet),
    /// ConvNeXt family.
    ConvNext(ConvNext),
}

impl Backbone {
    /// # Shapes
    /// - input `[B, C, H, W]` -> feature map `[B, C', h, w]`
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::ResNet(m) => m.forward_features(x),
            Self::ConvNext(m) => m.forward_features(x),
        }
    }

    /// # Shapes
    /// - input feature map -> `[B, classes]` or, with `pre_logits`, `[B, features]`
    pub fn forward_head(&self, x: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        match self {
            Self::ResNet(m) => m.forward_head(x, pre_logits),
            Self::ConvNext(m) => m.forward_head(x, pre_logits),
        }
    }

    /// Features then head.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.forward_features(x), false)
    }

    /// torchvision key of a burn path inside this backbone, the enum variant segment included
    /// (`"ConvNext.stem.conv.weight"` -> `"features.0.0.weight"`).
    pub fn torch_key(path: &str) -> String {
        match path.split_once('.') {
            Some(("ResNet", rest)) => resnet::torch_key(rest),
            Some(("ConvNext", rest)) => convnext::torch_key(rest),
            _ => path.to_string(),
        }
    }
}
