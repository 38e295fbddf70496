//! The packed training cache: each split is packed once into flat little-endian binary files
//! plus a JSON manifest, then memory-mapped so a training step gathers a batch with no parsing
//! and no per-sample file opens.
//!
//! # On-disk layout (format version [`FORMAT_VERSION`])
//! ```text
//! <CACHE>/.prepare.lock       OS-locked while a `prepare` runs; names its pid and host; see [`LOCK_FILE`]
//! <CACHE>/<split>/            split = train | test; built as <split>.tmp-<pid>/, renamed when complete
//!   survey_ids.u64            n          u64   survey ids, in row order (sorted ascending)
//!   lon_lat.f64               n x 2      f64   (lon, lat)
//!   tabular.f32               n x F      f32   raw tabular features as read (NaN/inf kept)
//!   landsat.f32               n x 504    f32   (band 6, quarter 4, year 21), C order, NaN policy applied
//!   bioclim.f32               n x 912    f32   (variable 4, year 19, month 12), C order
//!   patches.u8                n x 65536  u8    (channel 4, row 128, col 128): R, G, B, NIR
//!   label_offsets.u64         n + 1      u64   CSR offsets into label_ids (labelled splits only)
//!   label_ids.u32             offsets[n] u32   sorted distinct real species ids per survey
//!   manifest.json                              written last: shapes, versions, train statistics
//! ```
//! All numbers are little-endian, rows are contiguous and fixed-size, files have no header
//! (their exact lengths follow from the manifest and are checked on open).

mod error;
mod manifest;
mod prepare;
mod reader;
mod stats;
mod writer;

pub use error::CacheError;
pub use manifest::{ChannelStats, FeatureStats, FileEntry, Manifest, PackOptions, SkippedSurvey};
pub use prepare::{
    DEFAULT_CHUNK, LOCK_FILE, NoProgress, PrepareOptions, PrepareProgress, SplitOutcome,
    SplitReport, dataset_fingerprint, prepare,
};
pub use reader::{AlignedBytes, Batch, PackedSplit};

/// Version of the on-disk layout; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Landsat cube shape: (band R,G,B,NIR,SWIR1,SWIR2; quarter; year 2000-2020).
pub const LANDSAT_SHAPE: [usize; 3] = [6, 4, 21];
/// Bioclimatic monthly cube shape: (variable pr,tas,tasmax,tasmin; year 2000-2018; month).
pub const BIOCLIM_SHAPE: [usize; 3] = [4, 19, 12];
/// Sentinel-2 patch shape, CHW with channels R, G, B, NIR.
pub const PATCH_SHAPE: [usize; 3] = [4, 128, 128];
/// Values per Landsat row.
pub const LANDSAT_LEN: usize = LANDSAT_SHAPE[0] * LANDSAT_SHAPE[1] * LANDSAT_SHAPE[2];
/// Values per bioclim row.
pub const BIOCLIM_LEN: usize = BIOCLIM_SHAPE[0] * BIOCLIM_SHAPE[1] * BIOCLIM_SHAPE[2];
/// Bytes per patch row.
pub const PATCH_LEN: usize = PATCH_SHAPE[0] * PATCH_SHAPE[1] * PATCH_SHAPE[2];

/// File names inside a split folder.
pub mod files {
    pub const MANIFEST: &str = "manifest.json";
    pub const SURVEY_IDS: &str = "survey_ids.u64";
    pub const LON_LAT: &str = "lon_lat.f64";
    pub const TABULAR: &str = "tabular.f32";
    pub const LANDSAT: &str = "landsat.f32";
    pub const BIOCLIM: &str = "bioclim.f32";
    pub const PATCHES: &str = "patches.u8";
    pub const LABEL_OFFSETS: &str = "label_offsets.u64";
    pub const LABEL_IDS: &str = "label_ids.u32";
}
