//! The CPU kernels of the seed network's layers, registered for burn flex through burn's
//! backend-extension API with their own autodiff nodes, and the GPU build's BatchNorm and
//! LayerNorm kernels (`norm_gpu.rs`, cubecl) behind the same operations; every other device,
//! dtype and layer runs burn's own operations. One module per computation, the CPU ones built
//! on `shared.rs` (README, "Measured speed").

/// Runs `$f::<E>(..)` with `E` the element type `$dtype` names: f32, or f16 (an f16 autocast
/// scope's activations); any other type panics naming `$what`. The GPU kernels are generic
/// over it.
#[cfg(feature = "wgpu")]
macro_rules! f32_or_f16 {
    ($dtype:expr, $what:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            burn::tensor::DType::F32 => $f::<f32>($($arg),*),
            burn::tensor::DType::F16 => $f::<half::f16>($($arg),*),
            other => panic!("{}: f32 or f16 values only, not {other:?}", $what),
        }
    };
}

pub mod adamw;
pub mod autocast;
pub mod bce;
pub mod conv;
pub mod conv_gpu;
pub mod finite;
pub mod gelu;
pub mod linear;
pub mod norm;
#[cfg(feature = "wgpu")]
mod norm_gpu;
mod shared;

pub use adamw::{FusedAdamW, adamw_applies, adamw_step};
pub use autocast::{AutocastGuard, autocast, matmul, matmul_half};
pub use bce::bce_with_logits;
pub use gelu::gelu;
pub use linear::{linear, linear_gelu, linear_half, linear_with};
pub use norm::{batch_norm, batch_norm_nhwc, channels_last, layer_norm};
pub(crate) use shared::on_cpu_f32;
pub use shared::{kernels_on, set_cpu_kernels};
