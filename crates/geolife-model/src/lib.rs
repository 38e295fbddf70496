//! geolife-model: the seed fusion network of GeoLifeCLEF 2024 and its backbones in burn.
//! Parameter names equal torchvision / seed state-dict keys so weight import and export are
//! direct; see `import` and `checkpoint`.

pub mod backbones;
pub mod layers;
pub mod loss;
