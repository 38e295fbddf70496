//! Image backbones (ResNet, ConvNeXt, Swin V2, MaxViT) with `forward_features`/`forward_head`,
//! named presets and a registry enum carrying pretrained metadata.

pub mod maxvit;
pub mod swin_v2;
