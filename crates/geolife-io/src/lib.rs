//! geolife-io: file plumbing shared by the geolife crates (atomic writes, byte-reproducible
//! safetensors headers, the safe torch-file reader), below every other geolife crate so that
//! none of them depends on geolife-data only for these. No tensor library.

pub mod atomic;
pub mod reproducible;
pub mod torchfile;
