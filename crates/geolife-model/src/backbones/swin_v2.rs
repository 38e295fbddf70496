//! Swin Transformer V2 (Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution",
//! CVPR 2022) as defined by torchvision's `swin_v2_t/s/b`, with a configurable input-channel count
//! (4 for R,G,B,NIR) and torchvision's padding of feature maps to window multiples.
//!
//! Parameter paths equal torchvision state-dict keys (`features.1.0.attn.cpb_mlp.0.weight`, ...):
//! torchvision `nn.Sequential`s are burn tuples whose parameter-free slots (permute, activation,
//! dropout) are [`Identity`]/[`Gelu`]/[`Relu`] placeholders. The differences are burn's, not ours:
//!
//! | torchvision key                        | geolife (burn)                  | why                        |
//! | -------------------------------------- | ------------------------------- | -------------------------- |
//! | `*.norm*.weight` / `*.norm*.bias`      | `*.gamma` / `*.beta`            | burn `LayerNorm` names     |
//! | `*.qkv/proj/mlp/cpb_mlp/head .weight`  | same key, transposed `[in,out]` | burn `Linear` layout       |
//! | `*.attn.relative_position_index`       | not stored, recomputed          | constant buffer            |
//! | `*.attn.relative_coords_table`         | not stored, recomputed          | constant buffer            |
//!
//! A 128x128 input gives 32, 16, 8, 4 tokens per side: stage 4 (4x4) is padded to one 8x8 window
//! and, as in torchvision, its shifted blocks do not shift (shift collapses when the padded map is
//! not larger than the window).

use burn::config::Config;
use burn::module::{Flag, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Gelu, Identity, LayerNorm, LayerNormConfig, Linear, Relu};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::ops::PadMode;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::kernels;
use crate::layers::{
    relative_position_index, stochastic_depth, stochastic_depth_rates, tv_linear as linear,
};

/// Errors of an invalid Swin V2 configuration or input.
#[derive(Debug, thiserror::Error)]
pub enum SwinV2Error {
    /// The configuration cannot build a torchvision-shaped Swin V2.
    #[error("invalid Swin V2 config: {0}")]
    Config(String),
    /// The input tensor does not have the shape the model was built for.
    #[error(
        "Swin V2 input: expected [batch, {expected_channels}, H, W] with H, W >= 1, got {got:?}"
    )]
    Input {
        /// Input channels of the model.
        expected_channels: usize,
        /// Shape that was passed.
        got: [usize; 4],
    },
}

/// Configuration of a [`SwinV2`]; presets [`SwinV2Config::swin_v2_t`], `swin_v2_s`, `swin_v2_b`
/// equal torchvision's.
#[derive(Config, Debug)]
pub struct SwinV2Config {
    /// Input channels (3 for RGB, 4 for R,G,B,NIR).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Classifier outputs.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Patch size of the embedding convolution (torchvision: 4).
    #[config(default = 4)]
    pub patch_size: usize,
    /// Embedding width of stage 1; stage `i` has `embed_dim * 2^i` channels.
    #[config(default = 96)]
    pub embed_dim: usize,
    /// Blocks per stage; exactly 4 stages.
    #[config(default = "vec![2, 2, 6, 2]")]
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    #[config(default = "vec![3, 6, 12, 24]")]
    pub num_heads: Vec<usize>,
    /// Square attention window (torchvision V2: 8).
    #[config(default = 8)]
    pub window_size: usize,
    /// Hidden width of the block MLP relative to the block width.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Stochastic-depth rate of the last block; grows linearly from 0 (training only).
    #[config(default = 0.2)]
    pub stochastic_depth_prob: f64,
    /// LayerNorm epsilon (torchvision: 1e-5).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl SwinV2Config {
    /// torchvision `swin_v2_t`: 96 wide, depths 2-2-6-2, 28.35 M parameters at 3 channels.
    pub fn swin_v2_t() -> Self {
        Self::new()
    }

    /// torchvision `swin_v2_s`: 96 wide, depths 2-2-18-2, 49.74 M parameters.
    pub fn swin_v2_s() -> Self {
        Self::new()
            .with_depths(vec![2, 2, 18, 2])
            .with_stochastic_depth_prob(0.3)
    }

    /// torchvision `swin_v2_b`: 128 wide, depths 2-2-18-2, 87.93 M parameters.
    pub fn swin_v2_b() -> Self {
        Self::new()
            .with_embed_dim(128)
            .with_depths(vec![2, 2, 18, 2])
            .with_num_heads(vec![4, 8, 16, 32])
            .with_stochastic_depth_prob(0.5)
    }

    /// Width of the pooled features (`embed_dim * 8`).
    pub fn num_features(&self) -> usize {
        self.embed_dim << (self.depths.len().saturating_sub(1))
    }

    /// Checks the configuration builds a four-stage torchvision Swin V2.
    pub fn validate(&self) -> Result<(), SwinV2Error> {
        let fail = |m: String| Err(SwinV2Error::Config(m));
        if self.depths.len() != 4 || self.num_heads.len() != 4 {
            return fail(format!(
                "depths and num_heads need 4 stages, got {:?} and {:?}",
                self.depths, self.num_heads
            ));
        }
        if self.in_channels == 0 || self.num_classes == 0 || self.patch_size == 0 {
            return fail("in_channels, num_classes and patch_size must be positive".into());
        }
        if self.window_size < 2 {
            return fail(format!(
                "window_size must be >= 2, got {}",
                self.window_size
            ));
        }
        for (i, (&d, &h)) in self.depths.iter().zip(&self.num_heads).enumerate() {
            let dim = self.embed_dim << i;
            if d == 0 || h == 0 || !dim.is_multiple_of(h) {
                return fail(format!(
                    "stage {i}: width {dim} with {h} heads and {d} blocks (need depth >= 1 and width divisible by heads)"
                ));
            }
        }
        if !(0.0..1.0).contains(&self.stochastic_depth_prob) || self.mlp_ratio <= 0.0 {
            return fail("stochastic_depth_prob must be in [0, 1) and mlp_ratio > 0".into());
        }
        Ok(())
    }

    /// Builds the model with freshly initialised weights (torchvision's init scheme).
    pub fn init(&self, device: &Device) -> Result<SwinV2, SwinV2Error> {
        self.validate()?;
        let total: usize = self.depths.iter().sum();
        let mut rates = stochastic_depth_rates(self.stochastic_depth_prob, total).into_iter();
        let mut stages = Vec::with_capacity(4);
        for (i, (&depth, &heads)) in self.depths.iter().zip(&self.num_heads).enumerate() {
            let dim = self.embed_dim << i;
            let blocks = (0..depth)
                .map(|j| {
                    let sd = rates.next().unwrap_or(0.0);
                    let shift = if j % 2 == 0 { 0 } else { self.window_size / 2 };
                    self.block(dim, heads, shift, sd, device)
                })
                .collect::<Vec<_>>();
            stages.push(blocks);
        }
        let mut stages = stages.into_iter();
        let mut next = || stages.next().unwrap_or_default();
        let embed = (
            Conv2dConfig::new(
                [self.in_channels, self.embed_dim],
                [self.patch_size, self.patch_size],
            )
            .with_stride([self.patch_size, self.patch_size])
            .init(device),
            Identity::new(),
            self.norm(self.embed_dim, device),
        );
        let features = (
            embed,
            next(),
            self.merging(self.embed_dim, device),
            next(),
            self.merging(self.embed_dim * 2, device),
            next(),
            self.merging(self.embed_dim * 4, device),
            next(),
        );
        let nf = self.num_features();
        Ok(SwinV2 {
            features,
            norm: self.norm(nf, device),
            head: linear(nf, self.num_classes, true, device),
            window_size: self.window_size,
            in_channels: self.in_channels,
        })
    }

    fn norm(&self, dim: usize, device: &Device) -> LayerNorm {
        LayerNormConfig::new(dim)
            .with_epsilon(self.norm_eps)
            .init(device)
    }

    fn merging(&self, dim: usize, device: &Device) -> PatchMergingV2 {
        PatchMergingV2 {
            reduction: linear(4 * dim, 2 * dim, false, device),
            norm: self.norm(2 * dim, device),
        }
    }

    fn block(
        &self,
        dim: usize,
        heads: usize,
        shift: usize,
        sd: f64,
        device: &Device,
    ) -> SwinBlockV2 {
        let hidden = (dim as f64 * self.mlp_ratio) as usize;
        // torchvision zeroes the key bias at init and ignores it in forward; `linear` already
        // zeroes every bias.
        let qkv = linear(dim, 3 * dim, true, device);
        let attn = ShiftedWindowAttentionV2 {
            qkv,
            proj: linear(dim, dim, true, device),
            logit_scale: Param::from_tensor(Tensor::full([heads, 1, 1], 10f32.ln(), device)),
            cpb_mlp: (
                linear(2, 512, true, device),
                Relu::new(),
                linear(512, heads, false, device),
            ),
            num_heads: heads,
            window_size: self.window_size,
            shift_size: shift,
        };
        SwinBlockV2 {
            norm1: self.norm(dim, device),
            attn,
            norm2: self.norm(dim, device),
            mlp: (
                linear(dim, hidden, true, device),
                Gelu::new(),
                Identity::new(),
                linear(hidden, dim, true, device),
                Identity::new(),
            ),
            stochastic_depth_prob: sd,
            training: Param::from_bool(true),
        }
    }
}

/// `[1..1, 0..0, 1..1]` over the `3 * dim` qkv outputs: Swin V2 has no key bias.
fn qkv_bias_mask(dim: usize, device: &Device) -> Tensor<1> {
    let mut m = vec![1f32; 3 * dim];
    m[dim..2 * dim].fill(0.0);
    Tensor::from_data(TensorData::new(m, [3 * dim]), device)
}

/// The patch embedding `features.0`: conv (stride = patch), permute to NHWC, LayerNorm.
pub type PatchEmbed = (Conv2d, Identity, LayerNorm);
/// One stage of Swin V2 blocks (`features.1`, `.3`, `.5`, `.7`).
pub type SwinStage = Vec<SwinBlockV2>;
/// torchvision's `features` sequence: embed, then stages interleaved with patch merging.
pub type SwinFeatures = (
    PatchEmbed,
    SwinStage,
    PatchMergingV2,
    SwinStage,
    PatchMergingV2,
    SwinStage,
    PatchMergingV2,
    SwinStage,
);

/// Swin Transformer V2 backbone (torchvision `SwinTransformer` with V2 blocks).
#[derive(Module, Debug)]
pub struct SwinV2 {
    /// Embedding, stages and patch merging, indexed as torchvision's `features`.
    pub features: SwinFeatures,
    /// Final LayerNorm before pooling.
    pub norm: LayerNorm,
    /// Classifier.
    pub head: Linear,
    window_size: usize,
    in_channels: usize,
}

impl SwinV2 {
    /// Checks an input shape `[B, C, H, W]` before a forward pass.
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), SwinV2Error> {
        if dims[0] == 0 || dims[1] != self.in_channels || dims[2] == 0 || dims[3] == 0 {
            return Err(SwinV2Error::Input {
                expected_channels: self.in_channels,
                got: dims,
            });
        }
        Ok(())
    }

    /// Feature map of the last stage after the final norm.
    ///
    /// # Shapes
    /// - input: `[B, in_channels, H, W]`
    /// - output: `[B, ceil(H/32), ceil(W/32), num_features]` (NHWC, as torchvision)
    pub fn forward_feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let (embed, s1, m1, s2, m2, s3, m3, s4) = &self.features;
        let x = kernels::conv::forward(&embed.0, x); // [B, C, H/4, W/4]
        let x = embed.2.forward(x.permute([0, 2, 3, 1])); // [B, H/4, W/4, C]
        let x = run_stage(s1, x);
        let x = run_stage(s2, m1.forward(x));
        let x = run_stage(s3, m2.forward(x));
        let x = run_stage(s4, m3.forward(x));
        self.norm.forward(x)
    }

    /// Pooled features (average over the last feature map), the input of the classifier.
    ///
    /// # Shapes
    /// - input: `[B, in_channels, H, W]`
    /// - output: `[B, num_features]`
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.forward_feature_map(x); // [B, h, w, C]
        let [b, h, w, c] = x.dims();
        x.reshape([b, h * w, c]).mean_dim(1).reshape([b, c])
    }

    /// Classifier on pooled features, or the features themselves when `pre_logits`.
    ///
    /// # Shapes
    /// - input `[B, num_features]` -> output `[B, num_classes]` or `[B, num_features]`
    pub fn forward_head(&self, features: Tensor<2>, pre_logits: bool) -> Tensor<2> {
        if pre_logits {
            features
        } else {
            kernels::linear(&self.head, features)
        }
    }

    /// `forward_head(forward_features(x), false)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.forward_features(x), false)
    }
}

fn run_stage(blocks: &[SwinBlockV2], mut x: Tensor<4>) -> Tensor<4> {
    for b in blocks {
        x = b.forward(x);
    }
    x
}

/// Swin V2 patch merging: 2x2 neighbours concatenated (`x0,x1,x2,x3` order), Linear 4C -> 2C,
/// then LayerNorm (post-norm, unlike V1). Odd sizes are zero-padded first.
#[derive(Module, Debug)]
pub struct PatchMergingV2 {
    /// Linear 4C -> 2C without bias.
    pub reduction: Linear,
    /// LayerNorm over 2C.
    pub norm: LayerNorm,
}

impl PatchMergingV2 {
    /// `[B, H, W, C]` -> `[B, ceil(H/2), ceil(W/2), 2C]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let x = x.pad([(0, h % 2), (0, w % 2), (0, 0)], PadMode::Constant(0.0));
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        // [B, h2, 2(row), w2, 2(col), C] -> [B, h2, w2, col, row, C]: col-major pairs give
        // torchvision's order x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1) along channels.
        let x = x
            .reshape([b, h2, 2, w2, 2, c])
            .permute([0, 1, 3, 4, 2, 5])
            .reshape([b, h2, w2, 4 * c]);
        self.norm.forward(kernels::linear(&self.reduction, x))
    }
}

/// Swin V2 block with residual post-norm: `x + sd(norm1(attn(x)))`, `x + sd(norm2(mlp(x)))`.
#[derive(Module, Debug)]
pub struct SwinBlockV2 {
    /// Post-attention LayerNorm.
    pub norm1: LayerNorm,
    /// Shifted-window cosine attention.
    pub attn: ShiftedWindowAttentionV2,
    /// Post-MLP LayerNorm.
    pub norm2: LayerNorm,
    /// torchvision `MLP`: Linear, GELU, Dropout(0), Linear, Dropout(0).
    pub mlp: (Linear, Gelu, Identity, Linear, Identity),
    stochastic_depth_prob: f64,
    training: Param<Flag>,
}

impl SwinBlockV2 {
    /// `[B, H, W, C]` -> `[B, H, W, C]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.stochastic_depth_prob;
        let a = self.norm1.forward(self.attn.forward(x.clone()));
        let x = x + stochastic_depth(a, p, &self.training);
        // The GELU (`mlp.1`) is exact, as `kernels::linear_gelu` runs it.
        let (fc1, _, _, fc2, _) = &self.mlp;
        let m = self
            .norm2
            .forward(kernels::linear(fc2, kernels::linear_gelu(fc1, x.clone())));
        x + stochastic_depth(m, p, &self.training)
    }
}

/// Window attention of Swin V2: cosine similarity scaled by a learnable, clamped logit scale,
/// plus a continuous position bias from a small MLP over log-spaced relative coordinates.
#[derive(Module, Debug)]
pub struct ShiftedWindowAttentionV2 {
    /// Linear C -> 3C (key bias ignored).
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Per-head log temperature `[heads, 1, 1]`, clamped at ln(100).
    pub logit_scale: Param<Tensor<3>>,
    /// Continuous position bias MLP: Linear(2, 512), ReLU, Linear(512, heads, no bias).
    pub cpb_mlp: (Linear, Relu, Linear),
    num_heads: usize,
    window_size: usize,
    shift_size: usize,
}

impl ShiftedWindowAttentionV2 {
    /// Relative position bias `16 * sigmoid(cpb_mlp(table))[index]`: `[1, heads, N, N]`.
    fn position_bias(&self, device: &Device) -> Tensor<4> {
        let ws = self.window_size;
        let side = 2 * ws - 1;
        let mut table = Vec::with_capacity(side * side * 2);
        let log_coord = |d: i64| {
            let t = d as f32 / (ws - 1) as f32 * 8.0;
            t.signum() * (t.abs() + 1.0).log2() / 3.0
        };
        for dh in -(ws as i64 - 1)..ws as i64 {
            for dw in -(ws as i64 - 1)..ws as i64 {
                table.push(log_coord(dh));
                table.push(log_coord(dw));
            }
        }
        let table = Tensor::<2>::from_data(TensorData::new(table, [side * side, 2]), device);
        let (l1, relu, l2) = &self.cpb_mlp;
        let bias = l2.forward(relu.forward(l1.forward(table))); // [side^2, heads]
        let n = ws * ws;
        let index = relative_position_index(ws, device);
        let bias = bias
            .select(0, index)
            .reshape([n, n, self.num_heads])
            .permute([2, 0, 1])
            .unsqueeze_dim::<4>(0);
        sigmoid(bias).mul_scalar(16.0)
    }

    /// `[B, H, W, C]` -> `[B, H, W, C]`: pad to window multiples, cyclic shift, windowed
    /// attention with the shift mask, reverse shift, crop.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        let [b, h, w, c] = x.dims();
        let ws = self.window_size;
        let heads = self.num_heads;
        let hd = c / heads;
        let (pad_b, pad_r) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        let mut x = x.pad([(0, pad_b), (0, pad_r), (0, 0)], PadMode::Constant(0.0));
        let (ph, pw) = (h + pad_b, w + pad_r);
        let sh = if ws >= ph { 0 } else { self.shift_size };
        let sw = if ws >= pw { 0 } else { self.shift_size };
        let shifted = sh + sw > 0;
        if shifted {
            x = x.roll(&[-(sh as i64), -(sw as i64)], &[1, 2]);
        }
        let (nh, nw) = (ph / ws, pw / ws);
        let nwin = nh * nw;
        let n = ws * ws;
        let bn = b * nwin;
        let x = x
            .reshape([b, nh, ws, nw, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([bn, n, c]);

        let bias = self
            .qkv
            .bias
            .as_ref()
            .map(|bias| bias.val() * qkv_bias_mask(c, &device));
        let qkv = kernels::linear_with(x, self.qkv.weight.val(), bias)
            .reshape([bn, n, 3, heads, hd])
            .permute([2, 0, 3, 1, 4]); // [3, bn, heads, n, hd]
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([bn, heads, n, hd]);
        let (q, k, v) = (l2_normalize(part(0)), l2_normalize(part(1)), part(2));
        let scale = self
            .logit_scale
            .val()
            .clamp_max(100f32.ln())
            .exp()
            .unsqueeze_dim::<4>(0); // [1, heads, 1, 1]
        let mut attn = kernels::matmul(q, k.swap_dims(2, 3)) * scale + self.position_bias(&device);
        if shifted {
            let mask = shift_mask(ph, pw, ws, sh, sw, &device); // [nwin, n, n]
            attn = (attn.reshape([b, nwin, heads, n, n]) + mask.reshape([1, nwin, 1, n, n]))
                .reshape([bn, heads, n, n]);
        }
        let attn = softmax(attn, 3);
        let x = kernels::matmul(attn, v).swap_dims(1, 2).reshape([bn, n, c]);
        let x = kernels::linear(&self.proj, x);
        let mut x = x
            .reshape([b, nh, nw, ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, ph, pw, c]);
        if shifted {
            x = x.roll(&[sh as i64, sw as i64], &[1, 2]);
        }
        x.slice([0..b, 0..h, 0..w, 0..c])
    }
}

/// `F.normalize(x, dim=-1)`: `x / max(||x||, 1e-12)`.
///
/// The clamp is applied to the squared norm, before the square root: `sqrt(max(s, 1e-24))`
/// has the same value as `max(sqrt(s), 1e-12)` but a finite gradient at `s = 0`. Clamping after
/// the root multiplies the clamp's zero gradient by the root's infinite one (`0 * inf = NaN`)
/// for every all-zero vector, which the zero-padded tokens of a padded window are: their key
/// vectors are exactly zero because Swin V2 has no key bias.
///
/// An all-zero vector (a padded token's key) gets a zero gradient instead of `1 / 1e-12` times
/// the incoming one: the same value, and the same parameter gradients in exact arithmetic
/// (that gradient reaches only the padded rows, whose inputs are zero, and the key bias,
/// which is masked to zero), but 1e12 times a gradient overflows f16 in the `qkv` product's
/// backward under autocast, and `inf * 0` is NaN: every f16 step of a padded Swin V2 (the
/// last stage at 128x128) overflowed and was skipped, whatever the loss scale.
fn l2_normalize(x: Tensor<4>) -> Tensor<4> {
    let squares = x.clone().powf_scalar(2.0).sum_dim(3);
    let nonzero = squares.clone().greater_elem(0.0).float();
    let norm = squares.clamp_min(1e-24).sqrt();
    x / norm * nonzero
}

/// Attention mask of shifted windows: -100 between tokens from different pre-shift regions.
fn shift_mask(ph: usize, pw: usize, ws: usize, sh: usize, sw: usize, device: &Device) -> Tensor<3> {
    // Region of a coordinate along one axis, as torchvision's three slices (a zero shift
    // leaves one region).
    let region = |i: usize, len: usize, shift: usize| -> usize {
        if shift == 0 || i < len - ws {
            0
        } else if i < len - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw) = (ph / ws, pw / ws);
    let n = ws * ws;
    let mut labels = vec![0usize; nh * nw * n];
    for i in 0..ph {
        for j in 0..pw {
            let win = (i / ws) * nw + j / ws;
            let tok = (i % ws) * ws + j % ws;
            labels[win * n + tok] = region(i, ph, sh) * 3 + region(j, pw, sw);
        }
    }
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for win in 0..nh * nw {
        let l = &labels[win * n..(win + 1) * n];
        for a in l {
            for bb in l {
                mask.push(a != bb);
            }
        }
    }
    let mask = Tensor::<3, Bool>::from_data(TensorData::new(mask, [nh * nw, n, n]), device);
    Tensor::<3>::zeros([nh * nw, n, n], device).mask_fill(mask, -100.0)
}
