//! ResNet 18/34/50 as torchvision defines them (v1.5: stride on the 3x3 conv), with a
//! configurable stem (7x7/s2 ImageNet or 3x3/s1 for the seed's small cubes) and input channels.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::kernels::{self, conv};
use crate::layers::global_avg_pool;

/// Residual block family.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet18/34), expansion 1.
    Basic,
    /// 1x1 -> 3x3 -> 1x1 (ResNet50+), expansion 4.
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// ResNet hyper-parameters. Presets: [`ResNetConfig::resnet18`], `resnet34`, `resnet50`,
/// [`ResNetConfig::cube`] (the seed's cube branch) and [`ResNetConfig::smoke`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Stage widths before expansion (torchvision: 64, 128, 256, 512).
    #[config(default = "[64, 128, 256, 512]")]
    pub widths: [usize; 4],
    /// Block family.
    #[config(default = "BlockKind::Basic")]
    pub block: BlockKind,
    /// Input channels of `conv1`.
    #[config(default = 3)]
    pub in_channels: usize,
    /// `conv1` kernel: 7 (stride 2, pad 3) or 3 (stride 1, pad 1).
    #[config(default = 7)]
    pub stem_kernel: usize,
    /// `conv1` stride.
    #[config(default = 2)]
    pub stem_stride: usize,
    /// Whether the 3x3/s2 max-pool follows the stem.
    #[config(default = true)]
    pub maxpool: bool,
    /// Classifier outputs; `None` builds no `fc` (pre-logits features only).
    #[config(default = "Some(1000)")]
    pub num_classes: Option<usize>,
}

impl ResNetConfig {
    /// torchvision `resnet18`.
    pub fn resnet18() -> Self {
        Self::new([2, 2, 2, 2])
    }
    /// torchvision `resnet34`.
    pub fn resnet34() -> Self {
        Self::new([3, 4, 6, 3])
    }
    /// torchvision `resnet50`.
    pub fn resnet50() -> Self {
        Self::new([3, 4, 6, 3]).with_block(BlockKind::Bottleneck)
    }
    /// The seed's cube branch: ResNet18 with a 3x3/s1 stem on `in_channels`, no max-pool.
    pub fn cube(in_channels: usize) -> Self {
        Self::resnet18()
            .with_in_channels(in_channels)
            .with_stem_kernel(3)
            .with_stem_stride(1)
            .with_maxpool(false)
    }
    /// A very small cube ResNet for CPU smoke runs (one block per stage, widths 8..64).
    pub fn smoke(in_channels: usize) -> Self {
        Self {
            layers: [1, 1, 1, 1],
            ..Self::cube(in_channels)
        }
        .with_widths([8, 16, 32, 64])
    }

    /// Width of the pooled features (input of `fc`).
    pub fn num_features(&self) -> usize {
        self.widths[3] * self.block.expansion()
    }

    /// Output width of `forward` (`num_classes`, or `num_features` without a classifier).
    pub fn out_dim(&self) -> usize {
        self.num_classes.unwrap_or_else(|| self.num_features())
    }

    /// Build the network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> ResNet {
        let pad = self.stem_kernel / 2;
        let conv1 = Conv2dConfig::new(
            [self.in_channels, self.widths[0]],
            [self.stem_kernel, self.stem_kernel],
        )
        .with_stride([self.stem_stride, self.stem_stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(device);
        let expansion = self.block.expansion();
        let mut inplanes = self.widths[0];
        let mut stages = Vec::with_capacity(4);
        for (stage, (&blocks, &width)) in self.layers.iter().zip(&self.widths).enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            let mut layer = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let s = if b == 0 { stride } else { 1 };
                layer.push(Block::new(self.block, inplanes, width, s, device));
                inplanes = width * expansion;
            }
            stages.push(layer);
        }
        let [layer1, layer2, layer3, layer4]: [Vec<Block>; 4] = match stages.try_into() {
            Ok(s) => s,
            Err(_) => unreachable!("four stages are always built"),
        };
        ResNet {
            conv1,
            bn1: BatchNormConfig::new(self.widths[0]).init(device),
            maxpool: self.maxpool.then(|| {
                MaxPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init()
            }),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: self
                .num_classes
                .map(|k| LinearConfig::new(inplanes, k).init(device)),
        }
    }
}

/// torchvision ResNet's init of every convolution but the stem:
/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, std `sqrt(2 / (out * k * k))`.
fn kaiming_fan_out() -> Initializer {
    Initializer::KaimingNormal {
        gain: std::f64::consts::SQRT_2,
        fan_out_only: true,
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .with_initializer(kaiming_fan_out())
        .init(device)
}

/// The projection shortcut (`downsample.0` conv, `downsample.1` BatchNorm in torchvision).
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 strided convolution.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

/// A Basic or Bottleneck residual block; `conv3`/`bn3` exist for Bottleneck only.
#[derive(Module, Debug)]
pub struct Block {
    /// First convolution (3x3 Basic, 1x1 Bottleneck).
    pub conv1: Conv2d,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm,
    /// Second convolution (3x3, carries the stride).
    pub conv2: Conv2d,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm,
    /// Bottleneck expansion convolution (1x1).
    pub conv3: Option<Conv2d>,
    /// BatchNorm after `conv3`.
    pub bn3: Option<BatchNorm>,
    /// Projection shortcut when shape changes.
    pub downsample: Option<Downsample>,
}

impl Block {
    fn new(
        kind: BlockKind,
        inplanes: usize,
        planes: usize,
        stride: usize,
        device: &Device,
    ) -> Self {
        let out = planes * kind.expansion();
        let downsample = (stride != 1 || inplanes != out).then(|| Downsample {
            conv: Conv2dConfig::new([inplanes, out], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .with_initializer(kaiming_fan_out())
                .init(device),
            bn: BatchNormConfig::new(out).init(device),
        });
        match kind {
            BlockKind::Basic => Self {
                conv1: conv(inplanes, planes, 3, stride, device),
                bn1: BatchNormConfig::new(planes).init(device),
                conv2: conv(planes, planes, 3, 1, device),
                bn2: BatchNormConfig::new(planes).init(device),
                conv3: None,
                bn3: None,
                downsample,
            },
            BlockKind::Bottleneck => Self {
                conv1: conv(inplanes, planes, 1, 1, device),
                bn1: BatchNormConfig::new(planes).init(device),
                conv2: conv(planes, planes, 3, stride, device),
                bn2: BatchNormConfig::new(planes).init(device),
                conv3: Some(conv(planes, out, 1, 1, device)),
                bn3: Some(BatchNormConfig::new(out).init(device)),
                downsample,
            },
        }
    }

    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, Cout, H/s, W/s]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_in(x, false)
    }

    /// [`Block::forward`] on channels-last maps, as the CPU and the GPU build run it (the CPU's
    /// convolution kernels and both devices' BatchNorm kernels read and write `[B, H, W, C]`,
    /// so nothing is converted between layers).
    ///
    /// # Shapes
    /// - input `[B, H, W, Cin]` -> output `[B, H/s, W/s, Cout]`
    pub fn forward_nhwc(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_in(x, true)
    }

    /// The block on maps channels-last when `nhwc`, channels-first otherwise. Every
    /// convolution feeds a BatchNorm: inside an f16 autocast scope on the GPU the activations
    /// stay f16 from one layer to the next (`kernels::norm::half_for_norm`), and the block
    /// returns f16.
    fn forward_in(&self, x: Tensor<4>, nhwc: bool) -> Tensor<4> {
        let conv = |c: &Conv2d, x| match nhwc {
            true => conv::forward_nhwc_for_norm(c, x),
            false => conv::forward_for_norm(c, x),
        };
        let bn = |b: &BatchNorm, x, relu| match nhwc {
            true => kernels::batch_norm_nhwc(b, x, relu),
            false => kernels::batch_norm(b, x, relu),
        };
        let identity = match &self.downsample {
            Some(d) => bn(&d.bn, conv(&d.conv, x.clone()), false),
            None => x.clone(),
        };
        let mut y = bn(&self.bn1, conv(&self.conv1, x), true);
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            y = bn(&self.bn2, conv(&self.conv2, y), true);
            y = bn(b3, conv(c3, y), false);
        } else {
            y = bn(&self.bn2, conv(&self.conv2, y), false);
        }
        // An f32 block input (the first block given f32 maps) joins f16 activations in f16.
        let identity = match identity.dtype() == y.dtype() {
            true => identity,
            false => identity.cast(y.dtype()),
        };
        burn::tensor::activation::relu(y + identity)
    }
}

/// torchvision ResNet; field names equal the state-dict keys (`downsample.{conv,bn}` map to
/// `downsample.{0,1}`, see [`torch_key`]).
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem convolution.
    pub conv1: Conv2d,
    /// Stem BatchNorm.
    pub bn1: BatchNorm,
    /// Optional 3x3/s2 max-pool.
    pub maxpool: Option<MaxPool2d>,
    /// Stage 1 (stride 1).
    pub layer1: Vec<Block>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<Block>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<Block>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<Block>,
    /// Classifier, absent for a features-only network.
    pub fc: Option<Linear>,
}

impl ResNet {
    /// Feature map before pooling: computed channels-last where the norm kernels run (f32 on
    /// the CPU or in the GPU build, `kernels::channels_last`; [`ResNet::forward_features_nhwc`],
    /// returned as a permuted view), channels-first elsewhere.
    ///
    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, C4, H', W']`
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        match kernels::channels_last(&x) {
            true => self.forward_features_nhwc(x).permute([0, 3, 1, 2]),
            false => self.forward_features_nchw(x),
        }
    }

    /// The feature map computed channels-last, as the CPU and the GPU build run it: the stem reads the
    /// channels-first input once, every layer after it reads and writes `[B, H, W, C]`.
    ///
    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, H', W', C4]`
    pub fn forward_features_nhwc(&self, x: Tensor<4>) -> Tensor<4> {
        let x = conv::forward_nhwc_for_norm(&self.conv1, x.permute([0, 2, 3, 1]));
        let mut x = kernels::batch_norm_nhwc(&self.bn1, x, true);
        if let Some(pool) = &self.maxpool {
            x = pool.forward(x.permute([0, 3, 1, 2])).permute([0, 2, 3, 1]);
        }
        // f16 activations inside an f16 autocast scope on the GPU; the features leave in f32.
        kernels::autocast::to_f32(self.blocks().fold(x, |x, block| block.forward_nhwc(x)))
    }

    /// The feature map computed channels-first, as burn's own layers run it (f16 values, or the
    /// kernels switched off).
    ///
    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, C4, H', W']`
    pub fn forward_features_nchw(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = kernels::batch_norm(&self.bn1, conv::forward(&self.conv1, x), true);
        if let Some(pool) = &self.maxpool {
            x = pool.forward(x);
        }
        self.blocks().fold(x, |x, block| block.forward(x))
    }

    /// The residual blocks of the four stages, in order.
    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
    }

    /// Pooling and classifier; `pre_logits` (or no `fc`) returns the pooled features.
    ///
    /// # Shapes
    /// - input `[B, C4, H', W']` -> output `[B, num_classes]` or `[B, C4]`
    pub fn forward_head(&self, x: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        self.classify(global_avg_pool(x), pre_logits)
    }

    /// `forward_head(forward_features(x), pre_logits)`, pooling the channels-last map directly
    /// where it is computed channels-last.
    ///
    /// # Shapes
    /// - input `[B, Cin, H, W]` -> output `[B, num_classes]` or `[B, C4]`
    pub fn forward_with(&self, x: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        if !kernels::channels_last(&x) {
            return self.forward_head(self.forward_features_nchw(x), pre_logits);
        }
        let x = self.forward_features_nhwc(x);
        let [b, _, _, c] = x.dims();
        self.classify(x.mean_dim(2).mean_dim(1).reshape([b, c]), pre_logits)
    }

    /// `fc` on pooled features, unless `pre_logits` (or no `fc`).
    fn classify(&self, x: Tensor<2>, pre_logits: bool) -> Tensor<2> {
        match (&self.fc, pre_logits) {
            (Some(fc), false) => kernels::linear(fc, x),
            _ => x,
        }
    }

    /// `forward_head(forward_features(x), false)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, false)
    }
}

/// The torchvision state-dict key of a burn parameter path inside a [`ResNet`].
pub fn torch_key(path: &str) -> String {
    path.replace(".downsample.conv.", ".downsample.0.")
        .replace(".downsample.bn.", ".downsample.1.")
}
