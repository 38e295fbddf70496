//! The seed's multi-modal fusion network (GLC24.md §4): tabular MLP, Landsat and bioclim cube
//! ResNet18s, a Sentinel-2 image backbone, per-branch LayerNorm + dropout, concat -> MLP.
//! Every hard-coded value of the seed is a config field; disabled branches have no parameters.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbones::resnet::{self, ResNet, ResNetConfig};
use crate::backbones::{Backbone, BackboneConfig, BackboneKind, SentinelInput};
use crate::error::ModelError;
use crate::kernels;
use crate::state::TorchNamed;

/// What an image/cube backbone hands to the fusion head.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BranchOutput {
    /// The 1000-d ImageNet classifier output, as the seed does.
    Logits1000,
    /// Pooled pre-logits features (no classifier parameters).
    Features,
}

/// Backbone of the two cube branches.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CubeBackbone {
    /// The seed's ResNet18 with a 3x3/s1 stem and no max-pool.
    Resnet18,
    /// One block per stage, widths 8..64 (CPU smoke runs).
    SmokeResnet,
}

impl CubeBackbone {
    fn config(self, in_channels: usize, output: BranchOutput) -> ResNetConfig {
        let c = match self {
            Self::Resnet18 => ResNetConfig::cube(in_channels),
            Self::SmokeResnet => ResNetConfig::smoke(in_channels),
        };
        c.with_num_classes(match output {
            BranchOutput::Logits1000 => Some(1000),
            BranchOutput::Features => None,
        })
    }
}

/// How a location prior (per-species scores in [0, 1] from where the survey is, such as
/// `geolife prior`'s) enters the network; off by default.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PriorInput {
    /// No prior input (the paper's network).
    #[default]
    Off,
    /// A per-species learned scale on `ln(p + PRIOR_EPS)` added to the logits. The scale
    /// starts at 1, so the untrained head already ranks by the prior and the branches learn
    /// what the location does not say.
    Logit,
    /// A learned low-rank projection (`prior_rank`) of `ln(1 + p / PRIOR_EPS)` normalised to
    /// [0, 1], after LayerNorm and dropout concatenated with the branch features before `fc1`.
    Features,
}

/// Floor added to prior scores before the log: a species with no evidence gets
/// `ln(PRIOR_EPS)` instead of minus infinity.
pub const PRIOR_EPS: f64 = 1e-3;

/// The seed's dropout (after each branch and after `fc1`): the one default of
/// [`FusionConfig::dropout`] and of the training config's `model.dropout`.
pub const SEED_DROPOUT: f64 = 0.15;
/// The seed's `fc1` width: the one default of [`FusionConfig::hidden`] and `model.hidden`.
pub const SEED_HIDDEN: usize = 1024;

/// Configuration of [`FusionModel`]; serialisable, saved into run folders and checkpoints.
#[derive(Config, Debug)]
pub struct FusionConfig {
    /// Output classes.
    pub num_classes: usize,
    /// Sentinel-2 backbone.
    pub sentinel_backbone: BackboneKind,
    /// Tabular feature count.
    #[config(default = 46)]
    pub num_features: usize,
    /// Sentinel backbone output: seed 1000-d logits or pre-logits features.
    #[config(default = "BranchOutput::Logits1000")]
    pub sentinel_output: BranchOutput,
    /// Cube backbones output.
    #[config(default = "BranchOutput::Logits1000")]
    pub cube_output: BranchOutput,
    /// Cube backbone.
    #[config(default = "CubeBackbone::Resnet18")]
    pub cube_backbone: CubeBackbone,
    /// Dropout after each branch and after `fc1`.
    #[config(default = "SEED_DROPOUT")]
    pub dropout: f64,
    /// Width of `fc1`.
    #[config(default = "SEED_HIDDEN")]
    pub hidden: usize,
    /// Tabular branch on.
    #[config(default = true)]
    pub use_tabular: bool,
    /// Landsat branch on.
    #[config(default = true)]
    pub use_landsat: bool,
    /// Bioclim branch on.
    #[config(default = true)]
    pub use_bioclim: bool,
    /// Sentinel branch on.
    #[config(default = true)]
    pub use_sentinel: bool,
    /// Landsat cube shape `[bands, quarters, years]`.
    #[config(default = "[6, 4, 21]")]
    pub landsat_shape: [usize; 3],
    /// Bioclim cube shape `[variables, years, months]`.
    #[config(default = "[4, 19, 12]")]
    pub bioclim_shape: [usize; 3],
    /// Sentinel input channels (R, G, B, NIR).
    #[config(default = 4)]
    pub sentinel_channels: usize,
    /// Side of the stored Sentinel patches (128 in the official data).
    #[config(default = 128)]
    pub sentinel_size: usize,
    /// How patches reach the backbone: as stored, or resized to 224 (see [`SentinelInput`]).
    #[config(default = "SentinelInput::Auto")]
    pub sentinel_input: SentinelInput,
    /// Location prior input (see [`PriorInput`]).
    #[config(default = "PriorInput::Off")]
    pub prior_input: PriorInput,
    /// Width of the prior projection with [`PriorInput::Features`].
    #[config(default = 32)]
    pub prior_rank: usize,
}

/// Width of the tabular branch output.
pub const TAB_OUT: usize = 32;

impl FusionConfig {
    /// The paper's model for `num_classes` and a Sentinel backbone.
    pub fn paper(num_classes: usize, backbone: BackboneKind) -> Self {
        Self::new(num_classes, backbone)
    }

    /// A very small model for CPU smoke tests (smoke ConvNeXt, smoke cube ResNets, hidden 64).
    pub fn tiny(num_classes: usize) -> Self {
        Self::new(num_classes, BackboneKind::SmokeConvnext)
            .with_cube_backbone(CubeBackbone::SmokeResnet)
            .with_sentinel_output(BranchOutput::Features)
            .with_cube_output(BranchOutput::Features)
            .with_hidden(64)
    }

    /// Check the config before building.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.num_classes == 0 {
            return bad("num_classes must be > 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.hidden == 0 {
            return bad("hidden must be > 0".into());
        }
        if !(self.use_tabular || self.use_landsat || self.use_bioclim || self.use_sentinel) {
            return bad("at least one branch must be enabled".into());
        }
        if self.prior_input == PriorInput::Features && self.prior_rank == 0 {
            return bad("prior_rank must be > 0 with prior_input = features".into());
        }
        if self.use_tabular && self.num_features == 0 {
            return bad("num_features must be > 0 with the tabular branch".into());
        }
        if self.landsat_shape.contains(&0) || self.bioclim_shape.contains(&0) {
            return bad("cube shapes must be non-zero".into());
        }
        if self.use_sentinel {
            if self.sentinel_channels == 0 || self.sentinel_size == 0 {
                return bad("sentinel_channels and sentinel_size must be > 0".into());
            }
            self.sentinel_config()?;
        }
        Ok(())
    }

    /// Side the Sentinel patches are resized to before the backbone, if any.
    pub fn sentinel_resize(&self) -> Option<usize> {
        self.sentinel_input
            .resize_to(self.sentinel_backbone, self.sentinel_size)
    }

    /// The Sentinel backbone's config for the input side it will see (after any resize).
    pub fn sentinel_config(&self) -> Result<BackboneConfig, ModelError> {
        let side = self.sentinel_resize().unwrap_or(self.sentinel_size);
        self.sentinel_backbone.config_for_size(
            self.sentinel_channels,
            self.sentinel_classes(),
            side,
        )
    }

    fn sentinel_classes(&self) -> Option<usize> {
        match self.sentinel_output {
            BranchOutput::Logits1000 => Some(1000),
            BranchOutput::Features => None,
        }
    }

    /// Width of the concatenated branch outputs (input of `fc1`): 3032 for the seed.
    pub fn fusion_width(&self) -> usize {
        let mut w = 0;
        if self.use_tabular {
            w += TAB_OUT;
        }
        if self.use_landsat {
            w += self
                .cube_backbone
                .config(self.landsat_shape[0], self.cube_output)
                .out_dim();
        }
        if self.use_bioclim {
            w += self
                .cube_backbone
                .config(self.bioclim_shape[0], self.cube_output)
                .out_dim();
        }
        if self.use_sentinel {
            w += self
                .sentinel_backbone
                .config(self.sentinel_channels, self.sentinel_classes())
                .out_dim();
        }
        if self.prior_input == PriorInput::Features {
            w += self.prior_rank;
        }
        w
    }

    /// Build the model, checking the config first.
    pub fn try_init(&self, device: &Device) -> Result<FusionModel, ModelError> {
        self.validate()?;
        let ln = |d: usize| LayerNormConfig::new(d).with_epsilon(LN_EPS).init(device);
        let cube = |shape: [usize; 3]| self.cube_backbone.config(shape[0], self.cube_output);
        let landsat = self.use_landsat.then(|| cube(self.landsat_shape));
        let bioclim = self.use_bioclim.then(|| cube(self.bioclim_shape));
        let sentinel = match self.use_sentinel {
            true => Some(self.sentinel_config()?),
            false => None,
        };
        Ok(FusionModel {
            tab_norm: self.use_tabular.then(|| ln(self.num_features)),
            tab_model: self.use_tabular.then(|| TabMlp {
                l0: LinearConfig::new(self.num_features, 128).init(device),
                l2: LinearConfig::new(128, 128).init(device),
                l4: LinearConfig::new(128, TAB_OUT).init(device),
            }),
            ln0: self.use_tabular.then(|| ln(TAB_OUT)),
            landsat_norm: self
                .use_landsat
                .then(|| ln(self.landsat_shape.iter().product())),
            ln1: landsat.as_ref().map(|c| ln(c.out_dim())),
            landsat_model: landsat.map(|c| c.init(device)),
            bioclim_norm: self
                .use_bioclim
                .then(|| ln(self.bioclim_shape.iter().product())),
            ln2: bioclim.as_ref().map(|c| ln(c.out_dim())),
            bioclim_model: bioclim.map(|c| c.init(device)),
            ln3: sentinel.as_ref().map(|c| ln(c.out_dim())),
            sentinel_model: match &sentinel {
                Some(c) => Some(c.try_init(device)?),
                None => None,
            },
            prior_scale: (self.prior_input == PriorInput::Logit)
                .then(|| Param::from_tensor(Tensor::<1>::ones([self.num_classes], device))),
            prior_proj: (self.prior_input == PriorInput::Features)
                .then(|| LinearConfig::new(self.num_classes, self.prior_rank).init(device)),
            ln4: (self.prior_input == PriorInput::Features).then(|| ln(self.prior_rank)),
            fc1: LinearConfig::new(self.fusion_width(), self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, self.num_classes).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            sentinel_pre_logits: sentinel.as_ref().is_some_and(|c| c.pre_logits()),
            sentinel_resize: self.sentinel_resize().unwrap_or(0),
            num_features: self.num_features,
            landsat_shape: self.landsat_shape,
            bioclim_shape: self.bioclim_shape,
        })
    }

    /// Build the model.
    ///
    /// # Panics
    /// On an invalid config: call [`FusionConfig::validate`] (or use `try_init`) on user input.
    pub fn init(&self, device: &Device) -> FusionModel {
        match self.try_init(device) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The seed's `tab_model` Sequential: Linear(F,128), ReLU, Linear(128,128), ReLU, Linear(128,32);
/// `l0`, `l2`, `l4` are its indices `0`, `2`, `4`.
#[derive(Module, Debug)]
pub struct TabMlp {
    /// `tab_model.0`.
    pub l0: Linear,
    /// `tab_model.2`.
    pub l2: Linear,
    /// `tab_model.4`.
    pub l4: Linear,
}

impl TabMlp {
    /// # Shapes
    /// - `[B, F]` -> `[B, 32]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let relu = burn::tensor::activation::relu;
        let lin = kernels::linear;
        lin(&self.l4, relu(lin(&self.l2, relu(lin(&self.l0, x)))))
    }
}

/// Inputs of one batch; tensors of disabled branches are ignored (pass any small tensor).
#[derive(Debug, Clone)]
pub struct FusionInput {
    /// Tabular features `[B, F]`.
    pub tabular: Tensor<2>,
    /// Landsat cubes `[B, 6, 4, 21]`.
    pub landsat: Tensor<4>,
    /// Bioclim cubes `[B, 4, 19, 12]`.
    pub bioclim: Tensor<4>,
    /// Sentinel patches `[B, 4, H, W]`, scaled to [-1, 1].
    pub sentinel: Tensor<4>,
    /// Location prior `[B, num_classes]`, scores in [0, 1]; required when the model was built
    /// with a prior input, ignored otherwise.
    pub prior: Option<Tensor<2>>,
}

/// The fusion network; field names are the seed's `MultimodalEnsemble` state-dict keys.
#[derive(Module, Debug)]
pub struct FusionModel {
    /// `LayerNorm(F)` on the raw tabular vector.
    pub tab_norm: Option<LayerNorm>,
    /// Tabular MLP.
    pub tab_model: Option<TabMlp>,
    /// LayerNorm(32) after the MLP.
    pub ln0: Option<LayerNorm>,
    /// LayerNorm over the whole Landsat cube (flattened; PyTorch shape `[6,4,21]`).
    pub landsat_norm: Option<LayerNorm>,
    /// Landsat ResNet.
    pub landsat_model: Option<ResNet>,
    /// LayerNorm after the Landsat ResNet.
    pub ln1: Option<LayerNorm>,
    /// LayerNorm over the whole bioclim cube (flattened; PyTorch shape `[4,19,12]`).
    pub bioclim_norm: Option<LayerNorm>,
    /// Bioclim ResNet.
    pub bioclim_model: Option<ResNet>,
    /// LayerNorm after the bioclim ResNet.
    pub ln2: Option<LayerNorm>,
    /// Sentinel-2 backbone.
    pub sentinel_model: Option<Backbone>,
    /// LayerNorm after the Sentinel backbone.
    pub ln3: Option<LayerNorm>,
    /// Per-species scale of the log prior added to the logits ([`PriorInput::Logit`]).
    pub prior_scale: Option<Param<Tensor<1>>>,
    /// Low-rank projection of the prior ([`PriorInput::Features`]).
    pub prior_proj: Option<Linear>,
    /// LayerNorm after the prior projection.
    pub ln4: Option<LayerNorm>,
    /// Fusion hidden layer.
    pub fc1: Linear,
    /// Classifier.
    pub fc2: Linear,
    /// Shared dropout (p = 0.15 in the seed).
    pub dropout: Dropout,
    /// Sentinel backbone returns pre-logits features.
    pub sentinel_pre_logits: bool,
    /// Side Sentinel patches are bilinearly resized to before the backbone; 0 = as stored.
    pub sentinel_resize: usize,
    /// Tabular feature count.
    pub num_features: usize,
    /// PyTorch shape of `landsat_norm` parameters.
    pub landsat_shape: [usize; 3],
    /// PyTorch shape of `bioclim_norm` parameters.
    pub bioclim_shape: [usize; 3],
}

/// Epsilon of the fusion network's LayerNorms (PyTorch's and burn's default): set at init and
/// used by [`ln_forward`].
const LN_EPS: f64 = 1e-5;

/// `ln.forward(x)` for the fusion network's LayerNorms, through the fused CPU kernel.
fn ln_forward<const D: usize>(ln: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    kernels::layer_norm(x, ln.gamma.val(), ln.beta.as_ref().map(|b| b.val()), LN_EPS)
}

fn cube_norm(norm: &LayerNorm, x: Tensor<4>) -> Tensor<4> {
    let dims = x.dims();
    let flat: Tensor<2> = x.flatten(1, 3); // [b, c*h*w]
    ln_forward(norm, flat).reshape(dims)
}

impl FusionModel {
    /// Draws every parameter that is still waiting for its initial values (burn initialises
    /// them lazily, on first use) now, from the device's random stream. Training calls this
    /// before its first step, so the first forward pass does not draw the ~38 million initial
    /// values of the paper preset on the calling thread, and the initial weights follow the run
    /// seed, not the first batch's dropout stream. Loaded parameters are left as they are.
    pub fn materialize(&self) {
        struct Touch;
        impl burn::module::ModuleVisitor for Touch {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                drop(param.val());
            }
        }
        self.visit(&mut Touch);
    }

    /// Checks the shapes of a batch against the model before a forward pass: each enabled
    /// branch's tensor must have the batch size and the shape the model was built for.
    pub fn check_input(&self, input: &FusionInput) -> Result<(), ModelError> {
        self.check_shapes(
            input.tabular.dims(),
            input.landsat.dims(),
            input.bioclim.dims(),
            input.sentinel.dims(),
        )?;
        self.check_prior(
            input.tabular.dims()[0],
            input.prior.as_ref().map(|p| p.dims()),
        )
    }

    /// Whether the model takes a location prior input.
    pub fn takes_prior(&self) -> bool {
        self.prior_scale.is_some() || self.prior_proj.is_some()
    }

    /// Checks the prior input's presence and shape `[batch, num_classes]`.
    pub fn check_prior(&self, batch: usize, prior: Option<[usize; 2]>) -> Result<(), ModelError> {
        if !self.takes_prior() {
            return Ok(());
        }
        let classes = self.fc2.weight.dims()[1];
        match prior {
            Some(d) if d == [batch, classes] => Ok(()),
            got => Err(ModelError::BadInput {
                branch: "prior",
                expected: format!("[{batch}, {classes}] location prior scores"),
                got: got.map(|d| d.to_vec()).unwrap_or_default(),
            }),
        }
    }

    /// [`FusionModel::check_input`] on shapes alone, e.g. a cache's shapes before training.
    pub fn check_shapes(
        &self,
        tabular: [usize; 2],
        landsat: [usize; 4],
        bioclim: [usize; 4],
        sentinel: [usize; 4],
    ) -> Result<(), ModelError> {
        let b = tabular[0];
        let bad = |branch, expected: String, got: &[usize]| {
            Err(ModelError::BadInput {
                branch,
                expected,
                got: got.to_vec(),
            })
        };
        if self.tab_model.is_some() {
            let d = tabular;
            if d[0] == 0 || d[1] != self.num_features {
                return bad(
                    "tabular",
                    format!("[batch >= 1, {}]", self.num_features),
                    &d,
                );
            }
        }
        for (branch, on, shape, t) in [
            (
                "landsat",
                self.landsat_model.is_some(),
                self.landsat_shape,
                landsat,
            ),
            (
                "bioclim",
                self.bioclim_model.is_some(),
                self.bioclim_shape,
                bioclim,
            ),
        ] {
            let d = t;
            if on && (d[0] != b || d[0] == 0 || d[1..] != shape) {
                return bad(branch, format!("[{b}, {shape:?}]"), &d);
            }
        }
        if let Some(net) = &self.sentinel_model {
            let d = sentinel;
            if d[0] != b {
                return bad("sentinel", format!("batch {b}"), &d);
            }
            let seen = match self.sentinel_resize {
                0 => d,
                s => [d[0], d[1], s, s],
            };
            net.check_input(seen)?;
        }
        Ok(())
    }

    /// Logits for a batch.
    ///
    /// # Shapes
    /// - see [`FusionInput`]; output `[B, num_classes]`
    pub fn forward(&self, input: FusionInput) -> Tensor<2> {
        let mut parts: Vec<Tensor<2>> = Vec::with_capacity(4);
        if let (Some(norm), Some(mlp), Some(ln)) = (&self.tab_norm, &self.tab_model, &self.ln0) {
            let t = mlp.forward(ln_forward(norm, input.tabular)); // [b, 32]
            parts.push(self.dropout.forward(ln_forward(ln, t)));
        }
        if let (Some(norm), Some(net), Some(ln)) =
            (&self.landsat_norm, &self.landsat_model, &self.ln1)
        {
            let x = net.forward(cube_norm(norm, input.landsat)); // [b, 1000]
            parts.push(self.dropout.forward(ln_forward(ln, x)));
        }
        if let (Some(norm), Some(net), Some(ln)) =
            (&self.bioclim_norm, &self.bioclim_model, &self.ln2)
        {
            let y = net.forward(cube_norm(norm, input.bioclim)); // [b, 1000]
            parts.push(self.dropout.forward(ln_forward(ln, y)));
        }
        if let (Some(net), Some(ln)) = (&self.sentinel_model, &self.ln3) {
            let x = match self.sentinel_resize {
                0 => input.sentinel,
                side => crate::backbones::resize_bilinear(input.sentinel, side),
            };
            let z = net.forward_out(x, self.sentinel_pre_logits); // [b, 1000]
            parts.push(self.dropout.forward(ln_forward(ln, z)));
        }
        if let (Some(proj), Some(ln), Some(p)) = (&self.prior_proj, &self.ln4, &input.prior) {
            // ln(1 + p / eps) / ln(1 + 1 / eps): 0 without evidence, 1 at p = 1.
            let scale = (1.0 / PRIOR_EPS).ln_1p();
            let z = (p.clone() / PRIOR_EPS).log1p() / scale;
            parts.push(
                self.dropout
                    .forward(ln_forward(ln, kernels::linear(proj, z))),
            );
        }
        let x = Tensor::cat(parts, 1); // [b, fusion_width]
        let x = burn::tensor::activation::relu(kernels::linear(&self.fc1, x));
        let logits = kernels::linear(&self.fc2, self.dropout.forward(x));
        match (&self.prior_scale, input.prior) {
            (Some(scale), Some(p)) => {
                let log_p = (p + PRIOR_EPS).log(); // [b, classes]
                logits + log_p * scale.val().unsqueeze_dim::<2>(0)
            }
            _ => logits,
        }
    }
}

impl TorchNamed for FusionModel {
    fn torch_key(&self, path: &str) -> String {
        if let Some(rest) = path.strip_prefix("tab_model.") {
            let rest = rest
                .replacen("l0.", "0.", 1)
                .replacen("l2.", "2.", 1)
                .replacen("l4.", "4.", 1);
            return format!("tab_model.{rest}");
        }
        for branch in ["landsat_model.", "bioclim_model."] {
            if let Some(rest) = path.strip_prefix(branch) {
                return format!("{branch}{}", resnet::torch_key(rest));
            }
        }
        if let Some(rest) = path.strip_prefix("sentinel_model.") {
            return format!("sentinel_model.{}", Backbone::torch_key(rest));
        }
        path.to_string()
    }

    fn torch_shape(&self, key: &str, burn_shape: &[usize]) -> Vec<usize> {
        match key {
            "landsat_norm.weight" | "landsat_norm.bias" => self.landsat_shape.to_vec(),
            "bioclim_norm.weight" | "bioclim_norm.bias" => self.bioclim_shape.to_vec(),
            _ => burn_shape.to_vec(),
        }
    }
}

impl TorchNamed for ResNet {
    fn torch_key(&self, path: &str) -> String {
        resnet::torch_key(path)
    }
}

impl TorchNamed for crate::backbones::convnext::ConvNext {
    fn torch_key(&self, path: &str) -> String {
        crate::backbones::convnext::torch_key(path)
    }
}

impl TorchNamed for Backbone {
    fn torch_key(&self, path: &str) -> String {
        Backbone::torch_key(path)
    }
}
