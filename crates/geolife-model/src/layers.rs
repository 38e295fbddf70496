//! Small layers shared by the backbones: torchvision weight init, channels-first LayerNorm
//! (torchvision `LayerNorm2d`), per-sample stochastic depth and its linear schedule, global
//! average pooling and the relative-position index of windowed attention.

use burn::module::{Flag, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

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
        let x =
            crate::kernels::layer_norm(x, self.weight.val(), Some(self.bias.val()), self.epsilon);
        x.permute([0, 3, 1, 2])
    }

    /// The same norm on channels-last values: over the last axis (`[B, H, W, C]` or `[B, C]`).
    pub fn forward_last<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::kernels::layer_norm(x, self.weight.val(), Some(self.bias.val()), self.epsilon)
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
        stochastic_depth(x, self.prob, &self.training)
    }
}

/// Stochastic depth in torchvision's "row" mode: drops whole samples of a residual branch with
/// probability `p` and rescales survivors by `1 / (1 - p)`; identity unless `training` is on
/// and `x` lives on an autodiff device.
///
/// # Shapes
/// - input/output: `[B, ...]`
pub fn stochastic_depth<const D: usize>(x: Tensor<D>, p: f64, training: &Param<Flag>) -> Tensor<D> {
    if p <= 0.0 || !training.is_enabled() || !x.device().is_autodiff() {
        return x;
    }
    let keep = 1.0 - p;
    let mut shape = [1usize; D];
    shape[0] = x.dims()[0];
    let mask: Tensor<D> = Tensor::random(shape, Distribution::Bernoulli(keep), &x.device());
    if keep > 0.0 {
        x * mask.div_scalar(keep)
    } else {
        x * mask
    }
}

/// Per-block drop rates rising linearly from 0 to `max_prob` over `blocks` blocks
/// (`np.linspace(0, max_prob, blocks)`, torchvision's schedule; a single block gets 0).
pub fn stochastic_depth_rates(max_prob: f64, blocks: usize) -> Vec<f64> {
    let denom = (blocks as f64 - 1.0).max(1.0);
    (0..blocks).map(|i| max_prob * i as f64 / denom).collect()
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    x.mean_dim(3).mean_dim(2).flatten(1, 3)
}

/// Index into the `(2ws-1)^2` relative-offset table for each token pair of a `ws x ws` window
/// (row-major tokens): `(dy + ws - 1) * (2ws - 1) + (dx + ws - 1)`. Shared by Swin V2's
/// continuous position bias and MaxViT's learned bias table.
pub fn relative_position_index(ws: usize, device: &Device) -> Tensor<1, Int> {
    let n = ws * ws;
    let mut idx = Vec::with_capacity(n * n);
    for a in 0..n {
        for b in 0..n {
            let dy = (a / ws) as i64 - (b / ws) as i64 + ws as i64 - 1;
            let dx = (a % ws) as i64 - (b % ws) as i64 + ws as i64 - 1;
            idx.push(dy * (2 * ws as i64 - 1) + dx);
        }
    }
    Tensor::from_data(TensorData::new(idx, [n * n]), device)
}
