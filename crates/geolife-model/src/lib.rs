//! geolife-model (see crate description).
