//! Train/validation splits of the PA train surveys: the pure functions live in
//! `geolife_data::split` (so tools without burn, such as `geolife prior`, split the same way);
//! re-exported here so `geolife_train::split` keeps its API.

pub use geolife_data::split::{
    TrainValSplit, block_of, fold_split, random_folds, random_split, spatial_folds, spatial_split,
};
