//! ConvNeXt as torchvision defines it ("A ConvNet for the 2020s", Liu et al. 2022): patchify stem,
//! depthwise 7x7 blocks with layer scale and stochastic depth, LayerNorm2d downsampling.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::kernels::{self, conv};
use crate::layers::{LayerNorm2d, StochasticDepth, stochastic_depth_rates, tv_conv, tv_linear};

const EPS: f64 = 1e-6;

/// ConvNeXt hyper-parameters. Presets: `tiny`, `small`, `base`, `large` (torchvision) and
/// `smoke` (widths 16..128, one block per stage, for CPU smoke runs).
#[derive(Config, Debug)]
pub struct ConvNextConfig {
    /// Stage widths.
    pub dims: [usize; 4],
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Input channels of the stem.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Stochastic depth probability of the last block (linear ramp from 0).
    #[config(default = 0.1)]
    pub stochastic_depth_prob: f64,
    /// Initial layer-scale value.
    #[config(default = 1e-6)]
    pub layer_scale: f64,
    /// Classifier outputs; `None` builds no `classifier.2` (pre-logits features only).
    #[config(default = "Some(1000)")]
    pub num_classes: Option<usize>,
}

impl ConvNextConfig {
    /// torchvision `convnext_tiny`.
    pub fn tiny() -> Self {
        Self::new([96, 192, 384, 768], [3, 3, 9, 3])
    }
    /// torchvision `convnext_small`.
    pub fn small() -> Self {
        Self::new([96, 192, 384, 768], [3, 3, 27, 3]).with_stochastic_depth_prob(0.4)
    }
    /// torchvision `convnext_base`.
    pub fn base() -> Self {
        Self::new([128, 256, 512, 1024], [3, 3, 27, 3]).with_stochastic_depth_prob(0.5)
    }
    /// torchvision `convnext_large`.
    pub fn large() -> Self {
        Self::new([192, 384, 768, 1536], [3, 3, 27, 3]).with_stochastic_depth_prob(0.5)
    }
    /// A very small ConvNeXt for CPU smoke runs.
    pub fn smoke() -> Self {
        Self::new([16, 32, 64, 128], [1, 1, 1, 1]).with_stochastic_depth_prob(0.0)
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        self.dims[3]
    }

    /// Output width of `forward`.
    pub fn out_dim(&self) -> usize {
        self.num_classes.unwrap_or(self.dims[3])
    }

    /// Build the network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> ConvNext {
        let total: usize = self.depths.iter().sum();
        let mut rates = stochastic_depth_rates(self.stochastic_depth_prob, total).into_iter();
        let mut stages = Vec::with_capacity(4);
        let mut downsamples = Vec::with_capacity(3);
        for (s, (&dim, &depth)) in self.dims.iter().zip(&self.depths).enumerate() {
            let mut stage = Vec::with_capacity(depth);
            for _ in 0..depth {
                let sd = rates.next().unwrap_or(0.0);
                stage.push(CnBlock::new(dim, self.layer_scale, sd, device));
            }
            stages.push(stage);
            if s < 3 {
                downsamples.push(DownsampleLayer {
                    norm: LayerNorm2d::new(dim, EPS, device),
                    conv: tv_conv(
                        Conv2dConfig::new([dim, self.dims[s + 1]], [2, 2]).with_stride([2, 2]),
                        device,
                    ),
                });
            }
        }
        ConvNext {
            // The stem is a new convolution in the seed (4 input channels), so it keeps
            // PyTorch's default `nn.Conv2d` init (burn's default is the same bound).
            stem: Stem {
                conv: Conv2dConfig::new([self.in_channels, self.dims[0]], [4, 4])
                    .with_stride([4, 4])
                    .init(device),
                norm: LayerNorm2d::new(self.dims[0], EPS, device),
            },
            stages,
            downsamples,
            norm: LayerNorm2d::new(self.dims[3], EPS, device),
            head: self
                .num_classes
                .map(|k| tv_linear(self.dims[3], k, true, device)),
        }
    }
}

/// Patchify stem: `features.0.0` conv 4x4/s4, `features.0.1` LayerNorm2d.
#[derive(Module, Debug)]
pub struct Stem {
    /// 4x4 stride-4 convolution.
    pub conv: Conv2d,
    /// Channels-first LayerNorm.
    pub norm: LayerNorm2d,
}

/// Between stages: `features.{2s+2}.0` LayerNorm2d, `.1` conv 2x2/s2.
#[derive(Module, Debug)]
pub struct DownsampleLayer {
    /// Channels-first LayerNorm.
    pub norm: LayerNorm2d,
    /// 2x2 stride-2 convolution.
    pub conv: Conv2d,
}

/// torchvision `CNBlock`: dwconv 7x7 -> LN -> Linear 4x -> GELU -> Linear -> layer scale.
#[derive(Module, Debug)]
pub struct CnBlock {
    /// Depthwise 7x7 (`block.0`).
    pub dwconv: Conv2d,
    /// LayerNorm over channels-last (`block.2`).
    pub norm: LayerNorm,
    /// Expansion (`block.3`).
    pub pwconv1: Linear,
    /// Projection (`block.5`).
    pub pwconv2: Linear,
    /// Per-channel scale `[C, 1, 1]` (`layer_scale`).
    pub layer_scale: Param<Tensor<3>>,
    /// Residual-branch dropping.
    pub drop_path: StochasticDepth,
}

impl CnBlock {
    fn new(dim: usize, scale: f64, sd: f64, device: &Device) -> Self {
        Self {
            dwconv: tv_conv(
                Conv2dConfig::new([dim, dim], [7, 7])
                    .with_groups(dim)
                    .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3)),
                device,
            ),
            norm: LayerNormConfig::new(dim).with_epsilon(EPS).init(device),
            pwconv1: tv_linear(dim, 4 * dim, true, device),
            pwconv2: tv_linear(4 * dim, dim, true, device),
            layer_scale: Param::from_tensor(Tensor::ones([dim, 1, 1], device).mul_scalar(scale)),
            drop_path: StochasticDepth::new(sd),
        }
    }

    /// # Shapes
    /// - input/output `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // Inside an f16 autocast scope on the GPU the depthwise output and the LayerNorm's stay
        // f16 up to `pwconv1` (`kernels::norm::half_for_norm`). `[b, h, w, c]`:
        let y = conv::forward_for_norm(&self.dwconv, x.clone()).permute([0, 2, 3, 1]);
        let y = kernels::layer_norm(
            y,
            self.norm.gamma.val(),
            self.norm.beta.as_ref().map(|b| b.val()),
            EPS,
        );
        let y = kernels::linear_gelu(&self.pwconv1, y);
        let y = kernels::linear(&self.pwconv2, y).permute([0, 3, 1, 2]); // [b, c, h, w]
        let y = y * self.layer_scale.val().unsqueeze::<4>();
        self.drop_path.forward(y) + x
    }

    /// The block on channels-last maps, as the CPU runs it: no permutation, the depthwise
    /// bias added inside its kernel, LayerNorm over contiguous channels, and the layer scale
    /// folded into the projection's weight and bias (`(y W + b) * s = y (W * s) + b * s`, a
    /// `[4C, C]` product instead of a pass over the activations each way).
    ///
    /// # Shapes
    /// - input/output `[B, H, W, C]`
    pub fn forward_nhwc(&self, x: Tensor<4>) -> Tensor<4> {
        let y = conv::forward_nhwc(&self.dwconv, x.clone());
        let y = kernels::layer_norm(
            y,
            self.norm.gamma.val(),
            self.norm.beta.as_ref().map(|b| b.val()),
            EPS,
        );
        let y = kernels::linear_gelu(&self.pwconv1, y);
        let [c, _, _] = self.layer_scale.dims();
        let scale: Tensor<2> = self.layer_scale.val().reshape([1, c]);
        let weight = self.pwconv2.weight.val() * scale.clone();
        let bias = self
            .pwconv2
            .bias
            .as_ref()
            .map(|b| b.val() * scale.reshape([c]));
        let y = kernels::linear_with(y, weight, bias);
        self.drop_path.forward(y) + x
    }
}

/// torchvision ConvNeXt. Field paths map to state-dict keys through [`torch_key`].
#[derive(Module, Debug)]
pub struct ConvNext {
    /// `features.0`.
    pub stem: Stem,
    /// `features.1, 3, 5, 7`.
    pub stages: Vec<Vec<CnBlock>>,
    /// `features.2, 4, 6`.
    pub downsamples: Vec<DownsampleLayer>,
    /// `classifier.0`.
    pub norm: LayerNorm2d,
    /// `classifier.2`, absent for a features-only network.
    pub head: Option<Linear>,
}

impl ConvNext {
    /// The feature map, channels-last on the CPU ([`ConvNext::forward_features_nhwc`], returned
    /// as a permuted view), channels-first elsewhere.
    ///
    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, C4, H/32, W/32]`
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        match kernels::on_cpu_f32(&x) {
            true => self.forward_features_nhwc(x).permute([0, 3, 1, 2]),
            false => self.forward_features_nchw(x),
        }
    }

    /// The feature map computed channels-first, as every device but the CPU runs it.
    ///
    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, C4, H/32, W/32]`
    pub fn forward_features_nchw(&self, x: Tensor<4>) -> Tensor<4> {
        self.features_in(x, false)
    }

    /// The feature map computed channels-last, as the CPU runs it: the stem reads the
    /// channels-first input once, and every layer after it reads and writes `[B, H, W, C]`.
    ///
    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, H/32, W/32, C4]`
    pub fn forward_features_nhwc(&self, x: Tensor<4>) -> Tensor<4> {
        self.features_in(x.permute([0, 2, 3, 1]), true)
    }

    /// The feature map of maps channels-last when `nhwc`, channels-first otherwise (the input
    /// and output in that layout).
    fn features_in(&self, x: Tensor<4>, nhwc: bool) -> Tensor<4> {
        let conv = |c: &Conv2d, x| match nhwc {
            true => conv::forward_nhwc(c, x),
            false => conv::forward(c, x),
        };
        let norm = |n: &LayerNorm2d, x| match nhwc {
            true => n.forward_last(x),
            false => n.forward(x),
        };
        let mut x = norm(&self.stem.norm, conv(&self.stem.conv, x));
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                x = match nhwc {
                    true => block.forward_nhwc(x),
                    false => block.forward(x),
                };
            }
            if let Some(down) = self.downsamples.get(s) {
                x = conv(&down.conv, norm(&down.norm, x));
            }
        }
        x
    }

    /// `forward_head(forward_features(x), pre_logits)`, pooling the channels-last map directly
    /// on the CPU.
    ///
    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, num_classes]` or `[B, C4]`
    pub fn forward_with(&self, x: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        if !kernels::on_cpu_f32(&x) {
            return self.forward_head(self.forward_features_nchw(x), pre_logits);
        }
        let x = self.forward_features_nhwc(x);
        let [b, _, _, c] = x.dims();
        let pooled = x.mean_dim(2).mean_dim(1).reshape([b, c]);
        self.classify(self.norm.forward_last(pooled), pre_logits)
    }

    /// `classifier.2` on normalised pooled features, unless `pre_logits` (or no head).
    fn classify(&self, x: Tensor<2>, pre_logits: bool) -> Tensor<2> {
        match (&self.head, pre_logits) {
            (Some(head), false) => kernels::linear(head, x),
            _ => x,
        }
    }

    /// Average pool, `classifier.0` norm, then `classifier.2` unless `pre_logits`.
    ///
    /// # Shapes
    /// - input `[B, C4, h, w]` -> output `[B, num_classes]` or `[B, C4]`
    pub fn forward_head(&self, x: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        let [b, c, _, _] = x.dims();
        let pooled = x.mean_dim(3).mean_dim(2); // [b, c, 1, 1]
        let x = self.norm.forward(pooled).reshape([b, c]); // LayerNorm2d
        self.classify(x, pre_logits)
    }

    /// `forward_head(forward_features(x), false)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, false)
    }
}

/// The torchvision state-dict key of a burn parameter path inside a [`ConvNext`].
pub fn torch_key(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let rest = |n: usize| parts[n.min(parts.len())..].join(".");
    match parts.as_slice() {
        ["stem", "conv", ..] => format!("features.0.0.{}", rest(2)),
        ["stem", "norm", ..] => format!("features.0.1.{}", rest(2)),
        ["stages", s, i, field, ..] => {
            let s: usize = s.parse().unwrap_or(0);
            let inner = match *field {
                "dwconv" => "block.0",
                "norm" => "block.2",
                "pwconv1" => "block.3",
                "pwconv2" => "block.5",
                other => other,
            };
            let tail = rest(4);
            let sep = if tail.is_empty() { "" } else { "." };
            format!("features.{}.{i}.{inner}{sep}{tail}", 2 * s + 1)
        }
        ["downsamples", d, field, ..] => {
            let d: usize = d.parse().unwrap_or(0);
            let idx = if *field == "norm" { 0 } else { 1 };
            format!("features.{}.{idx}.{}", 2 * d + 2, rest(3))
        }
        ["norm", ..] => format!("classifier.0.{}", rest(1)),
        ["head", ..] => format!("classifier.2.{}", rest(1)),
        _ => path.to_string(),
    }
}
