//! geolife-metrics (see crate description).
