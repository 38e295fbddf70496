//! geolife-train (see crate description).
