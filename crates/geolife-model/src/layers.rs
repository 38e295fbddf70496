//! Small layers shared by the backbones: channels-first LayerNorm (torchvision `LayerNorm2d`),
//! per-sample stochastic depth and global average pooling.

use burn::module::{Flag, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};

/// Standard deviation of torchvision's transformer and ConvNeXt weight init
/// (`trunc_normal_(std=0.02)`, whose +-2 cut-off is 100 standard deviations: a plain normal).
pub const TV_STD: f64 = 0.02;

/// A trainable zero bias of `n` values. (Mapping an initialised bias to `zeros_like` would
/// give a tensor that does not require grad: that bias would silently never train.)
pub fn zero_param(n: usize, device: &Device) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::zeros([n], device))
}

/// A linear layer with torchvision's ConvNeXt / Swin / MaxViT init: normal weights (std 0.02),
/// zero bias.
pub fn tv_linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    let mut l = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: TV_STD,
        })
        .init(device);
    if l.bias.is_some() {
        l.bias = Some(zero_param(d_out, device));
    }
    l
}

/// A convolution with torchvision's ConvNeXt / MaxViT init: normal weights (std 0.02), zero
/// bias.
pub fn tv_conv(config: Conv2dConfig, device: &Device) -> Conv2d {
    let out = config.channels[1];
    let mut c = config
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: TV_STD,
        })
        .init(device);
    if c.bias.is_some() {
        c.bias = Some(zero_param(out, device));
    }
    c
}

/// LayerNorm over the channel axis of a `[B, C, H, W]` map (torchvision `LayerNorm2d`).
/// Fields are named `weight`/`bias` as in PyTorch.
#[derive(Module, Debug)]
pub struct LayerNorm2d {
    /// Scale, `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Shift, `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl LayerNorm2d {
    /// Ones/zeros initialised norm over `channels`.
    pub fn new(channels: usize, epsilon: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            epsilon,
        }
    }

    /// # Shapes
    /// - input/output: `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = x.permute([0, 2, 3, 1]); // [b, h, w, c]
        let x = burn::tensor::module::layer_norm(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            self.epsilon,
        );
        x.permute([0, 3, 1, 2])
    }
}

/// Stochastic depth in torchvision's "row" mode: drops whole residual branches per sample
/// during training (autodiff device and training flag on), identity otherwise.
#[derive(Module, Debug)]
pub struct StochasticDepth {
    /// Probability of dropping the branch.
    pub prob: f64,
    /// Training behaviour switch, cleared by `valid()`/`freeze()`.
    pub training: Param<Flag>,
}

impl StochasticDepth {
    /// A stochastic depth layer with drop probability `prob` (0 disables it).
    pub fn new(prob: f64) -> Self {
        Self {
            prob,
            training: Param::from_bool(true),
        }
    }

    /// # Shapes
    /// - input/output: `[B, ...]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.prob <= 0.0 || !self.training.is_enabled() || !x.device().is_autodiff() {
            return x;
        }
        let keep = 1.0 - self.prob;
        let mut shape = [1usize; D];
        shape[0] = x.dims()[0];
        let mask: Tensor<D> = Tensor::random(shape, Distribution::Bernoulli(keep), &x.device());
        if keep > 0.0 {
            x * mask.div_scalar(keep)
        } else {
            x * mask
        }
    }
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    x.mean_dim(3).mean_dim(2).flatten(1, 3)
}
