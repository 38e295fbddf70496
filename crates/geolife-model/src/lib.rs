//! geolife-model: the seed fusion network of GeoLifeCLEF 2024 and its backbones in burn.
//! Parameter names equal torchvision / seed state-dict keys, so weight import (`import`) and
//! export (`checkpoint`) are direct; the renames that burn forces live in `state`.

pub mod backbones;
pub mod error;
/// Checkpoint export.
pub mod export {
    pub mod checkpoint;
}
pub mod formula;
pub mod fusion;
pub mod import;
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod state;

pub use error::ModelError;
pub use export::checkpoint;

/// The pure-Rust CPU device (burn's flex backend), for tools that do not pick a device.
pub fn cpu_device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}
