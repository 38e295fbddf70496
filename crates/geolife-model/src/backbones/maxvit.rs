//! MaxViT (Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022) as defined by
//! torchvision's `maxvit_t`: conv stem, then blocks of MBConv (with squeeze-excitation), block
//! (window) attention and grid attention, both with a learned relative position bias.
//!
//! torchvision fixes the input size at build time (partition 7 needs 224x224). For 128x128
//! patches there are two presets, a config choice: [`MaxVitConfig::maxvit_t_resize_224`]
//! bilinearly resizes every input to 224 (pretrained-compatible, about 3x the compute) and
//! [`MaxVitConfig::maxvit_t_native_128`] runs at 128 with partition 4 (stage grids 32, 16, 8, 4
//! all divide 4; its bias tables are 7x7 instead of 13x13, so pretrained tables do not load).
//!
//! Parameter paths equal torchvision state-dict keys (`blocks.0.layers.0.layers.MBconv.proj.1.weight`,
//! ...): torchvision `nn.Sequential`s are burn tuples whose parameter-free slots are placeholders.
//!
//! | torchvision key                          | geolife (burn)                  | why                     |
//! | ---------------------------------------- | ------------------------------- | ----------------------- |
//! | BatchNorm/LayerNorm `.weight` / `.bias`  | `.gamma` / `.beta`              | burn norm names         |
//! | Linear `.weight`                         | same key, transposed `[in,out]` | burn `Linear` layout    |
//! | `*.relative_position_index`              | not stored, recomputed          | constant buffer         |
//! | BatchNorm `.num_batches_tracked`         | not stored                      | unused (momentum fixed) |

// torchvision's key `MBconv` is a field name; the derive repeats it in generated code.
#![allow(non_snake_case)]

use burn::config::Config;
use burn::module::{Flag, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Gelu, Identity, Initializer, LayerNorm, LayerNormConfig, Linear,
    PaddingConfig2d, Tanh,
};
use burn::tensor::activation::{sigmoid, silu, softmax};
use burn::tensor::{Device, Tensor};

use crate::kernels;
use crate::layers::{
    relative_position_index, stochastic_depth, stochastic_depth_rates, tv_conv, tv_linear as linear,
};

/// Errors of an invalid MaxViT configuration or input.
#[derive(Debug, thiserror::Error)]
pub enum MaxVitError {
    /// The configuration cannot build a torchvision-shaped MaxViT.
    #[error("invalid MaxViT config: {0}")]
    Config(String),
    /// The input tensor does not have the shape the model was built for.
    #[error(
        "MaxViT input: expected [batch, {expected_channels}, {expected_size}, {expected_size}] \
         (or any H, W >= 1 with resize_input), got {got:?}"
    )]
    Input {
        /// Input channels of the model.
        expected_channels: usize,
        /// Side the model was built for.
        expected_size: usize,
        /// Shape that was passed.
        got: [usize; 4],
    },
}

/// Configuration of a [`MaxVit`]; [`MaxVitConfig::maxvit_t`] equals torchvision's `maxvit_t`.
#[derive(Config, Debug)]
pub struct MaxVitConfig {
    /// Input channels (3 for RGB, 4 for R,G,B,NIR).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Classifier outputs.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Square input side the blocks are built for (torchvision: 224).
    #[config(default = 224)]
    pub input_size: usize,
    /// Bilinearly resize any input to `input_size` first (torchvision `F.interpolate`,
    /// `align_corners=False`), so 128x128 patches can use the 224 model.
    #[config(default = false)]
    pub resize_input: bool,
    /// Stem width.
    #[config(default = 64)]
    pub stem_channels: usize,
    /// Window (block) and grid partition size; every stage grid must be a multiple.
    #[config(default = 7)]
    pub partition_size: usize,
    /// Width of each block.
    #[config(default = "vec![64, 128, 256, 512]")]
    pub block_channels: Vec<usize>,
    /// Layers per block.
    #[config(default = "vec![2, 2, 5, 2]")]
    pub block_layers: Vec<usize>,
    /// Channels per attention head.
    #[config(default = 32)]
    pub head_dim: usize,
    /// Stochastic-depth rate of the last layer; linear from 0 (training only).
    #[config(default = 0.2)]
    pub stochastic_depth_prob: f64,
    /// Squeeze-excitation width relative to the MBConv output width.
    #[config(default = 0.25)]
    pub squeeze_ratio: f64,
    /// MBConv bottleneck expansion.
    #[config(default = 4.0)]
    pub expansion_ratio: f64,
    /// MLP expansion in the attention layers.
    #[config(default = 4)]
    pub mlp_ratio: usize,
}

/// `(size + 2*1 - 3) / 2 + 1`: the output side of a 3x3, stride 2, padding 1 convolution.
fn halve(size: usize) -> usize {
    (size + 2 - 3) / 2 + 1
}

impl MaxVitConfig {
    /// torchvision `maxvit_t` at 224x224 (30.92 M parameters at 3 channels).
    pub fn maxvit_t() -> Self {
        Self::new()
    }

    /// `maxvit_t` that resizes any input (e.g. 128x128 patches) to 224x224 first.
    pub fn maxvit_t_resize_224() -> Self {
        Self::new().with_resize_input(true)
    }

    /// `maxvit_t` at native 128x128 with partition 4 (grids 32, 16, 8, 4).
    pub fn maxvit_t_native_128() -> Self {
        Self::new().with_input_size(128).with_partition_size(4)
    }

    /// Width of the pooled features (last block's channels).
    pub fn num_features(&self) -> usize {
        self.block_channels.last().copied().unwrap_or(0)
    }

    /// Feature-map side entering each block's attention layers.
    pub fn block_grid_sizes(&self) -> Vec<usize> {
        let mut s = halve(self.input_size);
        self.block_channels
            .iter()
            .map(|_| {
                s = halve(s);
                s
            })
            .collect()
    }

    /// Checks the configuration builds a torchvision MaxViT.
    pub fn validate(&self) -> Result<(), MaxVitError> {
        let fail = |m: String| Err(MaxVitError::Config(m));
        if self.block_channels.is_empty() || self.block_channels.len() != self.block_layers.len() {
            return fail(format!(
                "block_channels {:?} and block_layers {:?} need the same non-zero length",
                self.block_channels, self.block_layers
            ));
        }
        if self.in_channels == 0 || self.num_classes == 0 || self.stem_channels == 0 {
            return fail("in_channels, num_classes and stem_channels must be positive".into());
        }
        if self.partition_size < 1 || self.head_dim == 0 || self.mlp_ratio == 0 {
            return fail("partition_size, head_dim and mlp_ratio must be positive".into());
        }
        for (i, &c) in self.block_channels.iter().enumerate() {
            if !c.is_multiple_of(self.head_dim) || self.block_layers[i] == 0 {
                return fail(format!(
                    "block {i}: width {c} must be divisible by head_dim {} and have >= 1 layer",
                    self.head_dim
                ));
            }
            if (c as f64 * self.squeeze_ratio) as usize == 0 {
                return fail(format!("block {i}: squeeze width is 0"));
            }
        }
        let grids = self.block_grid_sizes();
        if grids.iter().any(|g| !g.is_multiple_of(self.partition_size)) {
            return fail(format!(
                "input {} gives block grids {grids:?}, not all divisible by partition {}",
                self.input_size, self.partition_size
            ));
        }
        if !(0.0..1.0).contains(&self.stochastic_depth_prob) {
            return fail("stochastic_depth_prob must be in [0, 1)".into());
        }
        Ok(())
    }

    /// Builds the model with freshly initialised weights (torchvision's init scheme).
    pub fn init(&self, device: &Device) -> Result<MaxVit, MaxVitError> {
        self.validate()?;
        let total: usize = self.block_layers.iter().sum();
        let probs = stochastic_depth_rates(self.stochastic_depth_prob, total);
        let stem = (
            (
                // A new input stem in the seed (4 channels): PyTorch's default conv init.
                Conv2dConfig::new([self.in_channels, self.stem_channels], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(false)
                    .init(device),
                bn(self.stem_channels, device),
                Gelu::new(),
            ),
            (
                conv(
                    self.stem_channels,
                    self.stem_channels,
                    3,
                    1,
                    1,
                    true,
                    device,
                ),
                Identity::new(),
            ),
        );
        let mut blocks = Vec::new();
        let mut in_c = self.stem_channels;
        let mut k = 0;
        for (&out_c, &n) in self.block_channels.iter().zip(&self.block_layers) {
            let layers = (0..n)
                .map(|i| {
                    let p = probs[k];
                    k += 1;
                    let cin = if i == 0 { in_c } else { out_c };
                    self.layer(cin, out_c, if i == 0 { 2 } else { 1 }, p, device)
                })
                .collect();
            blocks.push(MaxVitBlock { layers });
            in_c = out_c;
        }
        let nf = self.num_features();
        Ok(MaxVit {
            stem,
            blocks,
            classifier: (
                Identity::new(),
                Identity::new(),
                LayerNormConfig::new(nf).with_epsilon(LN_EPS).init(device),
                linear(nf, nf, true, device),
                Tanh::new(),
                linear(nf, self.num_classes, false, device),
            ),
            in_channels: self.in_channels,
            input_size: self.input_size,
            resize_input: self.resize_input,
        })
    }

    fn layer(
        &self,
        cin: usize,
        cout: usize,
        stride: usize,
        p: f64,
        device: &Device,
    ) -> MaxVitLayer {
        let mid = (cout as f64 * self.expansion_ratio) as usize;
        let sqz = (cout as f64 * self.squeeze_ratio) as usize;
        let proj = (stride != 1 || cin != cout).then(|| {
            (
                AvgPool2dConfig::new([3, 3])
                    .with_strides([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_count_include_pad(true)
                    .init(),
                conv(cin, cout, 1, 1, 0, true, device),
            )
        });
        let mbconv = MbConv {
            proj,
            layers: MbConvLayers {
                pre_norm: bn(cin, device),
                conv_a: (
                    conv(cin, mid, 1, 1, 0, false, device),
                    bn(mid, device),
                    Gelu::new(),
                ),
                conv_b: (
                    conv_groups(mid, mid, 3, stride, 1, false, mid, device),
                    bn(mid, device),
                    Gelu::new(),
                ),
                squeeze_excitation: SqueezeExcitation {
                    fc1: conv(mid, sqz, 1, 1, 0, true, device),
                    fc2: conv(sqz, mid, 1, 1, 0, true, device),
                },
                conv_c: conv(mid, cout, 1, 1, 0, true, device),
            },
            stochastic_depth_prob: p,
            training: Param::from_bool(true),
        };
        let attention = |grid: bool| PartitionAttention {
            attn_layer: (
                LayerNormConfig::new(cout).with_epsilon(LN_EPS).init(device),
                RelativePositionalMultiHeadAttention {
                    to_qkv: linear(cout, 3 * cout, true, device),
                    merge: linear(cout, cout, true, device),
                    relative_position_bias_table: Initializer::Normal {
                        mean: 0.0,
                        std: 0.02,
                    }
                    .init(
                        [
                            (2 * self.partition_size - 1) * (2 * self.partition_size - 1),
                            cout / self.head_dim,
                        ],
                        device,
                    ),
                    n_heads: cout / self.head_dim,
                    size: self.partition_size,
                },
                Identity::new(),
            ),
            mlp_layer: (
                LayerNormConfig::new(cout).with_epsilon(LN_EPS).init(device),
                linear(cout, cout * self.mlp_ratio, true, device),
                Gelu::new(),
                linear(cout * self.mlp_ratio, cout, true, device),
                Identity::new(),
            ),
            grid,
            partition_size: self.partition_size,
            stochastic_depth_prob: p,
            training: Param::from_bool(true),
        };
        MaxVitLayer {
            layers: MaxVitLayerParts {
                MBconv: mbconv,
                window_attention: attention(false),
                grid_attention: attention(true),
            },
        }
    }
}

/// The epsilon of torchvision MaxViT's LayerNorms (PyTorch's default), which burn's layer
/// keeps private: every LayerNorm here is built with it.
const LN_EPS: f64 = 1e-5;

/// `norm.forward(x)` through the norm kernels (`kernels::layer_norm`: one pass each way on the
/// CPU and the GPU instead of burn's chain of operations).
fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    kernels::layer_norm(
        x,
        norm.gamma.val(),
        norm.beta.as_ref().map(|b| b.val()),
        LN_EPS,
    )
}

/// BatchNorm as torchvision MaxViT's (`eps=1e-3`, `momentum=0.01`).
fn bn(c: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(c)
        .with_epsilon(1e-3)
        .with_momentum(0.01)
        .init(device)
}

fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    conv_groups(cin, cout, k, s, p, bias, 1, device)
}

/// Convolution with torchvision MaxViT's init (normal, std 0.02; zero bias).
#[allow(clippy::too_many_arguments)]
fn conv_groups(
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
    bias: bool,
    groups: usize,
    device: &Device,
) -> Conv2d {
    tv_conv(
        Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([s, s])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_groups(groups)
            .with_bias(bias),
        device,
    )
}

/// The stem: Conv3x3/2 + BN + GELU, then Conv3x3 with bias (`stem.0.*`, `stem.1.0.*`).
pub type MaxVitStem = ((Conv2d, BatchNorm, Gelu), (Conv2d, Identity));
/// torchvision `classifier`: pool, flatten, LayerNorm, Linear, Tanh, Linear (no bias).
pub type MaxVitClassifier = (Identity, Identity, LayerNorm, Linear, Tanh, Linear);

/// MaxViT backbone (torchvision `MaxVit`).
#[derive(Module, Debug)]
pub struct MaxVit {
    /// Convolutional stem (stride 2).
    pub stem: MaxVitStem,
    /// Blocks; each halves the resolution in its first layer.
    pub blocks: Vec<MaxVitBlock>,
    /// Pooling and head; slots 2..5 hold parameters.
    pub classifier: MaxVitClassifier,
    in_channels: usize,
    input_size: usize,
    resize_input: bool,
}

impl MaxVit {
    /// Checks an input shape `[B, C, H, W]` before a forward pass.
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), MaxVitError> {
        let size_ok = if self.resize_input {
            dims[2] > 0 && dims[3] > 0
        } else {
            dims[2] == self.input_size && dims[3] == self.input_size
        };
        if dims[0] == 0 || dims[1] != self.in_channels || !size_ok {
            return Err(MaxVitError::Input {
                expected_channels: self.in_channels,
                expected_size: self.input_size,
                got: dims,
            });
        }
        Ok(())
    }

    /// Last feature map before pooling.
    ///
    /// # Shapes
    /// - input: `[B, in_channels, input_size, input_size]` (any size with `resize_input`)
    /// - output: `[B, num_features, input_size/32, input_size/32]`
    pub fn forward_feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.resize_input {
            super::resize_bilinear(x, self.input_size)
        } else {
            x
        };
        let ((c0, bn0, act0), (c1, _)) = &self.stem;
        let x = kernels::conv::forward_for_norm(c0, x);
        let x = act0.forward(kernels::batch_norm(bn0, x, false));
        // Back to f32 where the BatchNorm handed over f16 (autocast on the GPU).
        let mut x = kernels::autocast::to_f32(kernels::conv::forward(c1, x));
        for block in &self.blocks {
            for layer in &block.layers {
                x = layer.forward(x);
            }
        }
        x
    }

    /// Pooled features (global average), the input of the classifier head.
    ///
    /// # Shapes
    /// - input: `[B, in_channels, H, W]`
    /// - output: `[B, num_features]`
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.forward_feature_map(x);
        let [b, c, h, w] = x.dims();
        x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
    }

    /// Head on pooled features (LayerNorm, Linear, Tanh, Linear), or the features themselves
    /// when `pre_logits`.
    ///
    /// # Shapes
    /// - input `[B, num_features]` -> output `[B, num_classes]` or `[B, num_features]`
    pub fn forward_head(&self, features: Tensor<2>, pre_logits: bool) -> Tensor<2> {
        if pre_logits {
            return features;
        }
        let (_, _, norm, pre, act, fc) = &self.classifier;
        kernels::linear(
            fc,
            act.forward(kernels::linear(pre, layer_norm(norm, features))),
        )
    }

    /// `forward_head(forward_features(x), false)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.forward_features(x), false)
    }
}

/// A block of MaxViT layers (`blocks.i.layers`).
#[derive(Module, Debug)]
pub struct MaxVitBlock {
    /// The layers; the first one has stride 2.
    pub layers: Vec<MaxVitLayer>,
}

/// One MaxViT layer: MBConv, then window attention, then grid attention.
#[derive(Module, Debug)]
pub struct MaxVitLayer {
    /// torchvision's `layers` OrderedDict.
    pub layers: MaxVitLayerParts,
}

impl MaxVitLayer {
    /// `[B, C_in, H, W]` -> `[B, C_out, H/stride, W/stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let p = &self.layers;
        let x = p.MBconv.forward(x);
        let x = p.window_attention.forward(x);
        p.grid_attention.forward(x)
    }
}

/// The named parts of a [`MaxVitLayer`] (names are torchvision's, `MBconv` included).
#[derive(Module, Debug)]
pub struct MaxVitLayerParts {
    /// Inverted bottleneck with squeeze-excitation.
    pub MBconv: MbConv,
    /// Attention inside non-overlapping `P x P` windows.
    pub window_attention: PartitionAttention,
    /// Attention over a dilated `P x P` grid spanning the whole map.
    pub grid_attention: PartitionAttention,
}

/// MBConv: `proj(x) + sd(conv_c(se(conv_b(conv_a(pre_norm(x))))))`.
#[derive(Module, Debug)]
pub struct MbConv {
    /// Shortcut projection: AvgPool 3/2/1 then 1x1 conv (`proj.1`); `None` = identity.
    pub proj: Option<(AvgPool2d, Conv2d)>,
    /// The residual branch.
    pub layers: MbConvLayers,
    stochastic_depth_prob: f64,
    training: Param<Flag>,
}

impl MbConv {
    /// `[B, C_in, H, W]` -> `[B, C_out, H/stride, W/stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let res = match &self.proj {
            Some((pool, conv)) => kernels::conv::forward(conv, pool.forward(x.clone())),
            None => x.clone(),
        };
        let l = &self.layers;
        // The BatchNorms run the norm kernels (`kernels::batch_norm`); inside an f16 autocast
        // scope on the GPU the activations stay f16 from `conv_a` to the squeeze-excitation,
        // whose gate is f32.
        let x = kernels::batch_norm(&l.pre_norm, x, false);
        let (conv, bn, act) = &l.conv_a;
        let x = act.forward(kernels::batch_norm(
            bn,
            kernels::conv::forward_for_norm(conv, x),
            false,
        ));
        let (conv, bn, act) = &l.conv_b;
        let x = act.forward(kernels::batch_norm(
            bn,
            kernels::conv::forward_for_norm(conv, x),
            false,
        ));
        let x = l.squeeze_excitation.forward(kernels::autocast::to_f32(x));
        let x = kernels::conv::forward(&l.conv_c, x);
        res + stochastic_depth(x, self.stochastic_depth_prob, &self.training)
    }
}

/// The residual branch of an [`MbConv`] (`layers.*`).
#[derive(Module, Debug)]
pub struct MbConvLayers {
    /// BatchNorm on the input.
    pub pre_norm: BatchNorm,
    /// 1x1 expansion conv + BN + GELU.
    pub conv_a: (Conv2d, BatchNorm, Gelu),
    /// 3x3 depthwise conv (stride) + BN + GELU.
    pub conv_b: (Conv2d, BatchNorm, Gelu),
    /// Channel gating.
    pub squeeze_excitation: SqueezeExcitation,
    /// 1x1 projection conv with bias.
    pub conv_c: Conv2d,
}

/// Squeeze-excitation: `x * sigmoid(fc2(silu(fc1(mean_hw(x)))))`.
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    /// 1x1 conv C -> squeeze.
    pub fc1: Conv2d,
    /// 1x1 conv squeeze -> C.
    pub fc2: Conv2d,
}

impl SqueezeExcitation {
    /// `[B, C, H, W]` -> `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let s = x
            .clone()
            .reshape([b, c, h * w])
            .mean_dim(2)
            .reshape([b, c, 1, 1]);
        let s = silu(kernels::conv::forward(&self.fc1, s));
        let s = sigmoid(kernels::conv::forward(&self.fc2, s));
        x * s
    }
}

/// Window or grid attention with its MLP, each residual: torchvision `PartitionAttentionLayer`.
#[derive(Module, Debug)]
pub struct PartitionAttention {
    /// LayerNorm, attention, Dropout(0).
    pub attn_layer: (LayerNorm, RelativePositionalMultiHeadAttention, Identity),
    /// LayerNorm, Linear, GELU, Linear, Dropout(0).
    pub mlp_layer: (LayerNorm, Linear, Gelu, Linear, Identity),
    grid: bool,
    partition_size: usize,
    stochastic_depth_prob: f64,
    training: Param<Flag>,
}

impl PartitionAttention {
    /// `[B, C, H, W]` -> `[B, C, H, W]`; H and W must be multiples of the partition size.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        // Window: P x P windows. Grid: windows of side H / P, then tokens and groups swap so
        // each group gathers P x P tokens strided across the whole map.
        let p = if self.grid {
            h / self.partition_size
        } else {
            self.partition_size
        };
        let (gh, gw) = (h / p, w / p);
        let x = x
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 3, 5, 1])
            .reshape([b, gh * gw, p * p, c]); // [B, G, P*P, C]
        let x = if self.grid { x.swap_dims(1, 2) } else { x };
        let sd = self.stochastic_depth_prob;
        let (norm, attn, _) = &self.attn_layer;
        let a = attn.forward(layer_norm(norm, x.clone()));
        let x = x + stochastic_depth(a, sd, &self.training);
        // The GELU (`mlp_layer.2`) is exact, as `kernels::linear_gelu` runs it.
        let (norm, fc1, _, fc2, _) = &self.mlp_layer;
        let m = kernels::linear(fc2, kernels::linear_gelu(fc1, layer_norm(norm, x.clone())));
        let x = x + stochastic_depth(m, sd, &self.training);
        let x = if self.grid { x.swap_dims(1, 2) } else { x };
        x.reshape([b, gh, gw, p, p, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, c, h, w])
    }
}

/// Multi-head self-attention with a learned relative position bias over a `size x size` window.
/// As torchvision, keys are scaled by `feat_dim^-0.5` (the full width, not the head width).
#[derive(Module, Debug)]
pub struct RelativePositionalMultiHeadAttention {
    /// Linear D -> 3D, split into q, k, v (each `[heads, head_dim]`).
    pub to_qkv: Linear,
    /// Output projection.
    pub merge: Linear,
    /// Bias per relative offset and head: `[(2*size-1)^2, heads]`.
    pub relative_position_bias_table: Param<Tensor<2>>,
    n_heads: usize,
    size: usize,
}

impl RelativePositionalMultiHeadAttention {
    /// `[B, G, P, D]` -> `[B, G, P, D]` with `P = size^2` tokens per group.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, g, p, d] = x.dims();
        let (nh, dh) = (self.n_heads, d / self.n_heads);
        // Queries, keys and values stay half inside an autocast scope on the GPU, and so do
        // the weighted values up to `merge` (PyTorch's autocast leaves them half); the scores
        // and the softmax are f32.
        let qkv = kernels::linear_half(&self.to_qkv, x);
        let split = |i: usize| {
            qkv.clone()
                .narrow(3, i * d, d)
                .reshape([b * g, p, nh, dh])
                .swap_dims(1, 2) // [B*G, H, P, DH]
        };
        let (q, k, v) = (
            split(0),
            split(1).mul_scalar((d as f64).powf(-0.5)),
            split(2),
        );
        let n = self.size * self.size;
        let index = relative_position_index(self.size, &q.device());
        let bias = self
            .relative_position_bias_table
            .val()
            .select(0, index)
            .reshape([n, n, nh])
            .permute([2, 0, 1])
            .unsqueeze_dim::<4>(0); // [1, H, P, P]
        let attn = softmax(kernels::matmul(q, k.swap_dims(2, 3)) + bias, 3);
        let out = kernels::matmul_half(attn, v)
            .swap_dims(1, 2)
            .reshape([b, g, p, d]);
        kernels::linear(&self.merge, out)
    }
}
