//! geolife-data (see crate description).
